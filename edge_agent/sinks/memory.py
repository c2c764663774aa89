"""Messages kept in memory: offline runs (`edge-agent predict` on a recording) read them back."""

from __future__ import annotations

from edge_agent.sinks.base import LocalSink, Message


class MemorySink(LocalSink):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    def deliver(self, msg: Message) -> None:
        self.messages.append(msg)
