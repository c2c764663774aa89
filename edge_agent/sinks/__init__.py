"""Result sinks: the registry and the one factory."""

from __future__ import annotations

import queue
from collections.abc import Callable

from edge_agent.config import Settings
from edge_agent.sinks.base import Message, Sink

__all__ = ["SINKS", "Message", "Sink", "make_sink"]


def _mqtt(
    settings: Settings,
    retained: Callable[[], list[Message]],
    subscriptions: list[str],
    inbox: queue.Queue[tuple[str, bytes]] | None,
) -> Sink:
    from edge_agent.outbox import Outbox
    from edge_agent.sinks.mqtt import MqttSink

    ob = settings.outbox
    outbox = (
        Outbox(settings.state_dir / "outbox.sqlite", ob.max_messages, ob.policy, ob.flush_interval_s)
        if ob.enabled
        else None
    )
    return MqttSink(settings.mqtt, settings.device_id, retained, outbox, ob.replay_rate, subscriptions, inbox)


def _stdout(
    settings: Settings,
    retained: Callable[[], list[Message]],
    subscriptions: list[str],
    inbox: queue.Queue[tuple[str, bytes]] | None,
) -> Sink:
    from edge_agent.sinks.stdout import StdoutSink

    return StdoutSink()


def _memory(
    settings: Settings,
    retained: Callable[[], list[Message]],
    subscriptions: list[str],
    inbox: queue.Queue[tuple[str, bytes]] | None,
) -> Sink:
    from edge_agent.sinks.memory import MemorySink

    return MemorySink()


SinkFactory = Callable[
    [Settings, Callable[[], list[Message]], list[str], "queue.Queue[tuple[str, bytes]] | None"], Sink
]
SINKS: dict[str, SinkFactory] = {"mqtt": _mqtt, "stdout": _stdout, "memory": _memory}


def make_sink(
    kind: str,
    settings: Settings,
    retained: Callable[[], list[Message]],
    subscriptions: list[str] | None = None,
    inbox: queue.Queue[tuple[str, bytes]] | None = None,
) -> Sink:
    """subscriptions/inbox: command topics, for sinks that can receive (MQTT)."""
    return SINKS[kind](settings, retained, subscriptions or [], inbox)
