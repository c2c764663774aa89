"""The capture stage: one thread reads the source into a latest-wins slot.

Pacing: an fps cap drops surplus frames without decoding them; files play at their own rate
(or, with realtime off, as fast as inference takes them; such a consumer-paced frame may instead go
straight to `consume`, on this thread, where the pipeline runs its stages to completion). Recovery:
a source that fails is reopened with exponential backoff, and a read that blocks past the deadline is
abandoned to a fresh reader, so a dead camera or stream never hangs the agent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from edge_agent.config import SourceConfig
from edge_agent.handoff import LatestSlot
from edge_agent.picture import PictureWatch
from edge_agent.sources import EndOfStream, Frame, FrameError, Source, SourceError
from edge_agent.stats import FailureLog, StageStats

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_WATCH_INTERVAL_S = 0.25
#: A read is abandoned this long after `source.read_timeout_s`: sources that keep the timeout themselves
#: (a command's first picture, an HTTP camera's part) fail at it saying why (the command's last words),
#: and the watch, firing within the same few milliseconds, took their place with "read blocked".
_WATCH_GRACE_S = 1.0
#: take() timeout for consumer-paced sources, so the reader still notices stop.
_POLL_S = 0.2
#: Distinct undecodable files or frames logged by name; the rest are only counted.
_UNDECODABLE_LOGGED = 100


class Capture:
    def __init__(
        self,
        factory: Callable[[], Source],
        cfg: SourceConfig,
        slot: LatestSlot[Frame],
        stats: StageStats,
        stop: threading.Event,
        name: str = "",
    ):
        """name: the pipeline's, which its threads' names start with (a stack dump, a log line or a per-thread
        CPU count then says which camera); none in the single form, which keeps its names."""
        self.factory = factory
        self._prefix = f"{name}-" if name else ""
        self.cfg = cfg
        self.slot = slot
        self.stats = stats
        self.stop = stop
        self.reopens = 0
        self._undecodable: set[str] = set()  # messages already logged
        self._failures = FailureLog(log)
        self.stalls = 0
        self.finished = threading.Event()  # a non-looping file or image set ran out
        self.source_desc = ""
        self.frame_size: tuple[int, int] | None = None
        self._gen = 0
        self._last_read = time.monotonic()
        self._reading = False
        self._threads: list[threading.Thread] = []
        self._index = 0
        #: a file's clock: the wall time it was opened at (its frames are stamped by their place in it)
        self._t0_wall = 0.0
        self._last_ts = 0.0
        #: may take a consumer-paced frame on the reader's thread instead of the slot (True when it did):
        #: nothing is dropped or goes stale while the reader waits for its consumer
        self.consume: Callable[[Frame], bool] | None = None
        #: how many times smaller (1, 2, 4 or 8) a frame of (width, height) may be decoded, asked before
        #: each decode (the pipeline's needs change with its model, its scene and an update on probation)
        self.reduce: Callable[[int, int], int] | None = None
        #: how many times smaller the last frame was decoded
        self.decode_scale = 1
        #: a live source's picture, looked at once a second: frozen or blank (`edge_agent.picture`); None
        #: until a live source opened (a file or a folder of pictures may show one still picture by design)
        self.picture: PictureWatch | None = None
        #: whether the source gives frames at its own pace (a camera, a stream, a snapshot URL polled)
        self.live = False

    def start(self) -> None:
        self._spawn_reader()
        watch = threading.Thread(target=self._watch, name=f"{self._prefix}capture-watch", daemon=True)
        watch.start()
        self._threads.append(watch)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def restart(self) -> None:
        """Reopen the source with the current settings (a new reader; the old one winds down)."""
        self._spawn_reader()

    def _spawn_reader(self) -> None:
        self._gen += 1
        self._last_read = time.monotonic()
        t = threading.Thread(
            target=self._reader, args=(self._gen,), name=f"{self._prefix}capture-{self._gen}", daemon=True
        )
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _watch(self) -> None:
        while not self.stop.wait(_WATCH_INTERVAL_S):
            try:
                if self._reading and time.monotonic() - self._last_read > self.cfg.read_timeout_s + _WATCH_GRACE_S:
                    self.stalls += 1
                    self.stats.state = "stalled"
                    self.stats.error(f"source read blocked > {self.cfg.read_timeout_s:g} s; starting a new reader")
                    log.warning("capture read blocked for %.1f s; abandoning the reader", self.cfg.read_timeout_s)
                    self._reading = False
                    self._spawn_reader()
            except Exception as err:  # the watch must outlive anything odd
                log.exception("capture watch error")
                self.stats.error(f"watch: {err}")

    def _reader(self, gen: int) -> None:
        src: Source | None = None
        delay = self.cfg.reopen_min_s
        while not self.stop.is_set() and gen == self._gen:
            self.stats.beat()
            try:
                if src is None:
                    src = self.factory()
                    self.source_desc = src.describe()
                    self.stats.state = "opening"
                    self._timed(src.open)
                    if gen != self._gen:
                        break
                    self.stats.state = "running"
                    self.live = src.live or src.polled
                    if (src.live or src.polled) and self.picture is None:
                        self.picture = PictureWatch()
                    self._failures.opened("source open", self.source_desc)
                    t0_mono = time.monotonic()
                    # never before a frame already stamped: a file consumed faster than it plays runs
                    # ahead of the wall clock, and one reopened must not go back in time
                    self._t0_wall = max(time.time(), self._last_ts + 1e-3)
                    n_played = 0
                    next_due = t0_mono
                outcome = self._pace_and_read(src, gen, t0_mono, n_played, next_due)
                if outcome != "idle":
                    n_played += 1
                if outcome == "delivered" and self.cfg.fps:
                    next_due = max(next_due + 1.0 / self.cfg.fps, time.monotonic() - 1.0 / self.cfg.fps)
                delay = self.cfg.reopen_min_s
            except FrameError as err:  # one frame lost, the source goes on
                n_played += 1  # a file played at its own rate keeps its clock
                self.stats.drop("undecodable")
                self.stats.error(str(err))
                if len(self._undecodable) < _UNDECODABLE_LOGGED and str(err) not in self._undecodable:
                    self._undecodable.add(str(err))  # each bad file or frame once: a looping set repeats them
                    log.warning("%s: skipped", err)
            except EndOfStream:
                self.stats.state = "finished"
                self.finished.set()
                log.info("source finished: %s", self.source_desc)
                break
            except SourceError as err:
                if src is not None:
                    src.close()
                src = None
                self.reopens += 1
                self.stats.state = "reconnecting"
                self.stats.error(str(err))
                self._failures.failed("source failed", str(err), delay)
                if self._backoff(delay):
                    break
                delay = min(delay * 2, self.cfg.reopen_max_s)
            except Exception as err:  # loop boundary: count, log, back off, carry on
                self.stats.error(f"{type(err).__name__}: {err}")
                log.exception("capture error")
                if src is not None:
                    src.close()
                src = None
                if self._backoff(delay):
                    break
                delay = min(delay * 2, self.cfg.reopen_max_s)
        if src is not None:
            src.close()

    def _backoff(self, delay: float) -> bool:
        """Wait before reopening, still showing the watchdog a live loop; True once stopping."""
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:
            if self.stop.wait(min(left, _POLL_S)):
                return True
            self.stats.beat()
        return self.stop.is_set()

    def _timed(self, fn: Callable[[], _T]) -> _T:
        self._reading = True
        self._last_read = time.monotonic()
        try:
            return fn()
        finally:
            self._reading = False
            self._last_read = time.monotonic()

    def _pace_and_read(self, src: Source, gen: int, t0: float, n_played: int, next_due: float) -> str:
        """One step: 'delivered' a frame, 'skipped' one undecoded, or stayed 'idle'."""
        cap = self.cfg.fps
        own = None if src.live else src.nominal_fps  # a file's own frame rate
        late = paced = thin = False
        if not src.live:
            if self.cfg.realtime and (own or cap) and not src.polled:
                # play a file at its own rate, as a camera would give it; frames already late are skipped
                # undecoded, and so are those over the fps cap (a set of images, with no rate of its
                # own, is shown at the cap)
                rate = own or cap or 30.0
                thin = bool(own and cap and cap < own)
                wait = t0 + n_played / rate - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return "idle"
                late = wait < -1.0 / rate and self.slot.full
            else:
                # consumer-paced: decode only what inference will take
                paced = True
                while not self.slot.wait_empty(_POLL_S):
                    self.stats.beat()
                    if self.stop.is_set() or gen != self._gen:
                        return "idle"
                if cap and self.stop.wait(max(0.0, next_due - time.monotonic())):
                    return "idle"
        self._timed(src.grab)
        if (src.live or thin) and cap and time.monotonic() < next_due:
            self.stats.drop("fps_cap")  # grabbed, never decoded
            return "skipped"
        if late:
            self.stats.drop("late")  # inference is behind the file's clock
            return "skipped"
        reduce = self.reduce(*self.frame_size) if self.reduce is not None and self.frame_size else 1
        image, whole = self._timed(lambda: src.retrieve_reduced(reduce))
        if gen != self._gen:
            return "idle"
        # a file's frame is stamped by its place in the file, from when the file was opened (as a
        # recording of sound is): tracks, events and dwell times follow the recording, however fast
        # it is consumed. Everything else, when it was captured
        ts = self._t0_wall + n_played / own if own else time.time()
        self._last_ts = ts
        self._index += 1
        h, w = whole or image.shape[:2]
        self.frame_size = (w, h)
        self.decode_scale = reduce if whole else 1
        frame = Frame(image, ts, time.monotonic(), self._index, whole, clock=ts if own else None)
        if self.picture is not None and (src.live or src.polled):
            self.picture.look(image, frame.mono, self.cfg.frozen_after_s, self.cfg.blank_after_s,
                              self.cfg.dark_is_blank)
        self.stats.done()
        if paced and self.consume is not None and self.consume(frame):
            return "delivered"
        if self.slot.put(frame):
            self.stats.drop("replaced")
        return "delivered"
