"""Sources against real files and a real HTTP server; the capture loop's pacing and recovery."""

from __future__ import annotations

import base64
import functools
import http.server
import itertools
import re
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.capture import Capture
from edge_agent.config import SourceConfig
from edge_agent.handoff import LatestSlot
from edge_agent.sources import EndOfStream, Frame, FrameError, Source, SourceError, make_source, source_kind
from edge_agent.sources.images import ImageSetSource
from edge_agent.sources.replay import ReplaySource
from edge_agent.sources.synthetic import SyntheticSource, pattern
from edge_agent.sources.video import VideoFileSource
from edge_agent.stats import StageStats

from .conftest import DEMO_VIDEO, FRUIT, SHORT, jpeg_declaring, run_cli, scaled, wait_until


def test_uri_kinds() -> None:
    assert source_kind("0") == "camera" and source_kind("/dev/video2") == "camera"
    assert source_kind("rtsp://user:pw@cam/stream") == "stream" and source_kind("http://x/mjpg") == "http"
    assert source_kind("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! appsink") == "gstreamer"
    assert source_kind("/data/*.jpg") == "images" and source_kind("synthetic:320x240") == "synthetic"
    assert source_kind("/data/clip.mp4") == "file"
    # digits str.isdigit() takes and int() refuses are no camera index (a traceback from `check` before)
    assert source_kind("\u00b2") == "file"
    from edge_agent.config import exclusive_device

    assert exclusive_device("\u00b2") is None and exclusive_device("2") == "/dev/video2"
    src = make_source(SourceConfig(uri="rtsp://admin:secret@10.0.0.5:554/live"))
    assert "secret" not in src.describe()


def test_synthetic_is_deterministic() -> None:
    s = SyntheticSource("synthetic", 160, 120)
    s.open()
    a = s.read()
    assert a.shape == (120, 160, 3) and np.array_equal(a, pattern(160, 120, 0))
    assert not np.array_equal(s.read(), a)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"{i}.png"), pattern(64, 48, i))
    return d


def test_image_set_loops_and_ends(image_dir: Path) -> None:
    s = ImageSetSource(str(image_dir), loop=True)
    s.open()
    frames = [s.read() for _ in range(4)]
    assert np.array_equal(frames[0], frames[3]) and not np.array_equal(frames[0], frames[1])
    once = ImageSetSource(str(image_dir / "*.png"), loop=False)
    once.open()
    for _ in range(3):
        once.read()
    with pytest.raises(EndOfStream):
        once.grab()
    (image_dir / "1.png").write_bytes(b"not a png")
    s2 = ImageSetSource(str(image_dir), loop=False)
    s2.open()
    s2.read()
    s2.grab()  # the broken file is skipped without being decoded
    s2.grab()
    assert s2.retrieve().shape == (48, 64, 3)
    with pytest.raises(SourceError, match="no images"):
        ImageSetSource(str(image_dir / "*.gif")).open()


def test_an_image_folder_reads_only_files_never_a_pipe_or_a_device(image_dir: Path) -> None:
    """A named pipe called 1b.png, and a link called 1c.png to /dev/zero, in a folder cameras upload to:
    the reader would block in the pipe's open for ever (and the capture watch start another reader,
    blocked in turn, every read timeout), or read zeros without end. Only the pictures are shown, each
    read at once, in a bounded time altogether."""
    import os

    os.mkfifo(image_dir / "1b.png")
    (image_dir / "1c.png").symlink_to("/dev/zero")
    past = time.time() - 3600  # long settled
    for f in image_dir.iterdir():
        os.utime(f, (past, past), follow_symlinks=False)
    src = ImageSetSource(str(image_dir), loop=False)
    done = threading.Event()
    shapes: list[tuple[int, ...]] = []

    def read_all() -> None:
        src.open()
        try:
            while True:
                shapes.append(src.read().shape)
        except EndOfStream:
            done.set()

    threading.Thread(target=read_all, daemon=True).start()
    assert done.wait(scaled(20)), f"the reader blocked after {len(shapes)} pictures"
    assert shapes == [(48, 64, 3)] * 3


def test_a_raspberry_pi_video_node_that_is_no_camera_is_named(tmp_path: Path) -> None:
    """On a Raspberry Pi, /dev/video0 is often a camera module's raw sensor node (only libcamera
    drives it) and other nodes are the codec and image processor: opened as a camera each failed with
    "no frame". The failure now says what the node is, and for a camera module what to use (the
    node names as the kernel gives them in sysfs; this machine has no such nodes)."""
    from edge_agent.sources.camera import node_hint

    for node, name in (("video0", "unicam-image"), ("video4", "rp1-cfe-csi2_ch0"), ("video10", "bcm2835-codec-decode"),
                       ("video19", "rpi-hevc-dec"), ("video2", "HD Pro Webcam C920")):
        (tmp_path / node).mkdir()
        (tmp_path / node / "name").write_text(name + "\n")
    assert "use source.uri = 'rpicam'" in str(node_hint("0", str(tmp_path)))
    assert "use source.uri = 'rpicam'" in str(node_hint("/dev/video4", str(tmp_path)))
    assert "video codec or image processor, not a camera" in str(node_hint("10", str(tmp_path)))
    assert "not a camera" in str(node_hint("/dev/video19", str(tmp_path)))
    assert node_hint("2", str(tmp_path)) is None and node_hint("7", str(tmp_path)) is None


