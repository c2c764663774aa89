"""MediaPipe BlazeFace: anchor regressors and scores, decoded with MediaPipe's anchors and weighted NMS."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.postprocess.decoders.base import (
    DecodeOptions,
    Decoder,
    ModelIO,
    label_for,
    make_detection,
    make_detection_of_floats,
)
from edge_agent.postprocess.geometry import cxcywh_to_xyxy, sigmoid, weighted_nms, weighted_nms_few
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
        logits = outs[self._cls].reshape(-1)
        # the one pass over every anchor: sigmoid(x) >= t <=> x >= logit(t), so the few anchors left (a
        # handful a face, of 896 or 2304) are all the rest works on, and no exp() is taken for the others
        idx = np.flatnonzero(logits >= _logit(self.opts.score_threshold))
        if not idx.size:
            return Result(task="detection")
        scores = sigmoid(logits[idx])
        ok = scores >= self.opts.score_threshold  # rounding at the threshold itself
        idx, scores = idx[ok], scores[ok]
        regs = outs[self._reg].reshape(len(self.anchors), -1)[idx]
        if len(idx) <= _FEW:
            return self._few(regs, self.anchors[idx], scores, rs)
        pts = regs.reshape(len(idx), -1, 2) / self.input_size
        anchors = self.anchors[idx]
        pts[:, 0] += anchors
        pts[:, 2:] += anchors[:, None, :]
        boxes = cxcywh_to_xyxy(np.concatenate([pts[:, 0], pts[:, 1]], axis=1))
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, kps, sc = boxes[valid], pts[valid, 2:].reshape(int(valid.sum()), -1), scores[valid]
        clusters = weighted_nms(boxes, sc, self._iou(), self.opts.max_detections, kps)
        label = label_for(self.labels, 0)
        return Result(
            task="detection",
            detections=tuple(make_detection(label, 0, score, box, rs, ext) for box, score, ext in clusters),
        )

    def _few(self, regs: np.ndarray, anchors: np.ndarray, scores: np.ndarray, rs: Resize) -> Result:
        """The usual frame: few candidates, decoded as Python floats (the same steps as above)."""
        size = float(self.input_size)
        boxes, kps, sc = [], [], []
        for r, (ax, ay), s in zip(regs.tolist(), anchors.tolist(), scores.tolist(), strict=True):
            cx, cy, half_w, half_h = r[0] / size + ax, r[1] / size + ay, r[2] / size / 2, r[3] / size / 2
            box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
            if not (box[2] > box[0] and box[3] > box[1]):  # (as above: no area, or not a number)
                continue
            boxes.append(box)
            kps.append([v / size + (ay if k % 2 else ax) for k, v in enumerate(r[4:])])
            sc.append(s)
        clusters = weighted_nms_few(boxes, sc, self._iou(), self.opts.max_detections, kps)
        label = label_for(self.labels, 0)
        return Result(
            task="detection",
            detections=tuple(make_detection_of_floats(label, 0, s, box, rs, ext) for box, s, ext in clusters),
        )

    def _iou(self) -> float:
        return self.opts.iou_threshold if self.opts.iou_threshold else 0.3


#: Candidate boxes (after the score threshold) up to which a frame is decoded as Python floats: the demo
#: video's frames leave 2-8 at a score threshold of 0.5, 8-75 at 0.1 (short range). Each costs
#: microseconds there and clustering grows with boxes times faces, where every numpy call costs about
#: one: past a few dozen numpy's whole-array steps are the cheaper.
_FEW = 48


def _logit(p: float) -> float:
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    return float(np.log(p / (1.0 - p))) - 1e-6
