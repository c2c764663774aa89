"""Local cameras: an index ('0') or a V4L2 device path: /dev/videoN, or the names udev keeps for a
camera whatever order the cameras were found in at boot (/dev/v4l/by-id/..., /dev/v4l/by-path/...),
which a box with two USB cameras needs: /dev/video0 may be either after a reboot."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge_agent.sources.base import Source, SourceError
from edge_agent.sources.opencv import OpenCVSource
from edge_agent.system import present_nodes

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig


class CameraSource(OpenCVSource):
    kind = "camera"
    options = frozenset({"width", "height"})

    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.isdecimal() or uri.startswith(("/dev/video", "/dev/v4l/"))

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri, cfg.width, cfg.height, cfg.fps)
    live = True
    api_preference = cv2.CAP_V4L2

    def __init__(self, uri: str, width: int | None = None, height: int | None = None, fps: float | None = None):
        super().__init__(uri)
        self.width, self.height, self.fps = width, height, fps

    def _target(self) -> str | int:
        return int(self.uri) if self.uri.isdecimal() else self.uri

    def open(self) -> None:
        node = f"/dev/video{int(self.uri)}" if self.uri.isdecimal() else self.uri
        if not os.path.exists(node):  # camera N is /dev/videoN to V4L2
            said = f"camera {self.uri}: no {node}" if self.uri.isdecimal() else f"camera device {self.uri} not present"
            raise SourceError(f"{said} ({present_cameras()})")
        try:
            super().open()
        except SourceError as err:
            raise self._named(err) from None

    def grab(self) -> None:
        try:
            super().grab()
        except SourceError as err:
            raise self._named(err) from None

    def retrieve(self) -> np.ndarray:
        try:
            return super().retrieve()
        except SourceError as err:
            raise self._named(err) from None

    def _named(self, err: SourceError) -> SourceError:
        """A failure that says what the node is, where it is no camera OpenCV can read: on a Raspberry
        Pi, /dev/video0 is often a camera module's raw sensor node, which only libcamera drives."""
        hint = node_hint(self.uri)
        return err if hint is None else SourceError(f"{err}: {hint}")

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


#: What V4L2 node names (sysfs `name`) of a Raspberry Pi's own video blocks contain, and what each is
_PI_NODES = (
    (("unicam", "rp1-cfe"), "a Raspberry Pi camera module's raw sensor node, which only libcamera drives: use "
     "source.uri = 'rpicam' (rpicam-vid)"),
    (("bcm2835-codec", "bcm2835-isp", "pispbe", "rpivid", "hevc-dec"), "the Raspberry Pi's video codec or "
     "image processor, not a camera"),
)


def present_cameras(dev: str = "/dev") -> str:
    """The V4L2 nodes there are (`system.present_nodes`), for the error of a camera that is not there."""
    return present_nodes(dev, ("video*",), "v4l/by-id",
                         "no /dev/video* at all: no camera is connected, or this process may not see it")


def node_hint(device: str, sysfs: str = "/sys/class/video4linux") -> str | None:
    """What a V4L2 node is, where its name says it is none that OpenCV reads as a camera; else None."""
    node = f"video{int(device)}" if device.isdigit() else os.path.basename(os.path.realpath(device))
    try:
        with open(os.path.join(sysfs, node, "name")) as f:
            name = f.read().strip()
    except OSError:
        return None
    for prefixes, what in _PI_NODES:
        if any(p in name for p in prefixes):
            return f"{node} is {name!r}, {what}"
    return None
