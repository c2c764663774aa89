"""Models ending in TFLite_Detection_PostProcess (the SSD MobileNet family): the op decodes, we read."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.postprocess.decoders.base import DecodeOptions, Decoder, ModelIO, label_for, make_detection
from edge_agent.preprocess import Resize
from edge_agent.results import Result


class SSDPostprocessDecoder(Decoder):
    """Models ending in TFLite_Detection_PostProcess: boxes (ymin,xmin,ymax,xmax), classes, scores, count."""

    task, layout = "detection", "ssd"

    def __init__(
        self,
        outputs: Sequence[TensorSpec],
        labels: Sequence[str] | None,
        opts: DecodeOptions,
        op_output_order: Sequence[int],
    ):
        super().__init__(outputs, labels, opts)
        # op_output_order[k] = tensor index of the op's k-th output (boxes, classes, scores, count)
        pos = {s.index: i for i, s in enumerate(self.specs)}
        self._b, self._c, self._s, self._n = (pos[t] for t in op_output_order)

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        return bool(io.file.detection_op_outputs) and len(io.outputs) == 4

    @classmethod
    def create(cls, io: ModelIO, labels: Sequence[str] | None, opts: DecodeOptions) -> Decoder:
        return cls(io.outputs, labels, opts, io.file.detection_op_outputs or ())

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        boxes = outs[self._b].reshape(-1, 4)
        classes = outs[self._c].reshape(-1)
        scores = outs[self._s].reshape(-1)
        n = min(int(outs[self._n].reshape(-1)[0]), boxes.shape[0])
        dets = []
        for i in range(n):
            score = float(scores[i])
            if score < self.opts.score_threshold:
                continue
            ymin, xmin, ymax, xmax = boxes[i]
            idx = int(classes[i])
            xyxy = np.array([xmin, ymin, xmax, ymax], np.float32)
            dets.append(make_detection(label_for(self.labels, idx), idx, score, xyxy, rs))
        dets.sort(key=lambda d: -d.score)
        return Result(task="detection", detections=tuple(dets[: self.opts.max_detections]))
