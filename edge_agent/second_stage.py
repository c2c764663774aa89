"""A second model on the crops of tracked objects: a classifier, a landmark model or another detector.

It runs once per track per `interval_s`, not on every frame, on a crop of the frame around the object
(grown by `margin`, square where the model wants it); its result is mapped back to frame pixels and
attached to the track, so every later prediction of that track and its events carry it. The model is
loaded when the pipeline starts, and refused there when its input cannot take an image. A failure at
run time disables the second stage alone (the scene stage reports why); detection goes on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import ConfigError, RuntimeConfig, SecondStageConfig
from edge_agent.engine import ModelPool
from edge_agent.model import Model, default_model_path, misfit
from edge_agent.modelfile import ModelError
from edge_agent.results import Result

log = logging.getLogger(__name__)


def crop_box(
    box: tuple[float, float, float, float], frame_w: int, frame_h: int, margin: float, square: bool
) -> tuple[int, int, int, int]:
    """The crop around a box, in whole pixels inside the frame."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if square:
        w = h = max(w, h)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = w * (1 + 2 * margin) / 2, h * (1 + 2 * margin) / 2
    return (
        max(0, int(cx - half_w)),
        max(0, int(cy - half_h)),
        min(frame_w, int(np.ceil(cx + half_w))),
        min(frame_h, int(np.ceil(cy + half_h))),
    )


def summary(result: Result, ox: float, oy: float, keypoints: bool) -> dict[str, Any]:
    """The result in frame pixels (the crop's offset added back), as it goes into events."""
    if result.task == "classification":
        return {"task": "classification", "classes": [c.as_dict() for c in result.classes]}
    if result.task == "detection":
        dets = []
        for d in result.detections:
            doc: dict[str, Any] = {
                "label": d.label,
                "score": round(d.score, 5),
                "box": [round(d.box[0] + ox, 1), round(d.box[1] + oy, 1), round(d.box[2] + ox, 1),
                        round(d.box[3] + oy, 1)],
            }
            if keypoints and d.keypoints:
                doc["keypoints"] = [[round(x + ox, 1), round(y + oy, 1)] for x, y in d.keypoints]
            dets.append(doc)
        return {"task": "detection", "detections": dets}
    return {"task": "raw", "outputs": [o.as_dict() for o in result.outputs]}


class SecondStage:
    def __init__(self, cfg: SecondStageConfig, rt: RuntimeConfig, state_dir: Path | None, pool: ModelPool | None):
        self.cfg = cfg
        self.labels = set(cfg.labels)
        path = cfg.model.path or default_model_path()
        why = misfit(path, signal=False)
        if why is not None:
            raise ConfigError(f"scene.second_stage.model: {path} {why}, so it cannot take crops")
        try:
            self.model = Model(cfg.model, rt, state_dir, pool=pool)
        except ModelError as err:
            raise ConfigError(f"scene.second_stage.model: {err}") from None
        self.runs = 0
        self.ms_total = 0.0
        self.error: str | None = None

    @property
    def name(self) -> str:
        return self.model.name

    def wants(self, label: str) -> bool:
        return label in self.labels

    def run(self, image: np.ndarray, box: tuple[float, float, float, float], ts: float) -> dict[str, Any] | None:
        """The result for one object, or None when its box is too small to crop."""
        h, w = image.shape[:2]
        if min(box[2] - box[0], box[3] - box[1]) < self.cfg.min_size:
            return None
        x1, y1, x2, y2 = crop_box(box, w, h, self.cfg.margin, self.cfg.square)
        if x2 - x1 < 2 or y2 - y1 < 2:
            return None
        t0 = time.perf_counter()
        inf = self.model.infer(np.ascontiguousarray(image[y1:y2, x1:x2]))
        ms = (time.perf_counter() - t0) * 1e3
        self.runs += 1
        self.ms_total += ms
        return {
            "model": self.model.name,
            "ts": round(ts, 6),
            "crop": [x1, y1, x2, y2],
            "inference_ms": round(ms, 2),
            **summary(inf.result, x1, y1, keypoints=True),
        }

    def health(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "state": "disabled" if self.error else "running",
            "error": self.error,
            "runs": self.runs,
            "mean_ms": round(self.ms_total / self.runs, 2) if self.runs else None,
        }

    def close(self) -> None:
        self.model.close()
