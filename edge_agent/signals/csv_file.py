"""A CSV file replayed as a sensor: numeric columns are channels, a time column is skipped."""

from __future__ import annotations

import csv
import time
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.signals.base import Chunk, EndOfStream, Pacer, SignalSource, SourceError

if TYPE_CHECKING:
    from edge_agent.config import Settings

_TIME_COLUMNS = ("ts", "t", "time", "timestamp", "time_s")
#: Rows handed over per chunk when not paced in real time.
_CHUNK_ROWS = 64


class CsvSource(SignalSource):
    kind = "csv"
    suffixes = (".csv",)

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, cls.default_rate(s), s.source.loop, s.source.realtime, s.signal.channels)
    live = False

    def __init__(self, uri: str, path: str, rate: float, loop: bool, realtime: bool, channels: list[str] | None):
        super().__init__(uri, rate)
        self.path, self.loop, self.realtime, self.want = path, loop, realtime, channels
        self._data = np.zeros((0, 1), np.float32)
        self._pos = 0
        self._pacer: Pacer | None = None
        self._t0 = 0.0

    def open(self) -> None:
        try:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise SourceError(f"cannot read CSV {self.path}: {err}") from None
        if not rows:
            raise SourceError(f"{self.path}: empty")
        header = None
        try:
            [float(v) for v in rows[0]]
        except ValueError:
            header, rows = [h.strip() for h in rows[0]], rows[1:]
        names = header or [f"ch{i}" for i in range(len(rows[0]) if rows else 0)]
        cols = [i for i, n in enumerate(names) if n.lower() not in _TIME_COLUMNS]
        if self.want:
            missing = [c for c in self.want if c not in names]
            if missing:
                raise SourceError(f"{self.path}: no column {', '.join(missing)}")
            cols = [names.index(c) for c in self.want]
        try:
            self._data = np.array([[float(r[i]) for i in cols] for r in rows], np.float32).reshape(-1, len(cols))
        except (ValueError, IndexError) as err:
            raise SourceError(f"{self.path}: {err}") from None
        self.channels, self.channel_names = len(cols), tuple(names[i] for i in cols)
        self._pos = 0
        self._pacer = Pacer(self.rate)
        self._t0 = time.time()

    def read(self, timeout: float) -> Chunk | None:
        p = self._pacer
        if p is None:
            raise SourceError("not open")
        if self._pos >= len(self._data):
            if not self.loop or not len(self._data):
                raise EndOfStream(self.path)
            self._pos = 0
        n = _CHUNK_ROWS
        if self.realtime:
            wait = p.wait_s()
            if wait > timeout:
                time.sleep(timeout)
                return None
            time.sleep(wait)
            n = max(1, p.due())
        x = self._data[self._pos : self._pos + n]
        self._pos += len(x)
        ts = self._t0 + p.done / self.rate
        p.done += len(x)
        return Chunk(x, ts, time.monotonic())
