"""The health document as Prometheus metrics (prometheus-client), read at scrape time, by Prometheus's rules.

Every figure has an entry in `FIGURES`: its name in base units (seconds, bytes, ratios, hertz),
its HELP text, whether it is a counter, and the label values that exist from the first scrape
(so that a dashboard or an alert never sees a series appear late). Latencies are histograms
built from per-bucket counts the stages keep, so they add up across pipelines and devices;
the health document's percentiles stay on MQTT only. A number in the health document with no
entry here is still exported (with a generic HELP that says so), and a test fails on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from edge_agent.lastrun import ENDINGS
from edge_agent.stats import BUCKETS_MS, LatencyWindow

PREFIX = "edge_agent"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
MB = 1e6  # the health document's MB are 10^6 bytes

#: Every reason a frame or window can be dropped, every reason a message can be lost, ...:
#: the label values each such counter has from the first scrape, at 0.
FRAME_DROPS = ("replaced", "sink_full", "queue_full", "undecodable")
BROKER_DROPS = (
    "inbox_full", "queue_full", "broker_down", "superseded", "shutdown", "error", "health_unsent", "too_large",
    "refused", "inbound_error", "inbound_too_large",
)
OUTBOX_DROPS = ("outbox_downsampled", "outbox_full_newest", "outbox_full_oldest")
COMMAND_RESULTS = ("received", "rejected", "done", "duplicate", "errors")
EVENT_TYPES = ("new", "update", "end")
ESCALATION_DROPS = (
    "rate_budget", "queue_full", "answers_queue_full", "bandwidth_budget", "sink_full", "answer_too_large",
    "pipeline_removed",
)
FRAME_SERIES = ("preprocess", "queue", "inference", "postprocess", "capture_to_publish")
BROKER_STATES = ("connecting", "connected", "disconnected", "refused")
SOURCE_STATES = ("starting", "running", "reconnecting", "stalled", "finished", "failed")
PICTURE_STATES = ("ok", "frozen", "blank", "dark")
OUTBOX_MODES = ("disk", "memory")


@dataclass(frozen=True)
class Figure:
    """How one health figure is exported. `name` is without the prefix, the pipeline form's
    `pipeline_` and a counter's `_total`; `scale` turns the document's unit into the base unit."""

    name: str
    help: str
    kind: Literal["gauge", "counter"] = "gauge"
    labels: tuple[str, ...] = ()
    known: tuple[str, ...] = ()  # values of the last label that exist from the start
    scale: float = 1.0


def _c(name: str, help: str, labels: tuple[str, ...] = (), known: tuple[str, ...] = (), scale: float = 1.0) -> Figure:
    return Figure(name, help, "counter", labels, known, scale)


#: health path (relative to a pipeline's section, or the top level; '*' is a key that becomes a
#: label) -> figure. The top level's frame and source figures add up (or repeat, with one pipeline)
#: its pipelines' own.
FIGURES: dict[str, Figure] = {
    "uptime_s": Figure("uptime_seconds", "Seconds since the agent started."),
    "fps.*": Figure("fps", "Frames (or signal windows) per second over the last few seconds, by stage: "
                    "captured from the source, inferred, and published (handed to the sinks).", labels=("stage",)),
    "frames.captured": _c("frames_captured", "Frames (or windows) taken from the source since start."),
    "frames.inferred": _c("frames_inferred", "Frames (or windows) that went through the model since start."),
    "frames.published": _c("frames_published", "Frames (or windows) whose result was handed to the sinks."),
    "frames.skipped_unchanged": _c("frames_skipped_unchanged",
                                   "Frames not inferred because the scene had not changed (motion gate)."),
    "frames.dropped.*": _c("frames_dropped", "Frames (or windows) dropped since start, by reason: replaced by a "
                           "newer one before inference (latest frame wins), a full queue, or a "
                           "frame of a file that could not be decoded (skipped).",
                           ("reason",), FRAME_DROPS),
    "source.reopens": _c("source_reopens", "Times the source was opened again after a failure or an end."),
    "source.decode_scale": Figure("source_decode_scale", "How many times smaller than the frame its last picture "
                                  "was decoded (source.scaled_decode): 1, 2, 4 or 8."),
    "source.picture.for_s": Figure("source_picture_state_seconds", "How long a camera's picture has been frozen "
                                   "or blank (absent while it is fine)."),
    "source.picture.level": Figure("source_picture_level", "A camera's mean grey level (0-255) at the last look, "
                                   "once a second: near 0 in the dark or with the lens covered."),
    "source.flat.flat": Figure("source_flat", "1 while every sample of a live microphone or sensor has been one "
                               "value for signal.flat_after_s (digital silence: muted or unplugged)."),
    "source.flat.for_s": Figure("source_flat_seconds", "How long a flat signal has held its one value (absent "
                                "while it moves)."),
    "source.stalls": _c("source_stalls", "Times the source stopped delivering for longer than its stall limit."),
    "source.errors": _c("source_errors", "Errors reading from the source."),
    "source.samples": _c("source_samples", "Signal samples read from the source since start."),
    "source.gaps": _c("source_gaps", "Gaps in the signal (missing samples) since start."),
    "source.dropped_samples": _c("source_dropped_samples", "Signal samples dropped because a queue was full."),
    "source.rate_nominal": Figure("source_rate_nominal_hertz", "The signal source's nominal sample rate."),
    "source.rate_achieved": Figure("source_rate_achieved_hertz",
                                   "Samples per second actually read over the last few seconds."),
    "source.windows": _c("source_windows", "Signal windows cut from the stream and sent to the model."),
    "source.predictions_published": _c("source_predictions_published", "Signal predictions published."),
    "source.predictions_rate_limited": _c("source_predictions_rate_limited",
                                          "Signal predictions not published because of the rate limit."),
    "source.events.*": _c("source_events", "Signal events (a detection that starts, goes on, or ends), by type.",
                          ("type",), EVENT_TYPES),
    "source.queue_samples": Figure("source_queue_samples", "Signal samples waiting between capture and inference."),
    "errors": _c("errors", "Inference and post-processing errors."),
    "accelerator.fully_accelerated": Figure(
        "accelerator_fully_accelerated", "1 when the accelerator in use runs the whole model, 0 when parts fall "
        "back to the CPU."),
    "model.outputs_not_finite": _c("model_outputs_not_finite", "Frames (or windows) whose model outputs held NaN "
                                   "or infinity since start: nothing is found in them."),
    "model.update.ts": Figure("model_update_timestamp_seconds", "When the model in use was installed (Unix time)."),
    "process.cpu_percent": Figure("process_cpu_ratio", "CPU used by the agent over the last interval, in cores "
                                  "(1.0 is one core fully busy).", scale=0.01),
    "process.rss_mb": Figure("process_rss_bytes", "Resident memory of the agent process.", scale=MB),
    "process.anon_mb": Figure(
        "process_anon_bytes",
        "Anonymous resident memory of the agent process (heap, malloc arenas, stacks): its own, without the "
        "libraries' pages, whose share of the RSS changes with the kernel and with memory pressure.",
        scale=MB,
    ),
    "process.written_mb": _c("process_written_bytes", "Bytes the agent has sent to storage since it started (its "
                             "outbox, clips and snapshots): what it costs an SD card or an eMMC in wear.",
                             scale=MB),
    "process.runs.*": _c("process_runs", "The agent's runs on this device (its state directory) by how they "
                         "ended: stopped, exited (a non-zero code), crashed (a fatal signal), killed (SIGKILL: "
                         "the OOM killer, kill -9), system_restarted (a power cut, a reset).", labels=("ended",),
                         known=ENDINGS),
    "system.storage.life_used_pct": Figure("system_storage_life_used_ratio", "The upper end of the share of its "
                                           "rated writes the state directory's eMMC says it has used (0.1 ... "
                                           "1.0, in tenths; not given by SD cards, USB sticks, NVMe to a "
                                           "process without privileges).", scale=0.01),
    "system.storage.past_rated_life": Figure("system_storage_past_rated_life", "1 once that eMMC says it is past "
                                             "its rated writes."),
    "system.storage.fs_errors": Figure("system_storage_file_system_errors", "Errors the state directory's ext4 "
                                       "file system has met, as its superblock counts them until fsck clears "
                                       "them."),
    "system.storage.fs_last_error_ts": Figure("system_storage_file_system_last_error_timestamp_seconds", "When "
                                              "that file system met its last error (Unix time)."),
    "system.storage.written_mb": _c("system_storage_written_bytes", "Bytes written to the state directory's disk "
                                    "since boot, by every process.", scale=MB),
    "system.network.up": Figure("system_network_up", "1 while the link that carries the broker connection is up "
                                "(system.network.interface)."),
    "system.network.carrier_changes": _c("system_network_carrier_changes", "How often that link's carrier came "
                                         "or went since boot (two for each loss)."),
    "system.network.flaps": Figure("system_network_flaps", "How often that link lost its carrier in the last 10 "
                                   "minutes."),
    "system.network.speed_mbps": Figure("system_network_speed_bits_per_second", "That link's speed, where it has "
                                        "one (Ethernet).", scale=1e6),
    "system.network.signal_dbm": Figure("system_network_wifi_signal_dbm", "That Wi-Fi link's signal level as its "
                                        "driver reports it, in dBm."),
    "system.cpu_temp_c": Figure("system_cpu_temperature_celsius", "CPU temperature (the CPU's thermal zone)."),
    "system.throttling.*": Figure("system_throttling", "Raspberry Pi firmware throttling flags: 1 while set "
                                  "(the *_occurred flags: set since boot).", labels=("flag",)),
    "system.thermal.temp_c": Figure("system_thermal_temperature_celsius", "Temperature of the thermal zone "
                                    "nearest its first limit (system.thermal.zone)."),
    "system.thermal.limit_c": Figure("system_thermal_limit_celsius", "That zone's first limit: the trip point where "
                                     "the kernel slows the CPU or GPU, else where it powers the board off."),
    "system.thermal.headroom_c": Figure("system_thermal_headroom_celsius", "How far that zone is below its first "
                                        "limit; 0 or less: slowed (or about to be powered off) now."),
    "system.power.*.volts": Figure("system_power_volts", "A supply rail's voltage, as its current monitor reads it "
                                   "(an INA3221 on a Jetson: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC).", labels=("rail",)),
    "system.power.*.amps": Figure("system_power_amps", "A supply rail's current.", labels=("rail",)),
    "system.power.*.watts": Figure("system_power_watts", "A supply rail's power (VDD_IN: the whole module's).",
                                   labels=("rail",)),
    "system.power.*.limit_amps": Figure("system_power_limit_amps", "The current over which the rail's monitor "
                                        "raises its alarm (a Jetson's over-current throttle).", labels=("rail",)),
    "system.power.*.over_current": Figure("system_power_over_current", "1 while the rail is over its current "
                                          "limit.", labels=("rail",)),
    "system.clock.set": Figure("system_clock_set", "1 while the wall clock reads a time after 2025 (a board "
                               "without a real-time clock starts at 1970 or its image's date until NTP sets it)."),
    "system.clock.synchronized": Figure("system_clock_synchronized", "1 while an NTP daemon keeps the wall clock "
                                        "synchronized, as the kernel says (adjtimex)."),
    "system.clock.max_error_ms": Figure("system_clock_max_error_seconds", "The kernel's maximum error of the wall "
                                        "clock (16 s where nothing disciplines it).", scale=1e-3),
    "system.clock.steps": _c("system_clock_steps", "Steps of the wall clock (over 1 s) since start."),
    "system.clock.last_step_s": Figure("system_clock_last_step_seconds", "The last step of the wall clock, signed."),
    "system.memory_available_mb": Figure("system_memory_available_bytes", "The system's available memory "
                                         "(MemAvailable: free, and cache the kernel can reclaim).", scale=MB),
    "system.memory_total_mb": Figure("system_memory_total_bytes", "The system's memory.", scale=MB),
    "system.disk_free_mb": Figure("system_disk_free_bytes", "Free space on the state directory's file system.",
                                  scale=MB),
    "broker.connects": _c("broker_connects", "Connections made to the MQTT broker since start."),
    "broker.max_qos": Figure("broker_max_qos", "The highest QoS the broker takes (an MQTT 5 broker's CONNACK "
                             "says; 2 otherwise): every message is sent within it."),
    "broker.queue_depth": Figure("broker_queue_depth", "Messages waiting in memory to be sent to the broker."),
    "broker.queue_size": Figure("broker_queue_size", "Capacity of the in-memory send queue."),
    "broker.sent": _c("broker_sent", "Messages sent to the broker (results, events, state, health)."),
    "broker.sent_per_s": Figure("broker_sent_rate", "Messages per second sent to the broker over the last few "
                                "seconds; a frame can make several (result, events, state)."),
    "broker.replayed": _c("broker_replayed", "Stored messages sent from the outbox after an outage."),
    "broker.availability_restored": _c("broker_availability_restored",
                                       "Times a stale 'offline' (an old session's Will) was replaced by 'online'."),
    "broker.drops.*": _c("broker_drops", "Messages that never reached the broker, by reason.", ("reason",),
                         BROKER_DROPS),
    "broker.outbox.depth": Figure("outbox_depth", "Messages stored in the outbox, waiting for the broker."),
    "broker.outbox.max": Figure("outbox_max", "Capacity of the outbox."),
    "broker.outbox.oldest_age_s": Figure("outbox_oldest_age_seconds", "Age of the oldest message in the outbox."),
    "broker.outbox.repairs": _c("outbox_repairs", "Damaged outbox files set aside and made again from what "
                                "could be read."),
    "broker.outbox.drops.*": _c("outbox_drops", "Messages the outbox let go when full, by reason.", ("reason",),
                                OUTBOX_DROPS),
    "inference_errors": _c("inference_errors", "Inference and post-processing errors, all pipelines."),
    "config.reloads": _c("config_reloads", "Configuration reloads applied (SIGHUP or a command)."),
    "config.restart_needed": Figure("config_restart_needed",
                                    "1 when a changed setting takes effect only after a restart."),
    "commands.*": _c("commands", "Remote commands, by outcome.", ("result",), COMMAND_RESULTS),
    "first_prediction_s": Figure("first_prediction_seconds", "Seconds from start to the first published result."),
    "escalation.considered": _c("escalation_considered", "Results considered for escalation to the cloud model."),
    "escalation.sent": _c("escalation_sent", "Escalations sent to the cloud model."),
    "escalation.answered": _c("escalation_answered", "Escalations the cloud model answered."),
    "escalation.timeouts": _c("escalation_timeouts", "Escalations that got no answer in time."),
    "escalation.pending": Figure("escalation_pending", "Escalations sent and not yet answered."),
    "escalation.share": Figure("escalation_share_ratio", "Share of considered results that were escalated."),
    "escalation.bytes_sent": _c("escalation_sent_bytes", "Bytes of images sent for escalation."),
    "escalation.bytes_per_escalation": Figure("escalation_message_bytes", "Mean size of one escalation."),
    "escalation.faces_blurred": _c("escalation_faces_blurred", "Faces blurred in images before they were sent."),
    "escalation.dropped.*": _c("escalation_dropped", "Escalations not sent, by reason.", ("reason",),
                               ESCALATION_DROPS),
    "escalation.errors": _c("escalation_errors", "Escalation errors (transport, bad answers, worker)."),
    "recovery.every_s": Figure("accelerator_recovery_interval_seconds", "How often an accelerator the CPU "
                               "stands in for is tried again (runtime.recover_s)."),
    "recovery.attempts": _c("accelerator_recovery_attempts", "Tries of an accelerator the CPU stood in for."),
    "recovery.recovered": _c("accelerator_recovered", "Accelerators back in place of the CPU."),
    "recovery.errors": _c("accelerator_recovery_errors", "Errors of the accelerator recovery thread."),
    "scene.active_tracks": Figure("scene_active_tracks", "Objects being tracked now."),
    "scene.tracks_created": _c("scene_tracks_created", "Tracks confirmed since start (objects, each with its own id)."),
    "scene.objects": Figure("scene_objects", "Tracked objects that passed the scene's filters now."),
    "scene.events.*": _c("scene_events", "Scene events published, by type.", ("type",), EVENT_TYPES),
    "scene.masked": _c("scene_masked", "Detections ignored because they lie in a mask."),
    "scene.zones.*": Figure("scene_zone_objects", "Objects in each zone now, as zone/label.", labels=("zone",)),
    "scene.snapshots.saved": _c("scene_snapshots_saved", "Snapshots written to disk."),
    "scene.clips.written": _c("scene_clips_written", "Clips written to disk."),
    "scene.clips.dropped": _c("scene_clips_dropped", "Clips not written (the writer was behind, or the disk)."),
    "scene.clips.bytes": _c("scene_clips_written_bytes", "Bytes of clips written."),
    "scene.clips.in_progress": Figure("scene_clips_in_progress", "Clips being recorded now."),
    "scene.clips.ring_frames": Figure("scene_clips_ring_frames", "Frames held for the pre-event part of clips."),
    "scene.second_stage.runs": _c("scene_second_stage_runs", "Second-stage model runs on object crops."),
    "scene.second_stage.mean_ms": Figure("scene_second_stage_mean_seconds", "Mean second-stage run time.",
                                         scale=1e-3),
}
#: figures not exported: identifiers, or what another metric already says
_SKIP_TOP = {"schema", "ts", "models", "engines", "latency_ms", "pipelines"}
_SKIP = {"broker.port", "escalation.rtt_ms", "latency_ms"}


def _match(pattern: str, path: list[str]) -> list[str] | None:
    parts = pattern.split(".")
    if len(parts) != len(path):
        return None
    keys = []
    for p, k in zip(parts, path, strict=True):
        if p == "*":
            keys.append(k)
        elif p != k:
            return None
    return keys


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        return float(v)
    return None


def metric_name(path: list[str]) -> str:
    return _NAME_BAD.sub("_", "_".join(path)).lower()


def lookup(path: list[str]) -> tuple[Figure, list[str]] | None:
    """The figure a health path (relative to the top level or a pipeline) is exported as, with its label values."""
    for pattern, fig in FIGURES.items():
        keys = _match(pattern, path)
        if keys is not None:
            return fig, keys
    return None


Family = GaugeMetricFamily | CounterMetricFamily

#: (pipeline or None, series, window) for every latency series of every pipeline
Latencies = Callable[[], Iterable[tuple[str, str, LatencyWindow]]]


class HealthCollector(Collector):
    """Collects at scrape time from `health()` and the stages' latency windows; keeps nothing between scrapes."""

    def __init__(self, health: Callable[[], dict[str, Any]], stalled: Callable[[], list[str]],
                 latencies: Latencies | None = None):
        self.health = health
        self.stalled = stalled
        self.latencies = latencies

    def collect(self) -> Iterator[Metric]:
        h = self.health()
        families: dict[str, Family] = {}
        model = h.get("model") or {}
        info = InfoMetricFamily(f"{PREFIX}_build", "Agent version, device, and the model and accelerator in use "
                                "(one series until one of them changes).")
        info.add_metric(
            [],
            {
                "version": str(h.get("agent_version", "")),
                "device_id": str(h.get("device_id", "")),
                "model": str(model.get("name") or ""),
                "model_sha256": str(model.get("sha256") or ""),
                "accelerator": str((h.get("accelerator") or {}).get("active") or ""),
            },
        )
        yield info
        up = GaugeMetricFamily(f"{PREFIX}_status_ok", "1 while health status is ok, 0 while degraded "
                               "(the reasons are the health document's problems).")
        up.add_metric([], 1.0 if h.get("status") == "ok" else 0.0)
        yield up
        stalled = GaugeMetricFamily(f"{PREFIX}_stage_stalled", "1 for a stage whose loop has not come round "
                                    "within health.stall_s.", labels=["stage"])
        stuck = {s.rsplit(".", 1)[-1] for s in self.stalled()}
        for stage in ("capture", "inference", "postprocess", "publish"):
            stalled.add_metric([stage], 1.0 if stage in stuck else 0.0)
        yield stalled
        broker = h.get("broker") or {}
        if broker:
            yield self._state("broker_state", "The MQTT connection's state: 1 for the current one.",
                              BROKER_STATES, str(broker.get("state")))
            outbox = broker.get("outbox") or {}
            if outbox:
                yield self._state("outbox_mode", "Where the outbox keeps messages: on disk, or in memory when the "
                                  "state directory is unusable.", OUTBOX_MODES, str(outbox.get("mode")))
        pstate = StateSetMetricFamily(f"{PREFIX}_pipeline_source_state", "Each pipeline's source state: 1 for "
                                      "the current one.", labels=["pipeline"])
        for name, p in (h.get("pipelines") or {}).items():
            cur = str((p.get("source") or {}).get("state"))
            pstate.add_metric([name], _states(SOURCE_STATES, cur))
        yield pstate
        picture = StateSetMetricFamily(f"{PREFIX}_pipeline_source_picture", "Each camera's picture: 1 for its "
                                       "state (frozen: unchanged for source.frozen_after_s; blank: one flat tone "
                                       "for source.blank_after_s; dark: too dark to see where "
                                       "source.dark_is_blank is false, no problem). Files are not watched.",
                                       labels=["pipeline"])
        for name, p in (h.get("pipelines") or {}).items():
            seen = (p.get("source") or {}).get("picture")
            if seen:
                picture.add_metric([name], _states(PICTURE_STATES, str(seen.get("state"))))
        yield picture
        for k, v in h.items():
            if k not in _SKIP_TOP:
                self._walk(v, [k], families, None)
        for name, p in (h.get("pipelines") or {}).items():
            for k, v in p.items():
                self._walk(v, [k], families, name)
        self._prefill(families, h)
        yield from families.values()
        if self.latencies is not None:
            yield from self._histograms(h)

    @staticmethod
    def _state(name: str, doc: str, states: tuple[str, ...], cur: str) -> StateSetMetricFamily:
        fam = StateSetMetricFamily(f"{PREFIX}_{name}", doc, labels=[])
        fam.add_metric([], _states(states, cur))
        return fam

    def _walk(self, node: Any, path: list[str], out: dict[str, Family], pipeline: str | None) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                self._walk(v, [*path, str(k)], out, pipeline)
            return
        value = _number(node)
        if value is None or any(".".join(path).startswith(s) for s in _SKIP):
            return
        found = lookup(path)
        # a figure with no entry yet: exported all the same, and a test names it
        fig, keys = found or (Figure(metric_name(path), f"Health figure {'.'.join(path)} (not described)."), [])
        self._add(out, fig, keys, value * fig.scale, pipeline)

    @staticmethod
    def _family(out: dict[str, Family], fig: Figure, pipeline: str | None) -> Family:
        name = f"{PREFIX}_{'pipeline_' if pipeline is not None else ''}{fig.name}"
        fam: Family | None = out.get(name)
        if fam is None:
            labels = ["pipeline", *fig.labels] if pipeline is not None else list(fig.labels)
            doc = fig.help
            if pipeline is not None:
                doc = f"{doc} Per pipeline."
            fam = (CounterMetricFamily if fig.kind == "counter" else GaugeMetricFamily)(name, doc, labels=labels)
            out[name] = fam
        return fam

    def _add(self, out: dict[str, Family], fig: Figure, keys: list[str], value: float, pipeline: str | None) -> None:
        fam = self._family(out, fig, pipeline)
        fam.add_metric(([pipeline] if pipeline is not None else []) + keys, value)

    def _prefill(self, out: dict[str, Family], h: dict[str, Any]) -> None:
        """Labelled counters get every known label value at 0 where the document has none yet."""
        scopes: list[tuple[str | None, dict[str, Any]]] = [(None, h)]
        scopes += [(name, p) for name, p in (h.get("pipelines") or {}).items()]
        for pipeline, doc in scopes:
            for pattern, fig in FIGURES.items():
                if not fig.known:
                    continue
                parts = pattern.split(".")
                parent: Any = doc
                for part in parts[:-1]:
                    parent = parent.get(part) if isinstance(parent, dict) else None
                if not isinstance(parent, dict):
                    continue  # the section is absent (no broker, no escalation, not a signal pipeline)
                for value in fig.known:
                    if value not in parent:
                        self._add(out, fig, [value], 0.0, pipeline)

    def _histograms(self, h: dict[str, Any]) -> Iterator[Metric]:
        assert self.latencies is not None
        top = HistogramMetricFamily(f"{PREFIX}_latency_seconds", "Time per frame (or window) in each stage, "
                                    "all pipelines together: preprocess, queue (waiting for the accelerator), "
                                    "inference, postprocess, and capture to publish.", labels=["series"])
        per = HistogramMetricFamily(f"{PREFIX}_pipeline_latency_seconds", "Time per frame (or window) in each "
                                    "stage. Per pipeline.", labels=["pipeline", "series"])
        sums: dict[str, tuple[list[int], float]] = {}
        seen: set[tuple[str, str]] = set()
        for pipeline, series, w in self.latencies():
            counts = list(w.buckets)
            per.add_metric([pipeline, series], _cumulative(counts), w.total_ms / 1000)
            seen.add((pipeline, series))
            acc = sums.setdefault(series, ([0] * len(counts), 0.0))
            sums[series] = ([a + b for a, b in zip(acc[0], counts, strict=True)], acc[1] + w.total_ms)
        empty = [0] * (len(BUCKETS_MS) + 1)
        for name, p in (h.get("pipelines") or {}).items():
            if p.get("kind") == "frame":
                for series in FRAME_SERIES:
                    if (name, series) not in seen:
                        per.add_metric([name, series], _cumulative(empty), 0.0)
                        sums.setdefault(series, (list(empty), 0.0))
        for series, (counts, total_ms) in sums.items():
            top.add_metric([series], _cumulative(counts), total_ms / 1000)
        yield top
        yield per


def _states(known: tuple[str, ...], cur: str) -> dict[str, bool]:
    """Every known state (an unknown current one too), true for the current one."""
    return {s: s == cur for s in (*known, *(() if cur in known else (cur,)))}


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    out, running = [], 0
    for le, n in zip([*(str(b / 1000) for b in BUCKETS_MS), "+Inf"], counts, strict=True):
        running += n
        out.append((le, float(running)))
    return out
