"""Video files, optionally looping; paced by the capture loop rather than by a device clock."""

from __future__ import annotations

import os

import cv2

from edge_agent.sources.base import SourceError
from edge_agent.sources.opencv import OpenCVSource


class VideoFileSource(OpenCVSource):
    kind = "file"
    live = False
    finite = True
    api_preference = cv2.CAP_FFMPEG

    def open(self) -> None:
        if not os.path.isfile(self.uri):
            raise SourceError(f"video file {self.uri} not found")
        super().open()
