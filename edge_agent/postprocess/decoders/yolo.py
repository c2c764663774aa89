"""Raw YOLO heads (v5 with objectness, v8 and later channels first): class-aware NMS here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.postprocess.decoders.base import DecodeOptions, Decoder, ModelIO, label_for, make_detection
from edge_agent.postprocess.geometry import cxcywh_to_xyxy, nms
from edge_agent.preprocess import Resize
from edge_agent.results import Result


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

    @classmethod
    def create(cls, io: ModelIO, labels: Sequence[str] | None, opts: DecodeOptions) -> Decoder:
        return cls(io.outputs, labels, opts, io.image_size)

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        outputs = io.outputs
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
                make_detection(label_for(self.labels, int(cls[i])), int(cls[i]), float(scores[i]), xyxy[i], rs)
                for i in kept
            ),
        )
