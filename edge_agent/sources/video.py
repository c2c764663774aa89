"""Video files, optionally looping; paced by the capture loop rather than by a device clock."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import cv2

from edge_agent.sources.base import Source, SourceError
from edge_agent.sources.opencv import OpenCVSource

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig

#: An open file keeps playing after it is deleted; look at the path this often.
_EXISTS_CHECK_S = 1.0


class VideoFileSource(OpenCVSource):
    kind = "file"
    options = frozenset({"loop"})
    live = False

    @classmethod
    def claims(cls, uri: str) -> bool:
        return True  # the last kind asked: any other path is a video file

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri, cfg.loop)
    finite = True
    api_preference = cv2.CAP_FFMPEG

    def open(self) -> None:
        if not os.path.isfile(self.uri):
            raise SourceError(f"video file {self.uri} not found")
        super().open()
        self._checked = time.monotonic()

    def grab(self) -> None:
        now = time.monotonic()
        if now - self._checked > _EXISTS_CHECK_S:
            self._checked = now
            if not os.path.isfile(self.uri):
                raise SourceError(f"video file {self.uri} removed")
        super().grab()
