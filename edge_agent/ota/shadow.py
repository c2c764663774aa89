"""Shadow evaluation: a model on probation runs beside the model that serves, on the same frames, and
is kept only if it agrees with it closely enough.

While it is judged the candidate publishes nothing: the serving model's results go out as before, so
a model that sees nothing, or sees faces everywhere, never reaches a consumer. What the two models
found on each frame is compared (detections matched one-to-one by IoU and label, the top class, or
a relative output distance for raw models) and the figures are published in `model/state` and
health while probation runs, so an operator sees how close the new model is before it takes over.

The pure functions here are the measure; `Probation` keeps the tally and gives the verdict.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_agent.postprocess.geometry import iou_one_to_many
from edge_agent.results import Detection, Result
from edge_agent.tracker import assign

#: compared frames a verdict on agreement needs; fewer (a source that stopped) and agreement is not judged
MIN_COMPARED = 5


def input_signature(sample: np.ndarray) -> bytes:
    """About 2048 evenly spaced values of a frame or window: enough to tell two inputs apart, cheap to take."""
    flat = np.ascontiguousarray(sample).reshape(-1)
    return flat[:: max(1, flat.size // 2048)].tobytes()


def detection_agreement(a: Sequence[Detection], b: Sequence[Detection], iou_min: float) -> tuple[float, int]:
    """F1 of the two sets of detections, matched one-to-one (same label, IoU >= iou_min, the pairing
    that maximises overlap): 1.0 when both found the same objects, and when both found nothing."""
    if not a and not b:
        return 1.0, 0
    if not a or not b:
        return 0.0, 0
    boxes_b = np.array([d.box_norm for d in b], np.float64)
    labels_b = np.array([d.label for d in b])
    cost = np.ones((len(a), len(b)))
    for i, d in enumerate(a):
        ious = iou_one_to_many(np.array(d.box_norm, np.float64), boxes_b)
        cost[i] = np.where(labels_b == d.label, 1.0 - ious, 1.0)
    matched = len(assign(cost, 1.0 - iou_min + 1e-9))
    return 2.0 * matched / (len(a) + len(b)), matched


def class_agreement(a: Result, b: Result) -> float:
    """1.0 when the top class is the same (or neither model names one), else 0.0."""
    top_a = max(a.classes, key=lambda c: c.score).label if a.classes else None
    top_b = max(b.classes, key=lambda c: c.score).label if b.classes else None
    return 1.0 if top_a == top_b else 0.0


def output_agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """1 - the relative L2 distance of the outputs (averaged over outputs, floored at 0): 1.0 for
    identical outputs, 0.0 for outputs as far apart as they are large, or of other shapes."""
    if len(a) != len(b) or not a:
        return 0.0
    scores = []
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return 0.0
        xf, yf = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        scale = max(float(np.linalg.norm(xf)), float(np.linalg.norm(yf)), 1e-12)
        scores.append(max(0.0, 1.0 - float(np.linalg.norm(xf - yf)) / scale))
    return float(np.mean(scores))


def agreement(ref: Result, cand: Result, iou_min: float) -> float:
    """How far the candidate's result on a frame agrees with the serving model's, 0..1."""
    if ref.task != cand.task:
        return 0.0
    if ref.task == "detection":
        return detection_agreement(ref.detections, cand.detections, iou_min)[0]
    if ref.task == "classification":
        return class_agreement(ref, cand)
    return output_agreement(
        [np.asarray(o.values) for o in ref.outputs], [np.asarray(o.values) for o in cand.outputs]
    )


@dataclass
class Probation:
    """What a new model must show, beside the serving one, before it takes over."""

    sha256: str
    need: int
    until: float
    #: agreement with the serving model the candidate needs (mean over compared frames)
    min_agreement: float
    #: frames (or windows) the candidate ran on, with the serving model's result to compare
    seen: int = 0
    errors: int = 0
    last_error: str | None = None
    #: frames offered while the candidate was still busy with an earlier one (not compared)
    skipped: int = 0
    latencies: list[float] = field(default_factory=list)
    agreements: list[float] = field(default_factory=list)
    fingerprints: set[bytes] = field(default_factory=set)
    #: samples of the inputs: identical outputs are degenerate only when the inputs differed
    inputs: set[bytes] = field(default_factory=set)
    nonfinite: int = 0

    def observe(self, outputs: Sequence[np.ndarray], inference_ms: float, input_sig: bytes, agreed: float) -> None:
        """One frame the candidate ran on: its raw outputs, time, the input's signature, its agreement."""
        self.seen += 1
        self.latencies.append(inference_ms)
        self.agreements.append(agreed)
        if len(self.fingerprints) < 4:
            self.fingerprints.add(b"".join(np.ascontiguousarray(o).tobytes()[:4096] for o in outputs))
        if len(self.inputs) < 4:
            self.inputs.add(input_sig)
        if any(not np.isfinite(o.astype(np.float64)).all() for o in outputs):
            self.nonfinite += 1

    def error(self, why: str) -> None:
        self.errors += 1
        self.last_error = why

    @property
    def agreement(self) -> float | None:
        return float(np.mean(self.agreements)) if self.agreements else None

    def figures(self) -> dict[str, object]:
        """What `model/state` and health show while (and after) the candidate is judged."""
        mean = self.agreement
        return {
            "shadow": {
                "compared": self.seen,
                "skipped": self.skipped,
                "agreement": None if mean is None else round(mean, 4),
                # the worst tenth of frames: a model that agrees on average can still miss in a few scenes
                "agreement_p10": round(float(np.percentile(self.agreements, 10)), 4) if self.agreements else None,
                "min_agreement": self.min_agreement,
                "inference_p50_ms": round(float(np.median(self.latencies)), 3) if self.latencies else None,
                "errors": self.errors,
            }
        }

    def verdict(self, max_ms: float, now: float | None = None) -> str | None:
        """None: still running; "" passed; else why it failed."""
        if self.errors:
            return f"{self.errors} inference error(s) during probation (last: {self.last_error})"
        if self.nonfinite:
            return f"non-finite outputs in {self.nonfinite} inference(s)"
        if self.seen < self.need and (time.monotonic() if now is None else now) <= self.until:
            return None
        if self.latencies:
            p95 = float(np.percentile(self.latencies, 95))
            if p95 > max_ms:
                return f"inference p95 {p95:.1f} ms exceeds the {max_ms:g} ms budget"
        # one answer for inputs that differed: the model ignores its input. A still scene (a fixed
        # camera at night, one image) gives identical inputs, and identical outputs are right then.
        if self.seen >= MIN_COMPARED and len(self.fingerprints) == 1 and len(self.inputs) > 1:
            return "degenerate outputs: identical for every frame although the frames differed"
        mean = self.agreement
        if self.seen >= MIN_COMPARED and mean is not None and mean < self.min_agreement:
            return (
                f"agreement {mean:.2f} with the serving model is below the {self.min_agreement:.2f} required "
                f"({self.seen} frames compared)"
            )
        return ""
