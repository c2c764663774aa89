"""Frame sources: the registry of kinds and the one factory that reads a URI.

Adding a kind is one file (a `Source` subclass with `kind`, `claims` and `create`) and one line in
`SOURCES`. The kinds are asked in this order and the first that claims a URI opens it, so the more
specific ones come first and a plain video file, which claims anything, comes last.
"""

from __future__ import annotations

from edge_agent.config import SourceConfig
from edge_agent.sources.base import EndOfStream, Frame, FrameError, Source, SourceError, demo_video_path
from edge_agent.sources.camera import CameraSource
from edge_agent.sources.command import CommandSource
from edge_agent.sources.gstreamer import GStreamerSource
from edge_agent.sources.images import ImageSetSource
from edge_agent.sources.mjpeg import MjpegSource
from edge_agent.sources.replay import ReplaySource
from edge_agent.sources.rtsps import RtspsSource
from edge_agent.sources.stream import StreamSource
from edge_agent.sources.synthetic import SyntheticSource
from edge_agent.sources.video import VideoFileSource

__all__ = [
    "SOURCES", "EndOfStream", "Frame", "FrameError", "Source", "SourceError", "demo_video_path", "make_source",
    "source_kind",
]

SOURCES: list[type[Source]] = [
    SyntheticSource,
    ReplaySource,
    CommandSource,
    CameraSource,
    MjpegSource,
    RtspsSource,
    StreamSource,
    GStreamerSource,
    ImageSetSource,
    VideoFileSource,
]


def source_class(uri: str) -> type[Source]:
    for cls in SOURCES:
        if cls.claims(uri):
            return cls
    raise SourceError(f"no source kind reads {uri!r}")


def source_kind(uri: str) -> str:
    return source_class(uri).kind


def make_source(cfg: SourceConfig) -> Source:
    uri = str(demo_video_path()) if cfg.uri == "demo" else cfg.uri
    return source_class(uri).create(uri, cfg)
