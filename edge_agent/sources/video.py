"""Video files, optionally looping; paced by the capture loop rather than by a device clock."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING

import cv2

from edge_agent.redact import hide_credentials
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
            raise SourceError(_not_found(self.uri))
        super().open()
        self._checked = time.monotonic()

    def grab(self) -> None:
        now = time.monotonic()
        if now - self._checked > _EXISTS_CHECK_S:
            self._checked = now
            if not os.path.isfile(self.uri):
                raise SourceError(f"video file {self.uri} removed")
        super().grab()


def _not_found(uri: str) -> str:
    """A video file that is not there, said with what was likely meant where the name says it: `-`
    (standard input, which `run` does not read: a command's output is read by `exec:`), or a URL with
    one slash after its scheme, which no other kind claimed (its password masked as any URL's)."""
    if uri == "-":
        return ("source.uri '-': standard input is no camera to the agent; a command that writes JPEGs is "
                "one (exec:COMMAND, e.g. exec:rpicam-vid -t 0 --codec mjpeg -o -)")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/[^/]", uri):
        meant = hide_credentials(uri.replace(":/", "://", 1))  # (masked only where it has both slashes)
        return f"no video file by that name, and a URL has two slashes after its scheme: {meant}?"
    return f"video file {uri} not found"
