"""The size a picture declares, read before decoding: against OpenCV's decoder, and the places that read
pictures from elsewhere (a folder cameras upload to, `predict`) refusing gigapixel headers unread."""

from __future__ import annotations

import resource
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.imageheader import MAX_PIXELS, declared_size, decode_reduced, jpeg_size, png_size, refuse_oversized

from .conftest import ROOT, SHORT, jpeg_declaring, run_cli


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 400), h=st.integers(1, 400), grey=st.booleans(), progressive=st.booleans(),
       quality=st.integers(5, 100), seed=st.integers(0, 2**16))
def test_the_size_read_from_a_jpeg_header_is_the_size_it_decodes_to(
    w: int, h: int, grey: bool, progressive: bool, quality: int, seed: int
) -> None:
    img = np.random.default_rng(seed).integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    data = cv2.imencode(".jpg", img, params)[1].tobytes()
    assert jpeg_size(data) == (w, h) == declared_size(data)
    # markers before the frame header (an application segment, fill bytes) are stepped over
    app = b"\xff\xe1" + (2 + 300).to_bytes(2, "big") + bytes(300)
    assert jpeg_size(data[:2] + b"\xff\xff" + app + data[2:]) == (w, h)
    assert jpeg_size(data[:2]) is None and jpeg_size(b"\x89PNG\r\n\x1a\n" + data) is None


@settings(max_examples=30, deadline=None)
@given(w=st.integers(1, 300), h=st.integers(1, 300), alpha=st.booleans(), deep=st.booleans())
def test_the_size_read_from_a_png_header_is_the_size_it_decodes_to(w: int, h: int, alpha: bool, deep: bool) -> None:
    img = np.zeros((h, w, 4 if alpha else 3), np.uint16 if deep else np.uint8)
    data = cv2.imencode(".png", img)[1].tobytes()
    assert png_size(data) == (w, h) == declared_size(data)
    assert png_size(data[:20]) is None and jpeg_size(data) is None


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 400), h=st.integers(1, 400), grey=st.booleans(), progressive=st.booleans(),
       reduce=st.sampled_from([1, 2, 4, 8]))
