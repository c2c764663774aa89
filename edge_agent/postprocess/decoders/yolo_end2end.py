"""End-to-end YOLO detectors: one `[1, N, 6]` tensor of finished detections (x1, y1, x2, y2, score, class),
with a pose model's keypoints after those six.

YOLOv10 and YOLO26 are trained to give one box per object and export that way by default; a YOLOv8
or YOLO11 exported with `nms=True` ends in the same tensor, its NMS inside the model. N is the
export's `max_det` (300 unless set), every row a detection, the best first, those past what was
found scored near 0. Such a tensor also fits a raw YOLO head's shape (`[1, N, 5+C]` with one
class): read as one, its class index became a probability and its corners a centre and a size, and
the fruit photo came out as "bicycles" scored 83. What tells them apart is N: a raw head has one row
per grid cell of its strides for the input's size (three with v5's anchors), an end-to-end one as
many as `max_det` says (`yolo.grid_points`). No NMS is run here: the model's own boxes are final,
and NMS would drop one of two objects of a class that overlap (two people in a doorway)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.postprocess.decoders.base import ModelIO, label_for, make_detection
from edge_agent.postprocess.decoders.yolo import YoloHead, grid_points, keypoints_of
from edge_agent.preprocess import Resize
from edge_agent.results import Result

#: A pose model's rows carry its keypoints after the six: COCO's 17 of x, y and visibility unless its
#: metadata says otherwise (YOLO26-pose: [1, 300, 57]).
_COCO_POSE = (17, 3)


def _keypoints(cols: int, declared: tuple[int, int] | None) -> tuple[int, int] | None:
    """The keypoints in a row of `cols` columns: none for 6, the file's `kpt_shape` where it fits the
    rest, else COCO's 17 where the rest is 51; a row of any other width is no end-to-end model's."""
    shape = declared or _COCO_POSE
    return shape if cols > 6 and cols - 6 == shape[0] * shape[1] else None


class YoloEndToEndDecoder(YoloHead):
    """`[1, N, 6 (+ K * D)]`: corners (input pixels or normalised), score, class index (and a pose model's
    keypoints); already one box per object."""

    task, layout = "detection", "yolo_end2end"
    preferred_resize = "letterbox"
    input_range = (0.0, 1.0)  # pixels / 255, as YOLOs are trained (yolo.YoloDecoder)
    letterbox_fill = 114  # Ultralytics' grey bars

    def _read_head(self, input_size: tuple[int, int], keypoints: tuple[int, int] | None) -> None:
        self.cols = int(self.specs[self.head].shape[-1])
        self.keypoints = None if self.masks else _keypoints(self.cols, keypoints)

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        found = cls.head_shape(io)
        if found is None:
            return False
        _, masks, (_, rows, cols) = found
        h, w = io.image_size
        if rows < 1 or min(h, w) <= 0:
            return False
        if masks:  # a segmentation model's rows end in its mask coefficients (YOLO26-seg: [1, 300, 38])
            if cols != 6 + masks:
                return False
        elif cols != 6 and _keypoints(cols, io.file.keypoint_shape) is None:
            return False
        free, anchored = grid_points(h, w)
        return rows not in free and rows not in anchored

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        pred = np.asarray(outs[self.head]).reshape(-1, self.cols)
        scores = pred[:, 4]
        keep = (scores >= self.opts.score_threshold) & (pred[:, 5] > -0.5)  # padding rows may say class -1
        if not keep.any():
            return Result(task="detection")
        found = pred[keep].astype(np.float32)
        found = found[np.argsort(-found[:, 4], kind="stable")[: self.opts.max_detections]]
        boxes = found[:, :4]
        if float(np.max(np.abs(boxes))) > 2.0:  # pixel units of the input
            boxes = np.divide(boxes, [self.input_w, self.input_h, self.input_w, self.input_h], dtype=np.float32)
        classes = np.rint(found[:, 5]).astype(np.int64).tolist()  # a float column: 16.999 is class 17
        points = keypoints_of(found[:, 6:], self.keypoints, self.input_w, self.input_h)
        return Result(
            task="detection",
            detections=tuple(
                make_detection(label_for(self.labels, c), c, float(s), b, rs, None if points is None else points[i])
                for i, (b, s, c) in enumerate(zip(boxes, found[:, 4].tolist(), classes, strict=True))
            ),
        )
