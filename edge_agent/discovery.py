"""The device as Home Assistant sees it: every pipeline's entities, kept in step with the configuration.

`homeassistant.HomeAssistant` builds one pipeline's discovery configs and states. This keeps the
device's whole set: built at start (a configured label no model produces is refused), rebuilt on a
reload, where the configs of entities that went are cleared; sent again when Home Assistant announces
itself, at most every `_BIRTH_MIN_S`; and stale retained configs from an earlier run, which the broker
hands over when the agent subscribes, cleared too.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

from edge_agent.config import ConfigError, Settings
from edge_agent.homeassistant import HomeAssistant, object_id
from edge_agent.model import misnamed_by_all
from edge_agent.payload import dumps
from edge_agent.signals import signal_class
from edge_agent.sinks import Message
from edge_agent.sources import source_class
from edge_agent.topics import is_ha_config

if TYPE_CHECKING:
    from edge_agent.agent import Agent
    from edge_agent.slots import ModelSlot

__all__ = ["Discovery"]

log = logging.getLogger(__name__)

#: Home Assistant's birth message ("online" on its status topic) asks for the discovery configs again: at
#: most this often. Anything that may publish there can send it, as often as it likes; answered each
#: time, a flood of them filled the publish queue with configs and no prediction got through.
_BIRTH_MIN_S = 10.0


def _watched(kind: str, settings: Settings) -> Literal["picture", "flat"] | None:
    """What health watches of a pipeline's source (`edge_agent.picture`, `edge_agent.flatline`): a live
    one's, where a check is on (an entity that could never turn on would only mislead)."""
    src = settings.source
    if kind == "frame":
        on = source_class(src.uri).live and (src.frozen_after_s or src.blank_after_s)
        return "picture" if on else None
    cls = signal_class(src.uri)
    after = settings.signal.flat_after_s
    return "flat" if cls is not None and cls.watched and (after if after is not None else cls.audio) else None


class Discovery:
    def __init__(self, agent: Agent):
        self.agent = agent
        #: the discovery config topics of the entities this agent has
        self.topics: frozenset[str] = frozenset()
        #: Home Assistant announced itself; the main loop sends the configs again (`answer_birth`)
        self.birth_requested = threading.Event()
        self._birth_at = float("-inf")

    def init(self) -> None:
        """One discovery set per pipeline; each watches the configured labels its model can produce
        (default: the first label it produces). A configured label no model produces is refused:
        its entities would never change."""
        a = self.agent
        if not a.settings.homeassistant.enabled:
            return
        cfg = a.settings.homeassistant
        made: dict[str, HomeAssistant] = {}
        for name, pipe in a.pipelines.items():
            model = a.model_of(name)
            if model is None:
                continue
            produced = list(model.produced_labels)
            watched = [x for x in cfg.labels if x in produced] or produced[:1] or [model.name]
            made[name] = HomeAssistant(a.settings, a.topics, watched, pipe.route.label, not made, pipe.settings.scene,
                                       _watched(pipe.kind, pipe.settings))
        # as `escalation.labels` are checked: against every model in use together, none whose labels are unknown
        why = misnamed_by_all("homeassistant.labels", cfg.labels, a.models_in_use())
        if why is not None:
            raise ConfigError(why)
        a.fanout.ha = made  # one assignment: the pipelines' threads see the old set or the new one
        model = a.model
        self.topics = frozenset(t for ha in made.values() for t in ha.config_topics(model.name if model else None))

    def refresh(self) -> None:
        """After a reload: rebuild the entities, clear the configs of those that went, publish the rest."""
        if not self.agent.settings.homeassistant.enabled:
            return
        before = self.topics
        try:
            self.init()
        except ConfigError as err:
            log.error("Home Assistant entities kept as they were: %s", err)
            self.agent.note_error(f"reload: {err}")
            return
        for topic in sorted(before - self.topics):
            self.clear(topic)
        self.publish()

    def clear(self, topic: str) -> None:
        """An empty retained config: Home Assistant removes the entity, and the broker forgets the config."""
        sink = self.agent.sink
        if sink is not None:
            log.info("clearing Home Assistant config %s (no such entity any more)", topic)
            sink.submit(Message(topic, b"", qos=1, retain=True))

    def publish(self) -> None:
        """Configs and current state again (submit only enqueues)."""
        sink = self.agent.sink
        if sink is None:
            return
        for msg in self.messages():
            sink.submit(msg)

    def messages(self) -> list[Message]:
        """Every pipeline's discovery configs and state; the update entity shows the first slot's OTA."""
        m, slot = self.agent.model, self.agent.first_slot()
        ota = slot.state if slot is not None else None
        return [msg for ha in list(self.agent.fanout.ha.values())
                for msg in ha.discovery(m.name if m else None, m.version if m else None, ota)]

    def update_state(self, slot: ModelSlot, doc: dict[str, Any]) -> None:
        """An OTA state of the first slot: the update entity shows the offered version and its progress."""
        a = self.agent
        ha = next((h for h in list(a.fanout.ha.values()) if h.device_entities), None)
        if ha is None or a.sink is None or slot is not a.first_slot():
            return
        m = slot.model
        a.sink.submit(ha.update_message(m.name if m else None, m.version if m else None, doc))

    def answer_birth(self) -> None:
        """On the main loop: the configs sent again once for any number of births within `_BIRTH_MIN_S`."""
        if self.birth_requested.is_set() and time.monotonic() - self._birth_at >= _BIRTH_MIN_S:
            self.birth_requested.clear()
            self._birth_at = time.monotonic()
            self.publish()

    # --- inbound (the MQTT client's thread: hand over, never block) -----------------------------
    def accept_status(self, topic: str, payload: bytes) -> None:
        """Home Assistant (re)started and wants the configs again; the main loop sends them."""
        if payload.strip() == b"online":
            self.birth_requested.set()

    def is_own_config(self, topic: str) -> bool:
        s = self.agent.settings
        return s.homeassistant.enabled and is_ha_config(topic, s.homeassistant.discovery_prefix, object_id(s.device_id))

    def accept_config(self, topic: str, payload: bytes) -> None:
        """A retained config of this device (the broker sends them when the agent subscribes): one for an
        entity the agent no longer has, from an earlier run or configuration, is cleared."""
        if payload and topic not in self.topics:
            self.clear(topic)

    def accept_rollback(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        """The button: each press is a new command."""
        cmd = {"id": f"ha-rollback-{time.time_ns()}", "command": "rollback"}
        return self.agent.topics.device("cmd"), dumps(cmd)
