"""The health document and the watchdog: what every stage of every pipeline is doing, and what to do
when one of them stops coming round.

`status` is "degraded" with the reasons in `problems` while a stage is stalled, a source is not
delivering, the broker is away, an accelerator fell back to the CPU or a pipeline failed. The
single-pipeline form keeps its top-level sections as they always were; with named pipelines the
top level adds them up, and `pipelines` has each one's own figures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.flatline import problem as flat_problem
from edge_agent.payload import dumps, health
from edge_agent.picture import problem as picture_problem
from edge_agent.sdnotify import Notifier
from edge_agent.sinks.base import Message
from edge_agent.system import ClockWatch, LinkWatch, ProcessStats, board, network_problems

if TYPE_CHECKING:
    from edge_agent.agent import Agent, Pipeline
    from edge_agent.slots import ModelSlot

log = logging.getLogger(__name__)

#: Rates (fps, samples/s) are measured over at least this many seconds.
_RATE_WINDOW_S = 5.0
_WATCHDOG_TICK_S = 1.0
#: Exit code after a stall: not 0 (so Restart=on-failure applies), not 2 (bad configuration).
EXIT_STALLED = 3
#: A pipeline inferring under this share of the fps asked of it, while its camera gives at least
#: _FED_SHARE of it, is behind (for health.behind_after_s).
_BEHIND_SHARE = 0.8
_FED_SHARE = 0.9


class Health:
    def __init__(self, agent: Agent):
        self.agent = agent
        self._proc = ProcessStats()
        self._clock = ClockWatch()
        self._link = LinkWatch()
        self._counts: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()
        #: pipeline -> since when it has inferred under the fps asked of it
        self._behind_since: dict[str, float] = {}

    # --- rates --------------------------------------------------------------------------------
    def rate(self, key: str, count: int, now: float, since: float | None = None) -> float:
        """Rate over the last few seconds; any number of readers (MQTT health, /metrics) see the same figure.
        since: when counting began (a pipeline's first frame: a pipeline added by a reload, or one whose
        model took a while to load, is not measured over time it was not running); default the start."""
        window = max(_RATE_WINDOW_S, self.agent.settings.health.interval_s)
        with self._lock:
            if key not in self._counts and since is None and count == 0:
                return 0.0  # nothing counted yet: the clock starts with the first unit of work
            hist = self._counts.setdefault(key, deque([(since or self.agent.started_mono, 0)]))
            hist.append((now, count))
            while len(hist) > 2 and now - hist[1][0] >= window:
                hist.popleft()
            t0, n0 = hist[0]
        return round((count - n0) / (now - t0), 2) if now > t0 else 0.0

    # --- stalls -------------------------------------------------------------------------------
    def stalled(self) -> list[str]:
        """Stages whose loop has not come round within health.stall_s (a hang, not a missing camera).
        A source that finished (a file or recording with `source.loop = false`) ended its capture loop:
        it is reported as finished, not stalled, so the watchdog does not restart the agent to play it
        again."""
        now = time.monotonic()
        limit = self.agent.settings.health.stall_s
        out = []
        pipes = self.agent.pipelines
        for p in pipes.values():
            for stage, st in p.stages().items():
                if stage == "capture" and st.state == "finished":
                    continue
                if now - st.heartbeat > limit:
                    out.append(stage if len(pipes) == 1 and p.route.legacy else f"{p.name}.{stage}")
        sink_beat = getattr(self.agent.sink, "heartbeat", None)
        if sink_beat is not None and now - sink_beat > limit:
            out.append("publish")
        return out

    # --- the document -------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        a = self.agent
        now = time.monotonic()
        sink = a.sink
        sink_stats = sink.stats() if sink is not None else {}
        stalled = self.stalled()
        pipes = list(a.pipelines.values())
        sections = {p.name: self._pipeline(p, now) for p in pipes}
        problems = [f"{s} stalled" for s in stalled]
        for p in pipes:
            who = "" if p.route.legacy else f"{p.name}: "
            state = p.capture_stats.state
            if state != "running":  # a source that ended watches nothing any more: that is news too
                problems.append(f"{who}source {state}")
            if p.failed:
                problems.append(f"{who}failed: {p.failed}")
            behind = self._behind(p, sections[p.name]["fps"], now)
            if behind is not None:
                problems.append(f"{who}{behind}")
            src = sections[p.name]["source"]
            seen = picture_problem(src.get("picture")) or flat_problem(src.get("flat"))
            if seen is not None and state == "running":
                problems.append(f"{who}{seen}")
            scene = sections[p.name]["scene"]
            if scene is not None:  # a full or read-only disk: detection goes on, and says what it lost
                if scene["snapshots"]["error"]:
                    problems.append(f"{who}snapshots not saved: {scene['snapshots']['error']}")
                if scene["clips"] is not None and scene["clips"]["error"]:
                    problems.append(f"{who}clips not saved: {scene['clips']['error']}")
                if scene["second_stage"] is not None and scene["second_stage"]["error"]:
                    problems.append(f"{who}second stage disabled: {scene['second_stage']['error']}")
        problems += [f"{name}: failed: {why}" for name, why in list(a.failed_pipelines.items())]
        if sink is not None and not sink.is_connected():
            problems.append("broker disconnected")
        if sink is not None:
            problems += sink.problems()
        if a.web_problem:
            problems.append(a.web_problem)
        read_only = a.state_dir_problem or next((s.read_only for s in a.slots.values() if s.read_only), None)
        if read_only:
            problems.append(f"{read_only}: model updates off, results not stored on disk")
        system, of_board = board(self._clock, a.settings.health, a.settings.state_dir)
        system["network"] = self._link.sample(sink.local_address if sink is not None else None)
        problems += of_board + network_problems(system["network"], a.settings.health.min_wifi_signal_dbm)
        outbox = sink_stats.get("outbox")
        if isinstance(outbox, dict) and outbox.get("mode") == "memory":
            problems.append("outbox in memory: stored results would not survive a restart")
        falls = [f for s in a.slots.values() if s.model is not None for f in s.model.runtime.fallbacks]
        runtimes = [(s, s.model.runtime) for s in a.slots.values() if s.model is not None]
        if any(rt.accelerator == "cpu" and any(f.to_backend == "cpu" and f.from_backend != "cpu" for f in rt.fallbacks)
               for _, rt in runtimes):  # (an accelerator back since is not)
            problems.append("running on CPU fallback")
        every = a.settings.runtime.recover_s
        again = f"tried again every {every:g} s and at each start" if every else "the next start probes it again"
        for s, rt in runtimes:  # an accelerator that could not be opened at start is not given up on
            named = s.settings.runtime.accelerator not in ("auto", "cpu")  # with auto, a missing device is no fault
            for r in rt.probes if named and rt.accelerator == "cpu" else []:
                if r.transient:
                    problems.append(f"accelerator {r.backend} unavailable at start ({r.reason[:120]}): model "
                                    f"{s.name} runs on the CPU; {again}")
        for s in a.slots.values():  # a model whose outputs were NaN or infinite finds nothing: not a quiet scene
            said = s.model.not_finite_problem(now) if s.model is not None else None
            if said is not None:
                problems.append(said)
        restarts = sum(f.from_backend == f.to_backend for f in falls)
        if restarts:
            problems.append(f"a model's own process died and was started again ({restarts}x)")
        sent = int(sink_stats.get("sent", 0) or 0)  # type: ignore[call-overload]
        first = pipes[0] if pipes else None
        errors = [
            (st.last_error_ts or 0, st.last_error)
            for p in pipes
            for st in p.stages().values()
            if st.last_error
        ]
        counts = [p.counts() for p in pipes]
        captured = sum(c["captured"] for c in counts)
        inferred = sum(c["inferred"] for c in counts)
        dropped: dict[str, int] = {}
        for c in counts:
            for k, v in c["dropped"].items():
                dropped[k] = dropped.get(k, 0) + v
        slot = a.first_slot()
        body: dict[str, Any] = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "uptime_s": round(now - a.started_mono, 1),
            "agent_version": __version__,
            "fps": {
                "captured": self.rate("captured", captured, now),
                "inferred": self.rate("inferred", inferred, now),
                "published": self.rate("published", sum(c["published"] for c in counts), now),
            },
            "frames": {
                "captured": captured,
                "inferred": inferred,
                "published": sum(c["published"] for c in counts),
                "skipped_unchanged": sum(c["skipped_unchanged"] for c in counts),
                "dropped": dropped,
            },
            "latency_ms": sections[first.name]["latency_ms"] if first else {},
            "source": sections[first.name]["source"] if first else {},
            "accelerator": self._accelerator(slot),
            "model": slot.info() if slot is not None else {},
            "process": {**self._proc.sample(), **self._runs()},
            "system": system,
            "broker": {**sink_stats, "sent_per_s": self.rate("sent", sent, now)} if sink_stats else sink_stats,
            "inference_errors": sum(p.infer_stats.errors + p.post_stats.errors for p in pipes),
            "config": {
                "reloads": a.reloads,
                "restart_needed": a.restart_needed,
                **({"refused_pipelines": a.refused_pipelines} if a.refused_pipelines else {}),
            },
            "commands": dict(a.commands.counts),
            "last_error": max(errors)[1] if errors else None,
            "first_prediction_s": round(a.first_publish_s, 3) if a.first_publish_s is not None else None,
            "pipelines": sections,
            "engines": [e.info() for e in a.pool.engines()],
        }
        if a.escalator is not None:
            body["escalation"] = a.escalator.info()
        if a.recovery is not None:
            body["recovery"] = a.recovery.info()
        if a.multi:
            body["models"] = {name: s.info() for name, s in list(a.slots.items())}
            body.pop("source")
        return health(device_id=a.settings.device_id, boot_id=a.boot_id, ts=time.time(), body=body)

    def _pipeline(self, p: Pipeline, now: float) -> dict[str, Any]:
        c = p.counts()
        key = p.name
        slot = self.agent.slot_of(p.name)
        model = slot.model if slot is not None else None
        src = p.source_info()
        since = p.capture_stats.first_progress
        if p.kind == "signal":
            samples = p.capture.samples  # type: ignore[union-attr]
            src["rate_achieved"] = self.rate(f"{key}.samples", samples, now, since)
        return {
            "kind": p.kind,
            "state": "failed" if p.failed else p.infer_stats.state,
            "error": p.failed,
            "topics": {"predictions": p.route.predictions, "events": p.route.events},
            "fps": {
                "captured": self.rate(f"{key}.captured", c["captured"], now, since),
                "inferred": self.rate(f"{key}.inferred", c["inferred"], now, since),
                "published": self.rate(f"{key}.published", c["published"], now, since),
            },
            "frames": c,
            "latency_ms": p.infer_stats.percentiles(),
            "source": src,
            "model": {**model.health(), "slot": slot.name if slot else None} if model is not None else None,
            "accelerator": model.runtime.accelerator if model is not None else None,
            "errors": p.infer_stats.errors + p.post_stats.errors,
            "last_error": p.infer_stats.last_error or p.post_stats.last_error or p.capture_stats.last_error,
            "scene": p.scene.health() if p.scene is not None else None,
        }

    def _behind(self, p: Pipeline, fps: dict[str, float], now: float) -> str | None:
        """What health says of a live frame pipeline that infers well under the `fps` asked of it while its
        camera gives enough frames, once that has lasted health.behind_after_s: the rest of the camera's
        frames are skipped (latest frame wins), and tracks, events and clips see a slower camera than the
        one configured. A camera that itself gives fewer frames is not this (its own setting)."""
        asked, after = p.settings.source.fps, self.agent.settings.health.behind_after_s
        live = p.kind == "frame" and getattr(p.capture, "live", False) and p.capture_stats.state == "running"
        got, fed = fps["inferred"], fps["captured"]
        with self._lock:
            if not asked or not after or not live or fed < _FED_SHARE * asked or got >= _BEHIND_SHARE * asked:
                self._behind_since.pop(p.name, None)
                return None
            since = self._behind_since.setdefault(p.name, now)
        if now - since < after:
            return None
        return (f"inferring {got:.1f} fps of the {asked:g} asked, for {now - since:.0f} s now ({1 - got / fed:.0%} of "
                "the camera's frames skipped): the model is slower than that on this board (a CPU fallback, a "
                "larger model, pipelines sharing it); lower source.fps or use a smaller model")

    @staticmethod
    def _accelerator(slot: ModelSlot | None) -> dict[str, Any]:
        if slot is None or slot.model is None:
            return {}
        rt = slot.model.runtime
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

    # --- the loops ----------------------------------------------------------------------------
    def publish(self) -> None:
        sink = self.agent.sink
        if sink is not None:
            sink.submit_latest(Message(self.agent.topics.device("health"), dumps(self.document()), qos=0))

    def _runs(self) -> dict[str, Any]:
        """How the last run ended, and how many runs ended each way (none without a state directory)."""
        rec = self.agent.run_record
        if rec is None:
            return {}
        return {"last_run": rec.last["ended"] if rec.last else None, "runs": rec.counts()}

    def loop(self) -> None:
        """The `health` thread: one document every health.interval_s, and this run's last look in its
        record every few minutes."""
        a = self.agent
        while not a.stop.wait(a.settings.health.interval_s):
            try:
                self.publish()
                if a.run_record is not None:
                    a.run_record.beat()
            except Exception:  # loop boundary
                log.exception("health error")


class Watchdog:
    """Feeds systemd's watchdog while every stage comes round; gives up on a stall."""

    def __init__(self, health: Health, notifier: Notifier, agent: Agent):
        self.health, self.notifier, self.agent = health, notifier, agent

    def loop(self) -> None:
        wd = self.notifier.watchdog_s
        interval = min(wd / 2, _WATCHDOG_TICK_S) if wd else _WATCHDOG_TICK_S
        a = self.agent
        while not a.stop.wait(interval):
            try:
                stalled = self.health.stalled()
                if not stalled:
                    if wd:
                        self.notifier.watchdog()
                    continue
                log.error("not feeding the watchdog: %s stalled", ", ".join(stalled))
                self.notifier.status(f"stalled: {', '.join(stalled)}")
                if a.settings.health.exit_on_stall:
                    a.exit_code = EXIT_STALLED
                    self.health.publish()
                    log.critical("exiting with code %d so that the agent is restarted", EXIT_STALLED)
                    a.stop.set()
            except Exception:  # loop boundary
                log.exception("watchdog error")
