"""JSON lines on standard output: for `run --sink stdout`, pipes and debugging without a broker."""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

from edge_agent.human import printable
from edge_agent.sinks.base import LocalSink, Message, Sink, SinkContext
from edge_agent.system import to_devnull

log = logging.getLogger(__name__)


class StdoutSink(LocalSink):
    """A reader that closes the pipe (`run --sink stdout | head`) has what it wanted, as with any command
    in a pipeline: the sink says so once, writes nothing more and stops the agent (`stop`), where it used
    to log the broken pipe at every frame for as long as the source lasted. Any other failed write (a
    full disk behind a redirection) drops that message, counted and logged once per kind of error, and
    the agent goes on."""

    name = "stdout"

    @classmethod
    def create(cls, ctx: SinkContext) -> Sink:
        return cls(stop=ctx.stop)

    def __init__(self, stream: TextIO | None = None, stop: threading.Event | None = None):
        super().__init__()
        self.stream = stream or sys.stdout
        self.stop = stop
        #: the reader closed the pipe: nothing is written any more
        self.reader_gone = False
        self._failed: set[str] = set()

    def deliver(self, msg: Message) -> bool:
        if self.reader_gone:
            self.drops["reader_gone"] = self.drops.get("reader_gone", 0) + 1
            return False
        try:
            self.stream.write(f"{msg.topic} {printable(msg.payload)}\n")
            self.stream.flush()
        except BrokenPipeError:
            self._reader_gone()
            return False
        except (OSError, ValueError) as err:  # ValueError: the stream was closed in this process
            why = f"{type(err).__name__}: {err}"
            if why not in self._failed:
                self._failed.add(why)
                log.warning("standard output: cannot write (%s); such messages are dropped and counted", why)
            self.drops["write_failed"] = self.drops.get("write_failed", 0) + 1
            return False
        return True

    def _reader_gone(self) -> None:
        self.reader_gone = True
        self.drops["reader_gone"] = self.drops.get("reader_gone", 0) + 1
        to_devnull(self.stream)
        log.info("standard output was closed by its reader: stopping")
        if self.stop is not None:
            self.stop.set()

    def is_healthy(self) -> bool:
        return not self.reader_gone

    def close(self, timeout: float = 5.0) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass
