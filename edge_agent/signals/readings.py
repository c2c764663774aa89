"""One reading per line or message: CSV numbers, a JSON number, list, or {"name": value} object."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np

from edge_agent.signals.base import Chunk, SignalSource


class ReadingParser:
    """Keeps channel order: configured names, else the first object's keys, else positions."""

    def __init__(self, channels: list[str] | None):
        self.names: list[str] | None = list(channels) if channels else None

    def parse(self, text: str | bytes) -> np.ndarray | None:
        """A row of floats, or None when the line is not a reading (header, garbage)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                return None
        s = text.strip()
        if not s:
            return None
        if s[0] in "[{" or s[0].isdigit() or s[0] in "-+.":
            try:
                v = json.loads(s) if s[0] in "[{" else None
            except ValueError:
                v = None
            if isinstance(v, dict):
                return self._from_dict(v)
            if isinstance(v, list):
                return _floats(v)
        return _floats(s.replace(";", ",").split(","))

    def _from_dict(self, d: dict[str, object]) -> np.ndarray | None:
        if "values" in d and isinstance(d["values"], list):
            return _floats(d["values"])
        if self.names is None:
            self.names = [k for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)]
            self.names = [k for k in self.names if k not in ("ts", "time", "timestamp", "t")]
        try:
            return _floats([d[k] for k in self.names])
        except KeyError:
            return None


def _floats(items: Sequence[object]) -> np.ndarray | None:
    try:
        row = np.array([float(x) for x in items], np.float32)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if row.size == 0 or not np.all(np.isfinite(row)):
        return None
    return row


class ReadingSource(SignalSource):
    """A source of one reading at a time (serial lines, MQTT messages): the first reading fixes the channels."""

    def __init__(self, uri: str, rate: float, channels: list[str] | None):
        super().__init__(uri, rate)
        self.parser = ReadingParser(channels)
        self._width: int | None = None

    def _take(self, row: np.ndarray | None, rows: list[np.ndarray]) -> None:
        """Keep a reading of the stream's width; count anything else as dropped."""
        if row is None:
            self.dropped += 1
            return
        if self._width is None:
            self._width, self.channels = len(row), len(row)
            self.channel_names = tuple(self.parser.names or (f"ch{i}" for i in range(len(row))))
        if len(row) != self._width:
            self.dropped += 1
            return
        rows.append(row)

    def _chunk(self, rows: list[np.ndarray]) -> Chunk | None:
        """Readings that arrived together, the last one stamped now and the others spaced at the nominal rate."""
        if not rows:
            return None
        return Chunk(np.stack(rows), time.time() - (len(rows) - 1) / self.rate, time.monotonic())
