"""Box arithmetic shared by the decoders; pure numpy, tested apart from any model."""

from __future__ import annotations

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


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    half_w, half_h = b[..., 2] / 2, b[..., 3] / 2
    return np.stack([b[..., 0] - half_w, b[..., 1] - half_h, b[..., 0] + half_w, b[..., 1] + half_h], axis=-1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
