"""What the pipeline hands to a sink, and the interface every sink implements."""

from __future__ import annotations

import abc
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from edge_agent.config import Settings


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


class Inbound(NamedTuple):
    """A message the agent received. `retained`: the broker sent it from its store because the agent
    subscribed (at every connect and start), not because it was just published."""

    topic: str
    payload: bytes
    retained: bool = False


@dataclass
class SinkContext:
    """What the agent gives a sink it opens: settings, the retained state to republish on each
    (re)connect, for sinks that can receive, the command topics and the queue they go to, and the
    agent's stop event, which a sink sets when what it writes to is gone for good (standard output
    whose reader has closed it: `run --sink stdout | head`)."""

    settings: Settings
    retained: Callable[[], list[Message]] = lambda: []
    subscriptions: list[str] = field(default_factory=list)
    inbox: queue.Queue[Inbound] | None = None
    stop: threading.Event | None = None


class Sink(abc.ABC):
    #: the registry key (`run --sink NAME`)
    name = "sink"
    #: this end's address of a network connection (health finds the link that carries it), None for none
    local_address: str | None = None

    @classmethod
    @abc.abstractmethod
    def create(cls, ctx: SinkContext) -> Sink:
        """The sink, built from the agent's settings and hand-over points."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def submit(self, msg: Message) -> bool:
        """Queue a message without blocking; False (and a counted drop) when it cannot be held."""

    def submit_latest(self, msg: Message) -> None:
        """Like submit, for state where only the newest value matters (health)."""
        self.submit(msg)

    @abc.abstractmethod
    def flush(self, timeout: float) -> bool: ...

    @abc.abstractmethod
    def close(self, timeout: float = 5.0) -> None: ...

    @abc.abstractmethod
    def is_healthy(self) -> bool: ...

    def is_connected(self) -> bool:
        return self.is_healthy()

    def queue_depth(self) -> int:
        return 0

    def problems(self) -> list[str]:
        """What health should say is wrong with this sink beyond being disconnected."""
        return []

    @abc.abstractmethod
    def stats(self) -> dict[str, object]: ...


class LocalSink(Sink):
    """A sink in this process (a stream, a list): always connected, nothing queued, nothing dropped."""

    @classmethod
    def create(cls, ctx: SinkContext) -> Sink:
        return cls()

    def __init__(self) -> None:
        self.sent = 0
        #: messages that could not be handed over, by reason
        self.drops: dict[str, int] = {}
        self.heartbeat = time.monotonic()
        self._lock = threading.Lock()

    @abc.abstractmethod
    def deliver(self, msg: Message) -> bool | None:
        """Hand one message over; called under the sink's lock. False: it could not be, and is dropped
        (counted in `drops` by the sink)."""

    def start(self) -> None:
        pass

    def submit(self, msg: Message) -> bool:
        """Always True: a local sink holds nothing for later, so what it cannot hand over is dropped and
        counted, never refused. A refusal would have its caller try again (an event waits for room),
        holding the pipeline on a stream that may never take another write (stdout on a full disk)."""
        with self._lock:
            self.heartbeat = time.monotonic()
            if self.deliver(msg) is not False:
                self.sent += 1
        return True

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        pass

    def is_healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, object]:
        return {"state": "connected", "sent": self.sent, "queue_depth": 0, "drops": dict(self.drops)}
