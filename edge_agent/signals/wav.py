"""A WAV file as an audio source: played at its own rate (or as fast as read), optionally looping."""

from __future__ import annotations

import time
import wave
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.signals.base import Chunk, EndOfStream, Pacer, SignalSource, SourceError

if TYPE_CHECKING:
    from edge_agent.config import Settings

#: 20 ms of audio per chunk: small enough for low event latency, large enough to be cheap.
CHUNK_S = 0.02


class WavSource(SignalSource):
    kind = "wav"
    suffixes = (".wav",)
    audio = True

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, s.source.loop, s.source.realtime)
    live = False

    def __init__(self, uri: str, path: str, loop: bool, realtime: bool):
        super().__init__(uri, 0)
        self.path, self.loop, self.realtime = path, loop, realtime
        self._wav: wave.Wave_read | None = None
        self._pacer: Pacer | None = None
        self._t0 = 0.0

    def open(self) -> None:
        try:
            w = wave.open(self.path, "rb")
        except (OSError, EOFError, wave.Error) as err:
            raise SourceError(f"cannot open WAV {self.path}: {err}") from None
        if w.getsampwidth() not in (1, 2, 4):
            raise SourceError(f"{self.path}: {8 * w.getsampwidth()}-bit samples are not supported")
        self._wav, self.rate, self.channels = w, w.getframerate(), w.getnchannels()
        self.channel_names = tuple(f"ch{i}" for i in range(self.channels))
        self._pacer = Pacer(self.rate)
        self._t0 = time.time()

    def read(self, timeout: float) -> Chunk | None:
        w, p = self._wav, self._pacer
        if w is None or p is None:
            raise SourceError("not open")
        n = max(1, int(self.rate * CHUNK_S))
        if self.realtime:
            wait = p.wait_s(n)
            if wait > timeout:
                time.sleep(timeout)
                return None
            time.sleep(wait)
        try:
            raw = w.readframes(n)
        except (OSError, EOFError, wave.Error) as err:
            raise SourceError(f"{self.path}: {err}") from None
        if not raw:
            if not self.loop:
                raise EndOfStream(self.path)
            w.rewind()
            raw = w.readframes(n)
            if not raw:
                raise SourceError(f"{self.path}: no audio")
        x = pcm_to_float(raw, w.getsampwidth()).reshape(-1, self.channels)
        ts = self._t0 + p.done / self.rate
        p.done += len(x)
        return Chunk(x, ts, time.monotonic())

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """A whole WAV file: float32 samples [n, channels] and the sample rate."""
    with wave.open(path, "rb") as w:
        x = pcm_to_float(w.readframes(w.getnframes()), w.getsampwidth())
        return x.reshape(-1, w.getnchannels()), w.getframerate()


def pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM to float32 in [-1, 1): 8-bit is unsigned, 16/32-bit signed (WAV's rules)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    return (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
