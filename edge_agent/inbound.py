"""What the agent receives, routed: a table of topic matcher -> handler, as Home Assistant's MQTT client
keeps its subscriptions.

Every handler runs on the MQTT client's thread, so each only hands over (to an updater collecting a
model's chunks, the escalator, an event for the main loop) or enqueues, and never blocks. What no route
takes is a command, queued for the command processor.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_agent.homeassistant import object_id
from edge_agent.sinks import Inbound
from edge_agent.topics import Topics, ha_configs_filter

if TYPE_CHECKING:
    from edge_agent.agent import Agent
    from edge_agent.config import Settings

__all__ = ["InboundRouter", "subscriptions"]

#: A route's handler: None when it took the message; otherwise (topic, payload) of the command it becomes.
Handler = Callable[[str, bytes], "tuple[str, bytes] | None"]


def subscriptions(s: Settings) -> list[str]:
    """The topics the agent subscribes to with these settings (`check` asks the broker for the same)."""
    ha = s.homeassistant
    return Topics(s.mqtt.topic_prefix, s.device_id, tuple(s.groups)).subscriptions(
        ha.status_topic if ha.enabled else None,
        s.escalation.enabled,
        ha_configs_filter(ha.discovery_prefix, object_id(s.device_id)) if ha.enabled else None,
    )


class InboundRouter(queue.Queue[Inbound]):
    """The MQTT client's inbox: model chunks go to the updater collecting them, escalation answers to the
    escalator, Home Assistant's birth and retained configs to `Discovery`; the rest are commands (a Home
    Assistant button press turned into one keeps whether the broker replayed it from its store)."""

    def __init__(self, agent: Agent, maxsize: int):
        super().__init__(maxsize)
        self.agent = agent
        ha = agent.discovery
        self.routes: list[tuple[Callable[[str], bool], Handler]] = [
            (lambda t: "/ota/" in t, self.accept_chunk),
            (lambda t: t == agent.topics.device("escalations/result"), self.accept_answer),
            (lambda t: t == agent.settings.homeassistant.status_topic, ha.accept_status),
            (lambda t: t == agent.topics.device("ha/rollback"), ha.accept_rollback),
            (ha.is_own_config, ha.accept_config),
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

    def accept_chunk(self, topic: str, payload: bytes) -> None:
        """A model's chunk: to the updater receiving that model, or to every one (the first of a transfer)."""
        parts = topic.rsplit("/", 2)
        sha = parts[1] if len(parts) == 3 else ""
        updaters = [s.updater for s in self.agent.slots.values() if s.updater is not None]
        busy = [u for u in updaters if u.receiving == sha]
        for u in busy or updaters:
            u.accept_chunk(topic, payload)

    def accept_answer(self, topic: str, payload: bytes) -> None:
        escalator = self.agent.escalator
        if escalator is not None:
            escalator.accept_answer(payload)
