"""What every signal source (audio, numeric sensor) provides; capture and recovery live in signal_pipeline."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from edge_agent.sources.base import EndOfStream, SourceError

if TYPE_CHECKING:
    from edge_agent.config import Settings

__all__ = ["Chunk", "EndOfStream", "Pacer", "SignalSource", "SourceError"]


@dataclass(frozen=True, slots=True)
class Chunk:
    samples: np.ndarray  # float32 [n, channels]: audio in [-1, 1), sensors in physical units
    ts: float  # capture time of the first sample, epoch seconds
    mono: float  # time.monotonic() when the chunk was read


#: Default rates where the source has none of its own.
AUDIO_RATE = 16000
SENSOR_RATE = 10.0


#: The `source.*` settings every audio and sensor source reads (its capture reopens them all).
SIGNAL_SETTINGS = frozenset({"uri", "reopen_min_s", "reopen_max_s"})
#: The `signal.*` settings only some kinds read, each declaring its own (`signal_options`); the rest (the
#: rate, windows, front end, events) are read for every audio and sensor source.
SIGNAL_KIND_SETTINGS = frozenset({"channels", "audio_channels", "baud", "iio_device"})
#: ... and those only kinds that measure the world read (`watched`: not a recording; `edge_agent.flatline`)
SIGNAL_WATCHED_SETTINGS = frozenset({"flat_after_s"})


class SignalSource(abc.ABC):
    #: also the URI scheme that names this kind (`serial:/dev/ttyUSB0`)
    kind: str = "signal"
    #: the `source.*` settings this kind reads beyond `SIGNAL_SETTINGS`; another one set for it is refused
    options: ClassVar[frozenset[str]] = frozenset()
    #: the settings of `SIGNAL_KIND_SETTINGS` this kind reads; another one set for it is refused
    signal_options: ClassVar[frozenset[str]] = frozenset()
    #: file name endings this kind reads without a scheme
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: audio (windowed by samples, resampled, wake words) rather than numeric sensor readings
    audio: ClassVar[bool] = False
    #: samples arrive on their own clock (microphone, serial) rather than when read (file)
    live: bool = True
    #: a device measuring the world, whose samples all one value mean it stopped (`edge_agent.flatline`):
    #: a microphone, a sensor, raw PCM from `arecord`; not a recording, which may hold silence by design
    watched: ClassVar[bool] = True
    #: a working device delivers samples all the time (a sound card does, silence included; a serial
    #: sensor or a pipe may pause): none for the `read_timeout_s` of its settings means it hangs, and it is
    #: reopened (by capture: a kind that is steady declares that setting among its `options`)
    steady: ClassVar[bool] = False
    #: the rate asked for, where the device may deliver at another of its own (a microphone): the pipeline
    #: then resamples to it. None: the rate is the data's own (a recording, a sensor)
    asked_rate: float | None = None

    @classmethod
    @abc.abstractmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        """The source for `uri` (`arg` is the URI without its scheme), with the settings it uses."""

    @classmethod
    def default_rate(cls, s: Settings) -> float:
        return s.signal.rate or (AUDIO_RATE if cls.audio else SENSOR_RATE)

    def __init__(self, uri: str, rate: float, channels: int = 1):
        self.uri = uri
        self.rate = rate  # nominal samples per second (per channel)
        self.channels = channels
        self.channel_names: tuple[str, ...] = tuple(f"ch{i}" for i in range(channels))
        #: samples the source knows it lost (device overrun, unparsable line, missed poll)
        self.dropped = 0
        #: discontinuities seen inside the source (missed polls, overruns)
        self.gaps = 0

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device or file; raise SourceError."""

    @abc.abstractmethod
    def read(self, timeout: float) -> Chunk | None:
        """The next chunk, or None when nothing came within `timeout`; raise SourceError or EndOfStream."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""

    def describe(self) -> str:
        return self.uri if self.uri.startswith(f"{self.kind}:") else f"{self.kind}:{self.uri}"


def close_quietly(handle: object) -> None:
    """Close a device handle that may already be gone (unplugged): failing to close it changes nothing."""
    try:
        handle.close()  # type: ignore[attr-defined]
    except Exception:  # any driver error: the device is gone either way
        pass


class Pacer:
    """Hands out `rate` samples per second of wall time (files played in real time, polled sensors)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.start = time.monotonic()
        self.done = 0  # samples handed out

    def due(self) -> int:
        return int((time.monotonic() - self.start) * self.rate) - self.done

    def wait_s(self, n: int = 1) -> float:
        return max(0.0, self.start + (self.done + n) / self.rate - time.monotonic())
