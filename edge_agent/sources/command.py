"""A command that writes a camera's frames to its standard output as JPEGs, one after another (MJPEG).

The Raspberry Pi camera modules are the reason: on Raspberry Pi OS Bookworm they are driven by
libcamera, and their /dev/video nodes give OpenCV no picture. `rpicam` runs `rpicam-vid` (named
`libcamera-vid` before Bookworm) for them, with `source.width`, `height` and `fps`; `exec:COMMAND`
runs any command that writes JPEGs to its standard output (`ffmpeg ... -f mjpeg -`, `gst-launch-1.0
... ! jpegenc ! fdsink`), split into words as a shell would (`shlex`) and run without one.

The command runs in a process group of its own and is stopped with it (SIGTERM, then SIGKILL after two
seconds), so nothing it started outlives the source. Its standard error is kept (the last lines), so
that a command that exits says why: "no cameras available" is what rpicam-vid says. Every JPEG is
bounded like an HTTP camera's parts (MAX_PART_BYTES), must arrive within `source.read_timeout_s`, and
has its header checked before it is decoded.
"""

from __future__ import annotations

import collections
import io
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from typing import IO, TYPE_CHECKING

import numpy as np

from edge_agent.redact import hide_credentials
from edge_agent.sources.base import Source, SourceError
from edge_agent.sources.mjpeg import MAX_PART_BYTES, decode_frame

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig

#: Lines of the command's standard error kept for the error that says why it stopped, and the characters
#: kept of each.
_STDERR_LINES = 20
_STDERR_LINE_CHARS = 300
_READ = 1 << 16
_SOI, _EOI, _SOS = b"\xff\xd8", b"\xff\xd9", 0xDA
#: Markers that carry no length: TEM, RST0-7 (SOI and EOI are handled apart).
_BARE = {0x01, *range(0xD0, 0xD8)}
_STOP_S = 2.0


def rpicam_argv(uri: str, cfg: SourceConfig) -> list[str]:
    """`rpicam[:N]`: the Raspberry Pi camera N (default 0) as MJPEG on standard output, forever, without
    a preview window, each frame flushed as it is made."""
    camera = uri.partition(":")[2] or "0"
    if not camera.isdigit():
        raise SourceError(f"{uri}: the camera after 'rpicam:' is a number (rpicam-vid --list-cameras)")
    tool = "rpicam-vid" if shutil.which("rpicam-vid") or not shutil.which("libcamera-vid") else "libcamera-vid"
    argv = [tool, "--camera", camera, "-t", "0", "--nopreview", "--codec", "mjpeg", "--flush", "-o", "-"]
    if cfg.width:
        argv += ["--width", str(cfg.width)]
    if cfg.height:
        argv += ["--height", str(cfg.height)]
    if cfg.fps:
        argv += ["--framerate", f"{cfg.fps:g}"]
    return argv


