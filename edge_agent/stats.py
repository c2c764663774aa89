"""Per-stage counters and latency windows that the health reporter and watchdog read."""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

WINDOW = 2048  # latency samples kept per series: enough for stable p99 at 30 fps over a minute
#: Upper bounds (ms) of the cumulative latency histogram that /metrics exposes (in seconds there):
#: from sub-millisecond accelerator calls to multi-second stalls.
BUCKETS_MS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


class FailureLog:
    """A source's failures in the log: the same failure again (a camera that drops each connection after a
    frame or two is reopened every reopen_min_s) at most once every `every_s`, with how many the log left
    out; and of the opens between such failures, the first after each failure logged, so that a recovery
    is always said. Logged each time, it was two lines a reopen, 170,000 a day, for months; health counts every one."""

    def __init__(self, log: logging.Logger, every_s: float = 60.0):
        self.log, self.every_s = log, every_s
        self._said, self._said_at, self._unsaid, self._open_said = "", float("-inf"), 0, False

    def failed(self, what: str, why: str, delay: float) -> None:
        """`{what}: {why}; retrying in {delay} s`, unless `why` was logged less than every_s ago."""
        now = time.monotonic()
        if why == self._said and now - self._said_at < self.every_s:
            self._unsaid += 1
            return
        more = f" ({self._unsaid} failures not logged since the last line)" if self._unsaid else ""
        self.log.warning("%s: %s; retrying in %.1f s%s", what, why, delay, more)
        self._said, self._said_at, self._unsaid, self._open_said = why, now, 0, False

    def opened(self, what: str, desc: str) -> None:
        """`{what}: {desc}`, but for an open that follows a failure left out of the log where an open
        has been logged since the last failure logged (a source that hangs up each time). An open after
        no failure (a source changed on reload, a reader started again after a stall) is always logged."""
        if self._open_said and self._unsaid:
            return
        after = f" (after {self._unsaid} failures not logged)" if self._unsaid else ""
        self.log.info("%s: %s%s", what, desc, after)
        self._open_said, self._unsaid = True, 0


class ErrorLog:
    """A stage's errors at its loop boundary (inference and post-processing, run on every frame or
    window): each kind (the exception's type and the line that raised it) logged with its traceback at
    most once every `every_s`, with how many of that kind the log left out since. A model or decoder
    failing on every frame wrote a traceback 15 to 30 times a second for as long as it lasted, into a
    journal that may sit on an SD card; health counts every error (`StageStats.error`)."""

    def __init__(
        self, log: logging.Logger, every_s: float = 60.0, kinds: int = 64, clock: Callable[[], float] = time.monotonic
    ):
        self.log, self.every_s, self.kinds, self.clock = log, every_s, kinds, clock
        self._said: dict[tuple[str, str], tuple[float, int]] = {}  # kind -> (logged at, left out since)
        self._lock = threading.Lock()  # a stage may run on several threads (frames run to completion)

    def exception(self, err: BaseException, msg: str, *args: object) -> None:
        """`log.exception(msg, *args)` for `err`, unless its kind was logged less than every_s ago."""
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        kind = (type(err).__name__, f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "")
        now = self.clock()
        with self._lock:
            at, left = self._said.get(kind, (float("-inf"), 0))
            if now - at < self.every_s:
                self._said[kind] = (at, left + 1)
                return
            self._said.pop(kind, None)
            if len(self._said) >= self.kinds:  # the kind logged longest ago makes room
                self._said.pop(min(self._said, key=lambda k: self._said[k][0]))
            self._said[kind] = (now, 0)
        more = f" ({left} more like it not logged since the last)" if left else ""
        self.log.error("%s%s", msg % args if args else msg, more, exc_info=err)


class LatencyWindow:
    """Recent samples for percentiles (health over MQTT), and counts since start per bucket for a
    Prometheus histogram, which unlike percentiles adds up across pipelines and devices."""

    def __init__(self, size: int = WINDOW):
        self._buf = np.zeros(size, np.float64)
        self._n = 0
        self.buckets = [0] * (len(BUCKETS_MS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total_ms = 0.0

    @property
    def count(self) -> int:
        return self._n

    def add(self, ms: float) -> None:
        self._buf[self._n % len(self._buf)] = ms
        self._n += 1
        self.buckets[bisect_left(BUCKETS_MS, ms)] += 1
        self.total_ms += ms

    def percentiles(self) -> dict[str, float] | None:
        """p50, p95 and p99 as numpy's default (linear) `percentile` gives them, from one sort: through
        `np.percentile` they cost 0.29 ms of CPU a full series here, this 0.036; a health document,
        with five series a pipeline, went from 5.5-5.9 ms to 4.5 with one pipeline."""
        n = min(self._n, len(self._buf))
        if n == 0:
            return None
        s = np.sort(self._buf[:n])
        return {k: round(_linear(s, q), 3) for k, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


def _linear(s: np.ndarray, q: float) -> float:
    """The q-quantile of sorted `s`, interpolated between the two samples either side of (n - 1) * q."""
    pos = (len(s) - 1) * q
    lo = int(pos)
    a = float(s[lo])
    if lo + 1 >= len(s):
        return a
    return a + (float(s[lo + 1]) - a) * (pos - lo)


class StageStats:
    """Written by one stage thread; read by the health thread (plain ints: safe under the GIL)."""

    def __init__(self, name: str):
        self.name = name
        self.count = 0
        self.errors = 0
        self.drops: Counter[str] = Counter()
        self.last_error: str | None = None
        self.last_error_ts: float | None = None
        self.heartbeat = time.monotonic()  # loop alive
        self.last_progress: float | None = None  # last unit of work done
        self.first_progress: float | None = None  # first unit of work: where its rates start
        self.latency: dict[str, LatencyWindow] = {}
        self.state = "starting"
        self._lock = threading.Lock()

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def done(self, n: int = 1) -> None:
        self.count += n
        self.last_progress = self.heartbeat = time.monotonic()
        if self.first_progress is None:
            self.first_progress = self.last_progress

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.drops[reason] += n

    def error(self, msg: str) -> None:
        self.errors += 1
        self.last_error = msg
        self.last_error_ts = time.time()

    def percentiles(self) -> dict[str, dict[str, float] | None]:
        """Each series' percentiles, for a reader on another thread: the stage adds a series at its first
        sample, so the dict is copied at once (atomic under the GIL) before the slow part runs."""
        return {k: w.percentiles() for k, w in list(self.latency.items())}

    def observe(self, series: str, ms: float) -> None:
        w = self.latency.get(series)
        if w is None:
            w = self.latency[series] = LatencyWindow()
        w.add(ms)


def pipeline_counts(capture: StageStats, infer: StageStats, post: StageStats, skipped: int = 0) -> dict[str, Any]:
    """A pipeline's frames (or windows) by stage, and its drops by reason, for health."""
    return {
        "captured": capture.count,
        "inferred": infer.count,
        "published": post.count,
        "skipped_unchanged": skipped,
        "dropped": {**dict(capture.drops), **dict(post.drops)},
    }
