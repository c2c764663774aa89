"""MediaPipe BlazeFace: anchor regressors and scores, decoded with MediaPipe's anchors and weighted NMS."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.postprocess.decoders.base import DecodeOptions, Decoder, ModelIO, label_for, make_detection
from edge_agent.postprocess.geometry import cxcywh_to_xyxy, sigmoid, weighted_nms
from edge_agent.preprocess import Resize
from edge_agent.results import Result


def ssd_anchors(input_size: int, strides: Sequence[int], interpolated_aspect: float) -> np.ndarray:
    """Anchor centres as MediaPipe's SsdAnchorsCalculator makes them for BlazeFace (fixed size 1)."""
    anchors: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        last, repeats = layer, 0
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
            repeats += 2 if interpolated_aspect == 1.0 else 1
        fm = input_size // strides[layer]
        for y in range(fm):
            for x in range(fm):
                anchors.extend([((x + 0.5) / fm, (y + 0.5) / fm)] * repeats)
        layer = last
    return np.asarray(anchors, np.float32)


#: MediaPipe BlazeFace variants, keyed by (input size, anchor count).
BLAZEFACE_ANCHORS = {
    (128, 896): ([8, 16, 16, 16], 1.0),  # short range / front
    (256, 896): ([16, 32, 32, 32], 1.0),  # back camera
    (192, 2304): ([4], 0.0),  # full range
}


class BlazeFaceDecoder(Decoder):
    """MediaPipe anchor-based face detector: regressors [1,N,16] + classificators [1,N,1]."""

    task, layout = "detection", "blazeface"
    preferred_resize = "letterbox"

    def __init__(
        self, outputs: Sequence[TensorSpec], labels: Sequence[str] | None, opts: DecodeOptions, input_size: int
    ):
        super().__init__(outputs, labels or ("face",), opts)
        self._reg = next(i for i, s in enumerate(self.specs) if s.shape[-1] >= 4)
        self._cls = 1 - self._reg
        n = self.specs[self._reg].shape[1]
        strides, interp = BLAZEFACE_ANCHORS[(input_size, n)]
        self.anchors = ssd_anchors(input_size, strides, interp)
        self.input_size = input_size

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        h, w = io.image_size
        return h == w and cls.layout_matches(io.outputs, h)

    @classmethod
    def create(cls, io: ModelIO, labels: Sequence[str] | None, opts: DecodeOptions) -> Decoder:
        return cls(io.outputs, labels, opts, io.image_size[0])

    @staticmethod
    def layout_matches(outputs: Sequence[TensorSpec], input_size: int) -> bool:
        if len(outputs) != 2:
            return False
        shapes = sorted((s.shape for s in outputs), key=lambda sh: sh[-1])
        (a, b) = shapes
        return (
            len(a) == 3
            and len(b) == 3
            and a[-1] == 1
            and b[-1] >= 4
            and a[1] == b[1]
            and (input_size, a[1]) in BLAZEFACE_ANCHORS
        )

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        raw = outs[self._reg].reshape(len(self.anchors), -1)
        logits = outs[self._cls].reshape(-1)
        # sigmoid(x) >= t  <=>  x >= logit(t): most anchors are rejected before any exp() is taken
        keep = logits >= _logit(self.opts.score_threshold)
        if not keep.any():
            return Result(task="detection")
        scores = np.zeros(len(logits), np.float32)
        scores[keep] = sigmoid(logits[keep])
        keep &= scores >= self.opts.score_threshold  # rounding at the threshold itself
        pts = raw[keep].reshape(int(keep.sum()), -1, 2) / self.input_size
        pts[:, 0] += self.anchors[keep]
        pts[:, 2:] += self.anchors[keep][:, None, :]
        boxes = cxcywh_to_xyxy(np.concatenate([pts[:, 0], pts[:, 1]], axis=1))
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, kps, sc = boxes[valid], pts[valid, 2:].reshape(int(valid.sum()), -1), scores[keep][valid]
        clusters = weighted_nms(
            boxes, sc, self.opts.iou_threshold if self.opts.iou_threshold else 0.3, self.opts.max_detections, kps
        )
        return Result(
            task="detection",
            detections=tuple(
                make_detection(label_for(self.labels, 0), 0, score, box, rs, ext) for box, score, ext in clusters
            ),
        )


def _logit(p: float) -> float:
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    return float(np.log(p / (1.0 - p))) - 1e-6
