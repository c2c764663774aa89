"""Audio and sensor input: source -> resample -> features -> windows -> model (stateful) -> events -> sinks.

Unlike frames, samples are never dropped silently to keep up: capture hands chunks over through a
bounded queue sized in seconds of input, and anything it cannot hold is counted as dropped.
Windows are exact (no sample lost or repeated between them), a streaming model runs one step per
hop with its variables intact, and everything (front end, windows, model state, events) starts
afresh when the source is reopened or the model is swapped.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.config import ConfigError, Settings
from edge_agent.engine import EngineClosed
from edge_agent.events import Event, EventDetector
from edge_agent.fanout import FanOut, Route
from edge_agent.features import FRAME_FRONTENDS, WINDOW_TRANSFORMS, FrameFrontend
from edge_agent.flatline import AUDIO_FLAT_AFTER_S, FlatWatch
from edge_agent.model import Model, RawInference, decode_options
from edge_agent.payload import window_prediction
from edge_agent.resample import Resampler
from edge_agent.scene import labels_problem
from edge_agent.signals import AUDIO_KINDS, Chunk, EndOfStream, SignalSource, SourceError, signal_kind
from edge_agent.sinks.base import Message
from edge_agent.sinks.memory import MemorySink
from edge_agent.stats import ErrorLog, FailureLog, StageStats, pipeline_counts
from edge_agent.topics import Topics
from edge_agent.windowing import Windower

log = logging.getLogger(__name__)

_TAKE_TIMEOUT_S = 0.25
_READ_TIMEOUT_S = 0.25
#: Default event thresholds when neither the configuration nor the model's manifest sets them.
_DEFAULT_ON = 0.8
#: Windows between a post stage that is behind and inference: a short burst of slack, then back-pressure.
_RESULTS_QUEUE = 64
#: A live source's chunk stamped this much before the end of the one before it follows a wall clock
#: that was set back (a board without a real-time clock reaching a time server); a little before, it
#: was read in a burst, and keeps its samples' spacing.
_CLOCK_STEP_S = 2.0


@dataclass(frozen=True, slots=True)
class _Restart:
    """Marks a reopened source in the stream: everything downstream starts afresh."""

    epoch: int
    rate: float
    channels: int
    #: the rate the source was asked for, where it delivers another (a microphone that does not take it):
    #: the chain resamples to it, so the model is fed what it was set up for
    asked: float | None = None


class ChunkQueue:
    """Bounded in samples, not chunks: `queue_s` seconds of input whatever the chunk size."""

    def __init__(self, max_samples: int):
        self.max_samples = max(1, max_samples)
        self._items: deque[Chunk | _Restart] = deque()
        self._samples = 0
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: Chunk | _Restart, wait: float = 0.0) -> bool:
        """wait: how long a source that can wait (a file) is held back before the chunk counts as dropped."""
        with self._cond:
            n = len(item.samples) if isinstance(item, Chunk) else 0
            if n and self._samples + n > self.max_samples and wait > 0:
                self._cond.wait_for(lambda: self._samples + n <= self.max_samples, wait)
            if n and self._samples + n > self.max_samples:
                self.dropped += n
                return False
            self._items.append(item)
            self._samples += n
            self._cond.notify()
            return True

    @property
    def samples(self) -> int:
        """Samples waiting for inference now."""
        return self._samples

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    def get(self, timeout: float) -> Chunk | _Restart | None:
        with self._cond:
            if not self._items and not self._cond.wait(timeout):
                return None
            if not self._items:
                return None
            item = self._items.popleft()
            if isinstance(item, Chunk):
                self._samples -= len(item.samples)
                self._cond.notify_all()
            return item


class SignalCapture:
    """The capture thread: read chunks, count them, reopen with backoff when the device goes away."""

    def __init__(
        self,
        factory: Callable[[], SignalSource],
        settings: Settings,
        out: ChunkQueue,
        stats: StageStats,
        stop: threading.Event,
        name: str = "",
    ):
        """name: the pipeline's, which its thread's name starts with; none in the single form."""
        self.factory, self.settings, self.out, self.stats, self.stop = factory, settings, out, stats, stop
        self._thread_name = f"{name}-signal-capture" if name else "signal-capture"
        self.source: SignalSource | None = None
        self.samples = 0
        self.reopens = 0
        self.gaps = 0  # reopenings and gaps the source saw itself
        self.epoch = 0
        self._failures = FailureLog(log)
        self.description = settings.source.uri
        self.rate = 0.0
        self.channels = 0
        self.channel_names: tuple[str, ...] = ()
        self._source_dropped = 0
        self._source_gaps = 0
        self._thread: threading.Thread | None = None
        #: a live source's samples, all one value for long (`edge_agent.flatline`); None until one opened
        self.flat: FlatWatch | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def dropped(self) -> int:
        src = self.source
        return self._source_dropped + (src.dropped if src else 0) + self.out.dropped

    def _run(self) -> None:
        cfg = self.settings.source
        st = self.stats
        delay = cfg.reopen_min_s
        while not self.stop.is_set():
            src = self.factory()
            self.description = src.describe()
            try:
                src.open()
            except SourceError as err:
                st.state = "reconnecting" if self.epoch else "opening"
                st.error(str(err))
                self._failures.failed("signal source", str(err), delay)
                if self.stop.wait(delay):
                    return
                delay = min(delay * 2, cfg.reopen_max_s)
                st.beat()
                continue
            self.source = src
            self.epoch += 1
            if self.epoch > 1:
                self.reopens += 1
                self.gaps += 1
            self.rate, self.channels, self.channel_names = src.rate, src.channels, src.channel_names
            if src.watched and self.flat is None:
                self.flat = FlatWatch()
            first = True
            next_ts = 0.0  # where the previous chunk ended: a burst read at once keeps its samples' spacing
            st.state = "running"
            quiet_s = cfg.read_timeout_s if src.steady else None
            heard = time.monotonic()
            try:
                while not self.stop.is_set():
                    chunk = src.read(_READ_TIMEOUT_S)
                    st.beat()
                    if chunk is None:
                        if quiet_s is not None and time.monotonic() - heard > quiet_s:
                            # a sound card whose stream says it runs and delivers nothing (a USB device gone
                            # wrong): reading on would say "running" for ever
                            raise SourceError(f"no samples for {quiet_s:g} s: the device stopped delivering")
                        continue
                    heard = time.monotonic()
                    if next_ts - _CLOCK_STEP_S < chunk.ts < next_ts:
                        chunk = Chunk(chunk.samples, next_ts, chunk.mono)
                    # (further back, the wall clock was set back: the stream's times follow it)
                    next_ts = chunk.ts + len(chunk.samples) / (src.rate or 1.0)
                    if first:  # some sources learn their channel count from the first reading
                        self.channels, self.channel_names = src.channels, src.channel_names
                        asked = src.asked_rate if src.asked_rate and src.asked_rate != src.rate else None
                        self.out.put(_Restart(self.epoch, src.rate, src.channels, asked))
                        first = False
                    # a file waits for inference (back-pressure); a live device cannot, so its excess is counted
                    while not self.out.put(chunk, 0.0 if src.live else _READ_TIMEOUT_S):
                        if src.live or self.stop.is_set():
                            st.drop("queue_full", len(chunk.samples))
                            break
                        self.out.dropped -= len(chunk.samples)  # not dropped: offered again
                        st.beat()
                    if src.watched and self.flat is not None:
                        self.flat.feed(chunk.samples, chunk.mono, self._flat_after_s(src))
                    self.samples += len(chunk.samples)
                    st.done(len(chunk.samples))
                    delay = cfg.reopen_min_s
            except EndOfStream:
                st.state = "finished"
                log.info("signal source %s finished", self.description)
                return
            except SourceError as err:
                st.state = "reconnecting"
                st.error(str(err))
                log.warning("signal source lost: %s", err)
            except Exception as err:  # loop boundary: a source bug must not end capture for good
                st.state = "reconnecting"
                st.error(f"{type(err).__name__}: {err}")
                log.exception("signal capture error")
            finally:
                self._source_dropped += src.dropped
                self._source_gaps += src.gaps
                self.source = None
                src.close()
            if self.stop.wait(delay):
                return
            delay = min(delay * 2, cfg.reopen_max_s)

    def _flat_after_s(self, src: SignalSource) -> float:
        after = self.settings.signal.flat_after_s
        return after if after is not None else AUDIO_FLAT_AFTER_S if src.audio else 0.0

    def info(self) -> dict[str, Any]:
        src = self.source
        return {
            "flat": self.flat.info(time.monotonic()) if self.flat is not None else None,
            "samples": self.samples,
            "gaps": self.gaps + self._source_gaps + (src.gaps if src else 0),
            "dropped_samples": self.dropped,
            "reopens": self.reopens,
            "rate_nominal": self.rate,
            "channels": list(self.channel_names),
        }


@dataclass
class _Chain:
    """Everything between one source epoch and one model; rebuilt on restart or model swap."""

    model: Model
    epoch: int
    source_rate: float
    model_rate: float  # frames per second reaching the windower, times the front end's step
    resampler: Resampler | None
    frontend: FrameFrontend
    windower: Windower
    transform: Callable[[np.ndarray], np.ndarray]
    samples_in: int = 0  # source samples consumed this epoch


@dataclass(frozen=True, slots=True)
class WindowResult:
    raw: RawInference
    model: Model
    ts: float  # capture time of the window's last sample
    offset_s: float  # stream position of the window's end
    mono: float  # when the chunk that completed it was read
    epoch: int
    window: np.ndarray  # what went into the model (escalations may carry it)


class SignalPipeline:
    kind = "signal"

    def __init__(
        self,
        settings: Settings,
        get_model: Callable[[], Model | None],
        route: Route,
        boot_id: str,
        fanout: FanOut,
        factory: Callable[[], SignalSource],
        stop: threading.Event | None = None,
    ):
        self.name = route.pipeline
        model = get_model()
        why = labels_problem(settings, model.produced_labels, route.label) if model is not None else None
        if why is not None:  # events that would never come: refused as the scene's are
            raise ConfigError(why)
        self.settings = settings
        self.get_model = get_model
        self.route, self.boot_id, self.fanout = route, boot_id, fanout
        self.stop = stop or threading.Event()
        self.stop_event = self.stop
        self.capture_stats = StageStats("capture")
        self.infer_stats = StageStats("inference")
        self.post_stats = StageStats("postprocess")
        self._errors = ErrorLog(log)  # inference and post-processing errors: a kind at most once a minute
        self.failed: str | None = None
        sc = settings.signal
        audio = signal_kind(settings.source.uri) in AUDIO_KINDS
        nominal = sc.rate or (16000 if audio else 10.0)
        self.queue = ChunkQueue(int(sc.queue_s * max(nominal, 1.0)) + 4096)
        self.capture = SignalCapture(
            factory, settings, self.queue, self.capture_stats, self.stop, "" if route.legacy else self.name
        )
        self.results: deque[WindowResult | _Restart] = deque()
        self._results_cond = threading.Condition()
        self.windows = 0
        self.published = 0
        self.not_published = 0  # windows whose prediction the rate limit held back (by configuration)
        self.event_seq = 0
        #: retained state to republish on reconnect (frame pipelines' zone counts; none here)
        self.retained: dict[str, Message] = {}
        #: no scene stage: tracks and zones are for frames
        self.scene: None = None
        self.detector: EventDetector | None = None
        self._event_numbers = itertools.count(1)
        self._chain: _Chain | None = None
        self._threads: list[threading.Thread] = []
        self.busy = False  # the inference thread holds a chunk it has not finished with

    @classmethod
    def standalone(cls, settings: Settings, get_model: Callable[[], Model | None]) -> tuple[SignalPipeline, MemorySink]:
        """The pipeline without an agent around it (offline runs, tests, benchmarks): its own stop event
        and stage counters, results kept in memory under the topics `predictions` and `events`."""
        import uuid

        from edge_agent.signals import make_signal_source

        sink = MemorySink()
        stop = threading.Event()
        fanout = FanOut(lambda: sink, settings.mqtt.qos, stop, Topics(settings.mqtt.topic_prefix, settings.device_id))
        route = Route("main", "predictions", "events", legacy=True)
        pipe = cls(settings, get_model, route, uuid.uuid4().hex, fanout, lambda: make_signal_source(settings), stop)
        return pipe, sink

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.capture.start()
        for stage, target in (("inference", self._infer_loop), ("post", self._post_loop)):
            name = f"signal-{stage}" if self.route.legacy else f"{self.name}-signal-{stage}"
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float) -> None:
        self.capture.join(timeout)
        with self._results_cond:
            self._results_cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def stop_and_join(self, timeout: float) -> None:
        """Stop capture and let inference and the post stage wind down (the same call as a frame pipeline's)."""
        self.stop.set()
        self.join(timeout / 2)

    def stages(self) -> dict[str, StageStats]:
        return {"capture": self.capture_stats, "inference": self.infer_stats, "postprocess": self.post_stats}

    def apply(self, view: Any, changed: list[str]) -> None:
        """Thresholds apply at once; window and event settings at the next model or source change."""
        self.settings = view.settings
        self.capture.settings = view.settings  # what it reads as it goes (`signal.flat_after_s`)
        m, model = view.settings.model, self.get_model()
        if model is not None:
            model.decoder.opts = decode_options(m)

    def source_info(self) -> dict[str, Any]:
        """Sample rate achieved, gaps and dropped samples: what a sensor user needs to trust the windows."""
        return {
            "state": self.capture_stats.state,
            "uri": self.capture.description,
            **self.info(),
            "errors": self.capture_stats.errors,
        }

    def counts(self) -> dict[str, Any]:
        return pipeline_counts(self.capture_stats, self.infer_stats, self.post_stats)

    # --- the chain ---------------------------------------------------------------------------
    def _build(self, model: Model, epoch: int, rate: float, channels: int, asked: float | None = None) -> _Chain:
        sc = self.settings.signal
        name = sc.frontend if sc.frontend != "auto" else (model.hints.frontend or "none")
        frontend = FRAME_FRONTENDS[name](sc.offset, sc.scale)
        resampler = None
        model_rate = rate
        target = frontend.rate or (int(asked) if asked else None)
        if target is not None and int(rate) != target:
            try:
                resampler = Resampler(int(rate), target, 1 if name == "micro" else channels)
            except ValueError as err:  # a rate the model's cannot be reached from, said as the source's fault
                raise SourceError(f"{self.capture.description}: {err}") from None
            model_rate = target
        width = frontend.width(channels)
        spec = model.inputs[0]
        size = int(np.prod(spec.shape))
        transform = WINDOW_TRANSFORMS[sc.transform]
        length = sc.window
        if length is None:
            if sc.transform != "none":
                raise SourceError("signal.window must be set when signal.transform is used")
            if size % width:
                raise SourceError(
                    f"model input {list(spec.shape)} does not hold whole frames of {width} values "
                    f"({channels} channel(s) after the '{name}' front end; signal.channels picks a source's "
                    "channels)"
                )
            length = size // width
        stateful = name == "micro" or model.file.stateful
        hop = sc.hop or (length if stateful else max(1, length // 2))
        return _Chain(model, epoch, rate, model_rate, resampler, frontend, Windower(length, hop, width), transform)

    def _new_detector(self, model: Model) -> EventDetector:
        ec = self.settings.signal.events
        on = ec.on if ec.on is not None else (model.hints.threshold or _DEFAULT_ON)
        off = ec.off if ec.off is not None else on / 2
        smoothing = ec.smoothing or model.hints.smoothing or 1
        return EventDetector(
            on, min(off, on), smoothing, ec.refractory_s, ec.labels, f"{self.boot_id[:8]}-", self._event_numbers
        )

    def _infer_loop(self) -> None:
        st = self.infer_stats
        st.state = "running"
        restart: _Restart | None = None
        while not self.stop.is_set():
            self.busy = False
            item = self.queue.get(_TAKE_TIMEOUT_S)
            st.beat()
            if item is None:
                continue
            self.busy = True
            model: Model | None = None
            try:
                if isinstance(item, _Restart):
                    restart = item
                    self._chain = None
                    continue
                model = self.get_model()
                if model is None or restart is None:
                    continue
                chain = self._chain
                if chain is None or chain.model is not model:
                    if model.file.stateful:
                        model.reset_state()  # a stream that starts again must not continue the old one
                    chain = self._chain = self._build(model, restart.epoch, restart.rate, restart.channels,
                                                      restart.asked)
                    self._put(restart)
                self._step(chain, item)
            except Exception as err:  # loop boundary: one bad chunk must not stop the stream
                self._chain = None
                if isinstance(err, EngineClosed) and model is not None and self.get_model() is not model:
                    continue  # an update replaced the model between taking it and invoking it: not an error
                st.error(f"{type(err).__name__}: {err}")
                if isinstance(err, SourceError):  # a misfit between model and source: wait for a change
                    log.error("signal pipeline %s: %s", self.name, err)
                    self.stop.wait(1.0)
                else:
                    self._errors.exception(err, "%s: signal inference error", self.name)

    def _step(self, chain: _Chain, chunk: Chunk) -> None:
        st = self.infer_stats
        x = chunk.samples
        start_sample = chain.samples_in
        chain.samples_in += len(x)
        if chain.resampler is not None:
            if chain.resampler.channels == 1 and x.shape[1] > 1:
                x = x[:, :1]
            x = chain.resampler.push(x)
        frames = chain.frontend.push(x)
        w = chain.windower
        first_window = w.emitted
        windows = w.push(frames)
        step = chain.frontend.step
        for k, win in enumerate(windows):
            end_frame = (first_window + k) * w.hop + w.length
            offset = end_frame * step / chain.model_rate
            ts = chunk.ts + offset - start_sample / chain.source_rate
            x = chain.transform(win)
            raw = chain.model.run_window(x, self.name)
            st.observe("inference", raw.inference_ms)
            st.done()
            self.windows += 1
            self._put(WindowResult(raw, chain.model, ts, offset, chunk.mono, chain.epoch, x))

    def _put(self, item: WindowResult | _Restart) -> None:
        with self._results_cond:
            while len(self.results) >= _RESULTS_QUEUE and not self.stop.is_set():
                self._results_cond.wait(_TAKE_TIMEOUT_S)  # back-pressure: results are never dropped here
                self.infer_stats.beat()
            self.results.append(item)
            self._results_cond.notify_all()

    def _take(self) -> WindowResult | _Restart | None:
        with self._results_cond:
            if not self.results:
                self._results_cond.wait(_TAKE_TIMEOUT_S)
            if not self.results:
                return None
            item = self.results.popleft()
            self._results_cond.notify_all()
            return item

    # --- results -----------------------------------------------------------------------------
    def _post_loop(self) -> None:
        st = self.post_stats
        st.state = "running"
        hz = self.settings.signal.predictions_hz
        last_pub = float("-inf")  # in stream time: a recording replayed fast is limited like a live one
        model_seen: Model | None = None
        while not self.stop.is_set() or self.results:
            item = self._take()
            st.beat()
            if item is None:
                continue
            try:
                if isinstance(item, _Restart):
                    if self.detector is not None:
                        self._emit(self.detector.reset(), model_seen)
                    last_pub = float("-inf")  # a new stream has its own clock
                    continue
                if item.model is not model_seen or self.detector is None:
                    if self.detector is not None:
                        self._emit(self.detector.reset(), model_seen)
                    model_seen = item.model
                    self.detector = self._new_detector(item.model)
                inf = item.model.decode(item.raw)
                self.fanout.observe(item.model, item.raw, item.window)
                scores = self._scores(item.model, item.raw)
                self._emit(self.detector.update(scores, item.ts, item.offset_s), item.model)
                now = time.monotonic()
                c2p = (now - item.mono) * 1e3
                self.infer_stats.observe("capture_to_publish", c2p)
                if hz > 0 and (item.ts - last_pub >= 1.0 / hz - 1e-9 or item.ts < last_pub):  # or clock set back
                    last_pub = item.ts
                    doc = window_prediction(
                        device_id=self.settings.device_id,
                        boot_id=self.boot_id,
                        seq=0,
                        ts=item.ts,
                        model=item.model.info(),
                        accelerator=item.raw.accelerator,
                        latency_ms={"inference": inf.inference_ms, "capture_to_publish": c2p},
                        offset_s=item.offset_s,
                        result=inf.result,
                        scores=scores,
                        pipeline=self.route.label,
                    )
                    if not self.fanout.prediction(self.route, doc, inf.result, window=item.window, ts=item.ts):
                        st.drop("sink_full")
                    self.published += 1
                else:
                    self.not_published += 1
                st.done()
            except Exception as err:  # loop boundary: one bad result must not stop the stream
                st.error(f"{type(err).__name__}: {err}")
                self._errors.exception(err, "%s: signal postprocess error", self.name)

    @staticmethod
    def _scores(model: Model, raw: RawInference) -> dict[str, float]:
        """Every label's score, before any threshold: events need the quiet windows too."""
        if model.decoder.task != "classification":
            return {}
        out = model.outputs[0].dequantize(raw.outputs[0]).reshape(-1)
        labels = model.labels or ()
        return {labels[i] if i < len(labels) else str(i): float(v) for i, v in enumerate(out)}

    def _emit(self, events: list[Event], model: Model | None) -> None:
        """Events go out with QoS 1 through the outbox; a full queue holds the post stage, never drops them."""
        for e in events:
            self.event_seq += 1
            log.info("%s: event %s %s %s score %.3f", self.name, e.type, e.label, e.id, e.score)
            self.post_stats.beat()
            body = e.as_dict()
            ids = (self.settings.device_id, self.boot_id)
            if not self.fanout.emit_event(self.route, self.event_seq, body, model, *ids):
                return

    def info(self) -> dict[str, Any]:
        det = self.detector
        return {
            **self.capture.info(),
            "windows": self.windows,
            "predictions_published": self.published,
            "predictions_rate_limited": self.not_published,
            "events": dict(det.counts) if det is not None else {"new": 0, "update": 0, "end": 0},
            "queue_samples": self.queue.samples,
        }


@dataclass
class OfflineRun:
    events: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    windows: int
    samples: int
    rate: float
    inference_ms: dict[str, float] | None
    wall_s: float


def run_offline(settings: Settings, model: Model, timeout: float = 600.0) -> OfflineRun:
    """A finite recording (WAV, CSV) through the real pipeline as fast as it goes: for `predict`,
    tests and benchmarks. The settings' source must not loop."""
    import json

    pipe, sink = SignalPipeline.standalone(settings, lambda: model)
    stop = pipe.stop
    t0 = time.monotonic()
    pipe.start()
    deadline = t0 + timeout
    cap, inf, post = pipe.capture_stats, pipe.infer_stats, pipe.post_stats

    def drained() -> bool:
        done = cap.state in ("finished",) or (cap.errors > 0 and cap.state != "running")
        idle = pipe.queue.empty() and not pipe.busy and not pipe.results
        return done and idle and post.count == pipe.windows

    # an inference error (a model that does not fit the recording) ends the run: a recording's windows
    # would all fail alike, and a result without them is not the recording's
    while not drained() and not inf.errors and time.monotonic() < deadline:
        stop.wait(0.005)
    wall = time.monotonic() - t0
    stop.set()
    pipe.join(2.0)
    if inf.errors:
        raise SourceError(f"{settings.source.uri}: {inf.last_error}")
    if cap.state != "finished":
        raise SourceError(cap.last_error or f"{settings.source.uri}: did not finish within {timeout} s")
    lat = inf.latency.get("inference")
    docs = [(m.topic, json.loads(m.payload)) for m in sink.messages]
    return OfflineRun(
        events=[d for t, d in docs if t == "events"],
        predictions=[d for t, d in docs if t == "predictions"],
        windows=pipe.windows,
        samples=pipe.capture.samples,
        rate=pipe.capture.rate,
        inference_ms=lat.percentiles() if lat else None,
        wall_s=wall,
    )
