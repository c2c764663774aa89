"""Size-1, latest-wins hand-off between pipeline stages.

A slow consumer never makes the producer wait or the backlog grow: a newer item replaces
the one not yet taken, and the producer counts that as a drop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store item; True when it replaced one the consumer never took."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify_all()
            return replaced

    def take(self, timeout: float, on_take: Callable[[], None] | None = None) -> T | None:
        """The newest item, or None after timeout or once closed. `on_take` runs for a taken item before
        the slot shows empty: what the consumer counts for it is counted before a producer waiting for
        the slot to empty (`wait_empty`) can go on."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item = self._item
            if item is not None:
                if on_take is not None:
                    on_take()
                self._item = None
                self._cond.notify_all()
            return item

    def wait_empty(self, timeout: float) -> bool:
        """Block until the consumer took the item (for sources paced by their consumer)."""
        with self._cond:
            if self._item is not None and not self._closed:
                self._cond.wait_for(lambda: self._item is None or self._closed, timeout)
            return self._item is None

    @property
    def full(self) -> bool:
        return self._item is not None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
