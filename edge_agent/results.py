"""Value types for what a model found; plain data that serialises to the MQTT contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ClassScore:
    label: str
    index: int
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": round(self.score, 5)}


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    index: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    box_norm: tuple[float, float, float, float]  # same, divided by frame width/height
    keypoints: tuple[tuple[float, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "label": self.label,
            "index": self.index,
            "score": round(self.score, 5),
            "box": [round(v, 1) for v in self.box],
            "box_norm": [round(v, 5) for v in self.box_norm],
        }
        if self.keypoints:
            d["keypoints"] = [[round(x, 1), round(y, 1)] for x, y in self.keypoints]
        return d


@dataclass(frozen=True, slots=True)
class RawOutput:
    name: str
    shape: tuple[int, ...]
    values: list[float]
    #: (min, max, mean) in place of the values, of an output too large to publish value by value
    summary: tuple[float | None, float | None, float | None] | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.summary is not None:
            lo, hi, mean = self.summary
            return {"name": self.name, "shape": list(self.shape), "values_omitted": True, "min": lo, "max": hi,
                    "mean": mean}
        return {"name": self.name, "shape": list(self.shape), "values": self.values}


@dataclass(frozen=True, slots=True)
class Result:
    task: str  # classification | detection | raw
    classes: tuple[ClassScore, ...] = field(default=())
    detections: tuple[Detection, ...] = field(default=())
    outputs: tuple[RawOutput, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        if self.task == "classification":
            return {"classes": [c.as_dict() for c in self.classes]}
        if self.task == "detection":
            return {"detections": [d.as_dict() for d in self.detections]}
        return {"outputs": [o.as_dict() for o in self.outputs]}
