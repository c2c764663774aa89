"""What the status page shows, kept apart from the HTTP server so the pipeline can fill it without importing it."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

#: A pipeline hands its frames' pictures to the live view (decoding each whole for it) this long after a
#: page last asked for one; unwatched, the frames are decoded at the scale the model needs.
WATCH_S = 10.0
#: The clock WATCH_S is kept on (a name of its own, for tests)
_clock = time.monotonic


class LiveView:
    """What the status page shows: written by the pipeline (reference swaps), read by HTTP threads."""

    def __init__(self, keep: int = 20):
        self.frame: tuple[np.ndarray, dict[str, Any]] | None = None
        self.predictions: deque[dict[str, Any]] = deque(maxlen=keep)  # newest first
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)
        self.frames_served = 0
        self._new = threading.Condition()
        self._watched_until = float("-inf")

    def watch(self) -> None:
        """A page asks for the live frame: the pipeline hands over its pictures for the next WATCH_S. The
        frame kept from when it was last watched is let go, so that the page is shown the camera as it
        is now, not as it was then."""
        now = _clock()
        with self._new:
            if now >= self._watched_until:
                self.frame = None
            self._watched_until = now + WATCH_S

    def watched(self) -> bool:
        """Whether a page asked for the live frame within the last WATCH_S."""
        return _clock() < self._watched_until

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
