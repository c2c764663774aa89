"""Numeric outputs as they are: sensor and custom models, and whatever no other decoder claims."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.postprocess.decoders.base import Decoder, ModelIO
from edge_agent.preprocess import Resize
from edge_agent.results import RawOutput, Result


class RawDecoder(Decoder):
    """Numeric outputs as they are (dequantized), for sensor and custom models."""

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        return True  # the last one asked

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        return Result(task="raw", outputs=tuple(self._one(s.name, o) for s, o in zip(self.specs, outs, strict=True)))

    def _one(self, name: str, o: np.ndarray) -> RawOutput:
        """The values, or past `raw_max_values` their min, max and mean: an output no decoder reads may be a
        map of megabytes (a 512x512x3 one was 15 MB of JSON a frame, for the broker, the outbox's disk and
        every subscriber)."""
        shape = tuple(int(d) for d in o.shape)
        if o.size <= self.opts.raw_max_values:
            return RawOutput(name, shape, [float(v) for v in o.reshape(-1)])
        finite = o[np.isfinite(o)] if o.dtype.kind == "f" else o
        if finite.size == 0:  # all NaN or infinite: no number to give (JSON has no NaN)
            return RawOutput(name, shape, [], (None, None, None))
        lo, hi, mean = float(finite.min()), float(finite.max()), float(finite.mean(dtype=np.float64))
        return RawOutput(name, shape, [], (lo, hi, mean))
