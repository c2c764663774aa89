"""Result sinks: the registry and the one factory."""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.config import Settings
from edge_agent.sinks.base import Message, Sink

__all__ = ["SINKS", "Message", "Sink", "make_sink"]


def _mqtt(settings: Settings, retained: Callable[[], list[Message]]) -> Sink:
    from edge_agent.outbox import Outbox
    from edge_agent.sinks.mqtt import MqttSink

    ob = settings.outbox
    outbox = (
        Outbox(settings.state_dir / "outbox.sqlite", ob.max_messages, ob.policy, ob.flush_interval_s)
        if ob.enabled
        else None
    )
    return MqttSink(settings.mqtt, settings.device_id, retained, outbox, ob.replay_rate)


def _stdout(settings: Settings, retained: Callable[[], list[Message]]) -> Sink:
    from edge_agent.sinks.stdout import StdoutSink

    return StdoutSink()


SINKS: dict[str, Callable[[Settings, Callable[[], list[Message]]], Sink]] = {"mqtt": _mqtt, "stdout": _stdout}


def make_sink(kind: str, settings: Settings, retained: Callable[[], list[Message]]) -> Sink:
    return SINKS[kind](settings, retained)
