"""Every health figure as Prometheus metrics (prometheus-client), read from the health document at scrape time.

Known maps become labels (`fps{stage}`, `latency_ms{series,quantile}`, drops by reason, ...);
every other number in the health document becomes a gauge named after its path, so nothing the
agent reports over MQTT is missing from /metrics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "edge_agent"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")

#: health path -> (metric, label names for the keys below it, counter?). Paths use '.'; '*' is a key.
_LABELLED: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "fps.*": ("fps", ("stage",), False),
    "frames.dropped.*": ("frames_dropped_total", ("reason",), True),
    "latency_ms.*.*": ("latency_ms", ("series", "quantile"), False),
    "broker.drops.*": ("broker_drops_total", ("reason",), True),
    "broker.outbox.drops.*": ("outbox_drops_total", ("reason",), True),
    "commands.*": ("commands_total", ("result",), True),
    "source.events.*": ("events_total", ("type",), True),
    "escalation.*.*": ("escalation", ("figure", "kind"), False),
    "pipelines.*.fps.*": ("pipeline_fps", ("pipeline", "stage"), False),
    "pipelines.*.frames.dropped.*": ("pipeline_frames_dropped_total", ("pipeline", "reason"), True),
    "pipelines.*.latency_ms.*.*": ("pipeline_latency_ms", ("pipeline", "series", "quantile"), False),
    "pipelines.*.errors": ("pipeline_errors_total", ("pipeline",), True),
}
#: Sections keyed by name: their figures become `pipeline_<figure>{pipeline="..."}`.
_PER_NAME = {"pipelines": "pipeline"}
#: plain numbers that only ever grow: exposed as counters
_COUNTERS = {
    "frames.captured",
    "frames.inferred",
    "frames.published",
    "frames.skipped_unchanged",
    "source.reopens",
    "source.stalls",
    "source.errors",
    "source.samples",
    "source.gaps",
    "source.dropped_samples",
    "source.windows",
    "broker.sent",
    "broker.connects",
    "inference_errors",
    "config.reloads",
}
_SKIP = {"schema", "ts"}

Family = GaugeMetricFamily | CounterMetricFamily


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


def _quantile(key: str) -> str:
    """p95 -> 0.95: Prometheus's convention for quantile labels."""
    if key.startswith("p") and key[1:].isdigit():
        return str(int(key[1:]) / 100)
    return key


def metric_name(path: list[str]) -> str:
    return _NAME_BAD.sub("_", "_".join(path)).lower()


class HealthCollector(Collector):
    """Collects at scrape time from `health()`; nothing is kept between scrapes."""

    def __init__(self, health: Callable[[], dict[str, Any]], stalled: Callable[[], list[str]]):
        self.health = health
        self.stalled = stalled

    def collect(self) -> Iterator[Metric]:
        h = self.health()
        families: dict[str, Family] = {}
        model = h.get("model") or {}
        info = InfoMetricFamily(f"{PREFIX}_build", "Agent, model and accelerator in use")
        info.add_metric(
            [],
            {
                "version": str(h.get("agent_version", "")),
                "device_id": str(h.get("device_id", "")),
                "boot_id": str(h.get("boot_id", "")),
                "model": str(model.get("name") or ""),
                "model_sha256": str(model.get("sha256") or ""),
                "accelerator": str((h.get("accelerator") or {}).get("active") or ""),
                "source_state": str((h.get("source") or {}).get("state") or ""),
            },
        )
        yield info
        up = GaugeMetricFamily(f"{PREFIX}_status_ok", "1 while health status is ok, 0 while degraded")
        up.add_metric([], 1.0 if h.get("status") == "ok" else 0.0)
        yield up
        stalled = GaugeMetricFamily(f"{PREFIX}_stage_stalled", "1 for a stage with no progress", labels=["stage"])
        stuck = set(self.stalled())
        for stage in ("capture", "inference", "postprocess", "publish"):
            stalled.add_metric([stage], 1.0 if stage in stuck else 0.0)
        yield stalled
        self._walk(h, [], families)
        yield from families.values()

    def _walk(self, node: Any, path: list[str], out: dict[str, Family]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not path and k in _SKIP:
                    continue
                self._walk(v, [*path, str(k)], out)
            return
        value = _number(node)
        if value is None:
            return
        for pattern, (name, labels, counter) in _LABELLED.items():
            keys = _match(pattern, path)
            if keys is not None:
                keys = [_quantile(k) if lab == "quantile" else k for lab, k in zip(labels, keys, strict=True)]
                self._add(out, name, labels, keys, value, counter)
                return
        if path[0] in _PER_NAME and len(path) >= 3:  # the same figures as the top level, one series per name
            rest = ".".join(path[2:])
            label = _PER_NAME[path[0]]
            counter = rest in _COUNTERS
            name = f"{label}_{metric_name(path[2:])}"
            self._add(out, name + ("_total" if counter else ""), (label,), [path[1]], value, counter)
            return
        if path[0] == "models":  # per model slot: what `model` says of the first, for each
            return
        dotted = ".".join(path)
        name = metric_name(path)
        counter = dotted in _COUNTERS
        self._add(out, name + ("_total" if counter else ""), (), [], value, counter)

    @staticmethod
    def _add(
        out: dict[str, Family], name: str, labels: tuple[str, ...], keys: list[str], value: float, counter: bool
    ) -> None:
        full = f"{PREFIX}_{name}"
        fam: Family | None = out.get(full)
        if fam is None:
            doc = f"health figure {name.removesuffix('_total')}"
            if counter:
                fam = CounterMetricFamily(full.removesuffix("_total"), doc, labels=list(labels))
            else:
                fam = GaugeMetricFamily(full, doc, labels=list(labels))
            out[full] = fam
        fam.add_metric(keys, value)
