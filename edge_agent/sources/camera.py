"""Local cameras: an index ('0') or a V4L2 device path: /dev/videoN, or the names udev keeps for a
camera whatever order the cameras were found in at boot (/dev/v4l/by-id/..., /dev/v4l/by-path/...),
which a box with two USB cameras needs: /dev/video0 may be either after a reboot."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import cv2

from edge_agent.sources.base import Source, SourceError
from edge_agent.sources.opencv import OpenCVSource

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig


class CameraSource(OpenCVSource):
    kind = "camera"

    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.isdigit() or uri.startswith(("/dev/video", "/dev/v4l/"))

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri, cfg.width, cfg.height, cfg.fps)
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
