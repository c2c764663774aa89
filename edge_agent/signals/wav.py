"""A recorded audio file as an audio source: played at its own rate (or as fast as read), optionally looping.

Read with libsndfile (`soundfile`, whose wheels carry the library for x86-64 and aarch64), not the
standard `wave` module: field recorders and editors write 24-bit and 32-bit float WAV and
WAVE_FORMAT_EXTENSIBLE headers, which `wave` refuses (float always, the extensible header before
Python 3.12), and a recording cut short by a power loss (its header promising more data than the file
holds) is read up to where it ends. The same reader takes FLAC, Ogg (Vorbis, Opus) and MP3, which is
how many recordings are kept.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.signals.base import Chunk, EndOfStream, Pacer, SignalSource, SourceError

if TYPE_CHECKING:
    from edge_agent.config import Settings

#: 20 ms of audio per chunk: small enough for low event latency, large enough to be cheap.
CHUNK_S = 0.02
#: The file endings read as audio recordings without a `wav:` scheme.
SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")


class WavSource(SignalSource):
    kind = "wav"
    options = frozenset({"loop", "realtime"})
    suffixes = SUFFIXES
    audio = True

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, s.source.loop, s.source.realtime)
    live = False
    watched = False  # a recording: silence there may be what was recorded

    def __init__(self, uri: str, path: str, loop: bool, realtime: bool):
        super().__init__(uri, 0)
        self.path, self.loop, self.realtime = path, loop, realtime
        self._file: Any = None  # soundfile.SoundFile
        self._pacer: Pacer | None = None
        self._t0 = 0.0

    def open(self) -> None:
        f = _open(self.path)
        self._file, self.rate, self.channels = f, f.samplerate, f.channels
        self.channel_names = tuple(f"ch{i}" for i in range(self.channels))
        self._pacer = Pacer(self.rate)
        self._t0 = time.time()

    def read(self, timeout: float) -> Chunk | None:
        f, p = self._file, self._pacer
        if f is None or p is None:
            raise SourceError("not open")
        n = max(1, int(self.rate * CHUNK_S))
        if self.realtime:
            wait = p.wait_s(n)
            if wait > timeout:
                time.sleep(timeout)
                return None
            time.sleep(wait)
        x = _read(f, self.path, n)
        if not len(x):
            if not self.loop:
                raise EndOfStream(self.path)
            _rewind(f, self.path)
            x = _read(f, self.path, n)
            if not len(x):
                raise SourceError(f"{self.path}: no audio")
        ts = self._t0 + p.done / self.rate
        p.done += len(x)
        return Chunk(x, ts, time.monotonic())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _open(path: str) -> Any:
    import soundfile

    try:
        f = soundfile.SoundFile(path)
    except (OSError, RuntimeError, TypeError, ValueError) as err:  # LibsndfileError is a RuntimeError
        reason = getattr(err, "error_string", None) or err  # libsndfile's reason, without the path again
        raise SourceError(f"cannot open audio file {path}: {reason}") from None
    if f.samplerate <= 0 or f.channels <= 0:
        f.close()
        raise SourceError(f"{path}: no sample rate or channels in its header")
    return f


def _read(f: Any, path: str, n: int) -> np.ndarray:
    """Up to `n` frames as float32 [frames, channels] in [-1, 1)."""
    try:
        x: np.ndarray = f.read(n, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise SourceError(f"{path}: {err}") from None
    return x


def _rewind(f: Any, path: str) -> None:
    try:
        f.seek(0)
    except (OSError, RuntimeError, ValueError) as err:
        raise SourceError(f"{path}: cannot rewind: {err}") from None


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """A whole recording: float32 samples [n, channels] and the sample rate."""
    f = _open(path)
    try:
        return _read(f, path, -1), f.samplerate
    finally:
        f.close()
