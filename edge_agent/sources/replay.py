"""Frames decoded once into memory and replayed: measures the agent's own work, not decoding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_agent.sources.base import EndOfStream, FrameError, Source, SourceError, demo_video_path
from edge_agent.sources.video import VideoFileSource

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig


class ReplaySource(Source):
    kind = "replay"
    live = False

    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.startswith("replay:")

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        path = uri.removeprefix("replay:")
        return cls(uri, str(demo_video_path()) if path in ("", "demo") else path, fps=cfg.fps)

    def __init__(self, uri: str, path: str, max_frames: int = 30, fps: float | None = None):
        super().__init__(uri)
        self.path = path
        self.max_frames = max_frames
        self.nominal_fps = fps
        self._frames: list[np.ndarray] = []
        self._pos = -1

    def open(self) -> None:
        if self._frames:
            return
        src = VideoFileSource(self.path, loop=False)  # which skips a frame that does not decode
        src.open()
        try:
            while len(self._frames) < self.max_frames:
                try:
                    self._frames.append(src.read())
                except FrameError:
                    continue
                except EndOfStream:
                    break
        finally:
            src.close()
        if not self._frames:
            raise SourceError(f"no frames could be decoded from {self.path}")

    def grab(self) -> None:
        self._pos = (self._pos + 1) % len(self._frames)

    def retrieve(self) -> np.ndarray:
        return self._frames[self._pos]
