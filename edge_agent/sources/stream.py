"""Network streams (RTSP, HTTP MJPEG/HLS) through FFmpeg, with open and read timeouts."""

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
        return re.match(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", uri) is not None

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
        # Stream URLs often carry credentials: show scheme and host only.
        scheme, _, rest = self.uri.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        return f"stream:{scheme}://{host}/..."
