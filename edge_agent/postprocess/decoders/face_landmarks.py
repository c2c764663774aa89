"""MediaPipe's face mesh: 468 points (x, y, z in input pixels) and a face-presence logit, for a face crop.

The landmarks of a second stage run on the crops BlazeFace finds: one detection, its keypoints the 468
points mapped back to the frame, its box their extent, its score the presence probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.postprocess.decoders.base import DecodeOptions, Decoder, ModelIO, label_for, make_detection
from edge_agent.postprocess.geometry import sigmoid
from edge_agent.preprocess import Resize
from edge_agent.results import Result


class FaceLandmarkDecoder(Decoder):
    task, layout = "detection", "face_landmarks"
    input_range = (0.0, 1.0)

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        h, w = io.image_size
        if h != w or h == 0 or len(io.outputs) != 2:
            return False
        sizes = sorted(int(np.prod(o.shape)) for o in io.outputs)
        return sizes[0] == 1 and sizes[1] % 3 == 0 and sizes[1] >= 3 * 68

    def __init__(
        self, outputs: Sequence[TensorSpec], labels: Sequence[str] | None, opts: DecodeOptions, input_size: int
    ) -> None:
        super().__init__(outputs, labels or ("face",), opts)
        self._mesh = max(range(2), key=lambda i: int(np.prod(self.specs[i].shape)))
        self._flag = 1 - self._mesh
        self.size = float(input_size)

    @classmethod
    def create(cls, io: ModelIO, labels: Sequence[str] | None, opts: DecodeOptions) -> Decoder:
        return cls(io.outputs, labels, opts, io.image_size[0])

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        score = float(sigmoid(np.asarray(outs[self._flag], np.float32).reshape(-1))[0])
        if score < self.opts.score_threshold:
            return Result(task="detection")
        pts = np.asarray(outs[self._mesh], np.float32).reshape(-1, 3)[:, :2] / self.size
        box = np.concatenate([pts.min(axis=0), pts.max(axis=0)]).astype(np.float32)
        return Result(
            task="detection",
            detections=(make_detection(label_for(self.labels, 0), 0, score, box, rs, pts),),
        )
