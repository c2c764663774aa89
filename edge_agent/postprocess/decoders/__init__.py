"""Model outputs -> Result: the registry of decoders and the one factory that picks one.

Adding a decoder is one file (a `Decoder` subclass with `task`, `layout`, `matches` and, where it needs
more than the output specs, `create`) and one line in `DECODERS`. With `model.task = "auto"` the first
decoder whose `matches` recognises the model's tensors decodes it, so specific layouts come first and
`RawDecoder`, which takes anything, comes last. A configured task asks only the decoders of that task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from edge_agent.modelfile import ModelError, ModelFile, TensorSpec
from edge_agent.postprocess.decoders.base import DecodeOptions, Decoder, ModelIO, label_for
from edge_agent.postprocess.decoders.blazeface import BLAZEFACE_ANCHORS, BlazeFaceDecoder, ssd_anchors
from edge_agent.postprocess.decoders.classification import ClassificationDecoder
from edge_agent.postprocess.decoders.face_landmarks import FaceLandmarkDecoder
from edge_agent.postprocess.decoders.raw import RawDecoder
from edge_agent.postprocess.decoders.ssd import SSDPostprocessDecoder
from edge_agent.postprocess.decoders.yolo import YoloDecoder
from edge_agent.postprocess.decoders.yolo_end2end import YoloEndToEndDecoder

__all__ = [
    "BLAZEFACE_ANCHORS",
    "DECODERS",
    "BlazeFaceDecoder",
    "ClassificationDecoder",
    "DecodeOptions",
    "Decoder",
    "FaceLandmarkDecoder",
    "ModelIO",
    "RawDecoder",
    "SSDPostprocessDecoder",
    "YoloDecoder",
    "YoloEndToEndDecoder",
    "label_for",
    "make_decoder",
    "ssd_anchors",
]

log = logging.getLogger(__name__)

DECODERS: list[type[Decoder]] = [
    SSDPostprocessDecoder,
    BlazeFaceDecoder,
    YoloEndToEndDecoder,
    YoloDecoder,
    FaceLandmarkDecoder,
    ClassificationDecoder,
    RawDecoder,
]


def make_decoder(
    task: str,
    file: ModelFile,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    labels: Sequence[str] | None,
    opts: DecodeOptions,
) -> Decoder:
    """Pick the decoder for the configured task; `auto` reads it off the output tensors."""
    io = ModelIO(file, inputs, outputs)
    asked = [d for d in DECODERS if task in ("auto", d.task)]
    chosen = next((d for d in asked if d.matches(io)), None)
    if chosen is None and task == "detection":
        layouts = ", ".join(d.layout for d in asked)
        raise ModelError(
            f"{file.path}: task=detection but the outputs match no known detector layout ({layouts}): "
            f"{[o.shape for o in outputs]}"
        )
    if chosen is None:  # a configured classification or raw task decodes whatever the outputs are
        chosen = asked[0]
        if task == "classification":  # and says so: a detector read as a classifier finds nothing, silently
            log.warning("%s: task=classification, but its outputs are not one score vector (%s): the first is "
                        "read as the class scores", file.path, [list(o.shape) for o in outputs])
    return chosen.create(io, labels, opts)
