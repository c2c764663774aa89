"""GStreamer pipelines (Jetson CSI cameras: nvarguscamerasrc ! ... ! appsink)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2

from edge_agent.redact import hide_credentials
from edge_agent.sources.base import Source, SourceError
from edge_agent.sources.opencv import OpenCVSource

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig


def opencv_has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if "GStreamer" in line:
            return "YES" in line
    return False


class GStreamerSource(OpenCVSource):
    kind = "gstreamer"

    @classmethod
    def claims(cls, uri: str) -> bool:
        return "!" in uri

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri)
    live = True
    api_preference = cv2.CAP_GSTREAMER

    def open(self) -> None:
        if not opencv_has_gstreamer():
            raise SourceError(
                "this OpenCV build has no GStreamer support (the PyPI wheel lacks it); "
                "use the distribution's python3-opencv or a device path instead"
            )
        super().open()

    def describe(self) -> str:
        return f"gstreamer:{hide_credentials(self.uri.split('!', 1)[0].strip())} ! ..."  # rtspsrc location=URL
