"""Whether a microphone or a sensor still measures anything: every sample the same value, for long.

A sound card delivers samples all the time, silence included, so a microphone that is muted, unplugged
from its card's jack, or read from a channel nothing is wired to keeps its source `running` and gives
exact digital silence (every sample 0): a wake-word box that hears nothing, for months, looking like a
quiet house. A sensor that stopped measuring (a hung I2C chip that answers with its last reading, an
ADC input come loose and stuck at a rail) repeats one value the same way. A real microphone's noise
floor moves its lowest bits all the time, however quiet the room; a working accelerometer's noise
does the same.

Flat: every channel of every chunk read for `signal.flat_after_s` holds the one value the flat
stretch began with. Audio is watched after 300 s by default; a sensor's readings only where it is set
(a temperature read to a tenth of a degree, or a light sensor in the dark, may rightly repeat one
value for hours). Raw PCM on a pipe (`arecord | edge-agent run --source pcm:-`) is a microphone too; a
recording or a CSV file, which may hold silence by design, is not watched.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: `signal.flat_after_s` where it is not set: audio's (a sensor's default is never).
AUDIO_FLAT_AFTER_S = 300.0


class FlatWatch:
    """One live signal source's samples: `feed` every chunk read; `info` for health."""

    def __init__(self) -> None:
        self._value: np.ndarray | None = None  # each channel's value through the flat stretch
        self._since: float | None = None  # monotonic time the flat stretch began
        self.flat = False

    def feed(self, samples: np.ndarray, now: float, after_s: float) -> None:
        """A chunk ([n, channels]) read at `now` (monotonic seconds). 0 for `after_s`: not watched."""
        if not after_s or not samples.size:
            return
        x = samples.reshape(len(samples), -1)
        first = x[0]
        level = bool((x == first).all())  # one value through the chunk, on each channel
        held = self._value is not None and self._value.shape == first.shape and bool((first == self._value).all())
        if not (level and held):
            if self.flat:
                self.flat = False
                log.info("signal flat no more: it moves again")
            # a chunk of one value begins a flat stretch (one more than the last: a rail reached, say)
            self._value, self._since = (first.copy(), now) if level else (None, None)
            return
        if not self.flat and self._since is not None and now - self._since >= after_s:
            self.flat = True
            log.warning("%s", problem(self.info(now)))

    def info(self, now: float) -> dict[str, Any]:
        """Health's `source.flat`: whether every sample has been one value for `signal.flat_after_s`, for
        how long, and the value (of each channel)."""
        return {
            "flat": self.flat,
            "for_s": round(now - self._since, 1) if self.flat and self._since is not None else None,
            "value": [float(v) for v in self._value] if self.flat and self._value is not None else None,
        }


def problem(info: dict[str, Any] | None) -> str | None:
    """What health's problems say of a signal (`FlatWatch.info`) that stopped moving; None otherwise."""
    if not info or not info.get("flat"):
        return None
    values = info.get("value") or []
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
    secs = info.get("for_s") or 0.0
    return (
        f"signal flat: every sample {shown} for {secs:.0f} s (a microphone muted, unplugged from its sound card "
        "or on a channel nothing is wired to; a sensor that stopped measuring)"
    )
