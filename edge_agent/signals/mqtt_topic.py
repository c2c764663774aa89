"""Readings other devices publish on the same broker (one sample per message, or a batch).

Another device decides how fast they come, and how large. What is held unread is bounded in bytes
(MAX_HELD_BYTES), one read takes at most a second of readings (the rest waits for the next), and a
batch of more than MAX_BATCH samples is not read: a device that sent large batches faster than they
could be parsed grew the agent by 1.4 GB in 20 s here, and held its capture loop until the watchdog
restarted it. What is dropped is counted, one sample for each message that could not be held."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.config import MQTTConfig
from edge_agent.signals.base import Chunk, SignalSource, SourceError

if TYPE_CHECKING:
    from edge_agent.config import Settings
from edge_agent.signals.readings import ReadingSource

#: Payload bytes held unread: 8 MiB is minutes of readings at any sensor rate, in messages of one each.
MAX_HELD_BYTES = 8 << 20
#: The most samples one batch message may carry (a second of a 10 kHz sensor).
MAX_BATCH = 10_000


class MqttTopicSource(ReadingSource):
    kind = "mqtt"

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, s.mqtt, cls.default_rate(s), s.signal.channels)

    def __init__(self, uri: str, topic: str, mqtt: MQTTConfig, rate: float, channels: list[str] | None):
        super().__init__(uri, rate, channels)
        self.topic, self.mqtt = topic, mqtt
        self._sub: object | None = None
        self._overflow_seen = 0

    def open(self) -> None:
        from edge_agent.sinks.mqtt import Subscriber

        sub = Subscriber(self.mqtt, [self.topic], client_id=f"edge-agent-input-{time.monotonic_ns()}",
                         max_bytes=MAX_HELD_BYTES)
        if not sub.start(timeout=10.0):
            sub.stop()
            raise SourceError(f"cannot subscribe to {self.topic}: {sub.why_not()}")
        self._sub, self._overflow_seen = sub, 0

    def _rows(self, payload: bytes) -> list[np.ndarray]:
        """{"samples": [[...], ...]} is a batch; anything else is one reading."""
        if payload[:1] == b"{" and b'"samples"' in payload:
            try:
                batch = json.loads(payload)["samples"]
                if not isinstance(batch, list):
                    return []
                if len(batch) > MAX_BATCH:
                    self.dropped += len(batch) - 1  # each sample lost (the caller counts the message as one)
                    return []
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
        most = max(1, int(self.rate))  # a second of readings, then back to the capture loop
        msg = sub.get(timeout)
        while msg is not None:
            got = self._rows(msg[1])
            if not got:
                self.dropped += 1  # a message that is no reading at all
            for row in got:
                self._take(row, rows)
            msg = sub.get(0) if len(rows) < most else None
        lost = sub.overflow  # messages that came while MAX_HELD_BYTES were unread
        self.dropped += lost - self._overflow_seen
        self._overflow_seen = lost
        return self._chunk(rows)

    def close(self) -> None:
        from edge_agent.sinks.mqtt import Subscriber

        if isinstance(self._sub, Subscriber):
            self._sub.stop()
        self._sub = None