def test_a_jpeg_decoded_smaller_comes_out_at_its_fraction_with_its_whole_size(
    w: int, h: int, grey: bool, progressive: bool, reduce: int
) -> None:
    """Whatever its size (odd ones round up, as libjpeg's scaled decode does), colours and coding: the
    picture at 1/`reduce` of each side, and beside it the whole picture's (height, width)."""
    ramp = np.add.outer(np.arange(h) * 200 // max(h, 1), np.arange(w) * 50 // max(w, 1)).astype(np.uint8)
    img = ramp if grey else np.dstack([ramp, ramp[::-1], 255 - ramp])
    data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])[1].tobytes()
    small, whole = decode_reduced(data, "frame", reduce)
    if reduce == 1:
        assert small.shape == (h, w, 3) and whole is None
    else:
        assert small.shape == (-(-h // reduce), -(-w // reduce), 3) and whole == (h, w)


def test_a_header_declaring_gigapixels_is_refused_decoded_smaller_too() -> None:
    jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    with pytest.raises(ValueError, match="declares 30000x30000"):
        decode_reduced(jpeg_declaring(jpeg, 30_000, 30_000), "frame", 4)
    png = cv2.imencode(".png", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    assert decode_reduced(png, "frame", 2)[1] is None  # not a JPEG: decoded whole


def test_a_header_declaring_gigapixels_is_refused_and_a_camera_frame_is_not() -> None:
    jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    refuse_oversized(jpeg, "a frame")
    refuse_oversized(jpeg_declaring(jpeg, 8192, 8192), "a big frame")  # 67 million: the most let through
    with pytest.raises(ValueError, match="declares 30000x30000"):
        refuse_oversized(jpeg_declaring(jpeg, 30_000, 30_000), "x")
    with pytest.raises(ValueError, match="or none"):
        refuse_oversized(jpeg_declaring(jpeg, 64, 0), "x")
    assert 8192 * 8192 == MAX_PIXELS


def test_a_frame_header_behind_large_profile_segments_is_still_found(tmp_path: Path) -> None:
    """A camera's JPEG with big ICC profile segments (three of 60 kB here) puts its frame header past
    the first 64 KiB that is read at first: the rest of the first megabyte is read for it."""
    from edge_agent.imageheader import refuse_oversized_file

    jpeg = jpeg_declaring(cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes(), 30_000, 30_000)
    icc = b"\xff\xe2" + (2 + 60_000).to_bytes(2, "big") + bytes(60_000)
    path = tmp_path / "profiled.jpg"
    path.write_bytes(jpeg[:2] + icc * 3 + jpeg[2:])
    with pytest.raises(ValueError, match="declares 30000x30000"):
        refuse_oversized_file(str(path))


def test_predict_refuses_a_picture_declaring_gigapixels_without_decoding_it(tmp_path: Path) -> None:
    """`predict` on a crafted JPEG: an error naming the file and what it declares, exit 1, and a good
    picture beside it still predicted."""
    jpeg = cv2.imencode(".jpg", np.full((96, 128, 3), 128, np.uint8))[1].tobytes()
    (tmp_path / "bomb.jpg").write_bytes(jpeg_declaring(jpeg, 30_000, 30_000))
    (tmp_path / "fine.jpg").write_bytes(jpeg)
    r = run_cli("predict", str(SHORT), str(tmp_path / "bomb.jpg"), str(tmp_path / "fine.jpg"), "--json")
    assert r.returncode == 1 and "bomb.jpg" in r.stderr and "declares 30000x30000" in r.stderr, r.stderr
    assert "fine.jpg" in r.stdout


def test_an_image_folder_skips_a_picture_declaring_gigapixels_unread(tmp_path: Path) -> None:
    """A folder cameras upload to gets a crafted JPEG: it is skipped and counted like any unreadable
    file (not decoded into gigabytes the board has not got), and the pictures beside it play."""
    from edge_agent.config import SourceConfig
    from edge_agent.sources import make_source
    from edge_agent.sources.base import FrameError

    jpeg = cv2.imencode(".jpg", np.full((96, 128, 3), 128, np.uint8))[1].tobytes()
    (tmp_path / "a.jpg").write_bytes(jpeg)
    (tmp_path / "b.jpg").write_bytes(jpeg_declaring(jpeg, 30_000, 30_000))
    (tmp_path / "c.png").write_bytes(cv2.imencode(".png", np.zeros((96, 128, 3), np.uint8))[1].tobytes())
    src = make_source(SourceConfig(uri=str(tmp_path), loop=False))
    src.open()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got: list[object] = []
    for _ in range(3):
        src.grab()
        try:
            got.append(src.retrieve().shape)  # type: ignore[attr-defined]
        except FrameError as err:
            got.append(str(err))
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert got[0] == (96, 128, 3) and got[2] == (96, 128, 3), got
    assert "b.jpg" in str(got[1]) and "declares 30000x30000" in str(got[1]), got
    assert grew_mb < 200, grew_mb


def test_a_webp_or_tiff_declaring_more_than_the_limit_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """The headers read here are JPEG's and PNG's. A lossless WebP of 10 KB declaring 16,000 x 16,000, and
    a deflated TIFF of 2 MB declaring 20,000 x 20,000, decoded to 1.6 and 2.5 GB in `predict` (measured).
    OpenCV's own check of the same limit, which the package sets as it is imported, refuses them before
    allocating: `predict` names each and what it declares, exits 1, and predicts a WebP of camera size
    beside them."""
    big = np.zeros((9000, 9000, 3), np.uint8)  # 81 million pixels: over the limit
    (tmp_path / "bomb.webp").write_bytes(cv2.imencode(".webp", big, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes())
    (tmp_path / "bomb.tif").write_bytes(cv2.imencode(".tiff", big, [cv2.IMWRITE_TIFF_COMPRESSION, 8])[1].tobytes())
    del big
    fine = cv2.imencode(".webp", np.full((480, 640, 3), 128, np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 90])[1]
    (tmp_path / "fine.webp").write_bytes(fine.tobytes())
    files = [str(tmp_path / n) for n in ("bomb.webp", "bomb.tif", "fine.webp")]
    r = run_cli("predict", str(SHORT), *files, "--json")
    assert r.returncode == 1, r.stderr
    for bomb in files[:2]:
        assert f"cannot decode image {bomb}: it declares more than {MAX_PIXELS} pixels" in r.stderr, r.stderr
    assert "fine.webp" in r.stdout and r.stdout.count("\n") == 1, r.stdout


def test_files_whose_names_are_not_utf8_are_read_not_a_crash(tmp_path: Path) -> None:
    """A camera's FTP upload or a Windows share names files in Latin-1 (`caf\\xe9.jpg`), which Python
    holds with surrogate escapes. OpenCV's Python binding crashed the process on such a name (a
    segmentation fault in imread and in VideoCapture alike): `predict`, or the daemon reading the
    folder, died on the first such file, and systemd's restart met it again. Each is now read."""
    import os
    import shutil

    from .conftest import DEMO_VIDEO

    picture = cv2.imencode(".jpg", np.full((96, 128, 3), 128, np.uint8))[1].tobytes()
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(picture)
    (folder / "plain.jpg").write_bytes(picture)
    video = tmp_path / os.fsdecode(b"entr\xe9e.avi")
    shutil.copy(DEMO_VIDEO, video)
    r = run_cli("predict", str(SHORT), str(folder), str(video), "--json")
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    lines = r.stdout.splitlines()
    assert len(lines) == 2 + 180 + 1 and '"frames":180' in lines[-1], lines[-1]
    # a recording: pydantic refused its name as a setting (a traceback)
    from .conftest import SHARED

    recording = tmp_path / os.fsdecode(b"enregistr\xe9.wav")
    shutil.copy(SHARED / "data" / "wakeword" / "hey_jarvis_1.wav", recording)
    r = run_cli("predict", str(ROOT / "models" / "wakeword" / "hey_jarvis.tflite"), str(recording), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert '"summary":{"events":1,' in r.stdout.splitlines()[-1], r.stdout[-500:]
