"""Home Assistant MQTT discovery: retained configs that make the device appear with no YAML.

Entities (one device per agent): a binary sensor, a count and a last-seen sensor per watched
label; a problem entity on while health is degraded, its problems as an attribute; diagnostic sensors
read straight from the health topic (fps, inference time, CPU temperature, throttling, outbox depth,
accelerator); an `update` entity with the active model
version; a button that rolls the model back. The configs are republished on every reconnect and
whenever Home Assistant announces itself (`homeassistant/status` = `online`), as its docs ask.
Configs this device published earlier for entities it no longer has (a label no longer watched,
a pipeline removed) are cleared with an empty retained config, so Home Assistant drops them.
The label state is not retained (Home Assistant's birth message brings it again) and is sent at
most once per `state_interval_s`, except that a label turning on goes out at once.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any, Literal

from edge_agent import __version__
from edge_agent.config import SceneConfig, Settings
from edge_agent.lastrun import ENDINGS
from edge_agent.payload import dumps
from edge_agent.results import Result
from edge_agent.sinks.base import Message
from edge_agent.topics import LEVEL_CHARS, Topics, ha_config

#: OTA states during which Home Assistant's update entity shows the offered version as in progress
IN_FLIGHT = ("received", "downloading", "verifying", "validating", "activating")
_OBJECT_ID = re.compile(r"[^a-z0-9_]+")
#: ON while health is degraded: any problem it names (a source, the broker, the disk, memory, the clock...).
_DEGRADED = "{{ 'ON' if value_json.status == 'degraded' else 'OFF' }}"
#: ON while the Pi firmware reports throttling or under-voltage now (health.system.throttling is null elsewhere).
_THROTTLED = (
    "{% set t = value_json.system.throttling %}{{ 'ON' if t and (t.throttled or t.under_voltage) else 'OFF' }}"
)


def object_id(text: str) -> str:
    """Home Assistant's id of an entity (or the node): [a-z0-9_], and at most LEVEL_CHARS of a label's
    text, for it is a topic level of the entity's config (a longer topic made paho raise at each birth)."""
    return _OBJECT_ID.sub("_", text.lower()[: 2 * LEVEL_CHARS]).strip("_")[:LEVEL_CHARS] or "x"


