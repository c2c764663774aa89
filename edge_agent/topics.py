"""Every MQTT topic the agent, its tools and the fleet side use, built here and nowhere else.

Device-level topics are `{prefix}/{device_id}/{leaf}`. A named pipeline publishes its predictions and
events under `{prefix}/{device_id}/{pipeline}/...`; the single-pipeline form keeps them at device level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Device-level leaves: one each per agent, whatever the number of pipelines.
DEVICE_LEAVES = (
    "availability",
    "info",
    "health",
    "cmd",
    "cmd/result",
    "model/state",
    "escalations",
    "escalations/result",
    "ha/state",
    "ha/update",
    "ha/rollback",
)
#: Per-pipeline leaves.
PIPELINE_LEAVES = ("predictions", "events")


#: What a topic may not hold at all (MQTT 5 section 1.5.4, which mosquitto enforces by closing the
#: connection, under MQTT 3.1.1 too): control characters, UTF-16 surrogates and Unicode's non-characters.
_NOT_IN_A_TOPIC = (
    "\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(p | 0xFFFE)}{chr(p | 0xFFFF)}" for p in range(0, 0x110000, 0x10000))
)
_UNFIT = re.compile(f"[{_NOT_IN_A_TOPIC}]")
#: ... nor in one level, with MQTT's separator and wildcards. A label comes from a model's labels file or
#: metadata, which an update may ship: one such character in it, and each snapshot or zone count
#: published under it ended the connection, again after every reconnect, and nothing else got out.
_NOT_IN_A_LEVEL = re.compile(f"[/+#{_NOT_IN_A_TOPIC}]")


def unfit(text: str) -> str | None:
    """The first character of `text` that no topic may hold, shown as its code point, or None."""
    m = _UNFIT.search(text)
    return None if m is None else f"U+{ord(m.group()):04X}"


#: Characters of a label kept in a topic level: a topic is at most 65,535 bytes, and paho refuses a longer
#: one with an exception at each publish (a labels file whose line is one long run of text).
LEVEL_CHARS = 200


def level(name: str) -> str:
    """A label or zone as one topic level: MQTT's separator and wildcards (/ + #), and what no topic may
    hold (control characters, surrogates, non-characters), become _; at most LEVEL_CHARS of it."""
    return _NOT_IN_A_LEVEL.sub("_", name[:LEVEL_CHARS]) or "_"


def device_base(prefix: str, device_id: str) -> str:
    return f"{prefix}/{device_id}"


def group_base(prefix: str, group: str) -> str:
    return f"{prefix}/group/{group}"


def ota_chunk(root: str, sha256: str, index: int) -> str:
    """MQTT delivery of a model: chunk `index` under a device's or a group's root."""
    return f"{root}/ota/{sha256}/{index}"


def device_pattern(prefix: str, device: str | None, leaf: str) -> str:
    """A subscription pattern for a leaf of one device or (None) every device."""
    return f"{prefix}/{device or '+'}/{leaf}"


def ha_config(discovery_prefix: str, component: str, node: str, unique_id: str) -> str:
    return f"{discovery_prefix}/{component}/{node}/{unique_id}/config"


def ha_configs_filter(discovery_prefix: str, node: str) -> str:
    """Every discovery config of one node (device), whatever the component or entity."""
    return f"{discovery_prefix}/+/{node}/+/config"


def is_ha_config(topic: str, discovery_prefix: str, node: str) -> bool:
    parts = topic.rsplit("/", 4)
    return len(parts) == 5 and parts[0] == discovery_prefix and parts[2] == node and parts[4] == "config"


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str
    groups: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        return device_base(self.prefix, self.device_id)

    def device(self, leaf: str) -> str:
        return f"{self.base}/{leaf}"

    def pipeline(self, name: str | None, leaf: str) -> str:
        """`leaf` of a pipeline; None (the single-pipeline form) keeps it at device level."""
        return f"{self.base}/{leaf}" if name is None else f"{self.base}/{name}/{leaf}"

    def zone_count(self, name: str | None, zone: str, label: str) -> str:
        """Retained number of `label` objects now in `zone` (Frigate's `{zone}/{label}` convention)."""
        return self.pipeline(name, f"zones/{level(zone)}/{level(label)}")

    def snapshot(self, name: str | None, label: str) -> str:
        """Retained JPEG of the latest event's best frame for `label`."""
        return self.pipeline(name, f"snapshot/{level(label)}")

    def model_state(self, slot: str | None) -> str:
        """Retained update state of a model slot; None: the single model's `model/state`."""
        return self.device("model/state") if slot is None else f"{self.base}/models/{slot}/state"

    def as_dict(self) -> dict[str, str]:
        return {leaf: self.device(leaf) for leaf in (*PIPELINE_LEAVES, *DEVICE_LEAVES)}

    def subscriptions(self, ha_status: str | None, escalation: bool, ha_configs: str | None = None) -> list[str]:
        """What the agent subscribes to: commands and model chunks for itself and its groups; with Home
        Assistant, its birth topic, the rollback button and this device's own discovery configs
        (`ha_configs`: the filter from `ha_configs_filter`), so that stale ones can be cleared."""
        out = [self.device("cmd"), f"{self.base}/ota/#"]
        out += [f"{group_base(self.prefix, g)}/cmd" for g in self.groups]
        out += [f"{group_base(self.prefix, g)}/ota/#" for g in self.groups]
        if ha_status is not None:
            out += [ha_status, self.device("ha/rollback")]
        if ha_configs is not None:
            out.append(ha_configs)
        if escalation:
            out.append(self.device("escalations/result"))
        return out
