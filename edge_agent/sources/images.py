"""A directory or glob of still images, shown in name order, optionally looping.

At the end of the set the directory is looked at again: pictures that arrived since (a folder cameras
upload to) are shown, each once where the set does not loop and in its place in the next round where
it does, once a second has passed since it was written to (it may be half uploaded before) and, for a
JPEG or PNG, once it has its end (or half a minute has passed: an upload that stalled), and so as the
set opens (unless nothing else is there yet); pictures
that went are not looked for again. The set was listed once, as it opened: a looping
set showed the same pictures for good, and one that did not ended with the new ones unseen.
"""

from __future__ import annotations

import glob
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.imageheader import read_image_reduced
from edge_agent.sources.base import EndOfStream, FrameError, Source, SourceError

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: A picture written to within this long may be half uploaded: it waits for a later look at the folder.
_SETTLE_S = 1.0
#: Looks a set that does not loop takes, _SETTLE_S apart, for pictures still being uploaded to settle.
_SETTLE_WAITS = 3
#: A JPEG or PNG without its end (an upload that stalled for more than _SETTLE_S) waits this long after
#: it was last written to before it is read as it is.
_INCOMPLETE_S = 30.0
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:  # gone since the listing: it counts as old, and fails to read like any unreadable file
        return 0.0


def _complete(path: str) -> bool:
    """Whether a JPEG ends with its end-of-image marker (trailing zero bytes allowed) and a PNG with its
    IEND chunk: an upload that stalled for more than a second, then resumed, was read cut short (a grey
    lower half). Other formats, and a file that cannot be read, count as complete (a file that cannot be
    read fails as it is read, and is skipped)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
            tail = f.read(64).rstrip(b"\0")
    except OSError:
        return True
    if head.startswith(_JPEG_START):
        return tail.endswith(_JPEG_END)
    if head.startswith(_PNG_START):
        return tail.endswith(_PNG_END)
    return True


def _settled(files: list[str], now: float) -> list[str]:
    """The pictures not written to within _SETTLE_S, less JPEGs and PNGs without their end written to
    within _INCOMPLETE_S: the others may be half uploaded."""
    return [f for f in files if (age := now - _mtime(f)) >= _SETTLE_S and (age >= _INCOMPLETE_S or _complete(f))]


class ImageSetSource(Source):
    kind = "images"
    options = frozenset({"loop"})

    @classmethod
    def claims(cls, uri: str) -> bool:
        return os.path.isdir(uri) or glob.has_magic(uri) or uri.lower().endswith(IMAGE_EXTS)

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri, cfg.loop, cfg.fps)
    live = False

    def __init__(self, uri: str, loop: bool = True, fps: float | None = None):
        super().__init__(uri)
        self.loop = loop
        self.nominal_fps = fps
        self._files: list[str] = []
        self._pos = -1
        self._bad_in_a_row = 0
        #: pictures shown, where the set does not loop: the ones to show at its end are the others
        self._shown: set[str] = set()
        self._read_any = False

    def _list(self) -> list[str]:
        """The set's pictures: regular files only. A named pipe or a device called `x.jpg` (a symbolic
        link to /dev/zero, say) would block the reader in its open or read it without end; each reader
        the capture watch gave up on would stay blocked, a thread more every read timeout."""
        pattern = os.path.join(self.uri, "*") if os.path.isdir(self.uri) else self.uri
        return sorted(f for f in glob.glob(pattern) if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(f))

    def open(self) -> None:
        listed = self._list()
        if not listed:
            raise SourceError(f"no images match {self.uri}")
        # as at the end of each round: a picture still being uploaded waits for a later look, unless
        # nothing else is there yet
        self._files = _settled(listed, time.time()) or listed
        self._pos = -1
        self._bad_in_a_row = 0
        self._shown = set()
        self._read_any = False  # a set where none reads fails; one picture that arrived broken is skipped

    def grab(self) -> None:  # no decoding: only the index moves
        self._pos += 1
        if self._pos >= len(self._files):
            files = self._arrived()
            if not files:
                if not self.loop:
                    raise EndOfStream(self.uri)
                raise SourceError(f"no images match {self.uri}")
            self._files, self._pos = files, 0
        if not self.loop:
            self._shown.add(self._files[self._pos])

    def _arrived(self) -> list[str]:
        """The next round: the set as it is now (where the set does not loop, only pictures not shown
        yet), less those written to within the last _SETTLE_S, which may be half uploaded, and JPEGs and
        PNGs without their end written to within _INCOMPLETE_S (an upload that stalled): they wait for
        a later look. Where they are all there is, a set that does not loop waits for them a little (it
        would end without them), and then takes them as they are."""
        waits = 0
        while True:
            files = self._list()
            if not self.loop:
                files = [f for f in files if f not in self._shown]
            settled = _settled(files, time.time())
            if settled or not files or self.loop or waits == _SETTLE_WAITS:
                return settled or files
            waits += 1
            time.sleep(_SETTLE_S)

    def retrieve(self) -> np.ndarray:
        return self.retrieve_reduced(1)[0]

    def retrieve_reduced(self, reduce: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        path = self._files[self._pos]
        try:
            # a folder cameras upload to can get anything: a picture whose header declares gigapixels is
            # skipped unread, not decoded into memory the board has not got
            img, whole = read_image_reduced(path, reduce)
        except (OSError, ValueError) as err:
            # one unreadable file (half copied, not an image) is skipped; a set where none reads is a failure
            self._bad_in_a_row += 1
            if self._bad_in_a_row >= len(self._files) and not self._read_any:
                raise SourceError(f"no image in {self.uri} can be decoded") from None
            raise FrameError(str(err)) from None
        self._bad_in_a_row = 0
        self._read_any = True
        return img, whole
