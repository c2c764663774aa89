"""JSON lines on standard output: for `run --sink stdout`, pipes and debugging without a broker."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from edge_agent.sinks.base import Message, Sink


class StdoutSink(Sink):
    name = "stdout"

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.sent = 0
        self.heartbeat = time.monotonic()
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def submit(self, msg: Message) -> bool:
        with self._lock:
            self.stream.write(f"{msg.topic} {msg.payload.decode('utf-8', 'replace')}\n")
            self.stream.flush()
            self.sent += 1
            self.heartbeat = time.monotonic()
        return True

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.stream.flush()

    def is_healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, object]:
        return {"state": "connected", "sent": self.sent, "queue_depth": 0, "drops": {}}
