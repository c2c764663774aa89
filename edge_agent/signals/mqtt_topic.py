"""Readings other devices publish on the same broker (one sample per message, or a batch)."""

from __future__ import annotations

import json
import queue
import time
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.config import MQTTConfig
from edge_agent.signals.base import Chunk, SignalSource, SourceError

if TYPE_CHECKING:
    from edge_agent.config import Settings
from edge_agent.signals.readings import ReadingSource


class MqttTopicSource(ReadingSource):
    kind = "mqtt"

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, s.mqtt, cls.default_rate(s), s.signal.channels)

    def __init__(self, uri: str, topic: str, mqtt: MQTTConfig, rate: float, channels: list[str] | None):
        super().__init__(uri, rate, channels)
        self.topic, self.mqtt = topic, mqtt
        self._sub: object | None = None

    def open(self) -> None:
        from edge_agent.sinks.mqtt import Subscriber

        sub = Subscriber(self.mqtt, [self.topic], client_id=f"edge-agent-input-{time.monotonic_ns()}")
        if not sub.start(timeout=10.0):
            sub.stop()
            raise SourceError(f"cannot subscribe to {self.topic} on {self.mqtt.host}:{self.mqtt.port}")
        self._sub = sub

    def _rows(self, payload: bytes) -> list[np.ndarray]:
        """{"samples": [[...], ...]} is a batch; anything else is one reading."""
        if payload[:1] == b"{" and b'"samples"' in payload:
            try:
                batch = json.loads(payload)["samples"]
                return [r for r in (self.parser.parse(json.dumps(s)) for s in batch) if r is not None]
            except (ValueError, KeyError, TypeError, RecursionError):
                return []
        row = self.parser.parse(payload)
        return [] if row is None else [row]

    def read(self, timeout: float) -> Chunk | None:
        from edge_agent.sinks.mqtt import Subscriber

        sub = self._sub
        if not isinstance(sub, Subscriber):
            raise SourceError("not open")
        rows: list[np.ndarray] = []
        msg = sub.get(timeout)
        while msg is not None:
            got = self._rows(msg[1])
            if not got:
                self.dropped += 1  # a message that is no reading at all
            for row in got:
                self._take(row, rows)
            try:
                msg = sub.messages.get_nowait()
            except queue.Empty:
                msg = None
        return self._chunk(rows)

    def close(self) -> None:
        from edge_agent.sinks.mqtt import Subscriber

        if isinstance(self._sub, Subscriber):
            self._sub.stop()
        self._sub = None
