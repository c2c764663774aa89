"""Zones and masks: polygons in normalised frame coordinates, and which detections fall in them.

A detection is placed by one anchor point of its box, the bottom centre by default: where a person
or a car touches the ground, which is what a zone drawn on the floor of a scene means. A mask drops
the detections anchored inside it (a tree that moves in the wind, a television); a zone names an area
and, through its filters, which objects count as being in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Point = tuple[float, float]


def _orient(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(a: Point, b: Point, p: Point) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Whether segment ab and segment cd share a point (touching counts)."""
    o1, o2, o3, o4 = _orient(a, b, c), _orient(a, b, d), _orient(c, d, a), _orient(c, d, b)
    if ((o1 > 0 > o2) or (o1 < 0 < o2)) and ((o3 > 0 > o4) or (o3 < 0 < o4)):
        return True
    return (
        (o1 == 0 and _on_segment(a, b, c))
        or (o2 == 0 and _on_segment(a, b, d))
        or (o3 == 0 and _on_segment(c, d, a))
        or (o4 == 0 and _on_segment(c, d, b))
    )


def polygon_problem(points: Sequence[Sequence[float]]) -> str | None:
    """Why a list of points is not a usable polygon (too few points, outside [0, 1], edges that cross
    or a repeated point), or None. Pure Python: the configuration checks it before anything starts."""
    if len(points) < 3:
        return f"a polygon needs at least 3 points, got {len(points)}"
    pts: list[Point] = []
    for i, p in enumerate(points):
        if len(p) != 2:
            return f"point {i} must be [x, y], got {list(p)}"
        x, y = float(p[0]), float(p[1])
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            return f"point {i} ({x}, {y}) is outside [0, 1]: coordinates are fractions of the frame"
        pts.append((x, y))
    if len(set(pts)) != len(pts):
        return "a point is repeated"
    n = len(pts)
    edges = [(pts[i], pts[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a corner
            if segments_cross(*edges[i], *edges[j]):
                return f"edges {i} and {j} cross: the points must go round the area in order"
    area = sum(a[0] * b[1] - b[0] * a[1] for a, b in edges) / 2
    if abs(area) < 1e-9:
        return "the polygon has no area"
    return None


class Polygon:
    """A simple polygon; `contains` answers for many points at once (even-odd rule, edges inclusive
    enough for the purpose: a point on an edge may land on either side)."""

    def __init__(self, points: Sequence[Sequence[float]]):
        self.points = np.asarray(points, np.float64).reshape(-1, 2)
        self._x1, self._y1 = self.points[:, 0], self.points[:, 1]
        self._x2, self._y2 = np.roll(self._x1, -1), np.roll(self._y1, -1)
        self._set: PolygonSet | None = None

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """xy: [N, 2] normalised points -> [N] bool."""
        if self._set is None:
            self._set = PolygonSet([self])
        return self._set.contains(xy)[:, 0]


def anchor_points(boxes_norm: np.ndarray, anchor: str) -> np.ndarray:
    """[N, 4] x1 y1 x2 y2 -> [N, 2]: the point of each box that places it."""
    b = np.asarray(boxes_norm, np.float64).reshape(-1, 4)
    # as few numpy calls as the arithmetic allows, the later ones in place: this runs every frame
    if anchor == "center":
        out = b[:, :2] + b[:, 2:]
        out *= 0.5
    else:  # bottom centre
        out = b[:, 2:].copy()
        out[:, 0] += b[:, 0]
        out[:, 0] *= 0.5
    return out


@dataclass(frozen=True)
class ZoneRule:
    """A zone and which detections count in it."""

    name: str
    polygon: Polygon
    labels: frozenset[str] | None
    min_score: float
    min_area: float  # fraction of the frame
    #: consecutive frames an object must be in (or out of) the zone before it counts as entered (or left)
    inertia: int

    def admits(self, label: str, score: float, box_norm: Sequence[float]) -> bool:
        if self.labels is not None and label not in self.labels:
            return False
        area = max(0.0, box_norm[2] - box_norm[0]) * max(0.0, box_norm[3] - box_norm[1])
        return score >= self.min_score and area >= self.min_area


@dataclass(frozen=True)
class MaskRule:
    polygon: Polygon
    labels: frozenset[str] | None

    def applies(self, label: str) -> bool:
        return self.labels is None or label in self.labels


def masked(masks: Sequence[MaskRule], labels: Sequence[str], anchors: np.ndarray) -> np.ndarray:
    """[N] bool: detections whose anchor lies inside a mask that applies to their label."""
    out = np.zeros(len(labels), bool)
    for m in masks:
        inside = m.polygon.contains(anchors)
        out |= inside & np.array([m.applies(lb) for lb in labels], bool)
    return out


class PolygonSet:
    """Several polygons tested in one pass (even-odd rule), their edges laid out once: for a few points,
    the numpy calls, not the arithmetic, are what the test costs."""

    def __init__(self, polygons: Sequence[Polygon]):
        self.count = len(polygons)
        if not polygons:
            return
        self.x1 = np.concatenate([p._x1 for p in polygons])
        self.y1 = np.concatenate([p._y1 for p in polygons])
        y2 = np.concatenate([p._y2 for p in polygons])
        x2 = np.concatenate([p._x2 for p in polygons])
        self.y2 = y2
        dy = y2 - self.y1
        # The slope dx / dy of each edge, with |dy| kept from 0: an edge flatter than that is crossed by
        # no horizontal ray that the y test lets through (only one within 1e-12 of it), and no slope
        # overflows, so the test needs no errstate (a context manager per frame).
        np.copyto(dy, np.copysign(1e-12, dy), where=np.abs(dy) < 1e-12)
        self.slope = (x2 - self.x1) / dy
        self.starts = np.cumsum([0] + [len(p._x1) for p in polygons[:-1]])

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """[N, 2] points -> [N, P] bool."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if not len(xy) or not self.count:
            return np.zeros((len(xy), self.count), bool)
        x, y = xy[:, :1], xy[:, 1:]
        across = y - self.y1
        across *= self.slope
        across += self.x1
        crossing = (self.y1 > y) != (self.y2 > y)
        crossing &= x < across
        return np.logical_xor.reduceat(crossing, self.starts, axis=1)


def inside_any(polygons: Sequence[Polygon], xy: np.ndarray) -> np.ndarray:
    """[N, 2] points x polygons -> [N, P] bool."""
    return PolygonSet(polygons).contains(xy)


def in_zones(
    zones: Sequence[ZoneRule],
    labels: Sequence[str],
    scores: Sequence[float],
    boxes_norm: np.ndarray,
    anchors: np.ndarray,
    shapes: PolygonSet | None = None,
) -> list[list[str]]:
    """Per detection, the zones it is geometrically in and admitted by (before inertia). shapes: the
    zones' polygons laid out once (built here when not given)."""
    out: list[list[str]] = [[] for _ in labels]
    if not zones or not len(labels):
        return out
    inside = (shapes or PolygonSet([z.polygon for z in zones])).contains(anchors)
    at, which = inside.nonzero()
    filtered = [z.labels is not None or z.min_score > 0 or z.min_area > 0 for z in zones]  # zones with filters
    rows: list[list[float]] | None = None
    for i, k in zip(at.tolist(), which.tolist(), strict=True):  # plain ints: this runs per object per frame
        z = zones[k]
        if filtered[k]:
            if rows is None:
                rows = np.asarray(boxes_norm, np.float64).reshape(-1, 4).tolist()
            if not z.admits(labels[i], float(scores[i]), rows[i]):
                continue
        out[i].append(z.name)
    return out
