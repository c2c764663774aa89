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
        return Result(
            task="raw",
            outputs=tuple(
                RawOutput(s.name, tuple(int(d) for d in o.shape), [float(v) for v in o.reshape(-1)])
                for s, o in zip(self.specs, outs, strict=True)
            ),
        )
