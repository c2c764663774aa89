"""The daemon's composition root: build every part, start them in order, run until told to stop, shut down.

Data flows one way in each pipeline (source -> preprocess -> shared runtime -> postprocess -> fan-out
to the sinks); health watches every stage; model slots swap models between two frames. Each of those
lives in its own module; this one only wires them together, like Frigate's `app.py`.
"""

from __future__ import annotations

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
from edge_agent.engine import ModelPool
from edge_agent.escalation import Escalator
from edge_agent.fanout import FanOut, Route
from edge_agent.frame_pipeline import Crowd, FramePipeline
from edge_agent.handlers import register_commands
from edge_agent.health import EXIT_STALLED, Health, Watchdog
from edge_agent.homeassistant import HomeAssistant, object_id
from edge_agent.liveview import LiveView
from edge_agent.model import NOT_FRAMES, Model, misfit, misnamed_by_all
from edge_agent.modelfile import ModelError, read_model_file
from edge_agent.ota.store import make_dirs
from edge_agent.payload import dumps, info
from edge_agent.process_signals import SignalThread
from edge_agent.retained import MODEL, SINGLE, RetainedLedger
from edge_agent.runtime.delegate import find_library
from edge_agent.scene import labels_problem
from edge_agent.sdnotify import Notifier
from edge_agent.signal_pipeline import SignalPipeline
from edge_agent.signals import make_signal_source, signal_kind
from edge_agent.sinks import Inbound, Message, Sink, make_sink
from edge_agent.slots import ModelSlot, slot_name
from edge_agent.stats import LatencyWindow
from edge_agent.system import limit_malloc_arenas
from edge_agent.topics import Topics, ha_configs_filter, is_ha_config

if TYPE_CHECKING:  # the HTTP side (prometheus-client, http.server) is imported only when it is enabled
    from edge_agent.web import WebServer

__all__ = ["EXIT_STALLED", "Agent", "Pipeline"]

log = logging.getLogger(__name__)

Pipeline = FramePipeline | SignalPipeline
#: Reads the configuration again: (new settings, pipelines refused with their reasons).
Reloader = Callable[[Settings], tuple[Settings, dict[str, str]]]

_MAIN_TICK_S = 0.5
#: Home Assistant's birth message ("online" on its status topic) asks for the discovery configs again: at
#: most this often. Anything that may publish there can send it, as often as it likes; answered each
#: time, a flood of them filled the publish queue with configs and no prediction got through.
_HA_BIRTH_MIN_S = 10.0
#: Commands waiting to be handled; beyond this they are dropped and counted (a flood, not a fleet).
_INBOX_SIZE = 1000
#: Settings a running agent takes on SIGHUP without touching its broker connection or models.
_LIVE_SECTIONS = ("health", "source", "pipelines")
_LIVE_KEYS = (
    "log_level", "model.score_threshold", "model.iou_threshold", "model.top_k", "model.max_detections",
    "homeassistant.labels", "homeassistant.off_delay_s", "homeassistant.state_interval_s",
)


