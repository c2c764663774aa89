"""A directory or glob of still images, shown in name order, optionally looping."""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.imageheader import read_image
from edge_agent.sources.base import EndOfStream, FrameError, Source, SourceError

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageSetSource(Source):
    kind = "images"

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

    def open(self) -> None:
        pattern = os.path.join(self.uri, "*") if os.path.isdir(self.uri) else self.uri
        self._files = sorted(f for f in glob.glob(pattern) if f.lower().endswith(IMAGE_EXTS))
        if not self._files:
            raise SourceError(f"no images match {self.uri}")
        self._pos = -1
        self._bad_in_a_row = 0

    def grab(self) -> None:  # no decoding: only the index moves
        self._pos += 1
        if self._pos >= len(self._files):
            if not self.loop:
                raise EndOfStream(self.uri)
            self._pos = 0

    def retrieve(self) -> np.ndarray:
        path = self._files[self._pos]
        try:
            # a folder cameras upload to can get anything: a picture whose header declares gigapixels is
            # skipped unread, not decoded into memory the board has not got
            img = read_image(path)
        except (OSError, ValueError) as err:
            # one unreadable file (half copied, not an image) is skipped; a set where none reads is a failure
            self._bad_in_a_row += 1
            if self._bad_in_a_row >= len(self._files):
                raise SourceError(f"no image in {self.uri} can be decoded") from None
            raise FrameError(str(err)) from None
        self._bad_in_a_row = 0
        return img
