"""What every output decoder is: dequantized float outputs (in the model's output order) and the
Resize that placed the frame into the input in, frame-pixel results out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.modelfile import ModelFile, TensorSpec
from edge_agent.preprocess import Resize, input_layout
from edge_agent.results import Detection, Result


@dataclass(frozen=True)
class DecodeOptions:
    score_threshold: float = 0.5
    iou_threshold: float = 0.45
    top_k: int = 5
    max_detections: int = 100
    #: a raw output larger than this is summarised (RawDecoder)
    raw_max_values: int = 4096


@dataclass(frozen=True)
class ModelIO:
    """What a decoder may read off a model to recognise its layout."""

    file: ModelFile
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of an image input, or (0, 0)."""
        try:
            h, w, _, _ = input_layout(self.inputs[0])
            return h, w
        except (ValueError, IndexError):
            return 0, 0


def label_for(labels: Sequence[str] | None, index: int) -> str:
    if labels is not None and 0 <= index < len(labels):
        return labels[index]
    return str(index)


def make_detection(
    label: str,
    index: int,
    score: float,
    xyxy_norm_model: np.ndarray,
    rs: Resize,
    keypoints_norm_model: np.ndarray | None = None,
) -> Detection:
    box: list[float] = rs.to_frame(xyxy_norm_model.reshape(4)).tolist()
    kps: list[list[float]] = []
    if keypoints_norm_model is not None:
        kps = rs.to_frame(keypoints_norm_model.reshape(-1, 2)).tolist()
    return _in_frame(label, index, score, box, tuple((x, y) for x, y in kps), rs)


def make_detection_of_floats(
    label: str, index: int, score: float, xyxy_norm_model: Sequence[float], rs: Resize, keypoints: Sequence[float] = ()
) -> Detection:
    """`make_detection` for a box (and keypoints x, y, x, y...) held as Python floats."""
    x1, y1 = rs.point_to_frame(xyxy_norm_model[0], xyxy_norm_model[1])
    x2, y2 = rs.point_to_frame(xyxy_norm_model[2], xyxy_norm_model[3])
    kps = tuple(rs.point_to_frame(x, y) for x, y in zip(keypoints[0::2], keypoints[1::2], strict=True))
    return _in_frame(label, index, score, [x1, y1, x2, y2], kps, rs)


def _in_frame(
    label: str, index: int, score: float, box: list[float], kps: tuple[tuple[float, float], ...], rs: Resize
) -> Detection:
    x1, y1, x2, y2 = box
    return Detection(
        label=label,
        index=index,
        score=score,
        box=(x1, y1, x2, y2),
        box_norm=(x1 / rs.frame_w, y1 / rs.frame_h, x2 / rs.frame_w, y2 / rs.frame_h),
        keypoints=kps,
    )


class Decoder(abc.ABC):
    task = "raw"
    layout = "raw"
    #: resize the layout's models were trained with
    preferred_resize = "stretch"
    #: pixel range the layout's models take as input, where its files carry no normalisation metadata
    #: (None: [-1, 1], the usual for image models)
    input_range: tuple[float, float] | None = None
    #: grey of the bars a letterbox adds, as the layout's models were trained (0: black)
    letterbox_fill = 0
    #: how many classes the outputs score, where the layout says (a labels file of another length is wrong)
    classes: int | None = None

    def __init__(self, outputs: Sequence[TensorSpec], labels: Sequence[str] | None, opts: DecodeOptions):
        self.specs = list(outputs)
        self.labels = labels
        self.opts = opts

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        """Whether the model's tensors have this decoder's layout (`task = "auto"` asks in registry order)."""
        return False

    @classmethod
    def create(cls, io: ModelIO, labels: Sequence[str] | None, opts: DecodeOptions) -> Decoder:
        return cls(io.outputs, labels, opts)

    @abc.abstractmethod
    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        """Dequantized outputs in the model's order -> frame-pixel results."""
