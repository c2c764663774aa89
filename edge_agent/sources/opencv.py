"""Shared OpenCV VideoCapture plumbing for the camera, file, stream and GStreamer sources."""

from __future__ import annotations

import contextlib
import logging

import cv2
import numpy as np

from edge_agent.imageheader import MAX_PIXELS, decode_reduced, utf8_path
from edge_agent.sources.base import EndOfStream, FrameError, Source, SourceError

log = logging.getLogger(__name__)

#: Frames of a file in a row that may fail to decode, each skipped, before the file counts as failed.
_BAD_FRAMES_IN_A_ROW = 30
#: Codec tags of Motion JPEG whose every packet is one whole JPEG picture (a USB camera's recording, an
#: AVI or QuickTime file, an RTSP camera's MJPEG stream): read through FFmpeg as packets, they can be
#: decoded at a fraction of their size (`retrieve_reduced`).
_JPEG_PACKETS = {b"MJPG", b"mjpg", b"jpeg"}


class OpenCVSource(Source):
    api_preference: int = cv2.CAP_ANY
    #: finite sources end; live ones only fail
    finite = False

    def __init__(self, uri: str, loop: bool = True):
        super().__init__(uri)
        self.loop = loop
        self._cap: cv2.VideoCapture | None = None
        self._bad_in_a_row = 0
        self._frame = 0
        #: the stream's packets are whole JPEGs, read undecoded once a frame was asked for smaller
        #: (`_raw`), each decoded here; False for good once one did not decode alone
        self._jpeg_packets = False
        self._packets_tried = False
        self._raw = False
        self._raw_decoded = False
        self._declared = (0, 0)

    def _target(self) -> str | int:
        return self.uri

    def _configure(self, cap: cv2.VideoCapture) -> None:
        """Set capture properties after opening (size, buffering)."""

    def _open_params(self) -> list[int]:
        return []

    def open(self) -> None:
        params = self._open_params()
        target = self._target()
        try:
            with contextlib.ExitStack() as stack:
                if isinstance(target, str) and not self.live:  # a file's name, which may not be UTF-8
                    target = stack.enter_context(utf8_path(target))
                cap = (
                    cv2.VideoCapture(target, self.api_preference, params)
                    if params
                    else cv2.VideoCapture(target, self.api_preference)
                )
        except OSError as err:
            raise SourceError(f"cannot open {self.describe()}: {err.strerror or err}") from None
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.describe()}")
        # A container or stream declares its frame size before a frame decodes; one that declares more
        # pixels than a picture may have (a 5 MB file or a hostile server's stream of 16,000 x 16,000
        # frames: 2.6 GB of RSS to decode them) is refused here, as such a picture file is
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > MAX_PIXELS:
            cap.release()
            raise SourceError(f"{self.describe()} declares frames of {width}x{height}: more than {MAX_PIXELS} pixels")
        self._configure(cap)
        if self.api_preference == cv2.CAP_FFMPEG and not self._packets_tried:
            tag = int(cap.get(cv2.CAP_PROP_FOURCC) or 0) & 0xFFFFFFFF
            self._jpeg_packets = tag.to_bytes(4, "little") in _JPEG_PACKETS
        self._raw = self._raw_decoded = False
        #: the frames' (height, width) as FFmpeg gives them (a packet of two interlaced fields is one frame)
        self._declared = (height, width)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.nominal_fps = float(fps) if fps and 0 < fps < 1000 else None
        self._cap = cap
        self._frame = 0  # frames grabbed or tried since the start of the file

    def grab(self) -> None:
        cap = self._cap
        if cap is None:
            raise SourceError("not open")
        frame = self._frame
        self._frame += 1
        if cap.grab():
            self._bad_in_a_row = 0
            return
        if self.finite:
            # FFmpeg fails to grab a frame it cannot decode as it does at the end; the frames after it
            # still grab. Before the file's last frame, the frame is skipped (a few in a row at most: a
            # container may count more frames than it holds)
            self._bad_in_a_row += 1
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            if self._bad_in_a_row < _BAD_FRAMES_IN_A_ROW and frame < count - 1:
                raise FrameError(f"{self.describe()}: frame {frame + 1} of {int(count)} could not be decoded")
            self._bad_in_a_row = 0
            if not self.loop:
                raise EndOfStream(self.uri)
            self._frame = 1
            if cap.set(cv2.CAP_PROP_POS_FRAMES, 0) and cap.grab():
                return
            # rewinding failed (stream-like file): reopen from the start
            self.close()
            self.open()
            self._frame = 1
            if self._cap is not None and self._cap.grab():
                return
        raise SourceError(f"{self.describe()}: no frame")

    def retrieve(self) -> np.ndarray:
        return self.retrieve_reduced(1)[0]

    def retrieve_reduced(self, reduce: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        """Motion JPEG is read from the first frame asked for smaller on as the stream's packets, each
        decoded here at the size asked for (FFmpeg decodes as it grabs, and only whole). Other codecs,
        and a JPEG stream whose packets do not decode alone, are decoded whole by FFmpeg."""
        cap = self._cap
        if cap is None:
            raise SourceError("not open")
        full: tuple[int, int] | None = None
        if self._raw:
            ok, packet = cap.retrieve()
            img, why = None, None
            if ok and packet is not None and packet.size:
                try:
                    img, full = decode_reduced(packet.reshape(-1), "frame", reduce)
                except ValueError:  # a corrupt frame, once others decoded: skipped below
                    why = None if self._raw_decoded else "its JPEG packets do not decode alone"
                else:
                    h, w = full or img.shape[:2]
                    if 0 not in self._declared and self._declared != (h, w):  # two interlaced fields, say
                        why = f"its JPEG packets are {w}x{h}, its frames {self._declared[1]}x{self._declared[0]}"
                    self._raw_decoded = True
            if why is not None:
                self._decode_whole()
                raise FrameError(f"{self.describe()}: {why}: FFmpeg decodes its frames from here on")
        else:
            ok, img = cap.retrieve()
            if reduce > 1 and self._jpeg_packets:  # the next grab reads the packet undecoded
                self._raw = bool(cap.set(cv2.CAP_PROP_FORMAT, -1))
        if not ok or img is None or img.size == 0:
            # a file goes on past a corrupt frame (reopening it would play it again from the start); a
            # device or stream that gives no picture, or a file that gives none for a second's worth, is reopened
            self._bad_in_a_row += 1
            if self.finite and self._bad_in_a_row < _BAD_FRAMES_IN_A_ROW:
                raise FrameError(f"{self.describe()}: frame could not be decoded")
            self._bad_in_a_row = 0
            raise SourceError(f"{self.describe()}: frame could not be decoded")
        self._bad_in_a_row = 0
        return img, full

    def _decode_whole(self) -> None:
        """Reopen where the stream is, FFmpeg decoding every frame (a reader cannot leave packet mode)."""
        self._jpeg_packets, self._packets_tried = False, True
        frame = self._frame
        self.close()
        self.open()
        if self.finite and frame and self._cap is not None:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
            self._frame = frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
