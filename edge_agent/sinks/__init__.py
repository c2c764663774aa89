"""Result sinks: the registry and the one factory."""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.config import Settings
from edge_agent.sinks.base import Message, Sink

__all__ = ["SINKS", "Message", "Sink", "make_sink"]


def _mqtt(settings: Settings, retained: Callable[[], list[Message]]) -> Sink:
    from edge_agent.sinks.mqtt import MqttSink

    return MqttSink(settings.mqtt, settings.device_id, retained)


def _stdout(settings: Settings, retained: Callable[[], list[Message]]) -> Sink:
    from edge_agent.sinks.stdout import StdoutSink

    return StdoutSink()


SINKS: dict[str, Callable[[Settings, Callable[[], list[Message]]], Sink]] = {"mqtt": _mqtt, "stdout": _stdout}


def make_sink(kind: str, settings: Settings, retained: Callable[[], list[Message]]) -> Sink:
    return SINKS[kind](settings, retained)
