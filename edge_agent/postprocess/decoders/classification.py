"""One score vector (probabilities or logits): the top classes above the threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.postprocess.decoders.base import DecodeOptions, Decoder, ModelIO, label_for
from edge_agent.postprocess.geometry import softmax
from edge_agent.preprocess import Resize
from edge_agent.results import ClassScore, Result


class ClassificationDecoder(Decoder):
    task = layout = "classification"

    def __init__(self, outputs: Sequence[TensorSpec], labels: Sequence[str] | None, opts: DecodeOptions):
        super().__init__(outputs, labels, opts)
        self.classes = int(np.prod(self.specs[0].shape))

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        outs = io.outputs
        return len(outs) == 1 and int(np.prod(outs[0].shape)) == max(outs[0].shape) > 1

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        scores = np.asarray(outs[0], np.float32).reshape(-1)
        if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
            scores = softmax(scores)  # logits
        k = min(self.opts.top_k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k] if k else np.empty(0, np.intp)
        top = top[np.argsort(-scores[top], kind="stable")]
        return Result(
            task="classification",
            classes=tuple(
                ClassScore(label_for(self.labels, int(i)), int(i), float(scores[i]))
                for i in top
                if scores[i] >= self.opts.score_threshold
            ),
        )
