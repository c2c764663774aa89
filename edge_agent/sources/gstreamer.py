"""GStreamer pipelines (Jetson CSI cameras: nvarguscamerasrc ! ... ! appsink)."""

from __future__ import annotations

import cv2

from edge_agent.sources.base import SourceError
from edge_agent.sources.opencv import OpenCVSource


def opencv_has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if "GStreamer" in line:
            return "YES" in line
    return False


class GStreamerSource(OpenCVSource):
    kind = "gstreamer"
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
        return f"gstreamer:{self.uri.split('!', 1)[0].strip()} ! ..."