class HomeAssistant:
    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        labels: list[str],
        pipeline: str | None = None,
        device_entities: bool = True,
        scene: SceneConfig | None = None,
        watched: Literal["picture", "flat"] | None = None,
    ):
        """pipeline: a named pipeline's watched labels (entities named after it, its own state topic);
        device_entities: the diagnostics, update and rollback entities (one set per device); watched: what
        health watches of its live source (a problem entity): a camera's `picture` (frozen or blank), a
        microphone's or sensor's samples (`flat`)."""
        self.settings = settings
        self.cfg = settings.homeassistant
        self.topics = {"availability": topics.device("availability"), "health": topics.device("health")}
        self.labels = labels
        self.pipeline = pipeline
        self.device_entities = device_entities
        self.watched = watched
        self.node = object_id(settings.device_id)
        self.state_topic = topics.pipeline(pipeline, "ha/state")
        scene = scene or settings.scene
        self.scene = scene if scene.active else None
        self.zone_topic = lambda zone, label: topics.zone_count(pipeline, zone, label)
        self.snapshot_topic = lambda label: topics.snapshot(pipeline, label)
        self.update_topic = topics.device("ha/update")
        self.rollback_topic = topics.device("ha/rollback")
        self._seen: dict[str, float] = {}  # wall-clock time each label was last seen (shown)
        #: ... on the monotonic clock, for the off delay: a wall clock set back (a board without a
        #: real-time clock reaching a time server) would hold a label `detected` as long as the step
        self._seen_mono: dict[str, float] = {}
        self._counts: dict[str, int] = dict.fromkeys(labels, 0)
        self._last_sent = float("-inf")  # monotonic time of the last state message
        self._last_sent_state: tuple[tuple[bool, int, int | None], ...] | None = None  # what HA shows

    # --- discovery ---------------------------------------------------------------------------
    def _device(self, model_name: str | None) -> dict[str, Any]:
        return {
            "identifiers": [f"edge-agent-{self.settings.device_id}"],
            "name": f"edge-agent {self.settings.device_id}",
            "manufacturer": "edge-agent",
            "model": model_name or "edge-agent",
            "sw_version": __version__,
        }

    def _common(self, key: str, name: str, model_name: str | None) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"edge_agent_{self.node}_{key}",
            "availability": [
                {
                    "topic": self.topics["availability"],
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }
            ],
            "device": self._device(model_name),
            "origin": {"name": "edge-agent", "sw_version": __version__},
        }

    def configs(self, model_name: str | None) -> list[tuple[str, dict[str, Any]]]:
        """(component, config) for every entity."""
        out: list[tuple[str, dict[str, Any]]] = []
        who = f"{self.pipeline} " if self.pipeline else ""
        for label in self.labels:
            lid = object_id(f"{self.pipeline}_{label}" if self.pipeline else label)
            out.append(
                (
                    "binary_sensor",
                    {
                        **self._common(f"{lid}_detected", f"{who}{label} detected", model_name),
                        "state_topic": self.state_topic,
                        "value_template": f"{{{{ value_json.labels['{label}'].detected }}}}",
                        "payload_on": "ON",
                        "payload_off": "OFF",
                        "device_class": "occupancy",
                    },
                )
            )
            out.append(
                (
                    "sensor",
                    {
                        **self._common(f"{lid}_count", f"{who}{label} count", model_name),
                        "state_topic": self.state_topic,
                        "value_template": f"{{{{ value_json.labels['{label}'].count }}}}",
                        "state_class": "measurement",
                        "icon": "mdi:counter",
                    },
                )
            )
            out.append(
                (
                    "sensor",
                    {
                        **self._common(f"{lid}_last_seen", f"{who}{label} last seen", model_name),
                        "state_topic": self.state_topic,
                        "value_template": f"{{{{ value_json.labels['{label}'].last_seen }}}}",
                        "device_class": "timestamp",
                    },
                )
            )
        out += self._scene_configs(model_name)
        if self.watched is not None:
            out.append(self._watch_config(self.watched, model_name))
        if not self.device_entities:
            return out
        health = self.topics["health"]
        diagnostics: list[tuple[str, str, str, dict[str, Any]]] = [
            (
                "fps",
                "Inference rate",
                "{{ value_json.fps.inferred }}",
                {"unit_of_measurement": "fps", "state_class": "measurement", "suggested_display_precision": 1},
            ),
            (
                "inference_ms",
                "Inference time",
                # no inference in the health window yet (a first report, or a board slower than the interval)
                "{{ value_json.latency_ms.inference.p50 if 'inference' in value_json.latency_ms else 0 }}",
                {
                    "unit_of_measurement": "ms",
                    "device_class": "duration",
                    "state_class": "measurement",
                    "suggested_display_precision": 2,
                },
            ),
            (
                "cpu_temperature",
                "CPU temperature",
                "{{ value_json.system.cpu_temp_c }}",
                {"unit_of_measurement": "°C", "device_class": "temperature", "state_class": "measurement"},
            ),
            (
                "outbox_depth",
                "Outbox depth",
                "{{ value_json.broker.outbox.depth if value_json.broker.outbox is mapping else 0 }}",
                {"state_class": "measurement", "icon": "mdi:tray-full"},
            ),
            ("accelerator", "Accelerator", "{{ value_json.accelerator.active }}", {"icon": "mdi:chip"}),
            (  # the first supply rail a current monitor measures (a Jetson's VDD_IN: the module's input)
                "power",
                "Board power",
                "{{ (value_json.system.power.values() | list)[0].watts if value_json.system.power is mapping "
                "else none }}",
                {"unit_of_measurement": "W", "device_class": "power", "state_class": "measurement"},
            ),
            (  # the link that carries the broker connection, where it is Wi-Fi (None: unknown, elsewhere)
                "wifi_signal",
                "Wi-Fi signal",
                "{{ value_json.system.network.signal_dbm if value_json.system.network is mapping else none }}",
                {"unit_of_measurement": "dBm", "device_class": "signal_strength", "state_class": "measurement"},
            ),
            (  # where the state directory's eMMC says it (None: an SD card, a disk)
                "storage_life_used",
                "Storage life used",
                "{{ value_json.system.storage.life_used_pct if value_json.system.storage is mapping else none }}",
                {"unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:sd"},
            ),
            (  # how the run before this one ended: a crash, a kill, a power cut shows here after the restart
                "last_run",
                "Last run ended",
                "{{ value_json.process.get('last_run') }}",
                {"device_class": "enum", "options": list(ENDINGS), "icon": "mdi:restart-alert"},
            ),
        ]
        for key, name, template, extra in diagnostics:
            out.append(
                (
                    "sensor",
                    {
                        **self._common(key, name, model_name),
                        "state_topic": health,
                        "value_template": template,
                        "entity_category": "diagnostic",
                        **extra,
                    },
                )
            )
        out.append(
            (
                "binary_sensor",
                {  # every problem health names, in one entity to automate on: its attribute lists them
                    **self._common("health", "Health", model_name),
                    "state_topic": health,
                    "value_template": _DEGRADED,
                    "json_attributes_topic": health,
                    "json_attributes_template": "{{ {'problems': value_json.problems} | tojson }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "problem",
                    "entity_category": "diagnostic",
                    "icon": "mdi:stethoscope",
                },
            )
        )
        out.append(
            (
                "binary_sensor",
                {
                    **self._common("throttled", "Throttled", model_name),
                    "state_topic": health,
                    "value_template": _THROTTLED,
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "problem",
                    "entity_category": "diagnostic",
                },
            )
        )
        out.append(
            (
                "update",
                {
                    **self._common("model", "Model", model_name),
                    "state_topic": self.update_topic,
                    "entity_category": "diagnostic",
                    "icon": "mdi:brain",
                },
            )
        )
        out.append(
            (
                "button",
                {
                    **self._common("rollback", "Roll back model", model_name),
                    "command_topic": self.rollback_topic,
                    "payload_press": "rollback",
                    "entity_category": "config",
                    "icon": "mdi:undo",
                },
            )
        )
        return out

    def _watch_config(self, watched: Literal["picture", "flat"], model_name: str | None) -> tuple[str, dict[str, Any]]:
        """On while the live source shows or measures nothing: a camera's picture frozen or blank, a
        microphone's or sensor's samples flat (health's `source.picture` or `source.flat`, per pipeline, or
        at the top in the single form): the automation a covered, hung or muted input needs."""
        name = "camera picture" if watched == "picture" else "signal flat"
        if self.pipeline:
            where = f"((value_json.pipelines or {{}}).get('{self.pipeline}') or {{}}).source"
            key, name = f"{object_id(self.pipeline)}_{watched}", f"{self.pipeline} {name}"
        else:
            where, key, name = "value_json.source", watched, name.capitalize()
        on = "s.picture.state in ['frozen', 'blank']" if watched == "picture" else "s.flat.flat"
        return (
            "binary_sensor",
            {
                **self._common(key, name, model_name),
                "state_topic": self.topics["health"],
                "value_template": f"{{% set s = {where} or {{}} %}}"
                f"{{{{ 'ON' if s.{watched} is mapping and {on} else 'OFF' }}}}",
                "json_attributes_topic": self.topics["health"],
                "json_attributes_template": f"{{% set s = {where} or {{}} %}}"
                f"{{{{ (s.{watched} if s.{watched} is mapping else {{}}) | tojson }}}}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
                "entity_category": "diagnostic",
                "icon": "mdi:cctv-off" if watched == "picture" else "mdi:microphone-off",
            },
        )

    def _scene_configs(self, model_name: str | None) -> list[tuple[str, dict[str, Any]]]:
        """A count sensor per zone and label (the retained `zones/{zone}/{label}`), and a camera per
        watched label showing its latest event's snapshot (the retained `snapshot/{label}`)."""
        out: list[tuple[str, dict[str, Any]]] = []
        if self.scene is None:
            return out
        who = f"{self.pipeline} " if self.pipeline else ""
        for zone in self.scene.zones:
            for label in zone.labels or self.labels:
                zid = object_id(f"{self.pipeline}_{zone.name}_{label}" if self.pipeline else f"{zone.name}_{label}")
                out.append(
                    (
                        "sensor",
                        {
                            **self._common(f"zone_{zid}_count", f"{who}{zone.name} {label} count", model_name),
                            "state_topic": self.zone_topic(zone.name, label),
                            "state_class": "measurement",
                            "icon": "mdi:vector-polygon",
                        },
                    )
                )
        if self.scene.snapshots.enabled:
            for label in self.labels:
                lid = object_id(f"{self.pipeline}_{label}" if self.pipeline else label)
                out.append(
                    (
                        "camera",
                        {
                            **self._common(f"{lid}_snapshot", f"{who}{label} snapshot", model_name),
                            "topic": self.snapshot_topic(label),
                        },
                    )
                )
        return out

    def config_topics(self, model_name: str | None) -> set[str]:
        """The discovery topics of every entity this object publishes."""
        return {self._config_topic(c, cfg) for c, cfg in self.configs(model_name)}

    def _config_topic(self, component: str, cfg: dict[str, Any]) -> str:
        return ha_config(self.cfg.discovery_prefix, component, self.node, cfg["unique_id"])

    def discovery(
        self, model_name: str | None, model_version: str | None, ota: dict[str, Any] | None = None
    ) -> list[Message]:
        """Retained configs, then the current state (so entities are not 'unknown' until the next change)."""
        msgs = [
            Message(self._config_topic(component, cfg), dumps(cfg), qos=1, retain=True)
            for component, cfg in self.configs(model_name)
        ]
        if self.device_entities:
            msgs.append(self.update_message(model_name, model_version, ota))
        msgs.append(self._state_message(self._state(time.monotonic())))
        return msgs

    def update_message(self, model_name: str | None, version: str | None, ota: dict[str, Any] | None = None) -> Message:
        """The update entity: the installed version, and while an update is on its way (`ota`, the
        slot's OTA state) the offered version as in progress, with the download's percentage."""
        v = version or "unversioned"
        doc: dict[str, Any] = {"installed_version": v, "latest_version": v, "title": model_name or "model",
                               "in_progress": False, "update_percentage": None}
        offered = ota.get("version") if ota is not None else None
        if ota is not None and ota.get("state") in IN_FLIGHT and offered is not None and str(offered) != v:
            doc["latest_version"] = str(offered)  # a manifest's version is an integer
            doc["in_progress"] = True
            pct = ota.get("percent") if ota["state"] == "downloading" else None
            doc["update_percentage"] = pct if isinstance(pct, int | float) else None
        return Message(self.update_topic, dumps(doc), qos=1, retain=True)

    # --- state -----------------------------------------------------------------------------------
    def observe(self, result: Result, ts: float) -> Message | None:
        """One result: the label state message when something a user would see changed, else None."""
        counts = dict.fromkeys(self.labels, 0)
        for d in result.detections:
            if d.label in counts:
                counts[d.label] += 1
        for c in result.classes:
            if c.label in counts:
                counts[c.label] = max(counts[c.label], 1)
        return self._set(counts, ts)

    def observe_event(self, label: str, active: bool, ts: float) -> Message | None:
        if label not in self._counts:
            return None
        return self._set({**self._counts, label: 1 if active else 0}, ts)

    def _set(self, counts: dict[str, int], ts: float) -> Message | None:
        mono = time.monotonic()
        for label, n in counts.items():
            if n:
                self._seen[label] = ts
                self._seen_mono[label] = mono
        self._counts = counts
        state = self._state(mono)
        shown = self._last_sent_state
        if state == shown:  # most frames: nothing a user would see changed, nothing built
            return None
        turned_on = shown is None or any(d and not was for (d, _, _), (was, _, _) in zip(state, shown, strict=True))
        if not turned_on and time.monotonic() - self._last_sent < self.cfg.state_interval_s:
            return None  # held: sent with the first frame after the interval, if it still differs then
        return self._state_message(state)

    def _state_message(self, state: tuple[tuple[bool, int, int | None], ...]) -> Message:
        self._last_sent = time.monotonic()
        self._last_sent_state = state
        return Message(self.state_topic, self._payload(state), qos=1, retain=False)

    def _state(self, mono: float) -> tuple[tuple[bool, int, int | None], ...]:
        """(detected, count, last seen to the second) per watched label: what the entities show. mono:
        the monotonic clock now."""
        out = []
        for label in self.labels:
            seen = self._seen.get(label)
            n = self._counts.get(label, 0)
            detected = seen is not None and (n > 0 or mono - self._seen_mono[label] < self.cfg.off_delay_s)
            out.append((detected, n, int(seen) if seen is not None else None))
        return tuple(out)

    def _payload(self, state: tuple[tuple[bool, int, int | None], ...]) -> bytes:
        labels = {
            label: {
                "detected": "ON" if detected else "OFF",
                "count": n,
                "last_seen": datetime.fromtimestamp(seen, timezone.utc).isoformat(timespec="seconds") if seen else None,
            }
            for label, (detected, n, seen) in zip(self.labels, state, strict=True)
        }
        return dumps({"labels": labels})
