"""A CSV file replayed as a sensor: numeric columns are channels, a time column is skipped.

Read as spreadsheets and loggers write it: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of
the first column's name; the separator is a semicolon or a tab where the first line has one (Excel in
locales that write a decimal comma, which such files then have: `1,5;2,25`), else a comma; a column
named for time (`ts`, `time`, `timestamp`, `date`, `datetime`, `epoch`, with a unit such as `time_ms`
or `Time (s)`, or `millis`: `readings.is_time_column`) is skipped, whatever its values look like (an ISO
date too). A cell that is not a finite number is an error naming its line and column, not a reading: a
model fed NaN gives NaN.
"""

from __future__ import annotations

import csv
import math
import time
from array import array
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.signals.base import Chunk, EndOfStream, Pacer, SignalSource, SourceError
from edge_agent.signals.readings import is_time_column

if TYPE_CHECKING:
    from edge_agent.config import Settings

#: Rows handed over per chunk when not paced in real time.
_CHUNK_ROWS = 64


def _trimmed(row: list[str]) -> list[str]:
    """The row without the empty cells a spreadsheet leaves after the last column (`1,2,3,`)."""
    while row and not row[-1].strip():
        row.pop()
    return row


def _number(cell: str, decimal_comma: bool) -> float:
    """A cell's value; ValueError for anything but a finite number."""
    v = float(cell.replace(",", ".") if decimal_comma else cell)
    if not math.isfinite(v):
        raise ValueError(cell)
    return v


class CsvSource(SignalSource):
    kind = "csv"
    options = frozenset({"loop", "realtime"})
    signal_options = frozenset({"channels"})
    suffixes = (".csv", ".tsv")

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, cls.default_rate(s), s.source.loop, s.source.realtime, s.signal.channels)
    live = False
    watched = False  # a recording: silence there may be what was recorded

    def __init__(self, uri: str, path: str, rate: float, loop: bool, realtime: bool, channels: list[str] | None):
        super().__init__(uri, rate)
        self.path, self.loop, self.realtime, self.want = path, loop, realtime, channels
        self._data = np.zeros((0, 1), np.float32)
        self._pos = 0
        self._pacer: Pacer | None = None
        self._t0 = 0.0

    def open(self) -> None:
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                first = f.readline()
                delim = ";" if ";" in first else "\t" if "\t" in first else ","
                f.seek(0)
                values, names, cols = self._parse(csv.reader(f, delimiter=delim), decimal_comma=delim != ",")
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise SourceError(f"cannot read CSV {self.path}: {err}") from None
        self._data = np.frombuffer(values, np.float32).reshape(-1, len(cols))
        self.channels, self.channel_names = len(cols), tuple(names[i] for i in cols)
        self._pos = 0
        self._pacer = Pacer(self.rate)
        self._t0 = time.time()

    def _parse(self, reader: Any, decimal_comma: bool) -> tuple[array[float], list[str], list[int]]:
        """The chosen columns' values, row after row, as 32-bit floats as each row is read: a day of
        100 Hz readings is 8.6 million rows, and held as Python rows of strings (about 130 bytes a
        cell against 4) a 62 MB file had taken `predict` to 1.1 GB of RSS."""
        values: array[float] = array("f")
        names: list[str] = []
        cols: list[int] = []
        width = 0
        for raw in reader:
            if not any(c.strip() for c in raw):
                continue
            row = _trimmed(raw)
            if row[0].startswith("#"):
                continue
            line = reader.line_num
            if not names:
                try:
                    [_number(v, decimal_comma) for v in row]
                    header = None
                except ValueError:
                    header = [h.strip() for h in row]
                width = len(row)
                names = header or [f"ch{i}" for i in range(width)]
                cols = self._columns(names)
                if header:
                    continue
            if len(row) < width:
                raise SourceError(f"{self.path}: line {line} has {len(row)} fields, the first line {width}")
            for i in cols:
                try:
                    values.append(_number(row[i], decimal_comma))
                except ValueError:
                    raise SourceError(
                        f"{self.path}: line {line}, column {names[i]!r}: {row[i].strip()!r} is not a number "
                        "(signal.channels picks the columns to read)"
                    ) from None
        if not names:
            raise SourceError(f"{self.path}: empty")
        return values, names, cols

    def _columns(self, names: list[str]) -> list[int]:
        """Which columns are channels: those `signal.channels` names, else every one but time."""
        cols = [i for i, n in enumerate(names) if not is_time_column(n)]
        if self.want:
            missing = [c for c in self.want if c not in names]
            if missing:
                raise SourceError(f"{self.path}: no column {', '.join(missing)}")
            cols = [names.index(c) for c in self.want]
        if not cols:
            raise SourceError(f"{self.path}: no column other than time")
        return cols

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
