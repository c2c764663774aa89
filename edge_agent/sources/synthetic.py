"""A synthetic test pattern: moving shapes on a gradient, for checks without a camera."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge_agent.sources.base import Source, SourceError

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig

_SIZE = re.compile(r"^synthetic(?::(\d+)x(\d+))?$")


def pattern(width: int, height: int, t: int) -> np.ndarray:
    """Deterministic BGR frame number t."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 0.5 + y * 0.5).astype(np.uint8)
    img[..., 1] = np.broadcast_to(y, (height, width)).astype(np.uint8)
    img[..., 2] = np.broadcast_to(255 - x, (height, width)).astype(np.uint8)
    cx = int((t * 7) % width)
    cy = int(height / 2 + height / 4 * np.sin(t / 15))
    cv2.circle(img, (cx, cy), max(4, height // 10), (255, 255, 255), -1)
    cv2.rectangle(img, (width // 8, height // 8), (width // 8 + width // 6, height // 8 + height // 6), (0, 0, 0), -1)
    cv2.putText(img, str(t), (10, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 255), 2)
    return img


class SyntheticSource(Source):
    kind = "synthetic"
    live = False

    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.startswith("synthetic")

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        m = _SIZE.match(uri)
        if m is None:
            raise SourceError(f"bad synthetic source '{uri}': use synthetic or synthetic:WIDTHxHEIGHT")
        w, h = (int(m.group(1)), int(m.group(2))) if m.group(1) else (640, 480)
        return cls(uri, w, h, cfg.fps or 30.0)

    def __init__(self, uri: str, width: int = 640, height: int = 480, fps: float | None = 30.0):
        super().__init__(uri)
        self.width, self.height = width, height
        self.nominal_fps = fps
        self._t = -1

    def open(self) -> None:
        self._t = -1

    def grab(self) -> None:
        self._t += 1

    def retrieve(self) -> np.ndarray:
        return pattern(self.width, self.height, self._t)
