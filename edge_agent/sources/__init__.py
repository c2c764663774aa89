"""Frame sources: the registry of kinds and the one factory that reads a URI."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from pathlib import Path

from edge_agent.config import SourceConfig
from edge_agent.sources.base import EndOfStream, Frame, Source, SourceError
from edge_agent.sources.camera import CameraSource
from edge_agent.sources.gstreamer import GStreamerSource
from edge_agent.sources.images import ImageSetSource
from edge_agent.sources.replay import ReplaySource
from edge_agent.sources.stream import StreamSource
from edge_agent.sources.synthetic import SyntheticSource
from edge_agent.sources.video import VideoFileSource

__all__ = ["SOURCES", "EndOfStream", "Frame", "Source", "SourceError", "demo_video_path", "make_source", "source_kind"]

DEMO_VIDEO = "demo.avi"

SOURCES: dict[str, Callable[[str, SourceConfig], Source]] = {
    "camera": lambda uri, c: CameraSource(uri, c.width, c.height, c.fps),
    "file": lambda uri, c: VideoFileSource(uri, c.loop),
    "stream": lambda uri, c: StreamSource(uri, c.read_timeout_s),
    "gstreamer": lambda uri, c: GStreamerSource(uri),
    "images": lambda uri, c: ImageSetSource(uri, c.loop, c.fps),
    "synthetic": lambda uri, c: _synthetic(uri, c),
    "replay": lambda uri, c: ReplaySource(uri, _replay_path(uri), fps=c.fps),
}


def _replay_path(uri: str) -> str:
    path = uri.removeprefix("replay:")
    return str(demo_video_path()) if path in ("", "demo") else path


_SIZE = re.compile(r"^synthetic(?::(\d+)x(\d+))?$")


def _synthetic(uri: str, c: SourceConfig) -> Source:
    m = _SIZE.match(uri)
    if m is None:
        raise SourceError(f"bad synthetic source '{uri}': use synthetic or synthetic:WIDTHxHEIGHT")
    w, h = (int(m.group(1)), int(m.group(2))) if m.group(1) else (640, 480)
    return SyntheticSource(uri, w, h, c.fps or 30.0)


def demo_video_path() -> Path:
    for base in (Path(__file__).resolve().parents[2] / "models", Path("/usr/share/edge-agent/models")):
        if (base / DEMO_VIDEO).is_file():
            return base / DEMO_VIDEO
    raise SourceError(f"demo video {DEMO_VIDEO} not found; run scripts/fetch_models.py")


def source_kind(uri: str) -> str:
    if uri.startswith("synthetic"):
        return "synthetic"
    if uri.startswith("replay:"):
        return "replay"
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "camera"
    if re.match(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", uri):
        return "stream"
    if "!" in uri:
        return "gstreamer"
    if os.path.isdir(uri) or glob.has_magic(uri):
        return "images"
    return "file"


def make_source(cfg: SourceConfig) -> Source:
    uri = str(demo_video_path()) if cfg.uri == "demo" else cfg.uri
    kind = source_kind(uri)
    if kind == "file" and uri.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".webp")):
        kind = "images"
    return SOURCES[kind](uri, cfg)
