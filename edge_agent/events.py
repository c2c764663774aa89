"""Scores over time -> events: one spoken word or one vibration burst is one event, not thirty windows.

Per label: the score is smoothed over the last `smoothing` windows; an event starts when the
smoothed score reaches `on`, ends when it falls below `off` (hysteresis, so a score hovering at
the threshold does not flap), and no new event of that label starts within `refractory_s` of the
last one's end.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

#: An active event is re-announced when its peak score rises by this much, at most once per second.
_UPDATE_DELTA = 0.05
_UPDATE_MIN_S = 1.0


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # new | update | end
    id: str
    label: str
    score: float  # peak smoothed score so far
    start_ts: float
    end_ts: float | None
    offset_s: float  # stream position (seconds since the source opened) where it started

    def as_dict(self) -> dict[str, object]:
        return {
            "type": self.type,
            "id": self.id,
            "label": self.label,
            "score": round(self.score, 5),
            "start_ts": round(self.start_ts, 6),
            "end_ts": None if self.end_ts is None else round(self.end_ts, 6),
            "offset_s": round(self.offset_s, 4),
        }


@dataclass
class _Track:
    scores: deque[float]
    active: Event | None = None
    peak_announced: float = 0.0
    last_update: float = 0.0
    refractory_until: float = float("-inf")
    last_ts: float = 0.0


class EventDetector:
    def __init__(
        self,
        on: float,
        off: float,
        smoothing: int = 1,
        refractory_s: float = 0.0,
        labels: Iterable[str] | None = None,
        id_prefix: str = "",
        numbers: Iterator[int] | None = None,
    ):
        """numbers: event numbers shared by every detector of one agent run, so ids stay unique across
        model swaps."""
        if not 0 <= off <= on <= 1:
            raise ValueError(f"need 0 <= off ({off}) <= on ({on}) <= 1")
        self.on, self.off, self.smoothing, self.refractory_s = on, off, max(1, smoothing), refractory_s
        self.labels = set(labels) if labels is not None else None
        self.id_prefix = id_prefix
        self._tracks: dict[str, _Track] = {}
        self._numbers = numbers if numbers is not None else itertools.count(1)
        self.counts = {"new": 0, "update": 0, "end": 0}
        self._last_ts = float("-inf")

    def reset(self) -> list[Event]:
        """Source restart or model swap: active events end now, smoothing starts over."""
        out = [self._end(label, t, t.last_ts) for label, t in self._tracks.items() if t.active is not None]
        self._tracks.clear()
        ended = [e for e in out if e is not None]
        self.counts["end"] += len(ended)
        return ended

    def update(self, scores: Mapping[str, float], ts: float, offset_s: float) -> list[Event]:
        """One window's scores (by label) at capture time `ts`; returns the events it causes. A live
        source's times follow the wall clock, which a board without a real-time clock sets at once when
        it reaches a time server: set back, the times held here move with it, or a refractory period
        would last as long as the step and the words in it would raise nothing."""
        if ts < self._last_ts:
            step = ts - self._last_ts
            for held in self._tracks.values():
                held.refractory_until += step
                held.last_update += step
                a = held.active
                if a is not None:
                    held.active = Event(a.type, a.id, a.label, a.score, a.start_ts + step, None, a.offset_s)
        self._last_ts = ts
        out: list[Event] = []
        for label, score in scores.items():
            if self.labels is not None and label not in self.labels:
                continue
            t = self._tracks.get(label)
            if t is None:
                t = self._tracks[label] = _Track(deque(maxlen=self.smoothing))
            t.scores.append(float(score))
            t.last_ts = ts
            s = sum(t.scores) / len(t.scores)
            if t.active is None:
                if s >= self.on and ts >= t.refractory_until:
                    ev = Event("new", f"{self.id_prefix}{next(self._numbers)}", label, s, ts, None, offset_s)
                    t.active, t.peak_announced, t.last_update = ev, s, ts
                    out.append(ev)
            elif s < self.off:
                end = self._end(label, t, ts)
                if end is not None:
                    out.append(end)
            else:
                a = t.active
                if s > a.score:
                    t.active = a = Event("new", a.id, label, s, a.start_ts, None, a.offset_s)
                if a.score >= t.peak_announced + _UPDATE_DELTA and ts - t.last_update >= _UPDATE_MIN_S:
                    t.peak_announced, t.last_update = a.score, ts
                    out.append(Event("update", a.id, label, a.score, a.start_ts, None, a.offset_s))
        for e in out:
            self.counts[e.type] += 1
        return out

    def _end(self, label: str, t: _Track, ts: float) -> Event | None:
        a = t.active
        if a is None:
            return None
        t.active = None
        t.refractory_until = ts + self.refractory_s
        t.scores.clear()
        return Event("end", a.id, label, a.score, a.start_ts, ts, a.offset_s)
