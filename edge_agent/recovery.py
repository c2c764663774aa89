"""Going back to an accelerator: where the CPU stands in for one that failed at run time or could not be
opened at start, every `runtime.recover_s` each such model is selected again, as at start, and the
accelerator serves again once it passes (`Engine.try_accelerator`). Without this a USB accelerator that
dropped off the bus for a moment, or was found by the kernel after the service started, left the box on
the CPU until someone restarted it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from edge_agent.engine import Engine

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, engines: Callable[[], list[Engine]], interval_s: float, stop: threading.Event):
        self.engines, self.interval_s, self.stop = engines, interval_s, stop
        self.attempts = 0
        self.recovered = 0
        self.errors = 0

    def check(self) -> int:
        """One round: each engine the CPU stands in for selects again. How many went back."""
        back = 0
        for engine in self.engines():
            if self.stop.is_set():
                break
            if engine.runtime.standing_in() is None:
                continue
            went = engine.try_accelerator()
            self.attempts += 1  # (counted once done)
            back += went
        self.recovered += back
        return back

    def info(self) -> dict[str, Any]:
        """Health's `recovery`: how often it looks, the models it tried again, how many went back."""
        return {"every_s": self.interval_s, "attempts": self.attempts, "recovered": self.recovered,
                "errors": self.errors}

    def loop(self) -> None:
        """The `accelerators` thread."""
        while not self.stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # loop boundary: log, count, try again next round
                self.errors += 1
                log.exception("accelerator recovery error")
