"""The daemon's composition root: build every part, start them in order, run until told to stop, shut down.

Data flows one way in each pipeline (source -> preprocess -> shared runtime -> postprocess -> fan-out
to the sinks); health watches every stage; model slots swap models between two frames. Each of those
lives in its own module; this one only wires them together, like Frigate's `app.py`.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.commands import CommandProcessor
from edge_agent.config import ConfigError, PipelineView, Settings, pipeline_views
from edge_agent.discovery import Discovery
from edge_agent.engine import Engine, ModelPool
from edge_agent.escalation import Escalator
from edge_agent.fanout import FanOut, Route
from edge_agent.frame_pipeline import Crowd, FramePipeline
from edge_agent.handlers import register_commands
from edge_agent.health import EXIT_STALLED, Health, Watchdog
from edge_agent.inbound import InboundRouter, subscriptions
from edge_agent.lastrun import RunRecord
from edge_agent.liveview import LiveView
from edge_agent.model import Model, misnamed_by_all, misnamed_features
from edge_agent.modelfile import ModelError
from edge_agent.ota.store import make_dirs
from edge_agent.payload import dumps, info
from edge_agent.process_signals import SignalThread
from edge_agent.recovery import Recovery
from edge_agent.redact import hide_credentials
from edge_agent.reload import apply_reload, check_models
from edge_agent.retained import MODEL, SINGLE, RetainedLedger
from edge_agent.scene import labels_problem
from edge_agent.sdnotify import Notifier
from edge_agent.signal_pipeline import SignalPipeline
from edge_agent.signals import make_signal_source, signal_kind
from edge_agent.sinks import Inbound, Message, Sink, make_sink
from edge_agent.slots import ModelSlot, slot_name
from edge_agent.stats import FailureLog, LatencyWindow
from edge_agent.system import limit_malloc_arenas
from edge_agent.topics import Topics

if TYPE_CHECKING:  # the HTTP side (prometheus-client, http.server) is imported only when it is enabled
    from edge_agent.web import WebServer

__all__ = ["EXIT_STALLED", "Agent", "Pipeline"]

log = logging.getLogger(__name__)

Pipeline = FramePipeline | SignalPipeline
#: Reads the configuration again: (new settings, pipelines refused with their reasons).
Reloader = Callable[[Settings], tuple[Settings, dict[str, str]]]

_MAIN_TICK_S = 0.5
#: Commands waiting to be handled; beyond this they are dropped and counted (a flood, not a fleet).
_INBOX_SIZE = 1000
#: Listening for the status page is tried again this long after it failed, doubling up to the second.
_WEB_RETRY_MIN_S, _WEB_RETRY_MAX_S = 5.0, 300.0


class Agent:
    def __init__(
        self,
        settings: Settings,
        sink: str = "mqtt",
        notifier: Notifier | None = None,
        reload: Reloader | None = None,
        catch_faults: bool = False,
    ):
        self.settings = settings
        #: whether a fatal signal's stacks go to the state directory (the daemon's, not a test's own process)
        self.catch_faults = catch_faults
        #: this run's record in the state directory, and how the last run ended (None: none kept)
        self.run_record: RunRecord | None = None
        self.reloader = reload
        self.reload_requested = threading.Event()
        self.reload_lock = threading.Lock()  # SIGHUP and the reload command, one at a time
        self.reloads = 0
        self.exit_code = 0
        self.restart_needed: list[str] = []
        self.refused_pipelines: dict[str, str] = {}
        self.sink_kind = sink
        self.notifier = notifier or Notifier()
        self.boot_id = uuid.uuid4().hex
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.stop = threading.Event()
        self.first_published = threading.Event()
        self.first_publish_s: float | None = None
        self.topics = Topics(settings.mqtt.topic_prefix, settings.device_id, tuple(settings.groups))
        self.multi = bool(settings.pipelines)
        self.pool = ModelPool()
        self.slots: dict[str, ModelSlot] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.failed_pipelines: dict[str, str] = {}
        self.sink: Sink | None = None
        self.fanout = FanOut(lambda: self.sink, settings.mqtt.qos, self.stop, self.topics)
        self.crowd = Crowd()  # the frame pipelines, each running its frames to completion while another is busy
        self.fanout.on_first = self._first_published
        self.escalator: Escalator | None = None
        self.web: WebServer | None = None
        #: why the status page is not served (its address or port cannot be listened on), or None
        self.web_problem: str | None = None
        self.recovery: Recovery | None = None
        #: why the state directory cannot be written (read-only), or None
        self.state_dir_problem: str | None = None
        self.state_dir: Path | None = None
        self.health = Health(self)
        self.watchdog = Watchdog(self.health, self.notifier, self)
        self.discovery = Discovery(self)
        self.inbox: queue.Queue[Inbound] = InboundRouter(self, maxsize=_INBOX_SIZE)
        self.commands = CommandProcessor(self.inbox, self._publish_result, self.stop)
        self._threads: list[threading.Thread] = []
        self._lock_file: Any = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Models load first: a bad model or configuration fails here, before anything is started."""
        self.init_state_dir()
        self.init_memory_and_threads()
        self.init_pipelines()
        self.check_escalated_labels()
        self.discovery.init()
        self.init_sink()
        self.start_escalation()
        self.start_web()
        self.start_updates()
        register_commands(self)
        self.commands.start()
        self.start_pipelines()
        self.start_recovery()
        self._spawn("health", self.health.loop)
        self._spawn("watchdog", self.watchdog.loop)

    def init_state_dir(self) -> None:
        s = self.settings
        try:
            make_dirs(s.state_dir)
            self._lock_state_dir(s.state_dir)
            self.state_dir = s.state_dir
            self.fanout.ledger = RetainedLedger(s.state_dir / "retained.json")
            self.run_record = RunRecord(s.state_dir)
            self.run_record.begin(__version__, catch_faults=self.catch_faults)
        except OSError as err:
            if s.state_dir.is_dir() and os.access(s.state_dir, os.R_OK | os.X_OK):
                # readable but not writable: what is installed there is still served
                self.state_dir = s.state_dir
                self.fanout.ledger = RetainedLedger(s.state_dir / "retained.json")  # read; written where it can be
                self.state_dir_problem = f"state directory {s.state_dir} read-only ({err.strerror or err})"
                log.error("%s: serving what is installed; no updates, results kept in memory",
                          self.state_dir_problem)
            else:
                log.warning("state directory %s unusable (%s); probe results will not be cached", s.state_dir, err)

    def init_memory_and_threads(self) -> None:
        """Before any thread starts: the malloc arena cap, then OpenCV's own pool."""
        if self.settings.runtime.malloc_arenas:
            limit_malloc_arenas(self.settings.runtime.malloc_arenas)
        if self.settings.runtime.preprocess_threads:
            import cv2

            cv2.setNumThreads(self.settings.runtime.preprocess_threads)

    def init_pipelines(self) -> None:
        views = pipeline_views(self.settings)
        if self.multi:
            check_models(views)
        for view in views:
            try:
                self.pipelines[view.name] = self.build_pipeline(view)
            except ModelError as err:
                if not self.multi:
                    raise
                log.error("pipeline %s not started: %s", view.name, err)
                self.failed_pipelines[view.name] = str(err)
        if not self.pipelines:
            why = "; ".join(f"{k}: {v}" for k, v in self.failed_pipelines.items())
            raise ModelError(f"no pipeline could start: {why}")

    def build_pipeline(self, view: PipelineView) -> Pipeline:
        """The slot (loaded once per shared model) and the pipeline around it, not yet started."""
        name = slot_name(view)
        slot = self.slots.get(name)
        if slot is None:
            slot = ModelSlot(
                name,
                view,
                self.pool,
                self.topics.model_state(None if view.legacy else name),
                lambda: self.sink,
                self.state_dir,
            )
            model = slot.load()
            log.info("model %s (%s) on %s", model.name, model.decoder.layout, model.runtime.backend.description)
            slot.on_swap = lambda _slot: self.publish_retained()
            slot.on_state = self.discovery.update_state
            self.slots[name] = slot
            if self.fanout.ledger is not None:  # its retained update state, cleared once the slot is gone
                self.fanout.ledger.note(slot.state_topic, MODEL + slot.state_topic)
        slot.pipelines.append(view.name)
        where = None if view.legacy else view.name
        route = Route(
            view.name,
            self.topics.pipeline(where, "predictions"),
            self.topics.pipeline(where, "events"),
            legacy=view.legacy,
        )
        self.fanout.routes[view.name] = route
        if self.settings.http.enabled:
            self.fanout.live.setdefault(view.name, LiveView())
        pipe: Pipeline
        if signal_kind(view.settings.source.uri) is not None:
            vs = view.settings
            pipe = SignalPipeline(
                vs, lambda: slot.model, route, self.boot_id, self.fanout, lambda: make_signal_source(vs)
            )
        else:
            pipe = FramePipeline(
                view, route, lambda: slot.model, self.fanout, self.boot_id, self.announce_fallback, self.crowd
            )
        return pipe

    def init_sink(self) -> None:
        self.sink = make_sink(self.sink_kind, self.settings, self.retained_state, subscriptions(self.settings),
                              self.inbox, self.stop)
        self.sink.start()
        self.clear_stale_retained()

    def clear_stale_retained(self) -> None:
        """Retained zone counts and snapshots of pipelines and zones the configuration no longer has, and
        update states of models no pipeline uses, from an earlier run or configuration (see
        edge_agent.retained): cleared, as Home Assistant's stale configs are."""
        zones: dict[str, set[str]] = {MODEL + slot.state_topic: set() for slot in self.slots.values()}
        for pipe in self.pipelines.values():
            scene = pipe.settings.scene
            if pipe.kind == "frame" and scene.active:
                zones[pipe.route.label or SINGLE] = {z.name for z in scene.zones}
        for topic in self.fanout.ledger.stale(zones) if self.fanout.ledger is not None else []:
            log.info("clearing retained %s (its pipeline or zone is no longer configured)", topic)
            for pipe in self.pipelines.values():
                pipe.retained.pop(topic, None)
            self.fanout.state(Message(topic, b"", qos=1, retain=True))

    def check_escalated_labels(self) -> None:
        """`escalation.labels` naming a label no model in use produces would escalate nothing: refused, as
        Home Assistant's labels are (a model whose labels are not known leaves it alone)."""
        if not self.settings.escalation.enabled:
            return
        why = misnamed_by_all("escalation.labels", self.settings.escalation.labels, self.models_in_use())
        if why is not None:
            raise ConfigError(why)

    def start_escalation(self) -> None:
        if not self.settings.escalation.enabled:
            return
        self.escalator = Escalator(
            self.settings.escalation,
            self.topics.device("escalations"),
            self.fanout.refined,
            lambda: self.sink,
            self.stop,
            f"{self.boot_id[:8]}-",
        )
        self.fanout.escalator = self.escalator
        self.escalator.start()

    def start_web(self) -> None:
        if not self.settings.http.enabled:
            return
        if not self._serve_web():
            self._spawn("http-retry", self._retry_web)

    def _serve_web(self) -> bool:
        """The status page, /metrics and /healthz on http.bind:http.port; False (and `web_problem` says why)
        where that cannot be listened on: a taken port must not take the pipelines down with it."""
        from edge_agent.web import WebServer

        s = self.settings
        web = WebServer(
            s.http, self.health.document, self.health.stalled, self.fanout.live, self.update_history, self.state_dir,
            self.latencies,
        )
        try:
            web.start()
        except OSError as err:
            self.web_problem = f"status page not served: cannot listen on {s.http.bind}:{s.http.port}: {err}"
            return False
        self.web, self.web_problem = web, None
        return True

    def _retry_web(self) -> None:
        """The `http-retry` thread: listening is tried again, backing off to every 5 minutes, until it works.
        An address the network has not given the device yet (DHCP, at boot) or a port another process
        holds for a while left the page, /metrics and /healthz away for as long as the agent ran."""
        failures = FailureLog(log, every_s=3600.0)
        delay = _WEB_RETRY_MIN_S
        failures.failed("http", self.web_problem or "", delay)
        while not self.stop.wait(delay):
            try:
                if self._serve_web():
                    failures.opened("http", "status page served")
                    return
                delay = min(delay * 2, _WEB_RETRY_MAX_S)
                failures.failed("http", self.web_problem or "", delay)
            except Exception:  # loop boundary: log, try again
                log.exception("http: starting the status page failed")

    def start_updates(self) -> None:
        for slot in self.slots.values():
            self.start_slot_updates(slot)

    def start_slot_updates(self, slot: ModelSlot) -> None:
        """A slot's updater, at the start or for a pipeline a reload added: it judges candidates on every
        pipeline of the slot and rejects one this configuration would refuse."""
        updater = slot.start_updates(self.stop)
        if updater is not None:
            updater.refusal = functools.partial(self.refusal_of, slot)
            self.fanout.probation.append(updater)

    def refusal_of(self, slot: ModelSlot, candidate: Model) -> str | None:
        """Why this configuration would refuse `candidate` in `slot`'s place, as `run` refuses a model at
        start: a label one of the slot's pipelines (its scene, its signal events), Home Assistant or
        escalation names and no model would produce then. An update that served so would run until the next
        start, which exits 2 on it and, under systemd, stays stopped: the update is rejected instead."""
        for name in slot.pipelines:
            pipe = self.pipelines.get(name)
            if pipe is None:
                continue
            why = labels_problem(pipe.settings, candidate.produced_labels, None if slot.legacy else name)
            if why is not None:
                return why
        models = [candidate if m is slot.model else m for m in self.models_in_use()]
        return next(iter(misnamed_features(self.settings, models)), None)

    def start_pipelines(self) -> None:
        for pipe in self.pipelines.values():
            pipe.start()

    def _lock_state_dir(self, state_dir: Path) -> None:
        """One agent per state directory: two would corrupt each other's outbox and model store."""
        import fcntl

        self._lock_file = open(state_dir / "agent.lock", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelError(f"another edge-agent is using the state directory {state_dir}") from None

    def start_recovery(self) -> None:
        """Tries again, every runtime.recover_s, an accelerator the CPU stands in for."""
        if self.settings.runtime.recover_s > 0:
            self.recovery = Recovery(self.engines, self.settings.runtime.recover_s, self.stop)
            self._spawn("accelerators", self.recovery.loop)

    def engines(self) -> list[Engine]:
        """Every loaded model's engine once: the shared ones, and those of streaming models (their own)."""
        found = {id(e): e for e in self.pool.engines()}
        for slot in list(self.slots.values()):
            if slot.model is not None:
                found.setdefault(id(slot.model.engine), slot.model.engine)
        return list(found.values())

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def handle_signals(self) -> SignalThread:
        """SIGTERM/SIGINT stop the agent, SIGHUP reloads its settings; entered before `start()`, so that a
        service manager's reload or stop that comes while the models load or the first frames flow is
        taken, not met by the default action (SIGHUP's kills the process). Signals arrive on a thread of
        their own (`SignalThread`: a handler that takes a lock can deadlock the main thread); more of them
        during the shutdown change nothing, and once the block is left they are ignored: the process has
        nothing left to stop but its exit."""

        def on_stop(sig: signal.Signals) -> None:
            if not self.stop.is_set():
                log.info("signal %s: stopping", sig.name)
            self.stop.set()

        def on_hup(sig: signal.Signals) -> None:
            self.reload_requested.set()

        handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
        return SignalThread(handlers, then_ignore=True)

    def run(self, seconds: float | None = None) -> int:
        """Serve until stopped (a signal, see `handle_signals`, or a fatal fault) or `seconds` have passed,
        taking each requested reload between two ticks; then shut down cleanly. Returns the exit code."""
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while not self.stop.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if self.reload_requested.wait(_MAIN_TICK_S if left is None else min(_MAIN_TICK_S, left)):
                    self.reload_requested.clear()
                    apply_reload(self)
                self.discovery.answer_birth()
        finally:
            self.shutdown()
        return self.exit_code

    def shutdown(self, timeout: float = 5.0, exit_code: int | None = None) -> None:
        """Stop every part, then record how this run ended: `exit_code`, where start() failed, else the
        run's own."""
        self.stop.set()
        self.notifier.stopping()
        deadline = time.monotonic() + timeout
        for pipe in list(self.pipelines.values()):
            pipe.stop_and_join(max(0.1, min(timeout / 2, deadline - time.monotonic())))
        for t in self._threads:
            t.join(max(0.0, min(timeout / 4, deadline - time.monotonic())))
        # before the sink closes, so that a model taken off probation says so
        why = "the agent was stopped during probation (not counted as a crash of the model)"
        for slot in self.slots.values():
            slot.end_updates(max(0.0, min(timeout / 4, deadline - time.monotonic())),
                             why if self.exit_code == 0 else None)
        if self.sink is not None:
            self.sink.close(max(0.5, deadline - time.monotonic()))
        if self.web is not None:
            self.web.close()
        if self.escalator is not None:
            self.escalator.join(1.0)
        for slot in self.slots.values():
            slot.close(max(0.0, deadline - time.monotonic()))
        self.notifier.close()
        if self.run_record is not None:
            self.run_record.end(self.exit_code if exit_code is None else exit_code)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the state directory
        log.info("stopped")

    # --- what other parts ask of the agent ----------------------------------------------------------
    def slot_of(self, pipeline: str) -> ModelSlot | None:
        return next((s for s in self.slots.values() if pipeline in s.pipelines), None)

    def model_of(self, pipeline: str) -> Model | None:
        slot = self.slot_of(pipeline)
        return slot.model if slot is not None else None

    def models_in_use(self) -> list[Model]:
        """Each model a pipeline runs, once (a shared model is one)."""
        return [m for m in dict.fromkeys(self.model_of(name) for name in self.pipelines) if m is not None]

    def first_slot(self) -> ModelSlot | None:
        return next(iter(self.slots.values()), None)

    @property
    def model(self) -> Model | None:
        """The single form's model (with pipelines: the first slot's)."""
        slot = self.first_slot()
        return slot.model if slot is not None else None

    def latencies(self) -> list[tuple[str, str, LatencyWindow]]:
        """Every pipeline's latency windows, for /metrics' histograms."""
        return [(p.name, series, w) for p in list(self.pipelines.values())
                for series, w in list(p.infer_stats.latency.items())]

    def update_history(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for slot in self.slots.values():
            if slot.store is not None:
                out += [{**h, "slot": slot.name} if self.multi else h for h in slot.store.state.get("history", [])]
        return sorted(out, key=lambda h: h.get("ts", 0))

    def _first_published(self) -> None:
        self.first_publish_s = time.monotonic() - self.started_mono
        self.first_published.set()
        self.notifier.ready(f"first prediction after {self.first_publish_s:.2f} s")
        log.info("first prediction after %.2f s", self.first_publish_s)

    def announce_fallback(self) -> None:
        """An accelerator gave up, or came back: say so now (retained info and a health message), not at the
        next tick."""
        self.publish_retained()
        self.health.publish()

    def publish_retained(self) -> None:
        if self.sink is not None:
            for m in self.retained_state():
                self.sink.submit(m)

    def retained_state(self) -> list[Message]:
        """Republished on every reconnect and model swap: what a newcomer needs to know about this device."""
        model = self.model
        pipes = None
        if self.multi:
            pipes = {}
            for name, p in self.pipelines.items():
                slot = self.slot_of(name)
                m = slot.model if slot else None
                pipes[name] = {
                    "kind": p.kind,
                    "source": hide_credentials(p.settings.source.uri),  # retained, for all: no camera password
                    "model": m.info() if m else None,
                    "model_slot": slot.name if slot else None,
                    "task": m.decoder.task if m else None,
                    "topics": {"predictions": p.route.predictions, "events": p.route.events},
                }
        doc = info(
            device_id=self.settings.device_id,
            groups=self.settings.groups,
            boot_id=self.boot_id,
            agent_version=__version__,
            started=self.started,
            model=model.info() if model else None,
            task=model.decoder.task if model else None,
            labels=list(model.labels) if model and model.labels and len(model.labels) <= 1000 else None,
            accelerator=model.runtime.accelerator if model else None,
            topics=self.topics.as_dict() if not self.multi else {
                leaf: self.topics.device(leaf) for leaf in ("health", "info", "availability", "cmd", "cmd/result")
            },
            pipelines=pipes,
            last_run=self.run_record.last if self.run_record is not None else None,
        )
        msgs = [Message(self.topics.device("info"), dumps(doc), qos=1, retain=True)]
        for p in list(self.pipelines.values()):  # zone counts and the latest snapshots
            msgs += list(p.retained.values())
        msgs += self.discovery.messages()  # every reconnect, and after a model swap (the update entity)
        return msgs

    def _publish_result(self, doc: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.submit(Message(self.topics.device("cmd/result"), dumps(doc), qos=1))

    def note_error(self, msg: str) -> None:
        """A fault of the agent's own, counted and shown in health (on the first pipeline's errors)."""
        pipe = next(iter(self.pipelines.values()), None)
        if pipe is not None:
            pipe.infer_stats.error(msg)

