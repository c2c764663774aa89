"""Local cameras: an index ('0') or a V4L2 device path (/dev/videoN)."""

from __future__ import annotations

import os

import cv2

from edge_agent.sources.base import SourceError
from edge_agent.sources.opencv import OpenCVSource


class CameraSource(OpenCVSource):
    kind = "camera"
    live = True
    api_preference = cv2.CAP_V4L2

    def __init__(self, uri: str, width: int | None = None, height: int | None = None, fps: float | None = None):
        super().__init__(uri)
        self.width, self.height, self.fps = width, height, fps

    def _target(self) -> str | int:
        return int(self.uri) if self.uri.isdigit() else self.uri

    def open(self) -> None:
        if not self.uri.isdigit() and not os.path.exists(self.uri):
            raise SourceError(f"camera device {self.uri} not present")
        super().open()

    def _configure(self, cap: cv2.VideoCapture) -> None:
        # MJPG lets USB cameras deliver full frame rates; one buffered frame keeps latency low.
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
