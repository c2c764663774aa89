"""The size a picture declares, read from its header before anything decodes it.

A JPEG or PNG of a few hundred bytes can declare 30,000 x 30,000 pixels: decoded, 2.7 GB, which a
board has not got (the kernel kills the agent, systemd starts it, and it reads the same file again).
Pictures that arrive from elsewhere (a folder cameras upload to, a device's escalation) are checked
here first; what declares more than MAX_PIXELS is refused unread. Other formats (WebP, TIFF, BMP) are
left to OpenCV's own check of the same limit, which the package sets as it is imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: A camera frame of 8192 x 8192 is 67 million pixels; 200 MB decoded.
MAX_PIXELS = 1 << 26
#: How much of a file's start is read for its header: a JPEG's frame header follows its EXIF and ICC
#: segments, mostly within the first 64 KiB and rarely past the first megabyte.
HEAD_BYTES = 1 << 16
MAX_HEAD_BYTES = 1 << 20
_PNG = b"\x89PNG\r\n\x1a\n"
#: JPEG markers that carry no length (restart markers, start of image, TEM)
_BARE = {0x01, *range(0xD0, 0xD9)}
#: start-of-frame markers (every JPEG process but the Huffman and arithmetic tables, and JPG)
_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}


def jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header; None where `raw` is not a JPEG or has no frame header
    within it."""
    if raw[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(raw)
    while i + 4 <= n:
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill bytes before a marker
            i += 1
            continue
        if marker in _BARE:
            i += 2
            continue
        length = int.from_bytes(raw[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if i + 9 > n:
                return None
            return int.from_bytes(raw[i + 7 : i + 9], "big"), int.from_bytes(raw[i + 5 : i + 7], "big")
        if marker == 0xDA:  # the scan begins and no frame header came first
            return None
        i += 2 + length
    return None


def png_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, which must come first; None where `raw` is not a PNG."""
    if raw[:8] != _PNG or raw[12:16] != b"IHDR" or len(raw) < 24:
        return None
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def declared_size(raw: bytes) -> tuple[int, int] | None:
    """What a JPEG or PNG declares; None for other formats (left to the decoder and its own limit)."""
    return jpeg_size(raw) or png_size(raw)


def refuse_oversized(raw: bytes, what: str) -> None:
    """ValueError naming `what` when its header declares more than MAX_PIXELS, or no pixels at all."""
    size = declared_size(raw)
    if size is not None:
        _refuse(size, what)


def _refuse(size: tuple[int, int], what: str) -> None:
    if size[0] * size[1] > MAX_PIXELS or 0 in size:
        raise ValueError(f"{what} declares {size[0]}x{size[1]} pixels: more than {MAX_PIXELS}, or none")


@contextlib.contextmanager
def utf8_path(path: str) -> Iterator[str]:
    """`path` as OpenCV (and a setting) may be given it. OpenCV's Python binding crashes the process (a
    segmentation fault, in imread and VideoCapture alike) on a str that does not encode to UTF-8: a
    file name in Latin-1 from a camera's FTP upload or a Windows share, which Python holds with
    surrogate escapes; pydantic refuses it as a setting. Such a file is opened here and handed over as
    /proc/self/fd/N, which names the file itself to whatever opens it."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield path
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def read_image(path: str) -> np.ndarray:
    """A picture file decoded (BGR, EXIF orientation applied), its header checked first; ValueError or
    OSError saying why it cannot be (too large, unreadable, not a picture)."""
    import cv2

    refuse_oversized_file(path)
    try:
        with utf8_path(path) as name:
            img = cv2.imread(name, cv2.IMREAD_COLOR)
    except cv2.error as err:  # OpenCV's own limit (edge_agent/__init__.py), for the other formats
        limit = "CV_IO_MAX_IMAGE_PIXELS" in str(err) or "CV_IO_MAX_IMAGE_WIDTH" in str(err)
        why = f"it declares more than {MAX_PIXELS} pixels" if limit else str(err).strip().splitlines()[-1]
        raise ValueError(f"cannot decode image {path}: {why}") from None
    if img is None:
        raise ValueError(f"cannot decode image {path}")
    return img


def read_image_reduced(path: str, reduce: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """`read_image`, a JPEG decoded at 1/`reduce` of its size (`decode_reduced`): the picture, and the
    whole picture's (height, width) where it came out smaller."""
    if reduce > 1:
        with open(path, "rb") as f:
            soi = f.read(2)
            if soi == b"\xff\xd8":  # its header is checked before it decodes, as read_image checks it
                return decode_reduced(soi + f.read(), f"image {path}", reduce)
    return read_image(path), None


def decode_image(raw: bytes | np.ndarray, what: str, reduce: int = 1) -> np.ndarray:
    """A picture received whole (a camera's JPEG, a device's escalation), its header checked first;
    ValueError naming `what` where it declares too much or does not decode. `reduce` (2, 4 or 8): a JPEG
    decoded at that fraction of its size (`decode_reduced`)."""
    import numpy

    data = raw if isinstance(raw, numpy.ndarray) else numpy.frombuffer(raw, numpy.uint8)
    refuse_oversized(raw if isinstance(raw, bytes) else data.tobytes(), what)
    return _imdecode(data, what, reduce)


def _imdecode(data: np.ndarray, what: str, reduce: int) -> np.ndarray:
    """OpenCV's decode, its header already checked."""
    import cv2

    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    try:
        img = cv2.imdecode(data, flag.get(reduce, cv2.IMREAD_COLOR))
    except cv2.error:  # OpenCV's own size limit, for a format whose header is not read here
        img = None
    if img is None or img.size == 0:
        raise ValueError(f"{what} of {data.size} bytes could not be decoded")
    return img


def decode_reduced(raw: bytes | np.ndarray, what: str, reduce: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A JPEG decoded at 1/`reduce` of its size (2, 4 or 8) by libjpeg's scaled inverse DCT, which
    averages each block down as it decodes: for much less work than a whole decode (the colour
    conversion and upsampling of a quarter or less of the pixels), and a picture within a grey level
    or two, on average, of a whole decode shrunk by area averaging. Returns the picture and the whole
    picture's (height, width); None in its place where the picture came out whole: not a JPEG (other
    formats would be decoded whole and then shrunk, for nothing), or a size its header does not
    explain. ValueError as `decode_image` where it declares too much or does not decode at all."""
    import numpy

    data = raw if isinstance(raw, numpy.ndarray) else numpy.frombuffer(raw, numpy.uint8)
    size = jpeg_size(data[:MAX_HEAD_BYTES].tobytes()) if reduce > 1 else None
    if size is None:
        return decode_image(data, what), None
    _refuse(size, what)  # the header read once, for the check and the size alike
    img = _imdecode(data, what, reduce)
    (w, h), (rh, rw) = size, img.shape[:2]
    if (rw, rh) == (-(-w // reduce), -(-h // reduce)):
        return img, (h, w)
    if (rw, rh) == (-(-h // reduce), -(-w // reduce)):  # turned by its EXIF orientation
        return img, (w, h)
    return decode_image(data, what), None


def refuse_oversized_file(path: str) -> None:
    """refuse_oversized on the start of a file (OSError where it cannot be read): its first 64 KiB,
    or up to a megabyte for a JPEG whose frame header comes later."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        if head[:2] == b"\xff\xd8" and jpeg_size(head) is None:
            head += f.read(MAX_HEAD_BYTES - len(head))
    refuse_oversized(head, path)
