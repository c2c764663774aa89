"""Streaming polyphase resampling: a source at 44.1 or 48 kHz feeding a 16 kHz model.

A windowed-sinc low-pass at the lower of the two Nyquist rates, applied in polyphase form with the
input history carried between chunks, so that resampling chunk by chunk gives the same samples as
resampling the whole stream at once.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

#: Filter half-length in input samples at the lower rate: ~60 dB stop band, a few ms of delay.
_HALF_TAPS = 16
#: The most phases (the larger of the ratio's two terms) the filter is built for. Every usual audio
#: rate to 16 kHz needs at most 441 (44.1 and 22.05 kHz); the filter has 32 taps for each. A rate
#: sharing no large factor with the model's (a WAV header saying 999,983 Hz: 32 million taps, 3.5 GB
#: and 14 s to build) is resampled at the nearest ratio of terms this size, where that is within
#: RATE_TOLERANCE of the true one (999,983 Hz: 17 ppm off; 44,101 Hz: 4 ppm).
MAX_PHASES = 1024
#: 100 ppm: what a sound card's own crystal may be off by.
RATE_TOLERANCE = 1e-4


def ratio(in_rate: int, out_rate: int) -> tuple[int, int]:
    """(up, down): out_rate / in_rate in lowest terms, or the nearest fraction whose terms are at most
    MAX_PHASES within RATE_TOLERANCE; ValueError where there is none."""
    if in_rate <= 0 or out_rate <= 0:
        raise ValueError("rates must be positive")
    exact = Fraction(out_rate, in_rate)
    r = exact
    if max(r.numerator, r.denominator) > MAX_PHASES:
        if r < 1:
            r = r.limit_denominator(MAX_PHASES)
        else:
            inverse = (1 / r).limit_denominator(MAX_PHASES)
            r = 1 / inverse if inverse else inverse
        if r == 0 or abs(r / exact - 1) > RATE_TOLERANCE:
            raise ValueError(
                f"cannot resample {in_rate} Hz to {out_rate} Hz: no fraction of terms up to {MAX_PHASES} is within "
                f"{RATE_TOLERANCE * 1e6:.0f} ppm of their ratio (rates about {MAX_PHASES} times apart or more)"
            )
    return r.numerator, r.denominator


def _lowpass(up: int, down: int) -> np.ndarray:
    cutoff = 1.0 / max(up, down)  # of the upsampled rate's Nyquist
    half = _HALF_TAPS * max(up, down)
    n = np.arange(-half, half + 1, dtype=np.float64)
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(len(n), 8.0)
    return h * (up / h.sum())  # unity gain at DC after zero-stuffing by `up`


class Resampler:
    def __init__(self, in_rate: int, out_rate: int, channels: int = 1):
        self.up, self.down = ratio(in_rate, out_rate)
        self.channels = channels
        self.identity = self.up == self.down
        h = _lowpass(self.up, self.down)
        pad = (-len(h)) % self.up
        h = np.concatenate([h, np.zeros(pad)])
        self.taps = len(h) // self.up  # input samples per output sample
        # bank[p, k]: output phase p weighs input x[i - k] with h[p + k*up]
        self._bank = h.reshape(self.taps, self.up).T.astype(np.float32)
        self._delay = (len(h) - pad - 1) // 2  # of the filter, in upsampled samples
        self.reset()

    def reset(self) -> None:
        self._hist = np.zeros((self.taps - 1, self.channels), np.float32)
        self._n_in = 0  # input samples seen
        self._n_out = 0  # output samples produced

    def push(self, x: np.ndarray) -> np.ndarray:
        """Resample a chunk ([n, channels]); returns the output samples it completes."""
        x = np.asarray(x, np.float32).reshape(-1, self.channels)
        if self.identity:
            return x
        buf = np.concatenate([self._hist, x])  # buf[j] is input sample (self._n_in - (taps-1) + j)
        first = self._n_in - (self.taps - 1)
        self._n_in += len(x)
        # output m sits at upsampled position t = m*down + delay; its newest input is i = t // up
        m_stop = (self._n_in * self.up - self._delay + self.down - 1) // self.down
        m = np.arange(self._n_out, max(self._n_out, m_stop))
        if len(m) == 0:
            self._hist = buf[-(self.taps - 1) :] if self.taps > 1 else buf[:0]
            return np.zeros((0, self.channels), np.float32)
        t = m * self.down + self._delay
        i, p = t // self.up, t % self.up
        i = np.minimum(i, self._n_in - 1)
        idx = (i - first)[:, None] - np.arange(self.taps)[None, :]  # [M, taps] into buf
        valid = idx >= 0
        gathered = buf[np.clip(idx, 0, None)] * valid[..., None]  # [M, taps, C]
        y = np.einsum("mkc,mk->mc", gathered, self._bank[p])
        self._n_out += len(m)
        self._hist = buf[-(self.taps - 1) :].copy() if self.taps > 1 else buf[:0]
        return y.astype(np.float32)
