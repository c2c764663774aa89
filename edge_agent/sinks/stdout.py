"""JSON lines on standard output: for `run --sink stdout`, pipes and debugging without a broker."""

from __future__ import annotations

import sys
from typing import TextIO

from edge_agent.payload import dumps
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


def printable(payload: bytes) -> str:
    """A payload as one line: text as it is (every document is one line of JSON, a zone count a
    number; a line break in other text is escaped); a binary one (a snapshot's JPEG) as a line of JSON
    saying what it is and its size, since its bytes would break the lines apart and mean nothing on a
    terminal."""
    try:
        return payload.decode("utf-8").replace("\r", "\\r").replace("\n", "\\n")
    except UnicodeDecodeError:
        kind = "image/jpeg" if payload[:3] == b"\xff\xd8\xff" else "application/octet-stream"
        return dumps({"binary": kind, "bytes": len(payload)}).decode()
