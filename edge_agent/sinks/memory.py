"""Messages kept in memory: offline runs (`edge-agent predict` on a recording) read them back."""

from __future__ import annotations

import threading
import time

from edge_agent.sinks.base import Message, Sink


class MemorySink(Sink):
    name = "memory"

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.heartbeat = time.monotonic()
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def submit(self, msg: Message) -> bool:
        with self._lock:
            self.messages.append(msg)
            self.heartbeat = time.monotonic()
        return True

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        pass

    def is_healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, object]:
        return {"state": "connected", "sent": len(self.messages), "queue_depth": 0, "drops": {}}
