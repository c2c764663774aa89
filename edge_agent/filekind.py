"""What a file given to `predict` holds, from its first bytes where its name does not say.

`predict` picks how to read each input by its ending: a picture, a recording, else a video. Two ways a
user hands it one break that: a pipe (`curl -s http://camera/snapshot.jpg | edge-agent predict model -`,
or bash's `<(...)`), which has no ending and can be read only once, and a file named by where it came
from (`wget http://camera/cgi-bin/snapshot.cgi` saves a JPEG as `snapshot.cgi`), which was opened as a
video of one frame. The formats these readers take carry a signature at their start; that decides.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: How much of a file's start `sniff` looks at.
HEAD = 64

#: Signatures at a file's start, and the ending its readers know the format by.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"fLaC", ".flac"),
    (b"OggS", ".ogg"),
    (b"ID3", ".mp3"),
)
#: RIFF containers: the form at bytes 8-12.
_RIFF = {b"WEBP": ".webp", b"WAVE": ".wav", b"AVI ": ".avi"}


def sniff(head: bytes) -> str | None:
    """The ending that names what `head` (a file's first bytes) starts: a picture's, a recording's or a
    container's; ".csv" for text (a sensor recording, columns of numbers); None where nothing matches
    (most videos: their readers probe the whole start of the file, not a fixed signature)."""
    for sig, ext in _SIGNATURES:
        if head.startswith(sig):
            return ext
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[:2] == b"BM" and len(head) >= 18 and head[6:10] == b"\x00\x00\x00\x00":  # its reserved words are 0
        return ".bmp"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # an MPEG audio frame
        return ".mp3"
    if head and b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as err:  # cut inside a character at the end of the head is still text
            if err.start < len(head) - 3:
                return None
            text = head[: err.start].decode("utf-8")
        if all(c.isprintable() or c in "\t\r\n" for c in text):
            return ".csv"
    return None


#: Endings of videos whose first bytes may be a picture's (Motion JPEG is JPEGs end to end): never sniffed.
VIDEO_ENDINGS = (".mjpeg", ".mjpg", ".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".ts", ".h264", ".h265", ".gif")
#: One JPEG's end marker straight followed by the next one's start: Motion JPEG, not a picture (a picture's
#: EXIF thumbnail, a JPEG inside it, is followed by the rest of its segment).
_NEXT_JPEG = b"\xff\xd9\xff\xd8"


def named(path: Path, known: tuple[str, ...]) -> str | None:
    """The ending a regular file's first bytes name, where its own name ends in none of `known` (the
    endings `predict` reads by name) nor a video's and they name a picture or a recording; None otherwise,
    and for what cannot be opened (left to the reader, which says why)."""
    low = path.name.lower()
    if low.endswith(known) or low.endswith(VIDEO_ENDINGS) or not path.is_file():  # a device is not read here
        return None
    try:
        with path.open("rb") as f:
            ext = sniff(f.read(HEAD))
            if ext == ".jpg" and _holds(f, _NEXT_JPEG):
                return None
    except OSError:
        return None
    return ext if ext in known else None


def _holds(f: BinaryIO, needle: bytes) -> bool:
    """Whether `needle` is anywhere in the file (from its start), read a MiB at a time."""
    f.seek(0)
    tail = b""
    while chunk := f.read(1 << 20):
        if needle in tail + chunk:
            return True
        tail = chunk[-(len(needle) - 1) :]
    return False


def is_stream(path: Path) -> bool:
    """Whether `path` is `-` (standard input) or a pipe or a socket (`/dev/stdin` in a pipeline, bash's
    `<(...)`): read once, from the start, and never again. Not a character device: a camera's node
    (`/dev/video0`) is opened by the video reader, as before."""
    if str(path) == "-":
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextlib.contextmanager
def spooled(source: BinaryIO) -> Iterator[Path]:
    """`source` copied whole to a file in a directory of its own, named with the ending its first bytes
    name (".mjpeg" for JPEGs end to end; ".bin" where none: a video, which its reader probes), for the
    readers that want a file; the directory goes when the block ends. A stream is read once: it cannot
    be probed and read again."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-") as tmp:
        head = source.read(HEAD)
        ext = sniff(head) or ".bin"
        path = Path(tmp) / "input"
        with path.open("w+b") as out:
            out.write(head)
            shutil.copyfileobj(source, out, 1 << 20)
            if ext == ".jpg" and _holds(out, _NEXT_JPEG):
                ext = ".mjpeg"
        yield path.rename(path.with_suffix(ext))
