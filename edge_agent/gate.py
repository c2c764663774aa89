"""Change gating: skip inference on frames that look like the last inferred one."""

from __future__ import annotations

import time

import cv2
import numpy as np

#: Thumbnail compared between frames: small enough to cost ~50 us, large enough to see a person enter.
_THUMB = (32, 24)


class ChangeGate:
    def __init__(self, threshold: float, max_age_s: float):
        self.threshold = threshold
        self.max_age_s = max_age_s
        self._last: np.ndarray | None = None
        self._last_t = 0.0
        self._thumb = np.empty((_THUMB[1], _THUMB[0]), np.uint8)
        self._small = np.empty((_THUMB[1], _THUMB[0], 3), np.uint8)

    def unchanged(self, image: np.ndarray) -> bool:
        """True when the frame may reuse the last result; otherwise it becomes the new reference."""
        cv2.resize(image, _THUMB, dst=self._small, interpolation=cv2.INTER_AREA)
        cv2.cvtColor(self._small, cv2.COLOR_BGR2GRAY, dst=self._thumb)
        now = time.monotonic()
        if (
            self._last is not None
            and now - self._last_t < self.max_age_s
            and float(cv2.absdiff(self._thumb, self._last).mean()) < self.threshold
        ):
            return True
        self._last = self._thumb.copy()
        self._last_t = now
        return False
