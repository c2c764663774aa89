"""Frames decoded once into memory and replayed: measures the agent's own work, not decoding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge_agent.sources.base import Source, SourceError, demo_video_path
from edge_agent.sources.opencv import BAD_FRAMES_IN_A_ROW

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
        cap = cv2.VideoCapture(self.path)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        tried = bad = 0
        while len(self._frames) < self.max_frames:
            ok, img = cap.read()
            tried += 1
            if ok:
                self._frames.append(img)
                bad = 0
                continue
            # a corrupt frame fails as the end does; before the file's last frame, the next one is read
            bad += 1
            if bad >= BAD_FRAMES_IN_A_ROW or tried >= count:
                break
        cap.release()
        if not self._frames:
            raise SourceError(f"no frames could be decoded from {self.path}")

    def grab(self) -> None:
        self._pos = (self._pos + 1) % len(self._frames)

    def retrieve(self) -> np.ndarray:
        return self._frames[self._pos]