def changed_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in a.keys() | b.keys():
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(changed_keys(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def subscriptions(s: Settings) -> list[str]:
    """The topics the agent subscribes to with these settings (`check` asks the broker for the same)."""
    ha = s.homeassistant
    return Topics(s.mqtt.topic_prefix, s.device_id, tuple(s.groups)).subscriptions(
        ha.status_topic if ha.enabled else None,
        s.escalation.enabled,
        ha_configs_filter(ha.discovery_prefix, object_id(s.device_id)) if ha.enabled else None,
    )


class _Inbound(queue.Queue[Inbound]):
    """What the MQTT client receives (on its own thread: enqueue or hand over only): model chunks go to
    the updater collecting them, escalation answers to the escalator, the rest are commands (a Home
    Assistant button press turned into one keeps whether the broker replayed it from its store)."""

    def __init__(self, agent: Agent, maxsize: int):
        super().__init__(maxsize)
        self.agent = agent
        self.routes: list[tuple[Callable[[str], bool], Callable[[str, bytes], tuple[str, bytes] | None]]] = [
            (lambda t: "/ota/" in t, agent.accept_chunk),
            (lambda t: t == agent.topics.device("escalations/result"), agent.accept_answer),
            (lambda t: t == agent.settings.homeassistant.status_topic, agent.accept_ha_status),
            (lambda t: t == agent.topics.device("ha/rollback"), agent.accept_ha_rollback),
            (agent.is_own_ha_config, agent.accept_ha_config),
        ]

    def put_nowait(self, item: Inbound) -> None:
        topic, payload, retained = item
        for matches, handle in self.routes:
            if matches(topic):
                forward = handle(topic, payload)
                if forward is None:
                    return
                item = Inbound(*forward, retained)
                break
        super().put_nowait(item)


class Agent:
    def __init__(
        self,
        settings: Settings,
        sink: str = "mqtt",
        notifier: Notifier | None = None,
        reload: Reloader | None = None,
    ):
        self.settings = settings
        self.reloader = reload
        self.reload_requested = threading.Event()
        #: Home Assistant announced itself; the main loop republishes the discovery configs
        self.ha_birth_requested = threading.Event()
        self._ha_birth_at = float("-inf")
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
        self.ha_topics: frozenset[str] = frozenset()  # discovery configs of the entities this agent has
        #: why the state directory cannot be written (read-only), or None
        self.state_dir_problem: str | None = None
        self.state_dir: Path | None = None
        self.health = Health(self)
        self.watchdog = Watchdog(self.health, self.notifier, self)
        self.inbox: queue.Queue[Inbound] = _Inbound(self, maxsize=_INBOX_SIZE)
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
        self.init_homeassistant()
        self.init_sink()
        self.start_escalation()
        self.start_web()
        self.start_updates()
        register_commands(self)
        self.commands.start()
        self.start_pipelines()
        self._spawn("health", self.health.loop)
        self._spawn("watchdog", self.watchdog.loop)

    def init_state_dir(self) -> None:
        s = self.settings
        try:
            make_dirs(s.state_dir)
            self._lock_state_dir(s.state_dir)
            self.state_dir = s.state_dir
            self.fanout.ledger = RetainedLedger(s.state_dir / "retained.json")
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
            slot.on_state = self.ha_update_state
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

    def init_homeassistant(self) -> None:
        """One discovery set per pipeline; each watches the configured labels its model can produce
        (default: the first label it produces). A configured label no model produces is refused:
        its entities would never change."""
        if not self.settings.homeassistant.enabled:
            return
        cfg = self.settings.homeassistant
        made: dict[str, HomeAssistant] = {}
        producible: set[str] = set()
        unknown_labels = False  # a model whose labels are not known (raw output): nothing can be refused
        for name, pipe in self.pipelines.items():
            model = self.model_of(name)
            if model is None:
                continue
            produced = list(model.produced_labels)
            producible.update(produced)
            unknown_labels = unknown_labels or not produced
            watched = [x for x in cfg.labels if x in produced] or produced[:1] or [model.name]
            made[name] = HomeAssistant(
                self.settings, self.topics, watched, pipe.route.label, not made, pipe.settings.scene
            )
        missing = [x for x in cfg.labels if x not in producible]
        if missing and not unknown_labels:
            some = ", ".join(sorted(producible)[:12]) + (", ..." if len(producible) > 12 else "")
            raise ConfigError(
                f"homeassistant.labels: {', '.join(missing)} cannot be produced by the model(s) in use "
                f"(their labels: {some})"
            )
        self.fanout.ha = made  # one assignment: the pipelines' threads see the old set or the new one
        model = self.model
        self.ha_topics = frozenset(t for ha in made.values() for t in ha.config_topics(model.name if model else None))

    def refresh_homeassistant(self) -> None:
        """After a reload: rebuild the entities, clear the configs of those that went, publish the rest."""
        if not self.settings.homeassistant.enabled:
            return
        before = self.ha_topics
        try:
            self.init_homeassistant()
        except ConfigError as err:
            log.error("Home Assistant entities kept as they were: %s", err)
            self._note_error(f"reload: {err}")
            return
        for topic in sorted(before - self.ha_topics):
            self.clear_ha_config(topic)
        self.publish_discovery()

    def clear_ha_config(self, topic: str) -> None:
        """An empty retained config: Home Assistant removes the entity, and the broker forgets the config."""
        if self.sink is not None:
            log.info("clearing Home Assistant config %s (no such entity any more)", topic)
            self.sink.submit(Message(topic, b"", qos=1, retain=True))

    def init_sink(self) -> None:
        self.sink = make_sink(self.sink_kind, self.settings, self.retained_state, subscriptions(self.settings),
                              self.inbox)
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
        models = [m for m in dict.fromkeys(self.model_of(name) for name in self.pipelines) if m is not None]
        why = misnamed_by_all("escalation.labels", self.settings.escalation.labels, models)
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
        s = self.settings
        if not s.http.enabled:
            return
        from edge_agent.web import WebServer

        self.web = WebServer(
            s.http, self.health.document, self.health.stalled, self.fanout.live, self.update_history, self.state_dir,
            self.latencies,
        )
        try:
            self.web.start()
        except OSError as err:  # a taken port must not take the pipelines down with it
            log.error("status page not served: cannot listen on %s:%d: %s", s.http.bind, s.http.port, err)
            self.web = None

    def start_updates(self) -> None:
        for slot in self.slots.values():
            updater = slot.start_updates(self.stop)
            if updater is not None:
                self.fanout.probation.append(updater)

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
                    self.reload()
                if self.ha_birth_requested.is_set() and time.monotonic() - self._ha_birth_at >= _HA_BIRTH_MIN_S:
                    self.ha_birth_requested.clear()
                    self._ha_birth_at = time.monotonic()
                    self.publish_discovery()
        finally:
            self.shutdown()
        return self.exit_code

    def shutdown(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self.notifier.stopping()
        deadline = time.monotonic() + timeout
        for pipe in list(self.pipelines.values()):
            pipe.stop_and_join(max(0.1, min(timeout / 2, deadline - time.monotonic())))
        for t in self._threads:
            t.join(max(0.0, min(timeout / 4, deadline - time.monotonic())))
        if self.sink is not None:
            self.sink.close(max(0.5, deadline - time.monotonic()))
        if self.web is not None:
            self.web.close()
        if self.escalator is not None:
            self.escalator.join(1.0)
        for slot in self.slots.values():
            slot.close()
        self.notifier.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the state directory
        log.info("stopped")

    # --- what other parts ask of the agent ----------------------------------------------------------
    def slot_of(self, pipeline: str) -> ModelSlot | None:
        return next((s for s in self.slots.values() if pipeline in s.pipelines), None)

    def model_of(self, pipeline: str) -> Model | None:
        slot = self.slot_of(pipeline)
        return slot.model if slot is not None else None

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
        """An accelerator gave up: say so now (retained info and a health message), not at the next tick."""
        self.publish_retained()
        self.health.publish()

    def publish_retained(self) -> None:
        if self.sink is not None:
            for m in self.retained_state():
                self.sink.submit(m)

    def publish_discovery(self) -> None:
        """Home Assistant's birth message: configs and current state again (submit only enqueues)."""
        if self.sink is None:
            return
        for msg in self.ha_discovery():
            self.sink.submit(msg)

    def ha_discovery(self) -> list[Message]:
        """Every pipeline's discovery configs and state; the update entity shows the first slot's OTA."""
        m, slot = self.model, self.first_slot()
        ota = slot.state if slot is not None else None
        return [msg for ha in list(self.fanout.ha.values())
                for msg in ha.discovery(m.name if m else None, m.version if m else None, ota)]

    def ha_update_state(self, slot: ModelSlot, doc: dict[str, Any]) -> None:
        """An OTA state of the first slot: the update entity shows the offered version and its progress."""
        ha = next((h for h in list(self.fanout.ha.values()) if h.device_entities), None)
        if ha is None or self.sink is None or slot is not self.first_slot():
            return
        m = slot.model
        self.sink.submit(ha.update_message(m.name if m else None, m.version if m else None, doc))

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
                    "source": p.settings.source.uri,
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
        )
        msgs = [Message(self.topics.device("info"), dumps(doc), qos=1, retain=True)]
        for p in list(self.pipelines.values()):  # zone counts and the latest snapshots
            msgs += list(p.retained.values())
        msgs += self.ha_discovery()  # every reconnect, and after a model swap (the update entity)
        return msgs

    # --- inbound (the MQTT client's thread: hand over, never block) -----------------------------
    def accept_chunk(self, topic: str, payload: bytes) -> None:
        parts = topic.rsplit("/", 2)
        sha = parts[1] if len(parts) == 3 else ""
        updaters = [s.updater for s in self.slots.values() if s.updater is not None]
        busy = [u for u in updaters if u.receiving == sha]
        for u in busy or updaters:
            u.accept_chunk(topic, payload)

    def accept_answer(self, topic: str, payload: bytes) -> None:
        if self.escalator is not None:
            self.escalator.accept_answer(payload)

    def accept_ha_status(self, topic: str, payload: bytes) -> None:
        """From the MQTT client's thread: Home Assistant (re)started and wants the configs again; the
        main loop sends them, once for any number of these within _HA_BIRTH_MIN_S."""
        if payload.strip() == b"online":
            self.ha_birth_requested.set()

    def is_own_ha_config(self, topic: str) -> bool:
        ha = self.settings.homeassistant
        return ha.enabled and is_ha_config(topic, ha.discovery_prefix, object_id(self.settings.device_id))

    def accept_ha_config(self, topic: str, payload: bytes) -> None:
        """A retained config of this device (the broker sends them when the agent subscribes): one for an
        entity the agent no longer has, from an earlier run or configuration, is cleared."""
        if payload and topic not in self.ha_topics:
            self.clear_ha_config(topic)

    def accept_ha_rollback(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        """The button: each press is a new command."""
        cmd = {"id": f"ha-rollback-{time.time_ns()}", "command": "rollback"}
        return self.topics.device("cmd"), dumps(cmd)

    def _publish_result(self, doc: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.submit(Message(self.topics.device("cmd/result"), dumps(doc), qos=1))

    # --- reload (SIGHUP, or the reload command) ----------------------------------------------------
    def reload(self) -> list[str]:
        """Re-read the configuration; apply what can change live (pipelines included: added, removed or
        changed ones restart alone), report what needs a restart."""
        if self.reloader is None:
            return []
        try:
            new, refused = self.reloader(self.settings)
        except ConfigError as err:
            log.error("reload rejected, keeping the running configuration: %s", err)
            self._note_error(f"reload rejected: {err}")
            return []
        self.refused_pipelines = refused
        for name, why in refused.items():
            log.error("pipeline %s refused, keeping the running one: %s", name, why)
        old = self.settings
        changed = sorted(changed_keys(old.model_dump(), new.model_dump()))
        if self.multi and new.pipelines:
            live = [k for k in changed if k.split(".")[0] in _LIVE_SECTIONS or k in _LIVE_KEYS]
        else:
            live = [k for k in changed if k.split(".")[0] in ("health", "source", "scene") or k in _LIVE_KEYS]
        self.restart_needed = [k for k in changed if k not in live]
        self.settings = new
        if self.multi and new.pipelines:
            kept = self._reload_pipelines(old, new)
            for name, why in kept.items():
                log.error("pipeline %s refused, keeping the running one: %s", name, why)
            if kept:  # the settings say what runs, as for pipelines refused while the file was read
                self.refused_pipelines = {**refused, **kept}
                running = {p.name: p for p in old.pipelines}
                self.settings = new.model_copy(
                    update={"pipelines": [running[p.name] if p.name in kept else p for p in new.pipelines]}
                )
        else:
            only = next(iter(self.pipelines.values()), None)
            if only is not None:
                only.apply(pipeline_views(new)[0], live)
        logging.getLogger("edge_agent").setLevel(new.log_level)
        self.refresh_homeassistant()  # labels, and pipelines that came or went
        self.clear_stale_retained()  # zones that went
        self.reloads += 1
        log.info("configuration reloaded; applied %s", ", ".join(live) or "nothing")
        if self.restart_needed:
            log.warning("changed settings that need a restart: %s", ", ".join(self.restart_needed))
        return live

    def _reload_pipelines(self, old: Settings, new: Settings) -> dict[str, str]:
        """Pipelines added, removed, restarted or changed live. Returns those whose new settings were refused
        before the running pipeline was stopped (a model that cannot run on its source or needs a missing
        delegate, a label its model never produces), with why: they run on as they were."""
        refused: dict[str, str] = {}
        before = {v.name: v for v in pipeline_views(old)}
        after = {v.name: v for v in pipeline_views(new)}
        for name in before.keys() - after.keys():
            self._remove_pipeline(name, forget=True)
            log.info("pipeline %s removed", name)
        for name, view in after.items():
            prev = before.get(name)
            if prev is None or name in self.failed_pipelines:
                self._add_pipeline(view)
                continue
            diff = changed_keys(prev.settings.model_dump(), view.settings.model_dump())
            heavy = [k for k in diff if k.startswith(("model.", "signal.")) and k not in _LIVE_KEYS]
            if prev.slot != view.slot or heavy or (diff and self.pipelines[name].kind == "signal"):
                why = self._refused_restart(prev, view)
                if why is not None:  # the running pipeline stays, as for settings that do not validate
                    refused[name] = why
                    continue
                self._remove_pipeline(name)
                self._add_pipeline(view, checked=True)
                log.info("pipeline %s restarted (%s)", name, ", ".join(diff))
            elif diff:
                self.pipelines[name].apply(view, diff)
                log.info("pipeline %s: applied %s", name, ", ".join(diff))
        self.publish_retained()
        return refused

    def _refused_restart(self, prev: PipelineView, view: PipelineView) -> str | None:
        """Why a running pipeline's new settings cannot start, where that is known before it is stopped: its
        model misfits the source or needs a delegate the board lacks (`check_models`), or, where the model
        stays, they name a label it never produces."""
        try:
            check_models([view])
        except ConfigError as err:
            return str(err)
        pm, vm = prev.settings.model, view.settings.model
        model = self.model_of(view.name)
        if model is None or prev.slot != view.slot or (pm.path, pm.labels, pm.task) != (vm.path, vm.labels, vm.task):
            return None  # another model: its labels are known once it loads
        return labels_problem(view.settings, model.produced_labels, None if view.legacy else view.name)

    def _add_pipeline(self, view: PipelineView, checked: bool = False) -> None:
        """checked: `check_models` has passed it already."""
        try:
            if not checked:
                check_models([view])
            pipe = self.build_pipeline(view)
        except (ModelError, ConfigError) as err:
            log.error("pipeline %s not started: %s", view.name, err)
            self.failed_pipelines[view.name] = str(err)
            return
        self.failed_pipelines.pop(view.name, None)
        self.pipelines[view.name] = pipe
        slot = self.slot_of(view.name)
        if slot is not None and slot.updater is None:
            updater = slot.start_updates(self.stop)
            if updater is not None:
                self.fanout.probation.append(updater)
        pipe.start()
        log.info("pipeline %s started", view.name)

    def _remove_pipeline(self, name: str, forget: bool = False) -> None:
        """Stop a pipeline and let go of its model. forget: it is gone from the configuration, so the
        broker forgets its retained state too (zone counts, snapshots, and its model's update state
        when no other pipeline shares the model), as Home Assistant forgets its entities; a pipeline
        restarted with a changed configuration publishes its own."""
        self.failed_pipelines.pop(name, None)
        pipe = self.pipelines.pop(name, None)
        if pipe is not None:
            pipe.stop_and_join(2.0)
            if forget:
                for topic in list(pipe.retained):
                    self.fanout.state(Message(topic, b"", qos=1, retain=True))
        self.fanout.routes.pop(name, None)
        self.fanout.live.pop(name, None)
        slot = self.slot_of(name)
        if slot is not None:
            slot.pipelines.remove(name)
            if not slot.pipelines:  # the last pipeline of a slot: its model goes too
                if slot.updater in self.fanout.probation:
                    self.fanout.probation.remove(slot.updater)
                slot.close()
                del self.slots[slot.name]
                if forget:
                    self.fanout.state(Message(slot.state_topic, b"", qos=1, retain=True))

    def _note_error(self, msg: str) -> None:
        pipe = next(iter(self.pipelines.values()), None)
        if pipe is not None:
            pipe.infer_stats.error(msg)


def check_models(views: list[PipelineView]) -> None:
    """A pipeline whose model needs a delegate library this board lacks, or cannot run on its source (an
    audio model on a camera, a detector on a microphone), is a configuration error (exit 2)."""
    for v in views:
        path = v.settings.model.path
        if path is None:
            continue
        try:
            needs = read_model_file(path).required_delegates()
        except ModelError:
            continue  # unreadable models are the loader's to explain
        for need in needs:
            lib = need.split()[0]
            if find_library(lib) is None:
                raise ConfigError(
                    f"pipelines[{v.name}].model.path: {path} is compiled for {need}, but {lib} is not installed"
                )
        signal = signal_kind(v.settings.source.uri) is not None
        why = misfit(path, signal, v.settings.model.task)
        if why is not None:
            raise ConfigError(f"pipelines[{v.name}].model.path: {path} {why}" + ("" if signal else f": {NOT_FRAMES}"))
