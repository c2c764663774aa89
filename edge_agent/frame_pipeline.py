"""A camera or video input: capture -> latest-frame slot -> preprocess + shared invoke -> decode -> fan-out.

Staged (while the pipeline is the only busy frame pipeline in its agent): three threads. Capture reads
into a size-1 slot (a slow model never builds a queue: a newer frame replaces the one not yet taken).
The inference thread preprocesses and runs the model through the engine it shares with other pipelines
(in turn, perhaps batched). The post thread decodes and hands the result to the fan-out, so a lone
pipeline decodes one frame while the next is invoked, and both cores work.

Run to completion (while another frame pipeline has had a frame within a second, `Crowd`): the
pipelines themselves keep the cores busy, and each hand-off between stages costs a thread wake-up and
a wait for the GIL, which on two cores cost more than the overlap gains (`edge-agent bench
--pipelines`). So one thread takes each frame from preprocess to publish: the inference thread, for a
frame from the slot (a live camera's, whose reader must keep draining the stream), or the reader itself
for a consumer-paced source (a file read as fast as the model goes, where nothing is dropped or goes
stale while the reader waits). The mode is chosen per frame; a frame runs to completion only once the
frames handed on the staged way are published, so none overtakes another.

The model is read from its slot at every frame, so an update swaps it between two frames for every
pipeline that uses it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.capture import Capture
from edge_agent.config import ConfigError, PipelineView
from edge_agent.engine import EngineClosed
from edge_agent.fanout import FanOut, Route
from edge_agent.gate import ChangeGate
from edge_agent.handoff import LatestSlot
from edge_agent.model import Inference, Model, RawInference, decode_options
from edge_agent.payload import prediction
from edge_agent.scene import SceneOutput, SceneStage, labels_problem
from edge_agent.sinks.base import Message
from edge_agent.sources import Frame, make_source
from edge_agent.stats import ErrorLog, StageStats, pipeline_counts

log = logging.getLogger(__name__)

_TAKE_TIMEOUT_S = 0.25
#: Inference results waiting for decoding and publishing: a few frames of slack.
_RESULTS_QUEUE = 4
#: Stands in for a frame's picture once only its size is needed.
_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)
#: Source settings that need the source reopened when they change.
_REOPEN_KEYS = ("uri", "width", "height", "loop")


def _picture(frame: Frame) -> np.ndarray | None:
    """The frame's picture for what draws on it or crops from it in the frame's own pixels; None where it
    was let go, or decoded smaller than the frame (as the pipeline's needs changed while it was read)."""
    image = frame.image
    if not image.size or (frame.size is not None and image.shape[:2] != tuple(frame.size)):
        return None
    return image


#: One inferred frame on its way to decoding: the frame, the raw outputs, the model that gave them, and
#: whether they were reused for an unchanged frame.
_Item = tuple[Frame, RawInference, Model, bool]


@dataclass
class _InferState:
    """A thread's change gate and the last inference it may reuse for an unchanged frame."""

    gate: ChangeGate | None
    last: tuple[RawInference, Model] | None = None


@dataclass
class _PostState:
    """A thread's last decoding, which a gated frame reuses."""

    decoded: tuple[RawInference, Inference] | None = None


class Crowd:
    """The agent's frame pipelines, and when each last had a frame: a pipeline runs its frames to completion
    while another has had one within `ACTIVE_S`, and goes back to its stages once it is alone (the other
    pipelines removed, or their cameras dead), where the overlap of its stages is what keeps the cores
    busy."""

    ACTIVE_S = 1.0

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def seen(self, name: str) -> None:
        t = time.monotonic()
        with self._lock:
            self._last[name] = t

    def others_busy(self, name: str) -> bool:
        since = time.monotonic() - self.ACTIVE_S
        with self._lock:
            return any(t > since for other, t in self._last.items() if other != name)


class FramePipeline:
    kind = "frame"

    def __init__(
        self,
        view: PipelineView,
        route: Route,
        model: Callable[[], Model | None],
        fanout: FanOut,
        boot_id: str,
        on_fallback: Callable[[], None] | None = None,
        crowd: Crowd | None = None,
    ):
        """crowd: the agent's frame pipelines; while another is busy, this one runs each frame to completion
        on one thread (see the module's doc)."""
        self.name = view.name
        self.crowd = crowd or Crowd()
        self._local = threading.local()
        #: frames between being taken and published: a frame runs to completion only once none is in flight
        #: the other way, so a change of mode never lets a frame overtake an earlier one
        self._flight = threading.Condition()
        self._inflight = 0
        self._fallbacks_seen = 0  # accelerator fallbacks announced
        self.view = view
        self.settings = view.settings
        self.route = route
        self.get_model = model
        self.fanout = fanout
        self.boot_id = boot_id
        self.on_fallback = on_fallback
        self.stop_event = threading.Event()
        self.frames: LatestSlot[Frame] = LatestSlot()
        self.capture_stats = StageStats("capture")
        self.infer_stats = StageStats("inference")
        self.post_stats = StageStats("postprocess")
        self._errors = ErrorLog(log)  # inference and post-processing errors: a kind at most once a minute
        self.results: queue.Queue[_Item] = queue.Queue(maxsize=_RESULTS_QUEUE)
        self.skipped = 0  # inferences saved by change gating
        #: held while a frame goes through the scene stage, and while a reload replaces it
        self._scene_lock = threading.Lock()
        self.scene = self._scene(view)
        #: whether what follows the model wants each frame's picture (escalation of frames or crops, a
        #: scene's snapshots, clips or second stage); the live view wants them only while a page shows it
        #: (`_wants_pictures`).
        #: Without them a result waiting for the post stage does not keep a decoded frame (a megabyte at
        #: 640x480) alive, and capture may decode frames smaller (`_reduction`)
        esc = view.settings.escalation
        self.keep_images = (esc.enabled and esc.content != "features") or (
            self.scene is not None and self.scene.needs_images
        )
        self.event_seq = 0
        #: retained scene state (zone counts, latest snapshot per label), republished on every reconnect
        self.retained: dict[str, Message] = {}
        self.failed: str | None = None
        self.capture = Capture(
            lambda: make_source(self.settings.source), self.settings.source, self.frames, self.capture_stats,
            self.stop_event, "" if self.route.legacy else self.name,
        )
        self.capture.reduce = self._reduction
        self._threads: list[threading.Thread] = []

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.scene is not None:
            self._zero_counts(self.scene)
        self.capture.consume = self._consume
        self.capture.start()
        for stage, target in (("inference", self._inference_loop), ("postprocess", self._post_loop)):
            name = stage if self.route.legacy else f"{self.name}-{stage}"  # the single form keeps its names
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop_and_join(self, timeout: float) -> None:
        """Stop capture, let inference finish its frame and the post stage drain what it holds; objects
        still in view end (their `end` events go out) and clips in progress are written."""
        deadline = time.monotonic() + timeout
        self.stop_event.set()
        self.frames.close()
        self.capture.join(timeout / 2)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._scene_lock:
            if self.scene is not None:
                self._scene_out(self.scene.end_all(time.time()), None)
                self.scene.close()

    def _scene(self, view: PipelineView) -> SceneStage | None:
        """The scene stage the settings ask for; ConfigError where they name a label the model never
        produces (checked here, where the model is known, at start and at every reload alike)."""
        cfg = view.settings.scene
        if not cfg.active:
            return None
        model = self.get_model()
        why = labels_problem(view.settings, model.produced_labels, self.route.label) if model is not None else None
        if why is not None:
            raise ConfigError(why)
        return SceneStage(cfg, self.name, view.settings.state_dir, view.settings.runtime)

    def _wants_pictures(self) -> bool:
        """Whether what follows the model wants this frame's picture: `keep_images`, or a page showing the
        live view."""
        if self.keep_images:
            return True
        live = self.fanout.live.get(self.route.pipeline)
        return live is not None and live.watched()

    def _reduction(self, frame_w: int, frame_h: int) -> int:
        """How many times smaller capture may decode the next frame (`source.scaled_decode`): only where
        nothing after the model wants the picture itself (the live view while a page shows it, the scene's
        snapshots, clips and crops, escalation, an update judged on the same frames), and never below the
        size the model takes it at."""
        model = self.get_model()
        if model is None or not self.settings.source.scaled_decode:
            return 1
        if self._wants_pictures() or self.fanout.judging(model):
            return 1
        return model.reduction(frame_w, frame_h)

    def stages(self) -> dict[str, StageStats]:
        return {"capture": self.capture_stats, "inference": self.infer_stats, "postprocess": self.post_stats}

    def apply(self, view: PipelineView, changed: list[str]) -> None:
        """Settings that change live: thresholds, the source (reopened when what it opens changed) and the
        scene (replaced between two frames)."""
        self.view, self.settings = view, view.settings
        m, model = view.settings.model, self.get_model()
        if model is not None:
            model.decoder.opts = decode_options(m)
        if any(k.startswith("source.") for k in changed):
            self.capture.cfg = view.settings.source
            if any(k in (f"source.{r}" for r in _REOPEN_KEYS) for k in changed):
                self.capture.restart()
        if any(k.startswith("scene.") or k == "scene" for k in changed):
            try:
                new = self._scene(view)
            except ConfigError as err:  # its second-stage model will not load: the running scene stays
                log.error("%s: scene settings refused, keeping the running ones: %s", self.name, err)
                return
            with self._scene_lock:  # between two frames: the objects of the old one end, the new one starts
                if self.scene is not None:
                    self._scene_out(self.scene.end_all(time.time()), None)
                    self.scene.close()
                self.scene = new
                self.keep_images = self.keep_images or (new is not None and new.needs_images)
                if new is not None:
                    self._zero_counts(new)

    # --- stages --------------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        """Staged: only preprocessing and invoke here, decoding and publishing on the post thread. Run to
        completion: the whole frame here (a frame from the slot: a live camera's, or a file's played at
        its own rate)."""
        st = self.infer_stats
        st.state = "running"
        ist, pst = self._infer_state(), _PostState()
        while not self.stop_event.is_set():
            # in flight from the moment it leaves the slot: the reader of a consumer-paced file reads the
            # next frame once the slot is empty, and may run that one to completion; it must find this one
            # counted, or it could publish before it
            frame = self.frames.take(_TAKE_TIMEOUT_S, on_take=self._enter)
            st.beat()
            if frame is None:
                continue
            if self._complete(frame, ist, pst, counted=True):
                continue
            item = self._infer(frame, ist)
            if item is None:
                self._leave()
                continue
            while not self.stop_event.is_set():
                try:  # results are never dropped here: a slow post stage slows inference instead
                    self.results.put(item, timeout=_TAKE_TIMEOUT_S)
                    break
                except queue.Full:
                    st.beat()
            else:
                self._leave()

    def _consume(self, frame: Frame) -> bool:
        """On the reader's thread, a consumer-paced frame: True once it ran to completion here; False (the
        reader hands it to the slot) while this pipeline is alone."""
        states: tuple[_InferState, _PostState] | None = getattr(self._local, "states", None)
        if states is None:
            states = self._local.states = (self._infer_state(), _PostState())
        return self._complete(frame, *states)

    def _complete(self, frame: Frame, ist: _InferState, pst: _PostState, counted: bool = False) -> bool:
        """Run the frame from preprocess to publish on this thread, where another frame pipeline is busy;
        False (nothing done) while this one is alone, or once stopping. `counted`: the frame is already
        in flight (taken from the slot), and waits only for the others."""
        self.crowd.seen(self.name)
        if not self.crowd.others_busy(self.name):
            return False
        mine = 1 if counted else 0
        with self._flight:  # frames already handed on go first (only when the mode has just changed)
            while self._inflight > mine:
                if self.stop_event.is_set():
                    return False
                self._flight.wait(_TAKE_TIMEOUT_S)
            self._inflight += 1 - mine
        try:
            self.infer_stats.beat()
            self.post_stats.beat()
            item = self._infer(frame, ist)
            if item is not None:
                self._post(item, pst)
        finally:
            self._leave()
        return True

    def _enter(self) -> None:
        with self._flight:
            self._inflight += 1

    def _leave(self) -> None:
        with self._flight:
            self._inflight -= 1
            if not self._inflight:
                self._flight.notify_all()

    def _infer_state(self) -> _InferState:
        m = self.settings.model
        return _InferState(ChangeGate(m.change_threshold, m.change_max_age_s) if m.change_threshold > 0 else None)

    def _infer(self, frame: Frame, ist: _InferState) -> _Item | None:
        """Preprocess and invoke one frame (or reuse the last result, where change gating finds the frame
        unchanged); None when there is no model or the frame failed."""
        st = self.infer_stats
        model = self.get_model()  # an update swaps it between two frames
        if model is None:
            return None
        try:
            last, gate = ist.last, ist.gate
            cached = gate is not None and last is not None and last[1] is model and gate.unchanged(frame.image)
            if cached and last is not None:
                raw = last[0]
                self.skipped += 1
            else:
                raw = model.run(frame.image, self.name, frame.size)
                ist.last = (raw, model)
                st.observe("preprocess", raw.preprocess_ms)
                st.observe("inference", raw.inference_ms)
                if raw.wait_ms:
                    st.observe("queue", raw.wait_ms)
                st.done()
            if not self._wants_pictures() and not self.fanout.judging(model):
                size = frame.size or frame.image.shape[:2]
                frame = Frame(_NO_IMAGE, frame.ts, frame.mono, frame.index, size, frame.clock)
            return frame, raw, model, cached
        except Exception as err:  # loop boundary: one bad frame must not stop the stream
            if isinstance(err, EngineClosed) and self.get_model() is not model:
                return None  # an update replaced the model between taking it and invoking it: not an error
            st.error(f"{type(err).__name__}: {err}")
            self._errors.exception(err, "%s: inference error", self.name)
            return None

    def _post_loop(self) -> None:
        st = self.post_stats
        pst = _PostState()
        st.state = "running"
        while not self.stop_event.is_set() or not self.results.empty():
            try:
                item = self.results.get(timeout=_TAKE_TIMEOUT_S)
            except queue.Empty:
                st.beat()
                continue
            st.beat()
            try:
                self._post(item, pst)
            finally:
                self._leave()

    def _post(self, item: _Item, pst: _PostState) -> None:
        """Decode one inference and fan it out."""
        st = self.post_stats
        frame, raw, model, cached = item
        try:
            decoded = pst.decoded
            if cached and decoded is not None and decoded[0] is raw:
                inf = decoded[1]
            else:
                inf = model.decode(raw)
                pst.decoded = (raw, inf)
                self.infer_stats.observe("postprocess", inf.postprocess_ms)
                self.fanout.observe(model, raw, _picture(frame))
            self._publish(frame, raw, inf, model, cached)
            if len(model.runtime.fallbacks) != self._fallbacks_seen:
                self._fallbacks_seen = len(model.runtime.fallbacks)
                if self.on_fallback is not None:
                    self.on_fallback()
            st.done()
        except Exception as err:  # loop boundary: one bad result must not stop the stream
            st.error(f"{type(err).__name__}: {err}")
            self._errors.exception(err, "%s: postprocess error", self.name)

    def _publish(self, frame: Frame, raw: RawInference, inf: Inference, model: Model, cached: bool) -> None:
        h, w = frame.size or frame.image.shape[:2]
        result = inf.result
        out: SceneOutput | None = None
        with self._scene_lock:
            if self.scene is not None and result.task == "detection":
                out = self.scene.process(result, frame.ts, _picture(frame), frame.steady)
                result = out.result
        doc = prediction(
            device_id=self.settings.device_id,
            boot_id=self.boot_id,
            seq=0,
            ts=frame.ts,
            model=model.info(),
            accelerator=raw.accelerator,
            latency_ms={
                "capture_to_publish": 0.0,
                "preprocess": inf.preprocess_ms,
                "inference": inf.inference_ms,
                "postprocess": inf.postprocess_ms,
            },
            frame_size=(w, h),
            result=result,
            pipeline=self.route.label,
        )
        if out is not None:
            for d, extra in zip(doc["detections"], out.extras, strict=True):
                d.update(extra)
        if raw.batch > 1:
            doc["batch"] = raw.batch
        c2p = (time.monotonic() - frame.mono) * 1e3
        doc["latency_ms"]["capture_to_publish"] = round(c2p, 3)
        if cached:
            doc["cached"] = True  # the frame looked like the last inferred one
        image = _picture(frame) if self._wants_pictures() else None
        if not self.fanout.prediction(self.route, doc, result, image=image, cached=cached, ts=frame.ts):
            self.post_stats.drop("sink_full")
        self.infer_stats.observe("capture_to_publish", c2p)
        if out is not None:
            self._scene_out(out, model)

    def _scene_out(self, out: SceneOutput, model: Model | None) -> None:
        """Object events through the outbox (never dropped); zone counts and snapshots as retained state."""
        for body in out.events:
            self.event_seq += 1
            log.info("%s: %s %s track %s (%s)", self.name, body["type"], body["label"], body["track_id"], body["id"])
            ids = (self.settings.device_id, self.boot_id)
            if not self.fanout.emit_event(self.route, self.event_seq, body, model, *ids):
                return
        where = self.route.label
        topics = self.fanout.topics
        for (zone, label), n in out.counts.items():
            self._state(Message(topics.zone_count(where, zone, label), str(n).encode(), qos=1, retain=True), zone)
        for label, jpeg in out.snapshots:
            self._state(Message(topics.snapshot(where, label), jpeg, qos=0, retain=True))

    def _zero_counts(self, scene: SceneStage) -> None:
        """Every count the scene can name at 0, and every count its zones published before (the retained
        ledger): a zone that counts any label names none in advance, and a count it left at 1 in a run that
        ended badly stayed 1. A count of a label the zone no longer counts is cleared instead."""
        topics, where = self.fanout.topics, self.route.label
        zeroed = set()
        for zone, label in scene.start_counts():
            topic = topics.zone_count(where, zone, label)
            zeroed.add(topic)
            self._state(Message(topic, b"0", qos=1, retain=True), zone)
        ledger = self.fanout.ledger
        if ledger is None:
            return
        counted = scene.counted_labels()
        for topic, zone in ledger.zone_topics(where, set(counted)):
            if topic not in zeroed:
                self._state(Message(topic, b"0" if counted[zone] is None else b"", qos=1, retain=True), zone)

    def _state(self, msg: Message, zone: str | None = None) -> None:
        self.retained[msg.topic] = msg
        self.fanout.state(msg, self.route.label, zone)

    # --- health --------------------------------------------------------------------------------
    def source_info(self) -> dict[str, Any]:
        cap = self.capture
        return {
            "state": self.capture_stats.state,
            "uri": cap.source_desc,
            "frame_size": list(cap.frame_size) if cap.frame_size else None,
            "decode_scale": cap.decode_scale,
            "reopens": cap.reopens,
            "stalls": cap.stalls,
            "errors": self.capture_stats.errors,
            "picture": cap.picture.info(time.monotonic()) if cap.picture is not None else None,
        }

    def counts(self) -> dict[str, Any]:
        return pipeline_counts(self.capture_stats, self.infer_stats, self.post_stats, self.skipped)
