"""What the status page shows, kept apart from the HTTP server so the pipeline can fill it without importing it."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np


class LiveView:
    """What the status page shows: written by the pipeline (reference swaps), read by HTTP threads."""

    def __init__(self, keep: int = 20):
        self.frame: tuple[np.ndarray, dict[str, Any]] | None = None
        self.predictions: deque[dict[str, Any]] = deque(maxlen=keep)  # newest first
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)
        self.frames_served = 0
        self._new = threading.Condition()

    def set_frame(self, image: np.ndarray, doc: dict[str, Any]) -> None:
        self.frame = (image, doc)
        with self._new:  # page requests waiting for the next frame get it now
            self._new.notify_all()

    def wait_newer(self, after: int, timeout_s: float) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The current frame once its number is above `after` (or after `timeout_s`, whatever it is)."""
        with self._new:
            self._new.wait_for(lambda: self.frame is not None and int(self.frame[1].get("seq", 0)) > after,
                               timeout_s)
        return self.frame

    def add_prediction(self, doc: dict[str, Any]) -> None:
        summary = {k: doc.get(k) for k in ("seq", "ts", "task", "classes", "detections", "scores", "source", "cached")}
        self.predictions.appendleft(summary)

    def add_event(self, doc: dict[str, Any]) -> None:
        self.events.appendleft(doc)