def test_an_image_folder_shows_the_pictures_that_arrive_in_it(image_dir: Path) -> None:
    """The set was listed once, as it opened: a folder cameras upload to showed the same pictures for
    good when looping, and ended with the new ones unseen when not. At the end of the set the folder
    is looked at again: a new picture is shown (once, where the set does not loop), one that arrived
    broken is skipped without failing the set, one that went is not looked for, and one written to
    within the last second (an upload perhaps under way) waits for a later look."""
    import os

    from edge_agent.sources.base import FrameError

    def arrive(name: str, i: int | None, fresh: bool = False) -> None:
        path = image_dir / name
        if i is None:
            path.write_bytes(b"the first bytes of an upload")
        else:
            cv2.imwrite(str(path), pattern(64, 48, i))
        if not fresh:  # written a while ago: complete
            os.utime(path, (time.time() - 10, time.time() - 10))

    for i in range(3):
        arrive(f"{i}.png", i)
    once = ImageSetSource(str(image_dir), loop=False)
    once.open()
    assert all(np.array_equal(once.read(), pattern(64, 48, i)) for i in range(3))
    arrive("3.png", 3)
    arrive("4.png", None)
    assert np.array_equal(once.read(), pattern(64, 48, 3))
    with pytest.raises(FrameError):
        once.read()
    with pytest.raises(EndOfStream):
        once.grab()
    arrive("6.png", 6, fresh=True)  # waited for (a second), then shown
    assert np.array_equal(once.read(), pattern(64, 48, 6))

    for name in ("4.png", "6.png"):
        (image_dir / name).unlink()
    looping = ImageSetSource(str(image_dir), loop=True)
    looping.open()
    assert all(np.array_equal(looping.read(), pattern(64, 48, i)) for i in range(4))
    (image_dir / "0.png").unlink()
    arrive("5.png", 5)
    arrive("7.png", 7, fresh=True)
    assert all(np.array_equal(looping.read(), pattern(64, 48, i)) for i in (1, 2, 3, 5))  # 7 waits
    arrive("7.png", 7)
    assert all(np.array_equal(looping.read(), pattern(64, 48, i)) for i in (1, 2, 3, 5, 7))


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_picture_whose_upload_stalled_waits_for_its_end(image_dir: Path, ext: str) -> None:
    """An upload that stalls for more than a second left a JPEG or PNG without its end, and it was read
    cut short (a grey lower half run through the model). One without its end marker waits for a later
    look, until the rest arrives, or half a minute after it was last written to (a camera that appends
    something after the picture's end), when it is read as it is."""
    import os

    _, enc = cv2.imencode(ext, pattern(64, 48, 7))
    whole, seven = enc.tobytes(), cv2.imdecode(enc, cv2.IMREAD_COLOR)
    for i in range(3):  # uploaded a while ago
        os.utime(image_dir / f"{i}.png", (time.time() - 60, time.time() - 60))
    stalled = image_dir / f"3{ext}"
    stalled.write_bytes(whole[: len(whole) // 2])
    os.utime(stalled, (time.time() - 5, time.time() - 5))  # settled a second ago, and no end
    looping = ImageSetSource(str(image_dir), loop=True)
    looping._files = [str(image_dir / f"{i}.png") for i in range(3)]  # as listed before it arrived
    looping._pos = -1

    def shown(n: int) -> list[int]:
        out = []
        for _ in range(n):
            img = looping.read()
            out.append(7 if np.array_equal(img, seven) else next(i for i in range(3)
                                                                 if np.array_equal(img, pattern(64, 48, i))))
        return out

    assert shown(9) == [0, 1, 2] * 3  # it waits, round after round (read cut short, it would be none of these)
    stalled.write_bytes(whole + b"\0\0")  # the rest arrived (with a camera's zero padding)
    os.utime(stalled, (time.time() - 5, time.time() - 5))
    assert shown(8) == [0, 1, 2, 7, 0, 1, 2, 7]  # shown, whole
    stalled.write_bytes(whole[: len(whole) // 2])
    os.utime(stalled, (time.time() - 40, time.time() - 40))  # given up on: read as it is, skipped if unreadable
    again = ImageSetSource(str(image_dir), loop=False)
    again._files, again._pos = [str(image_dir / f"{i}.png") for i in range(3)], -1
    for _ in range(3):
        again.read()
    assert again._arrived() == [str(stalled)]


def test_a_picture_being_uploaded_as_the_folder_opens_waits_for_the_next_look(image_dir: Path) -> None:
    """The rule for pictures that arrive holds as the set opens too: one written to within the last
    second (here, cut short) waits for a later look instead of being read half uploaded as the
    agent starts; a folder where everything is that new is read as it is."""
    import os

    for i in range(2):
        os.utime(image_dir / f"{i}.png", (time.time() - 60, time.time() - 60))
    whole = (image_dir / "2.png").read_bytes()
    (image_dir / "2.png").write_bytes(whole[: len(whole) // 2])  # being uploaded right now
    looping = ImageSetSource(str(image_dir), loop=True)
    looping.open()
    shown = [looping.read() for _ in range(3)]
    assert np.array_equal(shown[0], pattern(64, 48, 0)) and np.array_equal(shown[1], pattern(64, 48, 1))
    assert np.array_equal(shown[2], pattern(64, 48, 0))  # round two, without it
    (image_dir / "2.png").write_bytes(whole)  # the upload done, a while ago
    os.utime(image_dir / "2.png", (time.time() - 60, time.time() - 60))
    assert all(np.array_equal(looping.read(), pattern(64, 48, i)) for i in (1, 0, 1, 2))  # in round three


def test_video_file_loops_and_ends() -> None:
    v = VideoFileSource(str(DEMO_VIDEO), loop=False)
    v.open()
    assert v.nominal_fps == 15
    n = 0
    with pytest.raises(EndOfStream):
        while True:
            v.grab()
            n += 1
    assert n == 180
    looped = VideoFileSource(str(DEMO_VIDEO), loop=True)
    looped.open()
    first = looped.read()
    for _ in range(179):
        looped.grab()
    assert np.array_equal(looped.read(), first)
    with pytest.raises(SourceError, match="not found"):
        VideoFileSource("/nonexistent.avi").open()


def _views_of_the_fruit(n: int) -> list[np.ndarray]:
    """`n` different 640x480 views of a real photo (its middle, shifted a little more each time)."""
    photo = cv2.resize(cv2.imread(str(FRUIT)), (960, 720), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(photo[100 + 12 * i : 580 + 12 * i, 80 + 16 * i : 720 + 16 * i]) for i in range(n)]


def _video_file(path: Path, fourcc: str, frames: list[np.ndarray]) -> list[np.ndarray]:
    """`frames` written to `path` with the codec `fourcc`, and read back as FFmpeg decodes them whole."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 15.0, (640, 480))
    assert out.isOpened()
    for f in frames:
        out.write(f)
    out.release()
    decoded = _ffmpeg_frames(path)
    assert len(decoded) == len(frames)
    return decoded


def _ffmpeg_frames(path: Path) -> list[np.ndarray]:
    cap, decoded = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), []
    while (got := cap.read())[0]:
        decoded.append(got[1])
    return decoded


def _left_to_ffmpeg_at_the_second_frame(path: Path, whole: list[np.ndarray], why: str) -> None:
    """The file read asking for every frame at 1/2: the first comes whole (FFmpeg decoded it as it was
    grabbed), the second, the first read as a packet, is lost saying `why`, and every frame after it is
    FFmpeg's whole decode of that very frame."""
    src = VideoFileSource(str(path), loop=False)
    src.open()
    src.grab()
    assert src.retrieve_reduced(2)[1] is None
    src.grab()
    with pytest.raises(FrameError, match=why):
        src.retrieve_reduced(2)
    for i in range(2, len(whole)):
        src.grab()
        img, size = src.retrieve_reduced(2)
        assert size is None and np.array_equal(img, whole[i]), i
    src.close()


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_motion_jpeg_is_decoded_smaller_where_asked_and_other_codecs_whole(tmp_path: Path) -> None:
    """From the first frame asked for smaller on, a Motion JPEG file's packets are read undecoded and each
    decoded by libjpeg at the fraction asked for: the picture is the frame, shrunk (within a grey level
    or two of FFmpeg's whole decode shrunk by area), and the whole frame's size comes with it. Asked
    whole again, the frames are whole. A codec whose packets are no JPEGs is always decoded whole."""
    views = _views_of_the_fruit(8)
    whole = _video_file(tmp_path / "mjpeg.avi", "MJPG", views)
    src = VideoFileSource(str(tmp_path / "mjpeg.avi"), loop=False)
    src.open()
    src.grab()
    img, size = src.retrieve_reduced(2)  # FFmpeg decoded this one as it was grabbed
    assert img.shape == (480, 640, 3) and size is None and _differ(img, whole[0]) < 1
    for i, k in ((1, 2), (2, 4), (3, 8), (4, 1), (5, 2)):
        src.grab()
        img, size = src.retrieve_reduced(k)
        h, w = 480 // k, 640 // k
        assert img.shape == (h, w, 3) and size == ((480, 640) if k > 1 else None), (i, k)
        ref = cv2.resize(whole[i], (w, h), interpolation=cv2.INTER_AREA)
        assert _differ(img, ref) < 2.5, (i, k)
        # each is its own frame, not another one's
        assert _differ(img, cv2.resize(whole[i - 1], (w, h), interpolation=cv2.INTER_AREA)) > 2 * _differ(img, ref)
    src.grab()
    assert _differ(src.retrieve(), whole[6]) < 2.5
    src.close()

    other = _video_file(tmp_path / "mpeg4.mp4", "mp4v", views[:4])
    src = VideoFileSource(str(tmp_path / "mpeg4.mp4"), loop=False)
    src.open()
    for i in range(4):
        src.grab()
        img, size = src.retrieve_reduced(2)
        assert img.shape == (480, 640, 3) and size is None and np.array_equal(img, other[i])
    src.close()


def test_jpeg_packets_that_do_not_decode_alone_are_left_to_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a stream's packets turn out not to decode on their own (a camera's JPEG variant FFmpeg reads
    and libjpeg does not), the frame is lost, and the file is read on from where it was, FFmpeg decoding
    every frame whole: it does not go back to its start, and is not asked for packets again. (No such
    file could be made here: the decoder's refusal is the one thing stood in for.)"""
    import edge_agent.sources.opencv as opencv_source

    whole = _video_file(tmp_path / "mjpeg.avi", "MJPG", _views_of_the_fruit(6))

    def refuse(*_: object) -> None:
        raise ValueError("frame of 10 bytes could not be decoded")

    monkeypatch.setattr(opencv_source, "decode_reduced", refuse)
    _left_to_ffmpeg_at_the_second_frame(tmp_path / "mjpeg.avi", whole, "do not decode alone")


def _riff(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _interlaced_mjpeg_avi(frames: list[np.ndarray], fps: int = 15) -> bytes:
    """An AVI of Motion JPEG as capture cards write it: each packet a frame's two fields, its even and
    its odd lines, as two JPEGs one after the other; the header gives the whole frame's size."""
    h, w = frames[0].shape[:2]
    packets = [b"".join(cv2.imencode(".jpg", f[k::2])[1].tobytes() for k in (0, 1)) for f in frames]
    n, biggest = len(packets), max(len(p) for p in packets)
    avih = struct.pack("<14I", 1_000_000 // fps, 0, 0, 0x10, n, 0, 1, biggest, w, h, 0, 0, 0, 0)
    strh = b"vidsMJPG" + struct.pack("<IHHIIIIIIIII4h", 0, 0, 0, 0, 1, fps, 0, n, biggest, 0xFFFFFFFF, 0, 0, 0, 0, w, h)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    strl = _riff(b"LIST", b"strl" + _riff(b"strh", strh) + _riff(b"strf", strf))
    hdrl = _riff(b"LIST", b"hdrl" + _riff(b"avih", avih) + strl)
    movi, index, offset = b"", b"", 4
    for p in packets:
        index += b"00dc" + struct.pack("<III", 0x10, offset, len(p))
        movi += _riff(b"00dc", p)
        offset += len(_riff(b"00dc", p))
    return _riff(b"RIFF", b"AVI " + hdrl + _riff(b"LIST", b"movi" + movi) + _riff(b"idx1", index))


def test_interlaced_motion_jpeg_is_left_to_ffmpeg(tmp_path: Path) -> None:
    """A packet of two interlaced fields decodes on its own as its first field, half the frame's height:
    FFmpeg weaves the two into the frame. Its size gives it away; that frame is lost, and the file is read
    on from where it was with FFmpeg decoding every frame whole, never at half its height."""
    path = tmp_path / "fields.avi"
    path.write_bytes(_interlaced_mjpeg_avi(_views_of_the_fruit(6)))
    whole = _ffmpeg_frames(path)
    assert len(whole) == 6 and whole[0].shape == (480, 640, 3)
    _left_to_ffmpeg_at_the_second_frame(path, whole, "its JPEG packets are 640x240, its frames 640x480")


def test_an_http_camera_and_a_command_give_their_jpegs_decoded_smaller_where_asked(tmp_path: Path) -> None:
    """An HTTP camera's parts, and the JPEGs a command (rpicam-vid) writes, are decoded at the fraction
    asked for, the frame's own size beside them; whole where not asked."""
    cam = MjpegCamera()
    names = []
    for i, j in enumerate(cam.jpegs):
        (tmp_path / f"{i}.jpg").write_bytes(j)
        names.append(str(tmp_path / f"{i}.jpg"))
    (tmp_path / "emit.py").write_text(_EMITTER)
    command = f"exec:{sys.executable} {tmp_path / 'emit.py'} ok {' '.join(names)}"
    try:
        for uri in (cam.url, command):
            src = make_source(SourceConfig(uri=uri))
            src.open()
            for i, k in enumerate((2, 1, 4, 8)):
                src.grab()
                img, size = src.retrieve_reduced(k)
                full = cv2.imdecode(np.frombuffer(cam.jpegs[i], np.uint8), cv2.IMREAD_COLOR)
                h, w = 480 // k, 640 // k
                assert img.shape == (h, w, 3) and size == ((480, 640) if k > 1 else None), (uri, k)
                assert _differ(img, cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA)) < 2.5, (uri, k)
            src.close()
    finally:
        cam.close()


def test_missing_camera_and_gstreamer_are_clear_errors(tmp_path: Path) -> None:
    from edge_agent.sources.camera import present_cameras

    with pytest.raises(SourceError, match="not present"):
        make_source(SourceConfig(uri="/dev/video99")).open()
    # camera N is /dev/videoN: one that is not there is said so, with the nodes that are ("cannot open
    # camera:7" said neither, and a USB camera renumbered after a reboot is the usual cause)
    with pytest.raises(SourceError, match=r"camera 97: no /dev/video97 \((present: /dev/video|no /dev/video\* at all)"):
        make_source(SourceConfig(uri="97")).open()
    dev = tmp_path / "dev"
    (dev / "v4l" / "by-id").mkdir(parents=True)
    for name in ("video10", "video2", "video0", "v4l/by-id/usb-046d_C920-video-index0"):
        (dev / name).touch()
    assert present_cameras(str(dev)) == (f"present: {dev}/video0, {dev}/video2, {dev}/video10; by id: "
                                         "usb-046d_C920-video-index0")
    assert present_cameras(str(tmp_path)).startswith("no /dev/video* at all")
    # what no kind claims is a video file: `-` (a command's output piped in) and a URL with one slash were
    # "video file ... not found", the URL's password in clear
    with pytest.raises(SourceError, match=r"standard input is no camera to the agent; .*exec:COMMAND"):
        make_source(SourceConfig(uri="-")).open()
    with pytest.raises(SourceError) as err:
        make_source(SourceConfig(uri="rtsp:/admin:secret@cam/live")).open()
    assert str(err.value).endswith("two slashes after its scheme: rtsp://admin:**********@cam/live?"), err.value
    assert "secret" not in str(err.value)
    # udev's names for a camera, stable across reboots and replugging (a box with two USB cameras needs
    # them): they were read as video files, "not found", and a camera there would have been a file
    for name in ("/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_1A2B3C4D-video-index0",
                 "/dev/v4l/by-path/platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.2:1.0-video-index0"):
        assert source_kind(name) == "camera", name
        with pytest.raises(SourceError, match=f"camera device {name} not present"):
            make_source(SourceConfig(uri=name)).open()
    g = make_source(SourceConfig(uri="videotestsrc ! appsink"))
    try:
        g.open()
        g.close()
    except SourceError as err:
        assert "GStreamer" in str(err) or "cannot open" in str(err)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    shutil.copy(DEMO_VIDEO, tmp_path / "clip.avi")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/clip.avi"
    srv.shutdown()


def test_http_stream_from_a_real_server(http_server: str) -> None:
    s = make_source(SourceConfig(uri=http_server))
    assert s.kind == "http"  # a video file over HTTP: handed to FFmpeg
    s.open()
    assert s.read().shape == (480, 640, 3)
    s.close()
    dead = make_source(SourceConfig(uri=http_server.replace("clip.avi", "missing.avi"), read_timeout_s=2))
    with pytest.raises(SourceError):
        dead.open()


def test_a_video_declaring_frames_larger_than_a_picture_may_be_is_refused_before_one_decodes(
    http_server: str, tmp_path: Path
) -> None:
    """An MJPG AVI of 16,000 x 16,000 black frames is 1.5 MB a frame; `predict` decoded three of them
    into 2.6 GB of RSS (8,000 x 8,000: 774 MB), and a server can stream the same to the daemon. The
    size a container or stream declares is known once it opens, before any frame decodes: one over
    the pixels a picture may have is refused there, from a file and from a server alike, and
    `predict` names it and goes on to the next file."""
    w = h = 8200  # 67.2 million pixels: just over the limit
    big = tmp_path / "big.avi"
    out = cv2.VideoWriter(str(big), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
    out.write(np.zeros((h, w, 3), np.uint8))
    out.release()
    for uri in (str(big), http_server.replace("clip.avi", "big.avi")):
        src = make_source(SourceConfig(uri=uri, read_timeout_s=5))
        with pytest.raises(SourceError, match="declares frames of 8200x8200: more than"):
            src.open()
    r = run_cli("predict", str(SHORT), str(big), str(tmp_path / "clip.avi"), "--json")
    assert r.returncode == 1 and "big.avi declares frames of 8200x8200" in r.stderr, r.stderr
    assert "big.avi" not in r.stdout and '"file":"' + str(tmp_path / "clip.avi") in r.stdout, r.stdout


def _demo_jpegs(n: int = 10, width: int | None = None) -> list[bytes]:
    """The demo video's first `n` frames as JPEG, as a camera would send them (`width`: scaled to it)."""
    jpegs = []
    cap = cv2.VideoCapture(str(DEMO_VIDEO))
    for _ in range(n):
        ok, img = cap.read()
        assert ok
        if width is not None:
            img = cv2.resize(img, (width, img.shape[0] * width // img.shape[1]), interpolation=cv2.INTER_AREA)
        jpegs.append(cv2.imencode(".jpg", img)[1].tobytes())
    cap.release()
    return jpegs


def test_an_rtsp_camera_that_goes_away_and_comes_back() -> None:
    """The way most IP cameras serve video, against a real RTSP server (GStreamer's, RTP/JPEG over the
    TCP interleaving FFmpeg asks for): frames are read; with the server gone, capture says
    `reconnecting` and backs off; with it back, frames come again on their own."""
    from .conftest import free_port

    port = free_port()
    server = _rtsp_server(port)
    cfg = SourceConfig(uri=f"rtsp://127.0.0.1:{port}/live", read_timeout_s=3, reopen_min_s=0.2, reopen_max_s=1)
    # its RTP/JPEG packets, put back together by FFmpeg, are JPEGs the agent decodes smaller when asked
    src = make_source(cfg)
    src.open()
    sizes = []
    for k in (2, 2, 4):
        src.grab()
        img, whole = src.retrieve_reduced(k)
        sizes.append((img.shape, whole))
    src.close()
    assert sizes == [((480, 640, 3), None), ((240, 320, 3), (480, 640)), ((120, 160, 3), (480, 640))]
    capture, slot, stats, stop = run_capture(lambda: make_source(cfg), cfg)
    try:
        for _ in range(5):
            frame = slot.take(scaled(15))
            assert frame is not None and frame.image.shape == (480, 640, 3), stats.last_error
        server.kill()
        server.wait()
        wait_until(lambda: stats.state == "reconnecting" and capture.reopens >= 1, 20, what="the loss said")
        server = _rtsp_server(port)
        wait_until(lambda: slot.take(0.2) is not None and stats.state == "running", 30, what="frames again")
    finally:
        stop.set()
        capture.join(scaled(5))
        server.kill()
        server.wait()


class MjpegCamera:
    """A real HTTP server that serves MJPEG as multipart/x-mixed-replace, as IP cameras and ESP32-CAM
    boards do, with their quirks (parts without Content-Length, bare LF line ends, a boundary declared
    with its dashes, Basic authentication) and a misbehaving part to send as the `bad`-th frame of the
    first connection: "endless" (bytes at link speed and no boundary), "giant" (a JPEG declaring
    30,000 x 30,000 pixels), "trickle" (one byte at a time)."""

    def __init__(self, bad: str | None = None, at: int = 6, pause_s: float = 0.01, width: int | None = None):
        """pause_s: between two frames (0.01: about 90 frames a second); width: the frames scaled to it.
        Frame 5 has a length: it ends without frame 6."""
        self.jpegs, self.bad, self.at, self.connections = _demo_jpegs(width=width), bad, at, 0
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"admin:pa ss").decode():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="cam"')
                    self.end_headers()
                    return
                camera.connections += 1
                first = camera.connections == 1
                self.send_response(200)
                self.send_header("Content-Type", 'multipart/x-mixed-replace; boundary="--myboundary"')
                self.end_headers()
                try:
                    for i in itertools.count():
                        jpeg = camera.jpegs[i % len(camera.jpegs)]
                        if first and i == camera.at and camera.bad == "endless":
                            self.wfile.write(b"--myboundary\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8")
                            junk = bytes(1 << 20)
                            while True:
                                self.wfile.write(junk)
                        if first and i == camera.at and camera.bad == "giant":
                            jpeg = jpeg_declaring(jpeg, 30_000, 30_000)
                        head = b"--myboundary\r\nContent-Type: image/jpeg\r\n"
                        if i % 3 == 1:  # no length: the part ends at the next boundary
                            part = head + b"\r\n" + jpeg + b"\r\n"
                        elif i % 3 == 2:  # bare line feeds
                            part = head.replace(b"\r\n", b"\n") + b"Content-Length: %d\n\n" % len(jpeg) + jpeg + b"\n"
                        else:
                            part = head + b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n"
                        if first and i == camera.at and camera.bad == "trickle":
                            for byte in part:
                                self.wfile.write(bytes([byte]))
                                self.wfile.flush()
                                time.sleep(0.2)
                        self.wfile.write(part)
                        self.wfile.flush()
                        time.sleep(pause_s)
                except OSError:  # the reader went away
                    pass

        self.server = _serve(Handler)
        self.url = f"http://admin:pa%20ss@127.0.0.1:{self.server.server_address[1]}/video.mjpg"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    """A real HTTP server on a free port, serving on a thread of its own."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda *a: None  # type: ignore[method-assign]  # a client that hung up
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _reads_the_pictures(src: Source, jpegs: list[bytes], n: int) -> None:
    """Open `src` and read `n` frames: each must be the next of `jpegs` (in a cycle), decoded."""
    src.open()
    for i in range(n):
        want = cv2.imdecode(np.frombuffer(jpegs[i % len(jpegs)], np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(src.read(), want), f"frame {i}"
    src.close()


def test_an_mjpeg_camera_over_http_is_read_with_its_quirks() -> None:
    """Parts with and without Content-Length, bare line feeds, a boundary declared with its dashes, a
    password in the URL: every frame is the camera's picture. A wrong password is a clear error."""
    cam = MjpegCamera()
    try:
        src = make_source(SourceConfig(uri=cam.url))
        _reads_the_pictures(src, cam.jpegs, 12)
        assert "pa ss" not in src.describe() and "admin" not in src.describe()
        with pytest.raises(SourceError, match=r"cannot open .*the camera refused the user and password"):
            make_source(SourceConfig(uri=cam.url.replace("pa%20ss", "wrong"), read_timeout_s=2)).open()
    finally:
        cam.close()


@pytest.mark.parametrize("bad", ["endless", "giant", "trickle"])
def test_a_camera_part_that_never_ends_or_lies_costs_one_frame_or_a_reconnect(bad: str) -> None:
    """A part that never ends, sent at link speed: read through FFmpeg, it was buffered whole until the
    read timeout (the agent grew to 1.9 GB in 5 s on loopback). Now the part is cut at MAX_PART_BYTES and
    the camera reopened. A frame whose header declares gigapixels is skipped unread, and one whose bytes
    trickle in ends within the read timeout; the camera goes on after each."""
    import resource

    from edge_agent.sources.base import FrameError

    cam = MjpegCamera(bad)
    try:
        src = make_source(SourceConfig(uri=cam.url, read_timeout_s=2))
        src.open()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for _ in range(cam.at):
            src.read()
        t0 = time.monotonic()
        if bad == "giant":
            with pytest.raises(FrameError, match="declares 30000x30000"):
                src.read()
        else:
            with pytest.raises(SourceError, match="within"):
                src.read()
            assert time.monotonic() - t0 < scaled(4)
            src.open()  # as capture does
        assert src.read().shape == (480, 640, 3)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        assert grew < 100, f"peak RSS grew {grew:.0f} MB"
        src.close()
    finally:
        cam.close()


class StillCamera:
    """A real HTTP server with a camera's snapshot URL: each GET answers the next picture as one
    `image/jpeg`, framed in turn by Content-Length on a kept-alive connection, as chunks, and by
    closing the connection; `fail_after` GETs, a 404 page."""

    def __init__(self, fail_after: int | None = None):
        self.jpegs, self.requests, self.fail_after = _demo_jpegs(), 0, fail_after
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                i = camera.requests
                camera.requests += 1
                if camera.fail_after is not None and i >= camera.fail_after:
                    self.send_response(404)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", "9")
                    self.end_headers()
                    self.wfile.write(b"not found")
                    return
                jpeg = camera.jpegs[i % len(camera.jpegs)]
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                if i % 3 == 0:
                    self.send_header("Content-Length", str(len(jpeg)))
                    self.end_headers()
                    self.wfile.write(jpeg)
                elif i % 3 == 1:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for k in range(0, len(jpeg), 4096):
                        piece = jpeg[k : k + 4096]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(jpeg)
                    self.close_connection = True

        self.server = _serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/snapshot.jpg"

    close = MjpegCamera.close


def test_a_cameras_snapshot_url_is_polled_one_picture_per_frame() -> None:
    """A URL that answers one still image (a camera's snapshot URL, ESP32-CAM's /capture, Frigate's
    latest.jpg) went to FFmpeg, which read one picture and then failed: the camera was
    reopened with backoff, a frame every few seconds and a source error each time. Now it is polled,
    one request a frame, whatever the framing of each answer; paced by the fps cap, no picture is
    fetched to be thrown away; and an error page afterwards is a source error naming it."""
    cam = StillCamera()
    try:
        _reads_the_pictures(make_source(SourceConfig(uri=cam.url)), cam.jpegs, 7)
        assert cam.requests == 7

        cam.requests = 0
        capture, slot, stats, stop = run_capture(lambda: make_source(SourceConfig(uri=cam.url)), SourceConfig(fps=50))
        try:
            for _ in range(10):
                assert slot.take(scaled(5)) is not None, stats.last_error
        finally:
            stop.set()
            capture.join(scaled(5))
        assert capture.reopens == 0 and not stats.drops.get("fps_cap"), (capture.reopens, stats.drops)
        assert 10 <= cam.requests <= 12, cam.requests  # the ten taken, and the one waiting in the slot
    finally:
        cam.close()
    failing = StillCamera(fail_after=2)
    try:
        src = make_source(SourceConfig(uri=failing.url))
        src.open()
        src.read(), src.read()
        with pytest.raises(SourceError, match="answered 404 'text/html' for a still image"):
            src.read()
    finally:
        failing.close()


def test_an_https_camera_with_its_own_certificate(tmp_path: Path) -> None:
    """Most cameras that serve https use a certificate they signed themselves. Read through FFmpeg
    (which verifies nothing by default) such a camera played; read by the agent it was refused with
    nothing to do about it. Now the refusal says what to set, and the camera plays with its
    certificate (or CA) trusted, `source.tls_ca_file`, or with `source.tls_verify = false`.

    Either must be trusted alike on every Python: 3.11 refused a camera's own certificate as the
    trusted one where its CA signed it (3.13 takes it), and 3.13 refused a certificate whose CA signed
    it without naming its key, as cameras' CAs sign them (3.11 takes it)."""
    import ssl

    from .test_mqtt import _make_pki

    ca, cert, key, other_ca = _make_pki(tmp_path)
    cam = StillCamera()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    cam.server.socket = context.wrap_socket(cam.server.socket, server_side=True)
    url = cam.url.replace("http://", "https://")
    try:
        with pytest.raises(SourceError, match=r"certificate is not trusted .*set source.tls_ca_file to it or its CA"):
            make_source(SourceConfig(uri=url)).open()
        _reads_the_pictures(make_source(SourceConfig(uri=url, tls_ca_file=ca)), cam.jpegs, 3)
        cam.requests = 0
        _reads_the_pictures(make_source(SourceConfig(uri=url, tls_ca_file=cert)), cam.jpegs, 3)
        cam.requests = 0
        _reads_the_pictures(make_source(SourceConfig(uri=url, tls_verify=False)), cam.jpegs, 3)
        with pytest.raises(SourceError, match="not trusted"):
            make_source(SourceConfig(uri=url, tls_ca_file=other_ca)).open()
    finally:
        cam.close()
    (tmp_path / "camera").mkdir()
    own_ca, own_cert, own_key, _ = _make_pki(tmp_path / "camera", rfc5280=False)
    cam = StillCamera()
    own = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    own.load_cert_chain(own_cert, own_key)
    cam.server.socket = own.wrap_socket(cam.server.socket, server_side=True)
    try:
        for trusted in (own_ca, own_cert):
            cam.requests = 0
            _reads_the_pictures(make_source(SourceConfig(uri=cam.url.replace("http://", "https://"),
                                                         tls_ca_file=trusted)), cam.jpegs, 3)
    finally:
        cam.close()
    # what is not MJPEG (a recording, an HLS playlist) is handed to FFmpeg once the certificate passed:
    # the wheel's FFmpeg speaks TLS, and plays the file as it plays it from disk
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(DEMO_VIDEO.parent))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    files.socket = context.wrap_socket(files.socket, server_side=True)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        remote = make_source(SourceConfig(uri=f"https://127.0.0.1:{files.server_address[1]}/{DEMO_VIDEO.name}",
                                          tls_ca_file=ca))
        local = VideoFileSource(str(DEMO_VIDEO), loop=False)
        remote.open()
        local.open()
        try:
            assert all(np.array_equal(remote.read(), local.read()) for _ in range(5))
        finally:
            remote.close()
            local.close()
    finally:
        files.shutdown()
        files.server_close()


def _rtsp_server(port: int, *args: str) -> Any:
    """GStreamer's RTSP server (tests/rtsp_server.py) on `port`, once it serves."""
    import subprocess

    from .conftest import ROOT

    probe = ["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"]
    if subprocess.run(probe, capture_output=True).returncode:
        pytest.fail("GStreamer's RTSP server missing: scripts/test.sh installs python3-gi, gir1.2-gst-rtsp-server-1.0")
    p = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), str(port), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "serving"
    return p


def test_an_rtsps_camera_is_verified_as_an_https_one(tmp_path: Path) -> None:
    """FFmpeg speaks TLS to an rtsps:// camera and verifies no certificate, with no option to: the
    agent makes the TLS link itself, checked as an https camera's is, and FFmpeg reads through a relay
    on the loopback. Against GStreamer's RTSP server over TLS, asking for Digest as cameras do: an
    untrusted certificate is refused saying what to set; trusted (its CA), or with verification off,
    the stream plays and the password in the URL answers the camera's challenge; a wrong one is refused.
    A camera that shows another certificate to the connection FFmpeg makes than to the agent's check
    (someone in the path after the check) is refused too: FFmpeg never reads from a link unchecked."""
    import ssl

    from .conftest import free_port
    from .test_mqtt import _make_pki

    ca, cert, key, other_ca = _make_pki(tmp_path)
    port = free_port()
    server = _rtsp_server(port, "320x240", "--tls", str(cert), str(key), "--user", "cam:se.cret")
    url = f"rtsps://cam:se.cret@127.0.0.1:{port}/live"
    try:
        assert source_kind(url) == "rtsps"
        with pytest.raises(SourceError, match=r"certificate is not trusted .*set source.tls_ca_file to it or its CA"):
            make_source(SourceConfig(uri=url)).open()
        with pytest.raises(SourceError, match="not trusted"):
            make_source(SourceConfig(uri=url, tls_ca_file=other_ca)).open()
        for cfg in (SourceConfig(uri=url, tls_ca_file=ca), SourceConfig(uri=url, tls_verify=False)):
            src = make_source(cfg)
            src.open()
            try:
                shapes = {src.read().shape for _ in range(3)}
            finally:
                src.close()
            assert shapes == {(240, 320, 3)}
        with pytest.raises(SourceError, match="cannot open"):
            make_source(SourceConfig(uri=url.replace("se.cret", "wrong"), tls_ca_file=ca)).open()
    finally:
        server.kill()
        server.wait()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("rtsps-")], 5,
               what="the relays' threads gone with their sources")

    # the agent's check sees the trusted certificate; the next connection, FFmpeg's, another CA's
    (tmp_path / "other").mkdir()
    _, mallory_cert, mallory_key, _ = _make_pki(tmp_path / "other")
    honest, mallory = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    honest.load_cert_chain(cert, key)
    mallory.load_cert_chain(mallory_cert, mallory_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(scaled(10))
    heard: list[bytes] = []

    def serve() -> None:
        for context in (honest, mallory):
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(scaled(5))
                    heard.append(tls.recv(4096))  # the check sends nothing; FFmpeg would send its OPTIONS
            except (OSError, ssl.SSLError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        src = make_source(SourceConfig(uri=f"rtsps://127.0.0.1:{listener.getsockname()[1]}/live", tls_ca_file=ca))
        with pytest.raises(SourceError, match=r"certificate is not trusted"):
            src.open()
        t.join(scaled(10))
        assert heard == [b""], heard  # nothing reached the second: its certificate was refused first
    finally:
        listener.close()


class DrippingServer:
    """A server that answers each request one byte every 0.2 s, for good: the status line (`status`),
    the headers after a status line (`headers`), or, after `whole` answers given at once (a still
    image), the next answer's headers. Each byte comes well within any read timeout."""

    def __init__(self, mode: str, whole: int = 0, context: Any = None):
        self.mode, self.whole, self.context = mode, whole, context
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        jpeg = cv2.imencode(".jpg", pattern(64, 48, 1))[1].tobytes()
        try:
            if self.context is not None:
                c = self.context.wrap_socket(c, server_side=True)
            answered = 0
            while not self.stop.is_set():
                c.recv(4096)
                if answered < self.whole:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                              + jpeg)
                    answered += 1
                    continue
                drip = b"HTTP/1.1 200 OK\r\n" * 1000 if self.mode == "status" else b"X-Slow: " + b"a" * 100000
                if self.mode == "headers":
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n")
                for i in range(len(drip)):
                    if self.stop.wait(0.2):
                        return
                    c.sendall(drip[i : i + 1])
        except (OSError, ValueError):  # the client cut the connection, or it was closed under us
            pass
        finally:
            c.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_server_that_answers_a_byte_at_a_time_is_given_up_on_at_the_read_timeout(tmp_path: Path) -> None:
    """Each read waits at most `source.read_timeout_s`, but http.client reads a response's status line
    and headers a line at a time: a server (or a camera's hung web server) that sends a byte every
    0.2 s held the source's open for good, and each reader the capture watch gave up on stayed blocked
    there with its connection, one more at every reopening. The answer must now come whole within the
    read timeout: as the camera opens, over TLS too, and for each picture of a polled still camera."""
    import ssl

    from .test_mqtt import _make_pki

    def fails_within(fn: Any, seconds: float) -> str:
        """What `fn` raised, on a thread of its own: one still blocked after `seconds` fails the test."""
        raised: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as err:
                raised.append(err)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(seconds)
        assert not t.is_alive(), f"still waiting after {seconds:g} s"
        assert raised and isinstance(raised[0], SourceError), raised
        return str(raised[0])

    ca, cert, key, _ = _make_pki(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    for mode, context in (("status", None), ("headers", None), ("headers", tls)):
        server = DrippingServer(mode, context=context)
        scheme = "https" if context else "http"
        src = make_source(SourceConfig(uri=f"{scheme}://127.0.0.1:{server.port}/video", read_timeout_s=1,
                                       tls_ca_file=ca))
        try:
            why = fails_within(src.open, scaled(3))
            assert re.search(r"cannot open .*no answer within 1 s", why), (mode, scheme, why)
        finally:
            src.close()
            server.close()
    still = DrippingServer("headers", whole=1)
    src = make_source(SourceConfig(uri=f"http://127.0.0.1:{still.port}/snapshot.jpg", read_timeout_s=1))
    try:
        src.open()
        assert src.read().shape == (48, 64, 3)  # the first picture, given at once
        assert "no picture within 1 s" in fails_within(src.read, scaled(3))
    finally:
        src.close()
        still.close()


def test_a_camera_url_that_redirects_is_followed_and_its_password_stays_home() -> None:
    """A snapshot URL that points at the camera's script, or a camera behind a proxy, answers with a
    redirect; it went to FFmpeg, which gave a still one picture per opening. The redirect is now
    followed as the source opens, and the pictures polled where it led (one redirect per opening,
    not per picture). The URL's user and password go only to its own host: a server elsewhere that
    asks for them is not answered."""
    cam = StillCamera()
    elsewhere = DigestCamera()  # asks for a password; one redirected to it has none to give
    moved: list[str] = []
    target = cam.url

    class Moved(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            moved.append(self.headers.get("Authorization", ""))
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = _serve(Moved)
    url = f"http://admin:s3cret%20pw@127.0.0.1:{server.server_address[1]}/snap"
    try:
        _reads_the_pictures(make_source(SourceConfig(uri=url)), cam.jpegs, 5)
        assert len(moved) == 1 and cam.requests == 5, (moved, cam.requests)
        target = elsewhere.url.replace("admin:s3cret%20pw@", "").replace("127.0.0.1", "localhost")
        with pytest.raises(SourceError, match="the camera asks for a user and password"):
            make_source(SourceConfig(uri=url)).open()
        assert elsewhere.sent == [""] and elsewhere.requests == 0, elsewhere.sent  # asked once, not answered
        # where it cannot lead: each raised out of the source's open (ValueError, UnicodeEncodeError) as
        # a traceback, not a source error with the reason
        for target in ("http://admin:pw@127.0.0.1:99999/snap", "http://[::1/snap", "/sn\u00e4p"):  # noqa: B007 (Moved reads it)
            with pytest.raises(SourceError, match=r"redirected to a URL that cannot be followed \(.*/sn") as err:
                make_source(SourceConfig(uri=url)).open()
            assert "pw@" not in str(err.value)
    finally:
        server.shutdown()
        server.server_close()
        cam.close()
        elsewhere.close()


def test_digest_answers_rfc_7616s_examples() -> None:
    """The response of RFC 2617's example, and of RFC 7616's for MD5 and SHA-256."""
    from edge_agent.sources.httpauth import challenges, digest

    [old] = challenges(['Digest realm="testrealm@host.com", qop="auth,auth-int", '
                        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'])
    got = digest(old, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", 1, "0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in got and "nc=00000001" in got, got
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in got
    for algorithm, want in (("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
                            ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")):
        [ch] = challenges([f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
                           'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                           'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'])
        got = digest(ch, "Mufasa", "Circle of Life", "GET", "/dir/index.html", 1,
                     "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
        assert f'response="{want}"' in got, (algorithm, got)


class DigestCamera(StillCamera):
    """The still camera behind Digest authentication (MD5, qop=auth), as Hikvision's and Dahua's
    firmware asks for, checked here by its own arithmetic: its nonce goes stale after `uses` requests
    (a 401 with stale=true), and every Authorization header it is sent is kept."""

    def __init__(self, uses: int = 4):
        super().__init__()
        self.user, self.password, self.realm, self.uses = "admin", "s3cret pw", "IP Camera(C1234)", uses
        self.nonce, self.used, self.sent, self.challenges = "n0", 0, [], 0
        handler, camera = self.server.RequestHandlerClass, self

        def md5(x: str) -> str:
            import hashlib

            return hashlib.md5(x.encode()).hexdigest()

        class Guarded(handler):  # type: ignore[valid-type, misc]
            def do_GET(self) -> None:
                got = self.headers.get("Authorization", "")
                camera.sent.append(got)
                digest = got.startswith("Digest ")
                f = dict(re.findall(r'(\w+)="?([^",]*)"?', got.removeprefix("Digest "))) if digest else {}
                ha1 = md5(f"{camera.user}:{camera.realm}:{camera.password}")
                want = md5(f"{ha1}:{camera.nonce}:{f.get('nc')}:{f.get('cnonce')}:auth:{md5('GET:' + self.path)}")
                stale = f.get("nonce") not in (None, camera.nonce) or camera.used >= camera.uses
                if f.get("response") != want or f.get("uri") != self.path or stale:
                    if camera.used >= camera.uses:
                        camera.nonce, camera.used = f"n{int(camera.nonce[1:]) + 1}", 0
                    camera.challenges += 1
                    body = b"<html>401 Unauthorized</html>"
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", f'Digest qop="auth", realm="{camera.realm}", '
                                     f'nonce="{camera.nonce}", stale="{str(stale).upper()}"')
                    self.send_header("WWW-Authenticate", f'Basic realm="{camera.realm}"')
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                camera.used += 1
                super().do_GET()

        self.server.RequestHandlerClass = Guarded
        self.url = self.url.replace("http://", "http://admin:s3cret%20pw@")


def test_a_camera_that_asks_for_digest_authentication_is_answered() -> None:
    """Most IP cameras' firmware asks for Digest, which went to FFmpeg: a snapshot URL behind it gave a
    picture per opening, and the agent sent Basic (the password in clear text) to every camera first.
    Now nothing goes with the first request; the camera's Digest challenge is answered (chosen over
    the Basic it also offers), kept for the polls after (a picture costs one request, not two), and
    answered again when its nonce goes stale. A wrong password, or none, says so."""
    cam = DigestCamera(uses=4)
    try:
        _reads_the_pictures(make_source(SourceConfig(uri=cam.url)), cam.jpegs, 10)
        assert cam.requests == 10, cam.requests  # every picture, one request each
        assert cam.challenges == 3, cam.challenges  # the first request, then the nonce's staling twice
        assert cam.sent[0] == "" and all(h.startswith("Digest ") for h in cam.sent[1:]), cam.sent
        assert not any("s3cret" in h or h.startswith("Basic") for h in cam.sent)
        with pytest.raises(SourceError, match=r"cannot open .*401 Unauthorized: the camera refused the user and pass"):
            make_source(SourceConfig(uri=cam.url.replace("s3cret", "wrong"))).open()
        with pytest.raises(SourceError, match=r"cannot open .*401 Unauthorized: the camera asks for a user and pass"):
            make_source(SourceConfig(uri=cam.url.replace("admin:s3cret%20pw@", ""))).open()
    finally:
        cam.close()


def test_a_camera_whose_challenge_is_malformed_is_refused_with_the_reason() -> None:
    """A 401 whose challenge has a parameter without a value (`nonce`) or with an empty one (`qop=`)
    made the standard library's `parse_keqv_list` raise, and the source's open ended in a traceback
    ("capture error") instead of saying what the camera asked for. What can be read of it is read."""
    from edge_agent.sources import httpauth

    assert httpauth.challenges(['Digest realm="cam", nonce, qop=', "Basic realm=", "Digest ,,=x, =", ""]) == [
        httpauth.Challenge("digest", {"realm": "cam"}), httpauth.Challenge("basic", {}),
        httpauth.Challenge("digest", {}),
    ]

    class Malformed(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Digest realm="cam", nonce, qop=')
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Malformed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://admin:pw@127.0.0.1:{server.server_address[1]}/snapshot.jpg"
        with pytest.raises(SourceError, match=r"401 Unauthorized: the camera asks for digest, which the agent"):
            make_source(SourceConfig(uri=url)).open()
    finally:
        server.shutdown()
        server.server_close()


_EMITTER = """
import os, subprocess, sys, time
mode, frames = sys.argv[1], sys.argv[2:]
out = sys.stdout.buffer
if mode == "die":
    sys.stderr.write("[0:00:00.1] INFO Camera camera_manager.cpp:330 libcamera v0.3.0\\n")
    sys.stderr.write("ERROR: *** no cameras available ***\\n")
    sys.exit(3)
if mode == "stall":
    time.sleep(600)
child = subprocess.Popen(["sleep", "600"])
sys.stderr.write(f"child {child.pid}\\n")
sys.stderr.flush()
for i, name in enumerate(frames):
    jpeg = open(name, "rb").read()
    out.write(b"noise before a picture" if i % 4 == 3 else b"")
    out.write(jpeg)
    out.flush()
time.sleep(600)
"""


def _with_thumbnail(jpeg: bytes, thumb: bytes) -> bytes:
    """The JPEG with an APP2 segment holding another whole JPEG, as an EXIF thumbnail is held: its EOI
    is not the picture's end."""
    payload = b"THUMB\0" + thumb
    return jpeg[:2] + b"\xff\xe2" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_a_command_that_writes_jpegs_is_a_camera(tmp_path: Path) -> None:
    """`exec:COMMAND` (and `rpicam`, the Raspberry Pi camera modules through rpicam-vid, which have no
    V4L2 path OpenCV can read on Raspberry Pi OS Bookworm): each JPEG the command writes is a frame,
    noise between them skipped and a thumbnail inside one not taken for its end; GStreamer's
    gst-launch writing JPEG plays. A command that exits says why with its own last words, one that
    writes nothing fails within the read timeout, and closing the source stops what the command
    started too."""
    from edge_agent.sources.command import jpeg_end, rpicam_argv

    thumb = cv2.imencode(".jpg", np.full((8, 8, 3), 50, np.uint8))[1].tobytes()
    jpegs = [_with_thumbnail(j, thumb) if i % 3 == 1 else j for i, j in enumerate(_demo_jpegs())]
    names = []
    for i, j in enumerate(jpegs):
        assert jpeg_end(j + b"\xff\xd8 the next") == len(j)
        (tmp_path / f"{i}.jpg").write_bytes(j)
        names.append(str(tmp_path / f"{i}.jpg"))
    script = tmp_path / "emit.py"
    script.write_text(_EMITTER)
    src = make_source(SourceConfig(uri=f"exec:{sys.executable} {script} ok {' '.join(names)}", read_timeout_s=5))
    assert src.kind == "command" and src.describe() == f"command:{Path(sys.executable).name}"
    src.open()
    for i, j in enumerate(jpegs):
        assert np.array_equal(src.read(), cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)), f"frame {i}"
    child = int(next(line for line in list(src._stderr) if line.startswith("child")).split()[1])  # type: ignore[attr-defined]
    src.close()

    def gone() -> bool:  # or a zombie, waiting for whoever adopted it to reap it
        try:
            return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    assert wait_until(gone, timeout=5), "the command's child outlived the source"

    with pytest.raises(SourceError, match=r"exited with status 3 \(it said: .*no cameras available"):
        make_source(SourceConfig(uri=f"exec:{sys.executable} {script} die")).open()
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="no picture within 1 s"):
        make_source(SourceConfig(uri=f"exec:{sys.executable} {script} stall", read_timeout_s=1)).open()
    assert time.monotonic() - t0 < scaled(4)

    # a real tool's MJPEG: GStreamer's test pattern through its JPEG encoder, ten frames, then its end
    if shutil.which("gst-launch-1.0") is None:
        pytest.fail("gst-launch-1.0 missing: scripts/test.sh installs gstreamer1.0-tools")
    gst = make_source(SourceConfig(uri="exec:gst-launch-1.0 -q videotestsrc num-buffers=10 ! "
                                       "video/x-raw,width=320,height=240 ! jpegenc ! fdsink"))
    gst.open()
    assert [gst.read().shape for _ in range(10)] == [(240, 320, 3)] * 10
    with pytest.raises(SourceError, match=r"command:gst-launch-1\.0: exited with status 0"):
        gst.read()
    gst.close()

    with pytest.raises(SourceError, match="cannot be split into words: No closing quotation"):
        make_source(SourceConfig(uri="exec:ffmpeg -i 'rtsp://cam/live -f mjpeg -"))

    argv = rpicam_argv("rpicam:1", SourceConfig(uri="rpicam:1", width=1280, height=720, fps=15))
    assert argv[0] in ("rpicam-vid", "libcamera-vid") and argv[1:] == [
        "--camera", "1", "-t", "0", "--nopreview", "--codec", "mjpeg", "--flush", "-o", "-",
        "--width", "1280", "--height", "720", "--framerate", "15"]
    if shutil.which("rpicam-vid") is None and shutil.which("libcamera-vid") is None:
        with pytest.raises(SourceError, match=r"rpicam-vid not found \(Raspberry Pi OS: apt install rpicam-apps\)"):
            make_source(SourceConfig(uri="rpicam")).open()


def run_capture(factory, cfg: SourceConfig) -> tuple[Capture, LatestSlot[Frame], StageStats, threading.Event]:  # type: ignore[no-untyped-def]
    slot: LatestSlot[Frame] = LatestSlot()
    stats = StageStats("capture")
    stop = threading.Event()
    cap = Capture(factory, cfg, slot, stats, stop)
    cap.start()
    return cap, slot, stats, stop


def test_latest_frame_wins_with_a_slow_consumer() -> None:
    cfg = SourceConfig(uri="synthetic", fps=None, realtime=True)
    cap, slot, stats, stop = run_capture(lambda: SyntheticSource("synthetic", 320, 240, fps=100.0), cfg)
    try:
        taken = []
        for _ in range(5):
            f = slot.take(2.0)
            assert f is not None
            taken.append(f)
            age = time.monotonic() - f.mono
            assert age < 0.05, f"stale frame handed out ({age * 1e3:.0f} ms old)"
            stop.wait(0.1)  # a consumer 10x slower than the source
        wait_until(lambda: sum(stats.drops.values()) > 20, 5, what="drops to be counted")
        assert set(stats.drops) <= {"late", "replaced"}
        assert taken[-1].index - taken[0].index > 20  # jumps forward, no backlog
    finally:
        stop.set()
        cap.join(2)


def test_what_the_consumer_counts_for_a_taken_item_is_counted_before_the_slot_shows_empty() -> None:
    """A consumer-paced reader reads its next frame once the slot is empty, and may run that one to
    completion on its own thread; the inference thread counts the frame it took as in flight through
    `take`'s `on_take`, so that the reader, waiting for the slot to empty, cannot go on before that
    count is made (an earlier frame once published after a later one this way, under load)."""
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    emptied = threading.Event()
    producer = threading.Thread(target=lambda: slot.wait_empty(10) and emptied.set())
    producer.start()
    counting, counted = threading.Event(), threading.Event()

    def on_take() -> None:
        counting.set()
        counted.wait(10)  # the consumer is slow to count: the producer must still wait

    consumer = threading.Thread(target=lambda: slot.take(10, on_take=on_take))
    consumer.start()
    assert counting.wait(10)
    assert not emptied.wait(0.3)  # not before the count is made
    counted.set()
    assert emptied.wait(10)
    producer.join(10)
    consumer.join(10)


def test_consumer_paced_file_delivers_every_frame() -> None:
    cfg = SourceConfig(uri=str(DEMO_VIDEO), realtime=False, loop=False)
    cap, slot, stats, stop = run_capture(lambda: VideoFileSource(str(DEMO_VIDEO), loop=False), cfg)
    try:
        idx, stamps = [], []
        while not (cap.finished.is_set() and not slot.full):
            f = slot.take(0.5)
            if f is not None:
                idx.append(f.index)
                stamps.append(f.ts)
        assert idx == list(range(1, 181)) and not stats.drops
        # stamped by the file's own clock (15 fps), not by how fast they were taken: a tracker's and
        # an event's times follow the recording
        assert np.allclose(np.diff(stamps), 1 / 15, rtol=0, atol=1e-6), np.diff(stamps)[:10]
    finally:
        stop.set()
        cap.join(2)


def test_a_file_played_in_real_time_under_a_lower_fps_cap_keeps_its_own_rate() -> None:
    """A 15 fps file capped at 5 plays as a 15 fps camera capped at 5 does: two frames in three are
    grabbed and never decoded, instead of every frame played at 5 a second, in slow motion."""
    cfg = SourceConfig(uri=str(DEMO_VIDEO), realtime=True, loop=False, fps=5)
    cap, slot, stats, stop = run_capture(lambda: VideoFileSource(str(DEMO_VIDEO), loop=False), cfg)
    try:
        frames: list[Frame] = []
        while len(frames) < 8:
            f = slot.take(scaled(5.0))
            assert f is not None, "no frame"
            frames.append(f)
        steps = np.round(np.diff([f.ts for f in frames]) * 15).astype(int)  # file frames between two taken
        assert np.median(steps) == 3 and steps.min() >= 2, steps
        # every file frame between two taken was grabbed and not decoded (late, where the reader fell behind)
        assert stats.drops["fps_cap"] + stats.drops["late"] >= int((steps - 1).sum()), (steps, stats.drops)
    finally:
        stop.set()
        cap.join(2)


class CountingLive(SyntheticSource):
    """A live source on its own 200 fps clock, counting decodes (no camera here to do it)."""

    live = True

    def __init__(self) -> None:
        super().__init__("synthetic", 64, 48, fps=200.0)
        self.decoded = 0

    def grab(self) -> None:
        time.sleep(0.005)  # the camera's frame interval
        super().grab()

    def retrieve(self) -> np.ndarray:
        self.decoded += 1
        return super().retrieve()


def test_fps_cap_drops_without_decoding() -> None:
    src = CountingLive()
    cfg = SourceConfig(uri="synthetic", fps=20)
    cap, slot, stats, stop = run_capture(lambda: src, cfg)
    try:
        t0 = time.monotonic()
        got = 0
        while time.monotonic() - t0 < 1.5:
            if slot.take(0.2) is not None:
                got += 1
        assert 20 <= got <= 36  # 20 fps for 1.5 s, plus the first frame
        assert stats.drops["fps_cap"] > 100
        assert src.decoded == stats.count  # dropped frames were never decoded
    finally:
        stop.set()
        cap.join(2)


def test_source_that_disappears_is_reopened_with_backoff(image_dir: Path) -> None:
    cfg = SourceConfig(uri=str(image_dir), fps=50, reopen_min_s=0.05, reopen_max_s=0.2)
    cap, slot, stats, stop = run_capture(lambda: ImageSetSource(str(image_dir), loop=True), cfg)
    try:
        assert slot.take(2) is not None
        hidden = image_dir.with_name("hidden")
        image_dir.rename(hidden)
        wait_until(lambda: stats.state == "reconnecting", 3, what="reconnecting state")
        reopens = cap.reopens
        wait_until(lambda: cap.reopens >= reopens + 2, 3, what="retries")
        hidden.rename(image_dir)
        wait_until(lambda: stats.state == "running", 3, what="capture to resume")
        before = stats.count
        wait_until(lambda: stats.count > before + 5, 3, what="frames after recovery")
        assert cap.reopens < 40  # backoff, not a busy loop
    finally:
        stop.set()
        cap.join(2)


class BlockingSource(SyntheticSource):
    """A read that never returns, as a dead network camera's can (no such device here)."""

    def __init__(self, release: threading.Event):
        super().__init__("synthetic", 64, 48, fps=100.0)
        self.release = release

    def grab(self) -> None:
        self.release.wait()
        raise SourceError("released")


def test_blocked_read_is_abandoned_for_a_fresh_reader() -> None:
    release = threading.Event()
    made: list[Source] = []

    def factory() -> Source:
        s: Source = BlockingSource(release) if not made else SyntheticSource("synthetic", 64, 48, fps=100.0)
        made.append(s)
        return s

    cfg = SourceConfig(uri="synthetic", read_timeout_s=0.3)
    cap, slot, stats, stop = run_capture(factory, cfg)
    try:
        wait_until(lambda: cap.stalls >= 1, 3, what="the stall to be detected")
        assert slot.take(3) is not None
        wait_until(lambda: stats.state == "running", 2, what="running state")
        assert "blocked" in (stats.last_error or "")
    finally:
        release.set()
        stop.set()
        cap.join(2)


def test_a_source_failing_at_its_own_read_timeout_says_why_before_the_watch_abandons_it() -> None:
    """A source that keeps `source.read_timeout_s` itself (a command's first picture, an HTTP camera's
    part) fails at it with its reason (the command's last words). The watch that abandons blocked reads
    checked at the same timeout, and won that race now and then: the reason was lost for "read blocked"
    and the command started again with no backoff. It now waits a moment longer; here a source says
    why a few watch intervals past the timeout."""

    class LateToSay(SyntheticSource):
        def open(self) -> None:
            time.sleep(0.8)  # 0.5 s past the timeout, two watch intervals
            raise SourceError("its own reason")

    cfg = SourceConfig(uri="synthetic", read_timeout_s=0.3, reopen_min_s=5.0)
    cap, _, stats, stop = run_capture(lambda: LateToSay("synthetic", 64, 48), cfg)
    try:
        wait_until(lambda: "its own reason" in (stats.last_error or ""), 5, what="the source's own reason")
        assert cap.stalls == 0 and cap.reopens == 1 and stats.state == "reconnecting"
    finally:
        stop.set()
        cap.join(2)


def _take_all(cap: Capture, slot: LatestSlot[Frame]) -> list[Frame]:
    """Every frame of a finite, consumer-paced source, taken as it comes, until it has finished."""
    out = []
    deadline = time.monotonic() + 30
    while not (cap.finished.is_set() and not slot.full):
        assert time.monotonic() < deadline, f"not finished: {len(out)} frames, state {cap.stats.state}"
        f = slot.take(0.5)
        if f is not None:
            out.append(f)
    return out


def _shade(value: int) -> np.ndarray:
    return np.full((48, 64, 3), value, np.uint8)


def test_an_unreadable_image_in_a_set_is_skipped_and_counted(tmp_path: Path) -> None:
    """A half-copied file or one that is no image in the middle of a set: the images after it are still
    read, once each and in order (reopening the set would start it again from its first image)."""
    for k, value in enumerate((40, 80, 120, 160)):
        cv2.imwrite(str(tmp_path / f"{k}.png"), _shade(value))
    (tmp_path / "1.png").write_bytes((tmp_path / "1.png").read_bytes()[:20])  # cut short
    (tmp_path / "2b.jpg").write_text("not an image")
    cfg = SourceConfig(uri=str(tmp_path), realtime=False, loop=False)
    cap, slot, stats, stop = run_capture(lambda: ImageSetSource(str(tmp_path), loop=False), cfg)
    try:
        frames = _take_all(cap, slot)
        assert [int(f.image.mean()) for f in frames] == [40, 120, 160]
        assert stats.drops["undecodable"] == 2 and cap.reopens == 0 and stats.state == "finished"
        assert stats.last_error == f"cannot decode image {tmp_path / '2b.jpg'}"
    finally:
        stop.set()
        cap.join(2)


def test_a_set_where_no_image_decodes_fails_with_backoff(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"\xff\xd8 not really")
    cfg = SourceConfig(uri=str(tmp_path), reopen_min_s=0.05, reopen_max_s=0.2)
    cap, slot, stats, stop = run_capture(lambda: ImageSetSource(str(tmp_path), loop=True), cfg)
    try:
        wait_until(lambda: cap.reopens >= 3, 5, what="reopens")
        assert stats.last_error == f"no image in {tmp_path} can be decoded"
        assert stats.drops["undecodable"] <= 2 * cap.reopens + 2  # backoff between passes, not a busy loop
        assert not slot.full
    finally:
        stop.set()
        cap.join(2)


def _clip_with_a_corrupt_frame(path: Path) -> Path:
    """30 frames of MJPG, frame k of shade 4 + 8k, the 16th's JPEG wiped."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (64, 48))
    for k in range(30):
        w.write(_shade(4 + 8 * k))
    w.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) == 30
    data[starts[15] : starts[15] + 200] = bytes(200)  # frame 16's JPEG header wiped
    path.write_bytes(bytes(data))
    return path


def test_a_replayed_file_is_decoded_past_a_corrupt_frame(tmp_path: Path) -> None:
    src = ReplaySource("replay:clip", str(_clip_with_a_corrupt_frame(tmp_path / "clip.avi")), max_frames=40)
    src.open()
    shades = [round((int(src.read().mean()) - 4) / 8) for _ in range(29)]
    assert shades == [k for k in range(30) if k != 15]
    assert round((int(src.read().mean()) - 4) / 8) == 0  # then round again


@pytest.mark.parametrize("loop", [False, True])
def test_a_video_file_with_a_corrupt_frame_plays_on_past_it(tmp_path: Path, loop: bool) -> None:
    """FFmpeg fails to grab a frame it cannot decode as it does at the end of the file: the frames after
    it are played, not the file's start again (looping) nor its end (not looping)."""
    path = _clip_with_a_corrupt_frame(tmp_path / "clip.avi")
    cfg = SourceConfig(uri=str(path), realtime=False, loop=loop)
    cap, slot, stats, stop = run_capture(lambda: VideoFileSource(str(path), loop=loop), cfg)
    try:
        if loop:
            shades = []
            while len(shades) < 40:
                f = slot.take(2.0)
                assert f is not None
                shades.append(round((int(f.image.mean()) - 4) / 8))
            want = [k for k in range(30) if k != 15]
            assert shades == (want + want)[:40]
        else:
            frames = _take_all(cap, slot)
            assert [round((int(f.image.mean()) - 4) / 8) for f in frames] == [k for k in range(30) if k != 15]
            assert stats.state == "finished"
        # once per pass over the file: the looping reader may be into its second pass by now
        assert stats.drops["undecodable"] == 1 if not loop else stats.drops["undecodable"] in (1, 2)
        assert cap.reopens == 0
    finally:
        stop.set()
        cap.join(2)


@pytest.mark.parametrize(("text", "shown"), [
    ("rtsp://admin:s3cr%40t@cam.lan:554/live", "rtsp://admin:**********@cam.lan:554/live"),
    ("http://a:p@ss@cam/x.mjpg", "http://a:**********@cam/x.mjpg"),  # an unescaped @: the host is after the last
    ("https://token@cam/snap.jpg", "https://**********@cam/snap.jpg"),  # a user alone: a camera's token
    ("rtspsrc location=rtsp://u:p@h/s ! decodebin", "rtspsrc location=rtsp://u:**********@h/s ! decodebin"),
    ("exec:ffmpeg -i rtsp://u:p@h/s -f mjpeg - ", "exec:ffmpeg -i rtsp://u:**********@h/s -f mjpeg - "),
    ("rtsp://cam.lan/live/a@b", "rtsp://cam.lan/live/a@b"),  # an @ in the path is no password
    ("/dev/video0", "/dev/video0"),
])
def test_the_passwords_of_urls_are_masked_wherever_they_are_shown(text: str, shown: str) -> None:
    from edge_agent.redact import hide_credentials
    from edge_agent.sources.gstreamer import GStreamerSource

    assert hide_credentials(text) == shown
    if text.startswith("rtspsrc"):
        assert GStreamerSource(text).describe() == f"gstreamer:{shown.split(' !')[0]} ! ..."


_PROGRESS = """
import sys
jpeg = open(sys.argv[1], "rb").read()
for i in range(int(sys.argv[2])):
    sys.stderr.write(f"frame={i:6d} fps= 15 q=5.0 size=   {i * 40}kB time=00:00:{i % 60:02d}.00 speed=1x\\r")
    if i % 1000 == 0:
        sys.stdout.buffer.write(jpeg)
        sys.stdout.flush()
sys.stderr.write("rtsp://cam.lan/live: Connection timed out\\n")
sys.exit(1)
"""


def test_a_command_that_writes_its_progress_with_carriage_returns_is_held_line_by_line(tmp_path: Path) -> None:
    """FFmpeg, run without `-nostats` (as `exec:ffmpeg -i rtsp://... -f mjpeg -` is), writes its progress
    for as long as it runs as one line rewritten with carriage returns. Read by lines, that was one line
    growing for months: 400,000 updates held 30 MB here, and the error named the first of them. Each
    update now ends a line, no more of one is held than is kept, and the error says what it said last."""
    import subprocess

    from .conftest import ROOT

    jpeg = tmp_path / "f.jpg"
    jpeg.write_bytes(_demo_jpegs()[0])
    script = tmp_path / "progress.py"
    script.write_text(_PROGRESS)
    src = make_source(SourceConfig(uri=f"exec:{sys.executable} {script} {jpeg} 3000", read_timeout_s=10))
    src.open()
    with pytest.raises(SourceError) as err:
        for _ in range(10):
            src.read()
    said = str(err.value)
    assert "(it said: frame=  2998 " in said and "frame=  2999 " in said and said.endswith("Connection timed out)")
    assert "\r" not in said
    src.close()
    # the memory it takes, in a process of its own: 400,000 updates, 33 MB with no line feed in them
    probe = ("import resource, sys\nfrom edge_agent.config import SourceConfig\n"
             "from edge_agent.sources import make_source\n"
             f"s = make_source(SourceConfig(uri='exec:{sys.executable} {script} {jpeg} 400000', read_timeout_s=60))\n"
             "s.open(); s.read(); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "try:\n    while True: s.read()\nexcept Exception as err: print(err, file=sys.stderr)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    grew_kb = int(r.stdout.strip().splitlines()[-1])
    assert "Connection timed out" in r.stderr, r.stderr
    assert grew_kb < 8_000, f"peak RSS grew {grew_kb} kB while the command wrote its progress"


def test_what_a_command_says_of_a_cameras_url_is_quoted_without_its_password() -> None:
    """FFmpeg names the URL it failed on, password and all (`rtsp://admin:pw@cam/live: Connection refused`);
    the command's last words are quoted in the error that is logged and put in health."""
    said = "rtsp://admin:hunter2@cam.lan/live: Connection refused"
    cmd = f"{sys.executable} -c \"import sys; print('{said}', file=sys.stderr); sys.exit(1)\""
    with pytest.raises(SourceError) as err:
        make_source(SourceConfig(uri=f"exec:{cmd}")).open()
    assert "(it said: rtsp://admin:**********@cam.lan/live: Connection refused)" in str(err.value), err.value
    assert "hunter2" not in str(err.value)


def test_a_camera_that_hangs_up_after_each_frame_is_logged_once_a_minute_and_counted_each_time() -> None:
    """A camera that drops every connection after a frame (one at its connection limit, a flaky Wi-Fi
    bridge) is reopened every `source.reopen_min_s`, since a frame came: that keeps what it sends. Each
    reopen logged two lines, 170,000 a day for months; the same failure is now logged at most once a
    minute, with how many the log left out, and health still counts every one."""
    import json

    from .conftest import SHORT, run_cli

    jpeg = _demo_jpegs()[0]
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            served.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=f")
            self.end_headers()
            self.wfile.write(b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg) + jpeg
                             + b"\r\n")
            self.wfile.flush()  # and hang up

    server = _serve(Handler)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/video.mjpg"
        r = run_cli("run", "--seconds", "6", "--device-id", "flap", "--sink", "stdout", "--source", url,
                    "--model", str(SHORT), "--set", "source.reopen_min_s=0.05", "--set", "health.interval_s=1")
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0, r.stderr[-2000:]
    healths = [json.loads(line.split(" ", 1)[1]) for line in r.stdout.splitlines()
               if line.startswith("edge/flap/health ")]
    reopens = healths[-1]["source"]["reopens"]
    assert reopens >= 10 and len(served) >= 10, (reopens, len(served))
    failed = [line for line in r.stderr.splitlines() if "source failed" in line]
    opened = [line for line in r.stderr.splitlines() if "source open:" in line]
    # the first failure, and the opens before and after it
    assert len(failed) == 1 and len(opened) == 2, "\n".join(failed + opened)


def test_a_source_that_recovers_after_failures_left_out_of_the_log_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """The log leaves out a failure repeated within a minute. A camera rebooting fails the same way for
    minutes and then opens: that open is logged, with how many failures were left out, and so is the
    next failure. A camera hanging up after each frame logs one open after each failure logged; an open
    after no failure (a source changed on reload, a reader started again after a stall) is always logged."""
    import logging

    from edge_agent.stats import FailureLog

    log = logging.getLogger("test.failures")
    fl = FailureLog(log, every_s=60.0)
    with caplog.at_level(logging.INFO, logger="test.failures"):
        fl.opened("source open", "cam")
        for _ in range(40):  # rebooting: refused again and again
            fl.failed("source failed", "cam: connection refused", 1.0)
        fl.opened("source open", "cam")
        fl.failed("source failed", "cam: the server closed the stream", 0.5)  # a new failure: said
        for _ in range(30):  # then hanging up after each frame
            fl.opened("source open", "cam")
            fl.failed("source failed", "cam: the server closed the stream", 0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "source open: cam",
        "source failed: cam: connection refused; retrying in 1.0 s",
        "source open: cam (after 39 failures not logged)",
        "source failed: cam: the server closed the stream; retrying in 0.5 s",
        "source open: cam",
    ], lines
    caplog.clear()
    quiet = FailureLog(log, every_s=60.0)  # no failure between: each open is said (a source changed on reload)
    with caplog.at_level(logging.INFO, logger="test.failures"):
        quiet.opened("source open", "cam")
        quiet.opened("source open", "porch")
    assert [r.getMessage() for r in caplog.records] == ["source open: cam", "source open: porch"]
