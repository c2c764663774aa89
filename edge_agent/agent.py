"""The daemon: source -> preprocess -> runtime -> postprocess -> sink, with health watching it all."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent import __version__
from edge_agent.capture import Capture
from edge_agent.commands import ACCEPTED, Command, CommandProcessor, Rejected, no_args
from edge_agent.config import Settings
from edge_agent.escalation import Escalator
from edge_agent.gate import ChangeGate
from edge_agent.handoff import LatestSlot
from edge_agent.homeassistant import HomeAssistant
from edge_agent.liveview import LiveView
from edge_agent.model import Inference, Model, RawInference
from edge_agent.modelfile import ModelError
from edge_agent.ota.manifest import ManifestError, parse_manifest
from edge_agent.ota.store import ModelStore
from edge_agent.ota.updater import Updater, model_for_start
from edge_agent.payload import dumps, prediction
from edge_agent.postprocess.decoders import DecodeOptions
from edge_agent.results import Result
from edge_agent.sdnotify import Notifier
from edge_agent.signal_pipeline import SignalPipeline
from edge_agent.signals import make_signal_source, signal_kind
from edge_agent.sinks import Message, Sink, make_sink
from edge_agent.sources import Frame, make_source
from edge_agent.stats import StageStats
from edge_agent.system import ProcessStats, cpu_temperature_c, disk_free_mb, throttling

if TYPE_CHECKING:  # the HTTP side (prometheus-client, http.server) is imported only when it is enabled
    from edge_agent.web import WebServer

log = logging.getLogger(__name__)

_TAKE_TIMEOUT_S = 0.25
_MAIN_TICK_S = 0.5
_WATCHDOG_TICK_S = 1.0
#: Rates (fps, samples/s) are measured over at least this many seconds.
_RATE_WINDOW_S = 5.0
#: Exit code after a stall: not 0 (so Restart=on-failure applies), not 2 (bad configuration).
EXIT_STALLED = 3
#: Inference results waiting for decoding and publishing: a few frames of slack.
_RESULTS_QUEUE = 4
#: Commands waiting to be handled; beyond this they are dropped and counted (a flood, not a fleet).
_INBOX_SIZE = 1000
#: Settings a running agent takes on SIGHUP without touching its broker connection or model.
_LIVE_SECTIONS = ("health", "source")
_LIVE_KEYS = ("log_level", "model.score_threshold", "model.iou_threshold", "model.top_k", "model.max_detections")


def _changed(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in a.keys() | b.keys():
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_changed(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


class _Inbound(queue.Queue[tuple[str, bytes]]):
    """What the MQTT client receives: model chunks go to the updater, the rest are commands."""

    def __init__(self, agent: Agent, maxsize: int):
        super().__init__(maxsize)
        self.agent = agent

    def put_nowait(self, item: tuple[str, bytes]) -> None:
        topic, payload = item
        if "/ota/" in topic:
            if self.agent.updater is not None:
                self.agent.updater.accept_chunk(topic, payload)
            return
        if topic == self.agent.topics["escalations/result"]:
            if self.agent.escalator is not None:
                self.agent.escalator.accept_answer(payload)
            return
        ha = self.agent.ha
        if ha is not None:
            if topic == ha.cfg.status_topic:
                if payload.strip() == b"online":  # Home Assistant (re)started: it wants the configs again
                    self.agent.publish_discovery()
                return
            if topic == ha.rollback_topic:  # the button: each press is a new command
                cmd = {"id": f"ha-rollback-{time.time_ns()}", "command": "rollback"}
                item = (self.agent.topics["cmd"], dumps(cmd))
        super().put_nowait(item)


class Agent:
    def __init__(
        self,
        settings: Settings,
        sink: str = "mqtt",
        notifier: Notifier | None = None,
        reload: Callable[[], Settings] | None = None,
    ):
        self.settings = settings
        self.reloader = reload
        self.reload_requested = threading.Event()
        self.reloads = 0
        self.exit_code = 0
        self.restart_needed: list[str] = []
        self.sink_kind = sink
        self.notifier = notifier or Notifier()
        self.boot_id = uuid.uuid4().hex
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.stop = threading.Event()
        self.first_published = threading.Event()
        self.first_publish_s: float | None = None
        self.seq = 0
        self._seq_lock = threading.Lock()
        self.slot: LatestSlot[Frame] = LatestSlot()
        self.capture_stats = StageStats("capture")
        self.infer_stats = StageStats("inference")
        self.post_stats = StageStats("postprocess")
        self.results: queue.Queue[tuple[Frame, RawInference, Model, bool]] = queue.Queue(maxsize=_RESULTS_QUEUE)
        self.skipped = 0  # inferences saved by change gating
        self.model: Model | None = None
        self.sink: Sink | None = None
        self.capture: Capture | None = None
        self.signal: SignalPipeline | None = None
        self.live: LiveView | None = None
        if settings.http.enabled:
            self.live = LiveView()
        self.web: WebServer | None = None
        self.signal_mode = signal_kind(settings.source.uri) is not None
        self._threads: list[threading.Thread] = []
        self._proc = ProcessStats()
        self._last_counts: dict[str, deque[tuple[float, int]]] = {}
        base = f"{settings.mqtt.topic_prefix}/{settings.device_id}"
        self.topics = {
            k: f"{base}/{k}"
            for k in (
                "predictions",
                "events",
                "health",
                "info",
                "availability",
                "cmd",
                "cmd/result",
                "model/state",
                "escalations",
                "escalations/result",
            )
        }
        groups = [f"{settings.mqtt.topic_prefix}/group/{g}" for g in settings.groups]
        self.command_topics = [self.topics["cmd"], f"{base}/ota/#"] + [f"{g}/cmd" for g in groups]
        self.command_topics += [f"{g}/ota/#" for g in groups]
        self.ha: HomeAssistant | None = None
        if settings.homeassistant.enabled:
            self.command_topics += [settings.homeassistant.status_topic, f"{base}/ha/rollback"]
        self.escalator: Escalator | None = None
        if settings.escalation.enabled:
            self.command_topics.append(self.topics["escalations/result"])
        self.inbox: queue.Queue[tuple[str, bytes]] = _Inbound(self, maxsize=_INBOX_SIZE)
        self.commands = CommandProcessor(self.inbox, self._publish_result, self.stop)
        self.commands.register("ping", self._cmd_ping)
        self.commands.register("status", self._cmd_status)
        self.commands.register("reload", self._cmd_reload)
        self.store: ModelStore | None = None
        self.updater: Updater | None = None
        self._model_state: dict[str, Any] | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model first: a bad model fails here, before anything is started."""
        s = self.settings
        try:
            s.state_dir.mkdir(parents=True, exist_ok=True)
            state_dir: Path | None = s.state_dir
            self._lock_state_dir(s.state_dir)
        except OSError as err:
            log.warning("state directory %s unusable (%s); probe results will not be cached", s.state_dir, err)
            state_dir = None
        if s.runtime.preprocess_threads:
            import cv2

            cv2.setNumThreads(s.runtime.preprocess_threads)
        model_cfg, report = s.model, None
        if state_dir is not None:
            try:
                self.store = ModelStore(state_dir / "models", s.ota.keep_versions)
                model_cfg, report = model_for_start(s, self.store)
            except OSError as err:
                log.warning("model store unusable (%s): over-the-air updates are off", err)
                self.store = None
        self.model = Model(model_cfg, s.runtime, state_dir, signal=self.signal_mode)
        if s.homeassistant.enabled:
            watched = s.homeassistant.labels or list(self.model.labels or ())[:1] or [self.model.name]
            self.ha = HomeAssistant(s, self.topics, watched)
        self._model_state = report
        log.info(
            "model %s (%s) on %s", self.model.name, self.model.decoder.layout, self.model.runtime.backend.description
        )
        self.sink = make_sink(self.sink_kind, s, self._retained_state, self.command_topics, self.inbox)
        if self.signal_mode:
            self.signal = SignalPipeline(
                s,
                lambda: self.model,
                lambda: self.sink,
                self.topics,
                self.boot_id,
                (self.capture_stats, self.infer_stats, self.post_stats),
                self.stop,
                self._published,
                lambda: make_signal_source(self.settings),
                self._observe,
                self.live,
                self._on_event,
                self._escalate_window,
            )
        else:
            self.capture = Capture(lambda: make_source(s.source), s.source, self.slot, self.capture_stats, self.stop)
        self.sink.start()
        if s.escalation.enabled:
            self.escalator = Escalator(
                s.escalation,
                self.topics["escalations"],
                self.topics["predictions"],
                lambda: self.sink,
                self.next_seq,
                self.stop,
                f"{self.boot_id[:8]}-",
            )
            self.escalator.start()
        if s.http.enabled:
            from edge_agent.web import WebServer

            assert self.live is not None
            self.web = WebServer(s.http, self.health, self.stalled_stages, self.live, self._update_history)
            try:
                self.web.start()
            except OSError as err:  # a taken port must not take the pipeline down with it
                log.error("status page not served: cannot listen on %s:%d: %s", s.http.bind, s.http.port, err)
                self.web = None
        if self.store is not None:
            self.updater = Updater(
                s,
                self.store,
                self._publish_model_state,
                self.swap_model,
                lambda: self.infer_stats.errors + self.post_stats.errors,
                self.stop,
            )
            self.updater.start()
            self.commands.register("deploy", self._cmd_deploy)
            self.commands.register("rollback", self._cmd_rollback)
            self.commands.register("list-models", self._cmd_list_models)
            if self._model_state is not None:
                self._publish_model_state(self._model_state)
        self.commands.start()
        if self.signal is not None:
            self.signal.start()
        else:
            assert self.capture is not None
            self.capture.start()
            self._spawn("inference", self._inference_loop)
            self._spawn("postprocess", self._post_loop)
        self._spawn("health", self._health_loop)
        self._spawn("watchdog", self._watchdog_loop)

    def _lock_state_dir(self, state_dir: Path) -> None:
        """One agent per state directory: two would corrupt each other's outbox and model store."""
        import fcntl

        self._lock_file = open(state_dir / "agent.lock", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelError(f"another edge-agent is using the state directory {state_dir}") from None

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def run(self, seconds: float | None = None) -> int:
        """Serve until SIGTERM/SIGINT (or `seconds`), then shut down cleanly; returns the exit code."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self.stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.reload_requested.set()

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while not self.stop.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if self.reload_requested.wait(_MAIN_TICK_S if left is None else min(_MAIN_TICK_S, left)):
                    self.reload_requested.clear()
                    self.reload()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.shutdown()
        return self.exit_code

    def shutdown(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self.notifier.stopping()
        self.slot.close()
        deadline = time.monotonic() + timeout
        if self.capture is not None:
            self.capture.join(timeout / 4)
        if self.signal is not None:
            self.signal.join(timeout / 4)
        for t in self._threads:
            t.join(max(0.0, min(timeout / 4, deadline - time.monotonic())))
        if self.sink is not None:
            self.sink.close(max(0.5, deadline - time.monotonic()))
        if self.web is not None:
            self.web.close()
        if self.escalator is not None:
            self.escalator.join(1.0)
        if self.model is not None:
            self.model.close()
        self.notifier.close()
        lock = getattr(self, "_lock_file", None)
        if lock is not None:
            lock.close()  # releases the state directory
        log.info("stopped")

    # --- commands ----------------------------------------------------------------------------
    def _publish_result(self, doc: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.submit(Message(self.topics["cmd/result"], dumps(doc), qos=1))

    def _cmd_ping(self, cmd: Command) -> dict[str, Any]:
        no_args(cmd)
        return {"pong": round(time.time(), 3), "boot_id": self.boot_id}

    def _cmd_status(self, cmd: Command) -> dict[str, Any]:
        no_args(cmd)
        h = self.health()
        return {k: h[k] for k in ("status", "problems", "uptime_s", "fps", "accelerator", "model")}

    def _cmd_reload(self, cmd: Command) -> dict[str, Any]:
        no_args(cmd)
        if self.reloader is None:
            raise Rejected("this agent was started without a configuration file to reload")
        applied = self.reload()
        return {"applied": applied, "restart_needed": self.restart_needed}

    # --- model updates -------------------------------------------------------------------------
    def swap_model(self, new: Model) -> Model | None:
        """Serve `new` from the next frame on; returns the model it replaces (still usable)."""
        old, self.model = self.model, new
        log.info("now serving %s (%s)", new.name, new.file.sha256[:12])
        if self.sink is not None:
            for m in self._retained_state():
                self.sink.submit(m)
        return old

    def _publish_model_state(self, doc: dict[str, Any]) -> None:
        self._model_state = doc
        if self.sink is not None:
            self.sink.submit(Message(self.topics["model/state"], dumps(doc), qos=1, retain=True))

    def _cmd_deploy(self, cmd: Command) -> dict[str, Any]:
        assert self.updater is not None
        if set(cmd.args) != {"manifest"}:
            raise Rejected("'deploy' takes args {\"manifest\": {...}}")
        try:
            m = parse_manifest(cmd.args["manifest"])
            self.updater.submit(m)
        except ManifestError as err:
            raise Rejected(str(err)) from None
        return {ACCEPTED: "accepted", "name": m.name, "version": m.version}

    def _cmd_rollback(self, cmd: Command) -> dict[str, Any]:
        no_args(cmd)
        assert self.updater is not None and self.store is not None
        if not self.store.state.get("current"):
            raise Rejected("no installed update to roll back from")
        self.updater.rollback("manual rollback")
        return {"now": self.store.state.get("current")}

    def _cmd_list_models(self, cmd: Command) -> dict[str, Any]:
        no_args(cmd)
        assert self.store is not None
        st = self.store.state
        return {
            "versions": self.store.versions(),
            "current": st.get("current"),
            "previous": st.get("previous"),
            "highest_version": st.get("highest_version"),
            "history": st.get("history", [])[-10:],
        }

    # --- reload (SIGHUP) ----------------------------------------------------------------------
    def reload(self) -> list[str]:
        """Re-read the configuration; apply what can change live, report what needs a restart."""
        if self.reloader is None:
            return []
        from edge_agent.config import ConfigError

        try:
            new = self.reloader()
        except ConfigError as err:
            log.error("reload rejected, keeping the running configuration: %s", err)
            self.infer_stats.error(f"reload rejected: {err}")
            return []
        old = self.settings.model_dump()
        changed = sorted(_changed(old, new.model_dump()))
        live = [k for k in changed if k.split(".")[0] in _LIVE_SECTIONS or k in _LIVE_KEYS]
        self.restart_needed = [k for k in changed if k not in live]
        self.settings = new
        if self.model is not None:
            m = new.model
            self.model.decoder.opts = DecodeOptions(m.score_threshold, m.iou_threshold, m.top_k, m.max_detections)
        if self.capture is not None and any(k.startswith("source.") for k in live):
            self.capture.cfg = new.source
            if any(k in ("source.uri", "source.width", "source.height", "source.loop") for k in live):
                self.capture.restart()
        logging.getLogger("edge_agent").setLevel(new.log_level)
        self.reloads += 1
        log.info("configuration reloaded; applied %s", ", ".join(live) or "nothing")
        if self.restart_needed:
            log.warning("changed settings that need a restart: %s", ", ".join(self.restart_needed))
        return live

    # --- stages ----------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        """Only preprocessing and invoke here: decoding and publishing run on the post thread."""
        st = self.infer_stats
        st.state = "running"
        m = self.settings.model
        gate = ChangeGate(m.change_threshold, m.change_max_age_s) if m.change_threshold > 0 else None
        last: tuple[RawInference, Model] | None = None
        while not self.stop.is_set():
            frame = self.slot.take(_TAKE_TIMEOUT_S)
            st.beat()
            if frame is None:
                continue
            model = self.model  # an update swaps it between two frames
            assert model is not None
            try:
                cached = gate is not None and last is not None and last[1] is model and gate.unchanged(frame.image)
                if cached and last is not None:
                    raw = last[0]
                    self.skipped += 1
                else:
                    raw = model.run(frame.image)
                    last = (raw, model)
                    st.observe("preprocess", raw.preprocess_ms)
                    st.observe("inference", raw.inference_ms)
                    st.done()
                while not self.stop.is_set():
                    try:  # results are never dropped here: a slow post stage slows inference instead
                        self.results.put((frame, raw, model, cached), timeout=_TAKE_TIMEOUT_S)
                        break
                    except queue.Full:
                        st.beat()
            except Exception as err:  # loop boundary: one bad frame must not stop the stream
                st.error(f"{type(err).__name__}: {err}")
                log.exception("inference error")

    def _post_loop(self) -> None:
        assert self.sink is not None
        sink, st = self.sink, self.post_stats
        topic, qos = self.topics["predictions"], self.settings.mqtt.qos
        fallbacks_seen = 0
        decoded: tuple[RawInference, Inference] | None = None  # a gated frame reuses the last decoding
        st.state = "running"
        while not self.stop.is_set() or not self.results.empty():
            try:
                frame, raw, model, cached = self.results.get(timeout=_TAKE_TIMEOUT_S)
            except queue.Empty:
                st.beat()
                continue
            st.beat()
            try:
                if cached and decoded is not None and decoded[0] is raw:
                    inf = decoded[1]
                else:
                    inf = model.decode(raw)
                    decoded = (raw, inf)
                    self.infer_stats.observe("postprocess", inf.postprocess_ms)
                if self.updater is not None and not cached:
                    self.updater.observe(model.file.sha256, raw.outputs, raw.inference_ms)
                seq = self.next_seq()
                h, w = frame.image.shape[:2]
                latency = {
                    "preprocess": inf.preprocess_ms,
                    "inference": inf.inference_ms,
                    "postprocess": inf.postprocess_ms,
                }
                doc = prediction(
                    device_id=self.settings.device_id,
                    boot_id=self.boot_id,
                    seq=seq,
                    ts=frame.ts,
                    model=model.info(),
                    accelerator=raw.accelerator,
                    latency_ms={"capture_to_publish": 0.0, **latency},
                    frame_size=(w, h),
                    result=inf.result,
                )
                c2p = (time.monotonic() - frame.mono) * 1e3
                doc["latency_ms"]["capture_to_publish"] = round(c2p, 3)
                if cached:
                    doc["cached"] = True  # the frame looked like the last inferred one
                if not sink.submit(Message(topic, dumps(doc), qos=qos)):
                    st.drop("sink_full")
                if self.live is not None:
                    self.live.set_frame(frame.image, doc)
                    self.live.add_prediction(doc)
                if self.ha is not None and (state := self.ha.observe(inf.result, frame.ts)) is not None:
                    sink.submit(state)
                if self.escalator is not None and not cached:
                    self.escalator.consider(inf.result, doc, image=frame.image)
                if len(model.runtime.fallbacks) != fallbacks_seen:
                    fallbacks_seen = len(model.runtime.fallbacks)
                    self._announce_fallback()
                self.infer_stats.observe("capture_to_publish", c2p)
                st.done()
                self._published()
            except Exception as err:  # loop boundary: one bad result must not stop the stream
                st.error(f"{type(err).__name__}: {err}")
                log.exception("postprocess error")

    def next_seq(self) -> int:
        """Predictions (local and refined by the cloud) share one sequence per boot."""
        with self._seq_lock:
            self.seq += 1
            return self.seq

    def _on_event(self, doc: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.add_event(doc)
        if self.ha is not None and self.sink is not None:
            state = self.ha.observe_event(doc["label"], doc["type"] != "end", doc["start_ts"])
            if state is not None:
                self.sink.submit(state)

    def _escalate_window(self, result: Result, doc: dict[str, Any], window: np.ndarray) -> None:
        if self.escalator is not None:
            self.escalator.consider(result, doc, window=window)

    def publish_discovery(self) -> None:
        """Home Assistant's birth message: configs and current state again (submit only enqueues)."""
        if self.ha is not None and self.sink is not None:
            m = self.model
            for msg in self.ha.discovery(m.name if m else None, m.version if m else None):
                self.sink.submit(msg)

    def _update_history(self) -> list[dict[str, Any]]:
        return list(self.store.state.get("history", [])) if self.store is not None else []

    def _observe(self, model: Model, raw: RawInference) -> None:
        if self.updater is not None:  # a new model on probation is judged on every step
            self.updater.observe(model.file.sha256, raw.outputs, raw.inference_ms)

    def _published(self) -> None:
        if not self.first_published.is_set():
            self.first_publish_s = time.monotonic() - self.started_mono
            self.first_published.set()
            self.notifier.ready(f"first prediction after {self.first_publish_s:.2f} s")
            log.info("first prediction after %.2f s", self.first_publish_s)

    def _announce_fallback(self) -> None:
        """An accelerator gave up: say so now (retained info and a health message), not at the next tick."""
        assert self.sink is not None
        for m in self._retained_state():
            self.sink.submit(m)
        self.sink.submit_latest(Message(self.topics["health"], dumps(self.health()), qos=0))

    def _health_loop(self) -> None:
        while not self.stop.wait(self.settings.health.interval_s):
            try:
                assert self.sink is not None
                self.sink.submit_latest(Message(self.topics["health"], dumps(self.health()), qos=0))
            except Exception as err:  # loop boundary
                log.exception("health error")
                self.infer_stats.error(f"health: {err}")

    def _watchdog_loop(self) -> None:
        """Feed systemd's watchdog while every stage comes round; give up on a stall."""
        wd = self.notifier.watchdog_s
        interval = min(wd / 2, _WATCHDOG_TICK_S) if wd else _WATCHDOG_TICK_S
        while not self.stop.wait(interval):
            try:
                stalled = self.stalled_stages()
                if not stalled:
                    if wd:
                        self.notifier.watchdog()
                    continue
                log.error("not feeding the watchdog: %s stalled", ", ".join(stalled))
                self.notifier.status(f"stalled: {', '.join(stalled)}")
                if self.settings.health.exit_on_stall:
                    self.exit_code = EXIT_STALLED
                    if self.sink is not None:
                        self.sink.submit_latest(Message(self.topics["health"], dumps(self.health()), qos=0))
                    log.critical("exiting with code %d so that the agent is restarted", EXIT_STALLED)
                    self.stop.set()
            except Exception:  # loop boundary
                log.exception("watchdog error")

    # --- health ----------------------------------------------------------------------------
    def stalled_stages(self) -> list[str]:
        """Stages whose loop has not come round within health.stall_s (a hang, not a missing camera)."""
        now = time.monotonic()
        limit = self.settings.health.stall_s
        beats = {
            "capture": self.capture_stats.heartbeat,
            "inference": self.infer_stats.heartbeat,
            "postprocess": self.post_stats.heartbeat,
        }
        sink_beat = getattr(self.sink, "heartbeat", None)
        if sink_beat is not None:
            beats["publish"] = sink_beat
        return [k for k, t in beats.items() if now - t > limit]

    def _fps(self, key: str, count: int, now: float) -> float:
        """Rate over the last few seconds; any number of readers (MQTT health, /metrics) see the same figure."""
        window = max(_RATE_WINDOW_S, self.settings.health.interval_s)
        hist = self._last_counts.setdefault(key, deque([(self.started_mono, 0)]))
        hist.append((now, count))
        while len(hist) > 2 and now - hist[1][0] >= window:
            hist.popleft()
        t0, n0 = hist[0]
        return round((count - n0) / (now - t0), 2) if now > t0 else 0.0

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        model, sink, cap = self.model, self.sink, self.capture
        sink_stats = sink.stats() if sink is not None else {}
        stalled = self.stalled_stages()
        source_state = self.capture_stats.state
        runtime = model.runtime if model is not None else None
        degraded = [
            *(f"{s} stalled" for s in stalled),
            *([f"source {source_state}"] if source_state not in ("running", "finished") else []),
            *(["broker disconnected"] if sink is not None and not sink.is_connected() else []),
            *(["running on CPU fallback"] if runtime is not None and runtime.fallbacks else []),
        ]
        latency = {k: w.percentiles() for k, w in self.infer_stats.latency.items()}
        sent = int(sink_stats.get("sent", 0) or 0)  # type: ignore[call-overload]
        errors = [
            (s.last_error_ts or 0, s.last_error)
            for s in (self.capture_stats, self.infer_stats, self.post_stats)
            if s.last_error
        ]
        return {
            "schema": 1,
            "device_id": self.settings.device_id,
            "boot_id": self.boot_id,
            "ts": round(time.time(), 3),
            "status": "degraded" if degraded else "ok",
            "problems": degraded,
            "uptime_s": round(now - self.started_mono, 1),
            "agent_version": __version__,
            "fps": {
                "captured": self._fps("captured", self.capture_stats.count, now),
                "inferred": self._fps("inferred", self.infer_stats.count, now),
                "published": self._fps("published", sent, now),
            },
            "frames": {
                "captured": self.capture_stats.count,
                "inferred": self.infer_stats.count,
                "published": self.post_stats.count,
                "skipped_unchanged": self.skipped,
                "dropped": {**dict(self.capture_stats.drops), **dict(self.post_stats.drops)},
            },
            "latency_ms": latency,
            "source": self._signal_source_info() if self.signal is not None else {
                "state": source_state,
                "uri": cap.source_desc if cap else "",
                "frame_size": list(cap.frame_size) if cap and cap.frame_size else None,
                "reopens": cap.reopens if cap else 0,
                "stalls": cap.stalls if cap else 0,
                "errors": self.capture_stats.errors,
            },
            "accelerator": self._accelerator_info(),
            "model": {
                **(model.info() if model else {}),
                "path": str(model.path) if model else None,
                "layout": model.decoder.layout if model else None,
                "update": self._model_state,
            },
            "process": self._proc.sample(),
            "system": {
                "cpu_temp_c": cpu_temperature_c(),
                "throttling": throttling(),
                "disk_free_mb": disk_free_mb(self.settings.state_dir),
            },
            "broker": sink_stats,
            "inference_errors": self.infer_stats.errors + self.post_stats.errors,
            "config": {"reloads": self.reloads, "restart_needed": self.restart_needed},
            "commands": dict(self.commands.counts),
            "last_error": max(errors)[1] if errors else None,
            "first_prediction_s": round(self.first_publish_s, 3) if self.first_publish_s is not None else None,
            **({"escalation": self.escalator.info()} if self.escalator is not None else {}),
        }

    def _signal_source_info(self) -> dict[str, Any]:
        """Sample rate achieved, gaps and dropped samples: what a sensor user needs to trust the windows."""
        sig = self.signal
        assert sig is not None
        now = time.monotonic()
        return {
            "state": self.capture_stats.state,
            "uri": sig.capture.description,
            "rate_achieved": self._fps("samples", sig.capture.samples, now),
            **sig.info(),
            "errors": self.capture_stats.errors,
        }

    def _accelerator_info(self) -> dict[str, Any]:
        if self.model is None:
            return {}
        rt = self.model.runtime
        return {
            "active": rt.accelerator,
            "description": rt.backend.description,
            "fully_accelerated": rt.backend.fully_accelerated,
            "probes": [p.as_dict() for p in rt.probes],
            "fallbacks": [
                {"ts": round(f.ts, 3), "from": f.from_backend, "to": f.to_backend, "reason": f.reason}
                for f in rt.fallbacks
            ],
        }

    def _retained_state(self) -> list[Message]:
        """Republished on every reconnect: what a newcomer needs to know about this device."""
        model = self.model
        info = {
            "schema": 1,
            "device_id": self.settings.device_id,
            "boot_id": self.boot_id,
            "agent_version": __version__,
            "started": round(self.started, 3),
            "model": model.info() if model else None,
            "task": model.decoder.task if model else None,
            "labels": list(model.labels) if model and model.labels and len(model.labels) <= 1000 else None,
            "accelerator": model.runtime.accelerator if model else None,
            "topics": self.topics,
        }
        msgs = [Message(self.topics["info"], dumps(info), qos=1, retain=True)]
        if self.ha is not None:  # every reconnect, and after a model swap (the update entity's version)
            msgs += self.ha.discovery(model.name if model else None, model.version if model else None)
        return msgs