def jpeg_end(buf: bytes | bytearray) -> int | None:
    """Where the JPEG at the start of `buf` ends (one past its EOI), or None while it is incomplete;
    ValueError where it is not a JPEG's structure. Segments are walked by their lengths up to the
    scan, so that a thumbnail inside EXIF (a JPEG with an EOI of its own) is not taken for the end;
    within the scan, an EOI cannot occur but as the end (0xFF is stuffed there)."""
    if buf[:2] != _SOI:
        raise ValueError("not a JPEG start")
    i = 2
    while True:
        if len(buf) < i + 4:
            return None
        if buf[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill
            i += 1
            continue
        if marker == _EOI[1]:
            return i + 2
        if marker in _BARE:
            i += 2
            continue
        length = int.from_bytes(buf[i + 2 : i + 4], "big")
        if length < 2:
            raise ValueError(f"a segment of length {length} at byte {i}")
        if marker == _SOS:
            end = buf.find(_EOI, i + 2 + length)
            return None if end < 0 else end + 2
        i += 2 + length


class CommandSource(Source):
    kind = "command"
    options = frozenset({"width", "height"})
    live = True

    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.startswith("exec:") or uri == "rpicam" or uri.startswith("rpicam:")

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        try:
            argv = shlex.split(uri[len("exec:") :]) if uri.startswith("exec:") else rpicam_argv(uri, cfg)
        except ValueError as err:  # an unclosed quote
            raise SourceError(f"exec: the command cannot be split into words: {err}") from None
        if not argv:
            raise SourceError("exec: names no command")
        return cls(uri, argv, cfg.read_timeout_s)

    def __init__(self, uri: str, argv: list[str], timeout_s: float = 5.0):
        super().__init__(uri)
        self.argv, self.timeout_s = argv, timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._stderr_thread: threading.Thread | None = None
        self._buf = bytearray()
        self._jpeg: bytes | None = None
        self._first: bytes | None = None

    def describe(self) -> str:
        # the command's name only: its arguments may carry a camera's password
        return f"command:{os.path.basename(self.argv[0])}"

    def open(self) -> None:
        self.close()
        if shutil.which(self.argv[0]) is None:
            hint = " (Raspberry Pi OS: apt install rpicam-apps)" if self.uri.startswith("rpicam") else ""
            raise SourceError(f"cannot open {self.describe()}: {self.argv[0]} not found{hint}")
        try:
            proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, stopped whole
            )
        except OSError as err:
            raise SourceError(f"cannot open {self.describe()}: {err}") from None
        self._proc, self._buf = proc, bytearray()
        self._stderr.clear()
        assert proc.stderr is not None
        self._stderr_thread = threading.Thread(
            target=self._keep_stderr, args=(proc.stderr,), name="command-stderr", daemon=True
        )
        self._stderr_thread.start()
        try:  # the first picture: a camera that cannot start fails here, saying why
            self._first = self._next_jpeg(time.monotonic() + self.timeout_s)
        except SourceError:
            self.close()
            raise

    def grab(self) -> None:
        if self._proc is None:
            raise SourceError("not open")
        first, self._first = self._first, None
        self._jpeg = first or self._next_jpeg(time.monotonic() + self.timeout_s)

    def retrieve(self) -> np.ndarray:
        return self.retrieve_reduced(1)[0]

    def retrieve_reduced(self, reduce: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        jpeg, self._jpeg = self._jpeg, None
        return decode_frame(jpeg, self.describe(), reduce)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(_STOP_S)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        if self._stderr_thread is not None:
            self._stderr_thread.join(1.0)
            self._stderr_thread = None
        self._buf, self._jpeg, self._first = bytearray(), None, None

    # --- the stream ------------------------------------------------------------------------------
    def _next_jpeg(self, deadline: float) -> bytes:
        """The next whole JPEG on the command's output: bytes before a start of image are skipped, and
        a picture is at most MAX_PART_BYTES."""
        while True:
            start = self._buf.find(_SOI)
            if start < 0:
                del self._buf[: max(0, len(self._buf) - 1)]  # a start cut across two reads is kept whole
            else:
                del self._buf[:start]
                try:
                    end = jpeg_end(self._buf)
                except ValueError:
                    del self._buf[:2]  # not a picture after all: look for the next start
                    continue
                if end is not None:
                    jpeg = bytes(self._buf[:end])
                    del self._buf[:end]
                    return jpeg
                if len(self._buf) > MAX_PART_BYTES:
                    raise SourceError(f"{self.describe()}: no end of a picture within {MAX_PART_BYTES} bytes")
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise SourceError(f"{self.describe()}: no picture within {self.timeout_s:g} s{self._said()}")
        chunk = os.read(fd, _READ)
        if not chunk:
            try:
                code = proc.wait(_STOP_S)
            except subprocess.TimeoutExpired:
                code = None
            if self._stderr_thread is not None:
                self._stderr_thread.join(0.5)  # its last words
            how = "closed its output" if code is None else f"exited with status {code}"
            raise SourceError(f"{self.describe()}: {how}{self._said()}")
        self._buf += chunk

    def _keep_stderr(self, pipe: IO[bytes]) -> None:
        """Drain the command's standard error (a full pipe would stop it), keeping its last lines. It is
        read a block at a time, and a line ends at a line feed or a carriage return, with no more of it
        held than is kept: FFmpeg, run without `-nostats`, writes its progress for as long as it runs as one
        line rewritten with carriage returns, which a read by lines held whole, growing without end."""
        read = pipe.read1 if isinstance(pipe, io.BufferedReader) else pipe.read  # one read(2) at most a call
        partial = b""
        try:
            while block := read(_READ):
                *lines, rest = (partial + block).replace(b"\r", b"\n").split(b"\n")
                for line in lines:
                    self._keep_line(line)
                partial = rest[: _STDERR_LINE_CHARS * 4]  # of a line not ended yet, what may be kept
            self._keep_line(partial)
        except (OSError, ValueError):  # closed under us at close()
            pass

    def _keep_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if text:
            self._stderr.append(text[:_STDERR_LINE_CHARS])

    def _said(self) -> str:
        """The command's last words, for the error it ends with (logged, and in health): FFmpeg's name the
        camera's URL with its password (`rtsp://admin:pw@cam/live: Connection refused`), masked here."""
        lines = list(self._stderr)[-3:]
        return f" (it said: {hide_credentials(' | '.join(lines))})" if lines else ""


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
