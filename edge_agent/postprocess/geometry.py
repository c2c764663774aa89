"""Box arithmetic shared by the decoders; pure numpy, tested apart from any model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [4] xyxy box against [N, 4] boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_out: int) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_out:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_out: int, extra: np.ndarray | None = None
) -> list[tuple[np.ndarray, float, np.ndarray | None]]:
    """MediaPipe's blending suppression: overlapping boxes are averaged, weighted by score.

    Returns (box, score, blended extra) per kept cluster; `extra` is e.g. keypoints [N, K].
    """
    order = np.argsort(-scores, kind="stable")
    out: list[tuple[np.ndarray, float, np.ndarray | None]] = []
    while order.size and len(out) < max_out:
        top = int(order[0])
        overlap = iou_one_to_many(boxes[top], boxes[order])
        members = order[overlap > iou_threshold]
        members = members if members.size else order[:1]
        w = scores[members][:, None]
        total = float(w.sum())
        box = (boxes[members] * w).sum(axis=0) / total
        ext = (extra[members] * w).sum(axis=0) / total if extra is not None else None
        out.append((box, float(scores[top]), ext))
        order = order[overlap <= iou_threshold]
    return out


def weighted_nms_few(
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    iou_threshold: float,
    max_out: int,
    extra: Sequence[Sequence[float]],
) -> list[tuple[list[float], float, list[float]]]:
    """`weighted_nms` on a few boxes held as Python floats (and lists of extra values, keypoints say).

    A decoder runs on every frame, where a face leaves a handful of candidate boxes: there each numpy call
    costs more than its arithmetic, and on a thread beside others each is a chance to lose the interpreter
    lock. The work grows with boxes times clusters, so many boxes go to `weighted_nms` instead."""
    left = sorted(range(len(scores)), key=lambda i: -scores[i])
    out: list[tuple[list[float], float, list[float]]] = []
    while left and len(out) < max_out:
        top = left[0]
        tx1, ty1, tx2, ty2 = boxes[top]
        area = (tx2 - tx1) * (ty2 - ty1)
        members: list[int] = []
        rest: list[int] = []
        for i in left:
            x1, y1, x2, y2 = boxes[i]
            inter = max(min(tx2, x2) - max(tx1, x1), 0.0) * max(min(ty2, y2) - max(ty1, y1), 0.0)
            union = area + (x2 - x1) * (y2 - y1) - inter
            (members if union > 0 and inter / max(union, 1e-12) > iou_threshold else rest).append(i)
        if not members:  # a box of no area overlaps nothing, itself included
            members, rest = [top], left[1:]
        total = sum(scores[i] for i in members)
        box = [sum(scores[i] * boxes[i][k] for i in members) / total for k in range(4)]
        ext = [sum(scores[i] * extra[i][k] for i in members) / total for k in range(len(extra[top]))]
        out.append((box, scores[top], ext))
        left = rest
    return out


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    half_w, half_h = b[..., 2] / 2, b[..., 3] / 2
    return np.stack([b[..., 0] - half_w, b[..., 1] - half_h, b[..., 0] + half_w, b[..., 1] + half_h], axis=-1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
