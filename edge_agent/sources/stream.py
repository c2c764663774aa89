"""Network streams (RTSP, HLS, video over HTTP) through FFmpeg, with open and read timeouts; HTTP MJPEG
cameras are read by `mjpeg`, which hands anything else here."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import cv2

from edge_agent.sources.base import Source
from edge_agent.sources.opencv import OpenCVSource

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig


class StreamSource(OpenCVSource):
    kind = "stream"

    @classmethod
    def claims(cls, uri: str) -> bool:
        # http(s):// is claimed first by `mjpeg`, which hands what is not MJPEG back to this class, and
        # rtsps:// by `rtsps`, which verifies the camera's certificate and hands FFmpeg a relay
        return re.match(r"^(rtsp|rtsps|rtmp|udp|tcp)://", uri) is not None

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri, cfg.read_timeout_s)
    live = True
    api_preference = cv2.CAP_FFMPEG

    def __init__(self, uri: str, timeout_s: float = 5.0):
        super().__init__(uri)
        self.timeout_ms = int(timeout_s * 1000)

    def _open_params(self) -> list[int]:
        # FFmpeg otherwise waits ~30 s on a dead camera; the capture loop has its own deadline too.
        return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]

    def describe(self) -> str:
        return f"stream:{public_url(self.uri)}"


def public_url(uri: str) -> str:
    """A stream URL as logs and health show it: scheme and host only (they often carry credentials)."""
    scheme, _, rest = uri.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/..."
