"""Model outputs -> Result, one decoder per output layout people actually deploy.

Each decoder receives dequantized float outputs (in the model's output order) and the Resize
that placed the frame into the input, and returns frame-pixel results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.postprocess.geometry import cxcywh_to_xyxy, nms, sigmoid, softmax, weighted_nms
from edge_agent.preprocess import Resize
from edge_agent.results import ClassScore, Detection, RawOutput, Result


@dataclass(frozen=True)
class DecodeOptions:
    score_threshold: float = 0.5
    iou_threshold: float = 0.45
    top_k: int = 5
    max_detections: int = 100


def label_for(labels: Sequence[str] | None, index: int) -> str:
    if labels is not None and 0 <= index < len(labels):
        return labels[index]
    return str(index)


def _detection(
    label: str,
    index: int,
    score: float,
    xyxy_norm_model: np.ndarray,
    rs: Resize,
    keypoints_norm_model: np.ndarray | None = None,
) -> Detection:
    box = rs.to_frame(xyxy_norm_model.reshape(4))
    x1, y1, x2, y2 = (float(v) for v in box)
    kps: tuple[tuple[float, float], ...] = ()
    if keypoints_norm_model is not None:
        pts = rs.to_frame(keypoints_norm_model.reshape(-1, 2))
        kps = tuple((float(x), float(y)) for x, y in pts)
    return Detection(
        label=label,
        index=index,
        score=score,
        box=(x1, y1, x2, y2),
        box_norm=(x1 / rs.frame_w, y1 / rs.frame_h, x2 / rs.frame_w, y2 / rs.frame_h),
        keypoints=kps,
    )


class Decoder:
    task = "raw"
    layout = "raw"
    #: resize the layout's models were trained with
    preferred_resize = "stretch"

    def __init__(self, outputs: Sequence[TensorSpec], labels: Sequence[str] | None, opts: DecodeOptions):
        self.specs = list(outputs)
        self.labels = labels
        self.opts = opts

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        raise NotImplementedError


class RawDecoder(Decoder):
    """Numeric outputs as they are (dequantized), for sensor and custom models."""

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        return Result(
            task="raw",
            outputs=tuple(
                RawOutput(s.name, tuple(int(d) for d in o.shape), [float(v) for v in o.reshape(-1)])
                for s, o in zip(self.specs, outs, strict=True)
            ),
        )


class ClassificationDecoder(Decoder):
    task = layout = "classification"

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
            dets.append(
                _detection(label_for(self.labels, idx), idx, score, np.array([xmin, ymin, xmax, ymax], np.float32), rs)
            )
        dets.sort(key=lambda d: -d.score)
        return Result(task="detection", detections=tuple(dets[: self.opts.max_detections]))


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

    @staticmethod
    def matches(outputs: Sequence[TensorSpec], input_size: int) -> bool:
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
                _detection(label_for(self.labels, 0), 0, score, box, rs, ext) for box, score, ext in clusters
            ),
        )


def _logit(p: float) -> float:
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    return float(np.log(p / (1.0 - p))) - 1e-6


class YoloDecoder(Decoder):
    """Raw YOLO heads: [1, 4+C, N] (v8 and later, channels first) or [1, N, 5+C] (v5, objectness)."""

    task, layout = "detection", "yolo"
    preferred_resize = "letterbox"

    def __init__(
        self,
        outputs: Sequence[TensorSpec],
        labels: Sequence[str] | None,
        opts: DecodeOptions,
        input_size: tuple[int, int],
    ):
        super().__init__(outputs, labels, opts)
        _, a, b = self.specs[0].shape
        self.channels_first = a < b
        cols = a if self.channels_first else b
        n_labels = len(labels) if labels else None
        self.objectness = n_labels == cols - 5 if n_labels else (not self.channels_first)
        self.input_w, self.input_h = input_size[1], input_size[0]

    @staticmethod
    def matches(outputs: Sequence[TensorSpec]) -> bool:
        if len(outputs) != 1 or len(outputs[0].shape) != 3:
            return False
        _, a, b = outputs[0].shape
        return min(a, b) >= 5 and max(a, b) >= 4 * min(a, b)

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        pred = outs[0][0]
        if self.channels_first:
            pred = pred.T
        boxes = pred[:, :4].astype(np.float32)
        if self.objectness:
            cls_scores = pred[:, 5:] * pred[:, 4:5]
        else:
            cls_scores = pred[:, 4:]
        cls = np.argmax(cls_scores, axis=1)
        scores = cls_scores[np.arange(len(cls)), cls]
        keep = scores >= self.opts.score_threshold
        if not keep.any():
            return Result(task="detection")
        boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
        if float(np.max(np.abs(boxes))) > 2.0:  # pixel units of the input
            boxes = boxes / np.array([self.input_w, self.input_h, self.input_w, self.input_h], np.float32)
        xyxy = cxcywh_to_xyxy(boxes)
        # class-aware NMS in one pass: shift each class to its own region
        shifted = xyxy + cls[:, None].astype(np.float32) * 4.0
        kept = nms(shifted, scores, self.opts.iou_threshold, self.opts.max_detections)
        return Result(
            task="detection",
            detections=tuple(
                _detection(label_for(self.labels, int(cls[i])), int(cls[i]), float(scores[i]), xyxy[i], rs)
                for i in kept
            ),
        )
