"""One reading per line or message: CSV numbers, a JSON number, list, or {"name": value} object."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence

import numpy as np

from edge_agent.signals.base import Chunk, SignalSource

log = logging.getLogger(__name__)

#: A time column's name, once lower-cased and stripped of a unit in brackets: `ts`, `Time (s)`, `time_ms`, and
#: a microcontroller's `millis` / `ms`.
_TIME_COLUMN = re.compile(
    r"(ts|t|time|timestamp|date|datetime|epoch|elapsed)([ _-]?(s|ms|us|ns|sec|secs|seconds))?|ms|millis|micros"
)
_UNIT = re.compile(r"\s*[(\[].*[)\]]\s*$")
#: A column's name in a header line: an identifier, with a unit in brackets or not.
_NAME = re.compile(r"[A-Za-z_][\w.\-]*(\s*[(\[][^)\]]*[)\]])?")
#: The most values one reading may hold: a line or message with more is not a sensor's reading.
MAX_VALUES = 1024
#: What `ReadingParser.parse` returns for a header line: the names of the readings after it, not a reading.
HEADER = np.zeros(0, np.float32)


def is_time_column(name: str) -> bool:
    """Whether a column or key of that name is when a reading was taken rather than a reading."""
    return _TIME_COLUMN.fullmatch(_UNIT.sub("", name).strip().lower()) is not None


def _header(parts: list[str]) -> list[str] | None:
    """Column names, when a line has two fields or more and each is a name (`acc_x`, `Time (s)`; not a
    number such as `nan`): a device's boot message ("Calibrating...") is not a header."""
    names = [p.strip() for p in parts]
    if len(names) < 2 or not all(_NAME.fullmatch(n) for n in names):
        return None
    for n in names:
        try:
            float(n)
        except ValueError:
            continue
        return None
    return names


class ReadingParser:
    """Keeps channel order: configured names, else the first object's keys (or a CSV header's columns),
    else positions. A CSV header line (a device that prints one when it starts, or again after a reset)
    names the columns of the lines after it: `signal.channels` then picks columns by name, and a time
    column is left out."""

    def __init__(self, channels: list[str] | None):
        self.want: list[str] | None = list(channels) if channels else None
        self.names: list[str] | None = list(self.want) if self.want else None
        self._cols: list[int] | None = None  # the columns read, after a header
        self._width = 0  # the header's fields

    def parse(self, text: str | bytes) -> np.ndarray | None:
        """A row of floats; HEADER for a line of column names (`_set_header`); None for anything else that is
        not a reading (a boot message, garbage), which the source counts as dropped."""
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
            except (ValueError, RecursionError):  # RecursionError: brackets nested past the parser's depth
                v = None
            if isinstance(v, dict):
                return self._from_dict(v)
            if isinstance(v, list):
                return _floats(v)
        parts = s.replace(";", ",").split(",")
        row = _floats(parts)
        if row is None:
            names = _header(parts)
            return HEADER if names is not None and self._set_header(names) else None
        if self._cols is None or len(row) != self._width:
            return row  # no header, or a line that is not of its width: by position
        return row[self._cols]

    def _set_header(self, names: list[str]) -> bool:
        """Read the lines after it by these names; False (not a header) where it lacks a wanted channel."""
        if self.want:
            missing = [n for n in self.want if n not in names]
            if missing:
                log.warning("a line of names (%s) without %s: not taken as a header", ",".join(names),
                            ", ".join(missing))
                return False
            self._cols = [names.index(n) for n in self.want]
        else:
            self._cols = [i for i, n in enumerate(names) if not is_time_column(n)]
            self.names = [names[i] for i in self._cols]
        self._width = len(names)
        return True

    def _from_dict(self, d: dict[str, object]) -> np.ndarray | None:
        if "values" in d and isinstance(d["values"], list):
            return _floats(d["values"])
        names = self.names
        if names is None:  # the first object with numbers names the channels (not a status message before it)
            names = [k for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)]
            names = [k for k in names if not is_time_column(k)]
            if not names:
                return None
            self.names = names
        try:
            return _floats([d[k] for k in names])
        except KeyError:
            return None


def _floats(items: Sequence[object]) -> np.ndarray | None:
    if len(items) > MAX_VALUES:
        return None
    try:
        with np.errstate(over="ignore"):  # past float32's range: inf, refused below
            row = np.array([float(x) for x in items], np.float32)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past a float's range
        return None
    if row.size == 0 or not np.all(np.isfinite(row)):
        return None
    return row


class ReadingSource(SignalSource):
    """A source of one reading at a time (serial lines, MQTT messages): the first reading fixes the channels."""

    signal_options = frozenset({"channels"})

    def __init__(self, uri: str, rate: float, channels: list[str] | None):
        super().__init__(uri, rate)
        self.parser = ReadingParser(channels)
        self._width: int | None = None

    def _take(self, row: np.ndarray | None, rows: list[np.ndarray]) -> None:
        """Keep a reading of the stream's width; count anything else as dropped (a header is neither)."""
        if row is HEADER:
            return
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
