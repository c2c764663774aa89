"""Raw YOLO heads (v5 with objectness, v8 and later channels first, and their pose and segmentation
heads): class-aware NMS here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.postprocess.decoders.base import DecodeOptions, Decoder, ModelIO, label_for, make_detection
from edge_agent.postprocess.geometry import cxcywh_to_xyxy, nms
from edge_agent.preprocess import Resize
from edge_agent.results import Result

#: The output strides of YOLO heads: P3-P5 (most), with P6 (the "6" models at 1280), and with P2 (small objects).
_STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64), (4, 8, 16, 32))


def grid_points(height: int, width: int) -> tuple[frozenset[int], frozenset[int]]:
    """The rows a raw YOLO head has for an input of this size: one per grid cell of its strides (v8 and
    later, anchor-free), and three per cell (v5 and v7, three anchors each). A row count that is neither
    is no raw head's: an end-to-end model's `max_det` (yolo_end2end)."""
    free = frozenset(
        sum(-(-height // s) * -(-width // s) for s in strides) for strides in _STRIDE_SETS
    )
    return free, frozenset(3 * n for n in free)


#: The classes of COCO, which most YOLO files that come without labels were trained on.
_COCO = 80
#: COCO's body keypoints, of x, y and visibility: what a pose model without metadata most likely has.
_COCO_POSE = (17, 3)


def pose_shape(
    extra: int, n_labels: int | None, declared: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The keypoints (count, values each) in the `extra` columns a YOLO head has beside its box and score
    columns (4 + classes, or 6 end-to-end), or None for a plain detector. The file's own word (an
    Ultralytics pose export's `kpt_shape`) first; else what labels leave over, in threes (x, y,
    visibility), past one column per class, where COCO's 80 classes do not explain them (labels that
    miscount those would make a pose model of a plain detector); else, with no labels, the one person
    class and COCO's 17 keypoints where the columns are exactly those. Anything else is read as
    classes, as before."""
    if declared is not None:
        k, d = declared
        return declared if 0 < k * d < extra else None
    if n_labels:
        rest = extra - n_labels
        return (rest // 3, 3) if rest > 0 and rest % 3 == 0 and _COCO not in (extra, extra - 1) else None
    k, d = _COCO_POSE
    return _COCO_POSE if extra == 1 + k * d else None


def head_and_masks(outputs: Sequence[TensorSpec]) -> tuple[int, int] | None:
    """Which output is a YOLO's head, and how many mask coefficients its rows end in: (index, 0) for one
    3-D output; for a segmentation model's two (the head, and its [1, H, W, M] mask prototypes, in either
    order), the head's index and M. None for anything else. The masks themselves are not made: a box,
    its class and score are what zones, tracks and events use, and each row's M coefficients would
    otherwise be read as M more classes."""
    dims = [len(s.shape) for s in outputs]
    if dims == [3]:
        return 0, 0
    if sorted(dims) != [3, 4]:
        return None
    head = dims.index(3)
    protos = outputs[1 - head].shape
    m = min(protos[1:])  # NHWC after conversion ([1, 160, 160, 32]); NCHW where it was kept
    return head, int(m)


class YoloHead(Decoder):
    """What the YOLO layouts (raw and end to end) share: made with the input's size and the keypoints the
    file names, and found among the outputs as one head, beside a segmentation model's prototypes."""

    def __init__(
        self,
        outputs: Sequence[TensorSpec],
        labels: Sequence[str] | None,
        opts: DecodeOptions,
        input_size: tuple[int, int],
        keypoints: tuple[int, int] | None = None,
    ):
        super().__init__(outputs, labels, opts)
        self.input_h, self.input_w = input_size
        #: which output is the head, and the mask coefficients its rows end in (a segmentation model's)
        self.head, self.masks = head_and_masks(self.specs) or (0, 0)
        self._read_head(input_size, keypoints)

    def _read_head(self, input_size: tuple[int, int], keypoints: tuple[int, int] | None) -> None:
        """What the layout reads off its head's shape, once."""

    @classmethod
    def create(cls, io: ModelIO, labels: Sequence[str] | None, opts: DecodeOptions) -> Decoder:
        return cls(io.outputs, labels, opts, io.image_size, io.file.keypoint_shape)

    @staticmethod
    def head_shape(io: ModelIO) -> tuple[int, int, tuple[int, ...]] | None:
        """(index, mask coefficients per row, shape) of the head, or None where the outputs hold none."""
        found = head_and_masks(io.outputs)
        if found is None:
            return None
        head, masks = found
        return head, masks, tuple(io.outputs[head].shape)


class YoloDecoder(YoloHead):
    """Raw YOLO heads: [1, 4+C, N] (v8 and later, channels first) or [1, N, 5+C] (v5, objectness)."""

    task, layout = "detection", "yolo"
    preferred_resize = "letterbox"
    #: Ultralytics' YOLOs (v5 to 26), YOLOv7 and YOLOv10 are trained on pixels / 255; the [-1, 1] other image
    #: models take, given to a float YOLO with no normalisation in its file, shifted and squashed every input.
    #: (YOLOX takes 0-255 as they are: model.mean = [0], model.std = [1].)
    input_range = (0.0, 1.0)
    #: the grey Ultralytics' letterbox pads with, in training and in its own inference
    letterbox_fill = 114

    def _read_head(self, input_size: tuple[int, int], keypoints: tuple[int, int] | None) -> None:
        masks = self.masks
        _, a, b = self.specs[self.head].shape
        self.channels_first = a < b
        cols, rows = (a, b) if self.channels_first else (b, a)
        n_labels = len(self.labels) if self.labels else None
        free, anchored = grid_points(*input_size) if min(input_size) > 0 else (frozenset(), frozenset())
        #: a pose head (v8 and later: box, a score per class, then each keypoint's values)
        self.keypoints = None if masks else pose_shape(cols - 4, n_labels, keypoints)
        self.classes_end = cols - masks - (self.keypoints[0] * self.keypoints[1] if self.keypoints else 0)
        if self.keypoints is not None or masks:
            self.objectness = False
        elif n_labels in (cols - 4, cols - 5):
            self.objectness = n_labels == cols - 5
        elif _COCO in (cols - 4, cols - 5):  # no labels that count the classes: COCO's 80, the usual model
            self.objectness = cols - 5 == _COCO
        elif rows in free or rows in anchored:  # else one row per grid cell (v8) or three (v5's anchors)
            self.objectness = rows in anchored
        else:
            self.objectness = not self.channels_first
        self.classes = self.classes_end - (5 if self.objectness else 4)

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        found = cls.head_shape(io)
        if found is None:
            return False
        _, masks, (_, a, b) = found
        return min(a, b) >= 5 + masks and max(a, b) >= 4 * min(a, b)

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        pred = outs[self.head][0]
        if self.channels_first:
            pred = pred.T
        boxes = pred[:, :4].astype(np.float32)
        if self.objectness:
            cls_scores = pred[:, 5:] * pred[:, 4:5]
        else:
            cls_scores = pred[:, 4 : self.classes_end]
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
        points = (None if self.keypoints is None  # a plain detector's frame copies no rows for it
                  else keypoints_of(pred[keep][:, self.classes_end :], self.keypoints, self.input_w, self.input_h))
        return Result(
            task="detection",
            detections=tuple(
                make_detection(label_for(self.labels, int(cls[i])), int(cls[i]), float(scores[i]), xyxy[i], rs,
                               None if points is None else points[i])
                for i in kept
            ),
        )


def keypoints_of(
    values: np.ndarray, shape: tuple[int, int] | None, input_w: int, input_h: int
) -> np.ndarray | None:
    """[N, K, 2] keypoints (x, y, normalised to the input) from a pose head's [N, K * D] columns, or None
    for a plain detector. The visibility (D = 3) is not kept: a keypoint's place in the list says which
    it is, and one the model thinks hidden is still its best guess of where. Pixels of the input, as
    some exports give them, are told from normalised ones as boxes are."""
    if shape is None:
        return None
    k, d = shape
    xy = values[:, : k * d].reshape(-1, k, d)[:, :, :2].astype(np.float32)
    if xy.size and float(np.max(np.abs(xy))) > 2.0:
        xy = np.divide(xy, [input_w, input_h], dtype=np.float32)
    return xy
