"""Result sinks: the registry and the one factory.

Adding a sink is one file (a `Sink` subclass with `name` and `create`) and one line in `SINKS`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from edge_agent.config import Settings
from edge_agent.sinks.base import Inbound, Message, Sink, SinkContext
from edge_agent.sinks.memory import MemorySink
from edge_agent.sinks.mqtt import MqttSink
from edge_agent.sinks.stdout import StdoutSink

__all__ = ["SINKS", "Inbound", "Message", "Sink", "SinkContext", "make_sink"]

SINKS: dict[str, type[Sink]] = {c.name: c for c in (MqttSink, StdoutSink, MemorySink)}


def make_sink(
    kind: str,
    settings: Settings,
    retained: Callable[[], list[Message]],
    subscriptions: list[str] | None = None,
    inbox: queue.Queue[Inbound] | None = None,
    stop: threading.Event | None = None,
) -> Sink:
    """subscriptions/inbox: command topics, for sinks that can receive (MQTT); stop: set by a sink whose
    output is gone for good."""
    return SINKS[kind].create(SinkContext(settings, retained, subscriptions or [], inbox, stop))
