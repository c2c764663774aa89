"""A microphone through PortAudio/ALSA (`sounddevice`): the callback only enqueues, overruns are counted."""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.signals.base import Chunk, SignalSource, SourceError, close_quietly

if TYPE_CHECKING:
    from edge_agent.config import Settings

#: Blocks held between the audio callback and the pipeline: ~2 s at 20 ms blocks.
_QUEUE_BLOCKS = 100


class MicrophoneSource(SignalSource):
    kind = "mic"
    signal_options = frozenset({"audio_channels"})
    audio = True

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, int(cls.default_rate(s)), s.signal.audio_channels)

    def __init__(self, uri: str, device: str, rate: int, channels: int):
        super().__init__(uri, rate, channels)
        self.device: str | int | None = int(device) if device.isdecimal() else (device or None)
        self._q: queue.Queue[tuple[np.ndarray, float, float]] = queue.Queue(_QUEUE_BLOCKS)
        self._stream: Any = None

    def open(self) -> None:
        try:
            import sounddevice as sd
        except (ImportError, OSError) as err:  # OSError: PortAudio library missing
            raise SourceError(f"microphone input needs sounddevice and libportaudio2: {err}") from None
        try:
            self._stream = sd.InputStream(
                device=self.device,
                samplerate=self.rate,
                channels=self.channels,
                dtype="int16",  # what capture hardware delivers; float32 is not native on most cards
                blocksize=int(self.rate * 0.02),
                callback=self._callback,
            )
            self._stream.start()
        except Exception as err:  # PortAudioError and ValueError carry the driver's words
            raise SourceError(f"cannot open microphone {self.device!r}: {err}") from None

    def _callback(self, data: np.ndarray, frames: int, t: Any, status: Any) -> None:
        if status and status.input_overflow:
            self.gaps += 1
        try:
            x = data.astype(np.float32) / 32768.0
            self._q.put_nowait((x, time.time() - frames / self.rate, time.monotonic()))
        except queue.Full:
            self.dropped += frames

    def read(self, timeout: float) -> Chunk | None:
        if self._stream is None:
            raise SourceError("not open")
        try:
            x, ts, mono = self._q.get(timeout=timeout)
        except queue.Empty:
            if not self._stream.active:
                raise SourceError("microphone stream stopped (device removed?)") from None
            return None
        return Chunk(x, ts, mono)

    def close(self) -> None:
        if self._stream is not None:
            close_quietly(self._stream)
            self._stream = None
