"""Feature front ends between a signal source and a model: per-frame (streaming) and per-window.

A frame front end turns samples into frames at its own rate (identity: one frame per sample;
micro: one 40-bin vector per 10 ms of 16 kHz audio, the microWakeWord front end). A window
transform maps each finished window to the model's input (none, or a log spectrogram).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np

#: microWakeWord features: 30 ms windows every 10 ms of 16 kHz, 16-bit mono audio, 40 bins.
MICRO_RATE = 16000
MICRO_STEP = 160
MICRO_BINS = 40


class FrameFrontend(abc.ABC):
    #: sample rate the front end needs (None: any)
    rate: int | None = None
    #: input samples per output frame
    step: int = 1

    @abc.abstractmethod
    def push(self, samples: np.ndarray) -> np.ndarray:
        """Samples [n, channels] in; the frames they complete [m, width] out."""

    def reset(self) -> None:  # noqa: B027 - stateless front ends need nothing
        """Forget history (source restart, model swap)."""

    def width(self, channels: int) -> int:
        return channels


class IdentityFrontend(FrameFrontend):
    def __init__(self, offset: list[float] | None = None, scale: list[float] | None = None):
        self.offset = np.asarray(offset if offset else [0.0], np.float32)
        self.scale = np.asarray(scale if scale else [1.0], np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Per-channel (x - offset) * scale."""
        return (np.asarray(samples, np.float32) - self.offset) * self.scale


class MicroFrontend(FrameFrontend):
    """The TFLite Micro audio front end (pymicro-features), as microWakeWord models were trained on."""

    rate = MICRO_RATE
    step = MICRO_STEP

    def __init__(self) -> None:
        try:
            from pymicro_features import MicroFrontend as _Impl
        except ImportError as err:
            raise ValueError("frontend 'micro' needs pymicro-features (pip install 'edge-agent[audio]')") from err
        self._impl = _Impl()
        self._pending = b""

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples, np.float32)
        if x.ndim == 2:
            x = x[:, 0]
        if not np.isfinite(x).all():  # a float recording or driver gone wrong: silence, not a cast's garbage
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
        buf = self._pending + pcm
        out: list[list[float]] = []
        pos, chunk = 0, MICRO_STEP * 2
        while pos + chunk <= len(buf):
            r = self._impl.process_samples(buf[pos : pos + chunk])
            pos += r.samples_read * 2
            if r.features:
                out.append(r.features)
        self._pending = buf[pos:]
        if not out:
            return np.zeros((0, MICRO_BINS), np.float32)
        return np.asarray(out, np.float32)

    def reset(self) -> None:
        self._impl.reset()
        self._pending = b""

    def width(self, channels: int) -> int:
        return MICRO_BINS


def speech_end_s(samples: np.ndarray, rate: float) -> float | None:
    """Where the loud part of a recording ends: the end of the last 10 ms frame whose level is more than
    halfway (in dB) from the noise floor (10th percentile) up to the peak. Reports how long after a
    spoken word its event came."""
    if len(samples) == 0:
        return None
    x = np.asarray(samples, np.float32).reshape(len(samples), -1)[:, 0]
    step = max(1, int(rate * 0.01))
    n = len(x) // step
    if n == 0:
        return None
    rms = np.sqrt(np.mean(x[: n * step].reshape(n, step) ** 2, axis=1)) + 1e-9
    db = 20 * np.log10(rms / np.max(rms))
    floor = float(np.percentile(db, 10))
    loud = np.flatnonzero(db > floor / 2)
    return float((loud[-1] + 1) * step / rate) if len(loud) and floor < -6 else None


def spectrogram(window: np.ndarray) -> np.ndarray:
    """Log power spectrum per channel of one window ([length, channels] -> [length//2 + 1, channels])."""
    w = np.hanning(len(window)).astype(np.float32)[:, None]
    spec = np.abs(np.fft.rfft(window * w, axis=0)) ** 2
    return np.log(spec + 1e-10).astype(np.float32)


def identity(window: np.ndarray) -> np.ndarray:
    return window


FRAME_FRONTENDS: dict[str, Callable[[list[float] | None, list[float] | None], FrameFrontend]] = {
    "none": lambda offset, scale: IdentityFrontend(offset, scale),
    "micro": lambda offset, scale: MicroFrontend(),
}
WINDOW_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": identity,
    "spectrogram": spectrogram,
}
