"""Sliding windows over a stream of frames (samples or feature vectors), exact across chunk boundaries.

Window k covers frames [k*hop, k*hop + length): nothing is lost or counted twice however the
stream is chunked, and a hop longer than the window skips the frames in between on purpose.
"""

from __future__ import annotations

import numpy as np


class Windower:
    def __init__(self, length: int, hop: int, channels: int):
        if length < 1 or hop < 1 or channels < 1:
            raise ValueError(f"window length, hop and channels must be >= 1 (got {length}, {hop}, {channels})")
        self.length, self.hop, self.channels = length, hop, channels
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros((0, self.channels), np.float32)
        self._skip = 0  # frames still to discard when hop > length
        self.consumed = 0  # frames pushed since the last reset
        self.emitted = 0  # windows produced since the last reset

    @property
    def next_start(self) -> int:
        """Stream index of the first frame of the next window."""
        return self.emitted * self.hop

    def push(self, frames: np.ndarray) -> list[np.ndarray]:
        """Add frames ([n, channels]); return every window they complete, oldest first (copies)."""
        x = np.asarray(frames, np.float32).reshape(-1, self.channels)
        self.consumed += len(x)
        if self._skip:
            cut = min(self._skip, len(x))
            x, self._skip = x[cut:], self._skip - cut
        buf = np.concatenate([self._buf, x]) if len(self._buf) else x
        out: list[np.ndarray] = []
        start = 0
        while len(buf) - start >= self.length:
            out.append(buf[start : start + self.length].copy())
            start += self.hop
        self.emitted += len(out)
        if start > len(buf):
            self._skip = start - len(buf)
            start = len(buf)
        self._buf = buf[start:].copy()
        return out
