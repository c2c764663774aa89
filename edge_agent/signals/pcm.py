"""Raw signed 16-bit little-endian PCM from stdin or a pipe (`arecord -t raw ... | edge-agent run`)."""

from __future__ import annotations

import os
import select
import stat
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.signals.base import Chunk, EndOfStream, SignalSource, SourceError

if TYPE_CHECKING:
    from edge_agent.config import Settings

_READ_BYTES = 4096


class PcmSource(SignalSource):
    kind = "pcm"
    signal_options = frozenset({"audio_channels"})
    audio = True

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, int(cls.default_rate(s)), s.signal.audio_channels)
    #: a pipe has back-pressure: when inference falls behind, the writer waits rather than samples being lost
    live = False

    def __init__(self, uri: str, path: str, rate: int, channels: int):
        super().__init__(uri, rate, channels)
        self.path = path
        self._fd: int | None = None
        self._own = False
        self._fifo = False
        self._pending = b""

    def open(self) -> None:
        if self.path in ("", "-"):
            self._fd, self._own = sys.stdin.buffer.fileno(), False
        else:
            try:
                self._fd, self._own = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK), True
                self._fifo = stat.S_ISFIFO(os.fstat(self._fd).st_mode)
            except OSError as err:
                raise SourceError(f"cannot open {self.path}: {err}") from None
        self._pending = b""

    def read(self, timeout: float) -> Chunk | None:
        if self._fd is None:
            raise SourceError("not open")
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return None
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return None
        except OSError as err:
            raise SourceError(f"{self.path or 'stdin'}: {err}") from None
        if not data:
            if self._fifo:  # the writer went away (a recorder restarting): reopen and wait for the next
                raise SourceError(f"{self.path}: no writer")
            raise EndOfStream(self.path or "stdin")
        mono, now = time.monotonic(), time.time()
        buf = self._pending + data
        frame = 2 * self.channels
        usable = len(buf) - len(buf) % frame
        self._pending = buf[usable:]
        x = np.frombuffer(buf[:usable], "<i2").astype(np.float32).reshape(-1, self.channels) / 32768.0
        return Chunk(x, now - len(x) / self.rate, mono)

    def close(self) -> None:
        if self._fd is not None and self._own:
            os.close(self._fd)
        self._fd = None
