"""JSON lines on standard output: for `run --sink stdout`, pipes and debugging without a broker."""

from __future__ import annotations

import sys
from typing import TextIO

from edge_agent.human import printable
from edge_agent.sinks.base import LocalSink, Message


class StdoutSink(LocalSink):
    name = "stdout"

    def __init__(self, stream: TextIO | None = None):
        super().__init__()
        self.stream = stream or sys.stdout

    def deliver(self, msg: Message) -> None:
        self.stream.write(f"{msg.topic} {printable(msg.payload)}\n")
        self.stream.flush()

    def close(self, timeout: float = 5.0) -> None:
        self.stream.flush()

