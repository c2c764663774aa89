"""Multi-object tracking: one stable id per object while it moves, across short misses and crossings.

The association is ByteTrack's (Zhang et al., 2022): detections are matched to the tracks' predicted
boxes by IoU with an optimal assignment, confident detections first, then the remaining weak ones
against the tracks still unmatched, so an object that fades for a few frames (partly hidden, motion
blur) keeps its track instead of ending and starting again. The optimal assignment is `lap.lapjv`
(Jonker-Volgenant), the solver ByteTrack itself uses: a small maintained C extension with wheels for
x86-64 and aarch64, no further dependencies and no measurable memory, where SciPy's
`linear_sum_assignment` would add about 48 MB to the agent's RSS. The motion model is a constant
velocity of the box centre, which carries a track through a crossing and a brief disappearance: the
slope of a least-squares line through the centres of its recent boxes over time (each box's weight
halved every 0.5 s), learnt only from boxes that kept their size (within a third from one frame to the
next at 15 fps, as much per second at a lower frame rate). A detector's box jitters by a few
pixels from frame to frame; a velocity smoothed from frame-to-frame differences (this tracker's
earlier alpha-beta filter, the form a constant-velocity Kalman filter such as ByteTrack's settles
into) carries that jitter into where a hidden object is looked for, and sent hidden cats' tracks off
often enough to cost ID switches in crossings drawn at random (`benchmarks/bench_tracking.py --random
16 --seed 1-16`: 20 switches in 256 crossings before, 4 with the fit alone, 0 with the position
held back beside a neighbour, below). The fit is seven running sums, no history kept.

What ByteTrack leaves to chance is a crossing, where a detector without appearance features reports
boxes of the pair: one round both, the front one's box widened by the one behind, one box for two
while one is hidden. Taken by a track, such a box drags it to the middle of the pair and lets it
leave with the other object, and which track takes it hangs on a score or an IoU a hair either side
of a threshold (the same SSD puts a partly hidden cat at 0.48 on arm64 and 0.50 on x86-64). So,
written by hand because no tracking library does it: a box that holds two tracked objects and is
larger than either, or that two tracks want alike and have no other box for, goes to neither (both
coast on their motion until they are seen apart); a track beside a neighbour (two candidate boxes, or
its box overlapping another track's predicted box, which a partly hidden object's box does as the
one in front comes over it) learns its position but not its size or velocity from that box, and
where that box changed size (widened over the pair, or cut by the one in front), or where the track
found no box the frame before (its object hidden behind the other), only 0.3 of the way from its
prediction to the box's centre, which is the pair's more than its own; and a box round two
confident ones starts no track. The same detector, on an object none of this was tuned on (an apple
cut from a photo, `--kinds apple` in that benchmark), also boxes what shows of one object beside its
whole box, the object again with some of its neighbour, a box over parts of both, and the visible
part of one coming out from behind the other, at times under another label: none of these starts a
track (each took its own and cost two ID switches: 106 in 128 apple crossings drawn at random
before, 4 after; docs/scenes.md), nor does a box over the facing halves of two (most of it inside
their two boxes together, less than half of either); a faint box two tracks fit alike goes to
neither, and so does a faint box round a confident one that went to neither (a coasting track took
it in the second round, where it had no rival); and a loose box round a track's object weighs half
only where the object's tighter box is inside it. An object coming into view boxed twice in its first
frame, whole and again with what is beside or below it, starts one track, on the more confident box
(with no track there yet, the rules for a box a track took do not see the other). And a track whose
object the detector boxes only faintly, whole, while a second object of its kind comes into view
beside it and is boxed confidently, alone or with the first in one box, keeps the faint box: ByteTrack
hands it the confident one first, which dragged it onto the newcomer and left that one no track.

Labels tell objects apart only where the detector's labels can: a box whose label none of the tracks
near it has leaves them all of its kind, so the checks above still see it (the SSD names a cup on grass
a cup, a traffic light or a toilet from one frame to the next, and such a box went past them to the
track it fitted a hair better: 132 ID switches in 128 cup crossings before, 8 after; docs/scenes.md);
and labels the detector gives one tracked object are one kind from then on (`_kin`): after two boxes,
or after one that is a lone track's object's own box (2 ID switches in those crossings); and a new box
of the kind of the track that took a box under another name is that track's object, not a new one
(`_owners_kind`: none left).

For tens of objects the cost is the count of numpy calls on tiny arrays, not the arithmetic, and the
code is shaped by that: per-track state is plain floats (a struct-of-arrays version measured 5-30 %
slower, side by side, twice), predicted in one loop and corrected inline; the lapjv solver runs only
when two tracks want the same detection (where each track's best detection is its own, those pairs
are already the optimum); the pair checks above run only where a track has two candidates or two
tracks want one detection, on the overlaps the IoU was computed from, in a few array operations for
all of them at once; labels are counted only once a track has been seen with a second one.

Ids count up from 1 per pipeline and are never reused while the agent runs.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import lap
import numpy as np

#: The ufuncs' reductions (ndarray.sum/min/any wrap these in Python, which costs more than the arithmetic
#: on tiny arrays), typed once: numpy 2.5's stubs match no overload for a plain `reduce(x, axis=...)`.
_sum: Callable[..., Any] = np.add.reduce
_min: Callable[..., Any] = np.minimum.reduce
_max: Callable[..., Any] = np.maximum.reduce
_any: Callable[..., Any] = np.logical_or.reduce

#: Half-life of a box centre's weight in the velocity's fit: a box this much older weighs half.
_FIT_HALF_LIFE_S = 0.5
#: Weight of a new box against the prediction (size and position): a little smoothing of jitter.
_BOX_GAIN = 0.85
_BOX_KEEP = 1 - _BOX_GAIN
#: The same for the position from a box beside a neighbour that changed size (widened over the pair, or
#: cut by the one in front), or taken by a track that found no box last frame: its centre is the pair's
#: more than the object's.
_BESIDE_GAIN = 0.3
_BESIDE_KEEP = 1 - _BESIDE_GAIN
#: IoU needed for the second (weak detection) round, as in ByteTrack.
_WEAK_IOU = 0.5
#: Area ratios (new / old) within which a box is taken to show the whole object, for the velocity, from
#: one frame to the next at 15 fps (_STEADY_DT); over a longer gap, the same change per second.
_STEADY_LO, _STEADY_HI = 0.75, 1.33
_STEADY_DT = 1.0 / 15 + 1e-3
#: ... up to a frame every this many seconds (at 2 fps and under, the bounds stop widening).
_STEADY_MAX_DT = 0.5
#: Recovery of a lost track: a detection whose centre is within this many track diagonals of the
#: predicted centre, and whose area is within _RECOVER_AREA of the track's, may continue it.
_RECOVER_DIST = 1.0
_RECOVER_AREA = (0.5, 2.0)
#: ... that far only once unseen this long; before, in proportion (unseen for a frame at 15 fps, 0.13 of
#: a diagonal: a box farther than that and not overlapping the prediction is another object, such as
#: one coming into view at the frame's edge beside an object hidden for a moment).
_RECOVER_FULL_S = 0.5
#: A detection of another label may continue a track at this fraction of its IoU (a cat the detector
#: calls a dog for one frame stays the same object); the track's label is the one seen most often.
_OTHER_LABEL = 0.5
#: A new detection with this much of a tracked object's box inside it, and _LARGER times its area,
#: encloses it.
_ENCLOSED = 0.8
_LARGER = 1.5
#: A detection holding most of two tracked objects' predicted boxes (_ENCLOSED), and this much larger
#: than the largest of them, is a box round them.
_ROUND = 1.2
#: A new box mostly inside (_ENCLOSED) a box a track took, and at least this share of its area, is a part of
#: that object, not a new one.
_PART = 0.25
#: ... and one that overlaps it at this IoU, the object again with some of its neighbour.
_DUPLICATE = 0.5
#: ... and one holding this share of each of two such boxes, a box over the pair.
_HALF = 0.5
#: ... and one with this share of its area inside two such boxes together, a box between the pair.
_BETWEEN = 0.7
#: A new box with this share of its area inside the predicted box of a confirmed track that found no box
#: is that track's object reappearing, not a new one.
_UNSEEN = 0.5
#: Boxes of another label a track takes before that label and the track's are one kind (`Tracker._kin`).
_KIN_VOTES = 2
#: ... or one, where it fits a track with no neighbour at this IoU: the object's own box, another name.
_SAME_BOX = 0.7
#: Two tracks whose only candidate is one detection, at IoUs within this ratio, both want it alike.
_ALIKE = 0.7


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, 4] x [M, 4] xyxy -> the [N, M] intersection areas, the [N, 1] areas of a, the [M] areas of b.
    Each coordinate against each (an [N, 1] column against an [M] row) rather than [N, M, 2] blocks:
    for tens of boxes the cost is the count of numpy calls, and this form needs the fewest."""
    ax1, ay1, ax2, ay2 = a[:, 0:1], a[:, 1:2], a[:, 2:3], a[:, 3:4]
    bx1, by1, bx2, by2 = b.T
    iw = np.minimum(ax2, bx2)
    iw -= np.maximum(ax1, bx1)
    ih = np.minimum(ay2, by2)
    ih -= np.maximum(ay1, by1)
    np.maximum(iw, 0.0, out=iw)
    np.maximum(ih, 0.0, out=ih)
    iw *= ih
    return iw, (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] xyxy -> [N, M] IoU."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float64)
    inter, area_a, area_b = _overlap(a, b)
    return _iou(inter, area_a, area_b, out=inter)


def _iou(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """IoU from `_overlap`'s three results; `out=inter` divides in place, where the intersections are not
    needed afterwards."""
    union = area_a + area_b
    union -= inter
    np.maximum(union, 1e-12, out=union)
    return np.divide(inter, union, out=out)


def enclosing(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] -> [N, M] bool: outer box n holds most of inner box m and is much larger."""
    if not len(outer) or not len(inner):
        return np.zeros((len(outer), len(inner)), bool)
    inter, area_out, area_in = _overlap(outer, inner)
    area_in = np.maximum(area_in, 1e-12)
    return (inter >= _ENCLOSED * area_in) & (area_out > _LARGER * area_in)


def _same(a: list[str], b: list[str]) -> np.ndarray | None:
    """[len(a), len(b)] bool: equal labels; None when every label is the same (the common case: one
    label in the scene), which spares the caller a mask of ones."""
    if len(set(a) | set(b)) <= 1:
        return None
    return np.asarray(a, dtype=object)[:, None] == np.asarray(b, dtype=object)[None, :]


def _telling(same: np.ndarray | None, near: np.ndarray) -> np.ndarray | None:
    """`same` ([tracks, detections]: equal labels) where a detection's label can tell the tracks `near`
    it apart: a detection whose label none of them has is of every one's kind. A detector that names an
    object of a kind it knows poorly one thing, then another (the SSD calls a cup on grass a cup, a
    traffic light and a toilet from one frame to the next), would otherwise slip such a box past the
    checks for two tracks that want one box, and hand it to either at half its IoU; a label that one
    track near it has and another has not still tells them apart. Near one track alone, a box of
    another label weighs half as before: the faint boxes of a cat's sliver showing beside a pillar,
    named a vase and a teddy bear, are not the cat's."""
    if same is None:
        return None
    none = ~_any(same & near, axis=0) & (_sum(near, axis=0) >= 2)
    return same | none if bool(_any(none)) else same


def assign(
    cost: np.ndarray, limit: float, contested: Callable[[list[int]], list[int]] | None = None
) -> list[tuple[int, int]]:
    """Minimum-cost pairs (row, col) with cost below `limit`; rows and columns may stay unmatched.
    `contested`, given the columns that two or more rows want most, names those no row may take."""
    if cost.size == 0:
        return []
    while True:
        best = cost.argmin(axis=1)
        rows = (_min(cost, axis=1) < limit).nonzero()[0]  # the ufunc: ndarray.min wraps it in Python
        cols = best[rows].tolist()
        if len(set(cols)) == len(cols):
            # every row's cheapest column is its own: no assignment does better than each row at its minimum
            # (the common case, even with crowded boxes), and the solver is not needed
            return list(zip(rows.tolist(), cols, strict=True))
        drop = contested(sorted({c for c in cols if cols.count(c) > 1})) if contested is not None else []
        if not drop:
            return _solve(cost, limit)
        cost[:, drop] = limit  # and look again without them
        contested = None


def _solve(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
    """The optimal assignment (Jonker-Volgenant), pairs at `limit` or above left unmatched."""
    _, picked, _ = lap.lapjv(cost, extend_cost=True, cost_limit=limit)
    return [(r, int(c)) for r, c in enumerate(picked) if c >= 0]


@dataclass(slots=True)
class Track:
    """State: centre and size of the box, and the centre's velocity (normalised units per second).
    Plain floats: per-object arithmetic on tiny numpy arrays costs more than the matching itself."""

    id: int
    label: str
    cx: float
    cy: float
    w: float
    h: float
    score: float
    first_ts: float
    last_ts: float
    vx: float = 0.0
    vy: float = 0.0
    hits: int = 1
    misses: int = 0
    confirmed: bool = False
    #: how often each label was seen, kept from the first hit of a second label on (until then every
    #: hit was of `label`, and a counter per object per frame is work for nothing)
    votes: Counter[str] | None = None
    # The velocity's fit (see `Tracker.update`): discounted sums over the centres of the boxes that kept
    # their size, with t in seconds from the latest of them, `fit_ts` (moved there at each new one, so
    # that the sums stay small however long the track lives). n: the weights; t_, tt: of t and t * t;
    # x, tx, y, ty: of each centre and t times it.
    n: float = 1.0
    t_: float = 0.0
    tt: float = 0.0
    x: float = 0.0
    tx: float = 0.0
    y: float = 0.0
    ty: float = 0.0
    fit_ts: float = 0.0


def _predict(tracks: list[Track], ts: float) -> np.ndarray:
    """Each track's box at `ts` by its motion ([N, 4] xyxy). One loop and one array from a flat list
    of floats: a method call and a tuple per track cost more than the arithmetic."""
    flat: list[float] = []
    for t in tracks:
        dt = ts - t.last_ts
        if dt < 0.0:
            dt = 0.0
        cx, cy, hw, hh = t.cx + t.vx * dt, t.cy + t.vy * dt, t.w * 0.5, t.h * 0.5
        flat += (cx - hw, cy - hh, cx + hw, cy + hh)
    return np.array(flat, np.float64).reshape(-1, 4)


class _Round(NamedTuple):
    """The first round's pairs (track index, detection index), the tracks beside a neighbour, and the
    detections no track took because two wanted them (see `Tracker._first_round`)."""

    pairs: list[tuple[int, int]]
    near: set[int]
    shunned: list[int]


class TrackUpdate(NamedTuple):
    """One frame's outcome: the track id of each detection (None: not tracked, e.g. a weak detection
    that starts nothing), the tracks confirmed this frame, and those that ended. A named tuple: a
    frozen dataclass costs microseconds to build, once per frame."""

    ids: list[int | None]
    confirmed: list[Track]
    ended: list[Track]


class _Pair:
    """The check for a detection that two tracks want most, in plain floats over its few candidates
    (see `Tracker._first_round`)."""

    __slots__ = ("cand", "dropped", "iou", "near", "per_track", "same", "tracks")

    def __init__(
        self, tracks: list[Track], cand: np.ndarray, iou: np.ndarray, per_track: np.ndarray, same: np.ndarray | None
    ):
        self.tracks, self.cand, self.iou, self.per_track, self.same = tracks, cand, iou, per_track, same
        self.dropped: list[int] = []
        self.near: list[int] = []  # the tracks that wanted a contested detection

    def no_ones(self, contested: list[int]) -> list[int]:
        """Of the detections that two tracks want most, those no track takes: the only candidate of two
        confirmed tracks of its label that want it alike (IoUs within _ALIKE)."""
        out = []
        same, tracks = self.same, self.tracks
        for c in contested:
            every = self.cand[:, c].nonzero()[0].tolist()
            self.near += every
            alone = sorted(
                (float(self.iou[r, c]) for r in every
                 if tracks[r].confirmed and (same is None or bool(same[r, c])) and self.per_track[r] == 1),
                reverse=True,
            )
            if len(alone) >= 2 and alone[1] >= _ALIKE * alone[0]:
                out.append(c)
        self.dropped = out
        return out


def _round_two(
    tracks: list[Track], held: np.ndarray, area_t: np.ndarray, area_d: np.ndarray, young: bool
) -> list[int]:
    """The detections that hold most of the predicted boxes of two confirmed tracks of their label
    that want them (`held`), and are clearly larger (_ROUND) than the largest of those: boxes round
    two objects. In a few array operations over the whole [tracks, detections] block: in a crowd,
    many detections are wanted by two tracks, and a loop per detection costs more."""
    if young:  # some track not yet confirmed (mostly none: no mask to build)
        held = held.copy()
        held[[r for r, t in enumerate(tracks) if not t.confirmed]] = False
    multi: list[int] = (_sum(held, axis=0) >= 2).nonzero()[0].tolist()
    if not multi:
        return []
    largest = _max(held[:, multi] * area_t, axis=0)
    return [c for c, ok in zip(multi, (area_d[multi] > _ROUND * largest).tolist(), strict=True) if ok]


def _fits(box: list[float], cx: float, cy: float, w: float, h: float) -> float:
    """IoU of the xyxy `box` with the box of centre (cx, cy) and size (w, h)."""
    inter = _inter(box, [cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5])
    return inter / ((box[2] - box[0]) * (box[3] - box[1]) + w * h - inter)


def _inter(a: list[float], b: list[float]) -> float:
    """The area two xyxy boxes share."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return iw * ih if iw > 0.0 and ih > 0.0 else 0.0


def _between(box: list[float], taken: list[list[float]]) -> bool:
    """Whether two of the `taken` boxes together hold _BETWEEN of `box`'s area: a box over the facing
    halves of two objects, with less than half of either's box in it. Plain floats: it runs for the
    few new boxes that touch two taken ones."""
    need = _BETWEEN * (box[2] - box[0]) * (box[3] - box[1])
    for i, a in enumerate(taken):
        in_a = _inter(box, a)
        for b in taken[i + 1 :]:
            both = [max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]
            if in_a + _inter(box, b) - _inter(box, both) >= need:
                return True
    return False


def _holds_another(rows: list[list[float]], labels: list[str], box: list[float], d: int, w: int) -> bool:
    """Whether detection `d` (`box`) holds _ENCLOSED of a box of its label other than `w` and its own, one
    that overlaps `w` at an IoU under _DUPLICATE: a box round the object of `w` and another beside it."""
    tight = rows[w]
    area_w = (tight[2] - tight[0]) * (tight[3] - tight[1])
    for o, other in enumerate(rows):
        if o == d or o == w or labels[o] != labels[d]:
            continue
        area_o = (other[2] - other[0]) * (other[3] - other[1])
        if _inter(box, other) < _ENCLOSED * area_o:
            continue
        shared = _inter(other, tight)
        if shared < _DUPLICATE * (area_o + area_w - shared):
            return True
    return False


def _one_each(rows: list[list[float]], score_of: list[float], labels: list[str], born: list[int]) -> list[int]:
    """Of new boxes of one label that show one object, the most confident only. An object coming into
    view is at times boxed twice in its first frame, whole and again with some of what is beside it or
    below it; with no track there yet, the rule for a box a track took (`_PART`) does not see the second
    box, which then starts a second track on the same object, and the two take its boxes in turn. The
    same test here: a box that holds a more confident new one, or lies in it (_ENCLOSED of the smaller),
    where the smaller is at least _PART of the larger, waits, and starts a track only once it is clear
    of it. A far object inside a near one's box is a small share of it, and both start; two objects
    that come into view together overlapping (an IoU of 0.6, neither inside the other) start two.
    Plain floats: it runs for the few frames with two new boxes."""
    kept: list[int] = []
    for d in sorted(born, key=lambda i: -score_of[i]):
        a = rows[d]
        area_a = (a[2] - a[0]) * (a[3] - a[1])
        for m in kept:
            if labels[m] != labels[d]:
                continue
            b = rows[m]
            area_b = (b[2] - b[0]) * (b[3] - b[1])
            small, large = min(area_a, area_b), max(area_a, area_b)
            if small >= _PART * large and _inter(a, b) >= _ENCLOSED * small:
                break
        else:
            kept.append(d)
    return [d for d in born if d in kept]  # in the detector's order: ids as before where nothing waits


def _round_tight(boxes: np.ndarray, cand: np.ndarray, round_one: np.ndarray, big: list[int]) -> list[int]:
    """Of the boxes `big` round some track's object (`round_one`, over the tracks with rivals), those
    holding another candidate of such a track: the object's own tighter box is there to win. A box
    round the object whose track has no such box inside it is the object's own, only looser (a partly
    hidden object coming out from behind another is boxed loosely for a frame or two), and keeps its
    weight: halving it would hand the track to a box beside its object."""
    out = []
    for c in big:
        box = boxes[c].tolist()
        for r in round_one[:, c].nonzero()[0].tolist():
            inside = False
            for o in cand[r].nonzero()[0].tolist():
                if o == c:
                    continue
                a = boxes[o].tolist()
                shared = _inter(box, a)
                if shared > 0.0 and shared >= _ENCLOSED * (a[2] - a[0]) * (a[3] - a[1]):
                    inside = True
                    break
            if inside:
                out.append(c)
                break
    return out


class Tracker:
    def __init__(
        self,
        iou_threshold: float = 0.2,
        max_age_s: float = 2.0,
        min_hits: int = 2,
        high_score: float = 0.5,
        class_aware: bool = True,
    ):
        self.iou_threshold = iou_threshold
        self.max_age_s = max_age_s
        self.min_hits = max(1, min_hits)
        self.high_score = high_score
        self.class_aware = class_aware
        self.tracks: list[Track] = []
        self._young = 0  # how many of `tracks` are not yet confirmed, counted in `update`
        self._last_ts = float("inf")  # the last frame's time: none yet
        self._ids = itertools.count(1)
        self.created = 0
        #: label -> the kind it belongs to: labels the detector gave one tracked object (each at least
        #: _KIN_VOTES times, or once as a lone track's own box, _SAME_BOX) are one kind to the rules that
        #: tell objects apart by label. Flat: every label of a kind maps straight to one of them. Empty
        #: while every object keeps one label.
        self._kin: dict[str, str] = {}

    @property
    def active(self) -> int:
        return sum(1 for t in self.tracks if t.confirmed)

    def label_kinds(self) -> dict[str, str]:
        """Each label the tracker takes for another's kind, and that kind (`_kin`): what it learnt of
        the detector's names, which health shows."""
        return {lb: k for lb, k in sorted(self._kin.items()) if lb != k}

    def update(self, boxes: np.ndarray, scores: np.ndarray, labels: list[str], ts: float) -> TrackUpdate:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        ids: list[int | None] = [None] * len(boxes)
        rows: list[list[float]] = boxes.tolist()
        tracks = self.tracks
        if self._last_ts != float("inf") and ts < self._last_ts:
            # the clock stepped back (a wall clock set back): the tracks' times move with it, as if no
            # time had passed; left behind, each would wait out the step before it could end, and its
            # velocity's fit would weigh its points by a time to come
            step = ts - self._last_ts
            for t in tracks:
                t.first_ts += step
                t.last_ts += step
                t.fit_ts += step
        predicted = _predict(tracks, ts)
        kin = self._kin
        kinds = [kin.get(lb, lb) for lb in labels] if kin else labels  # what the rules compare
        score_of: list[float] = scores.tolist()
        strong: list[int] = []
        weak: list[int] = []
        if score_of and min(score_of) >= self.high_score:  # the usual frame: every detection confident
            strong = list(range(len(score_of)))
        else:
            for i, s in enumerate(score_of):
                (strong if s >= self.high_score else weak).append(i)
        free = list(range(len(tracks)))
        # round 1: confident detections against every track
        first = self._first_round(predicted, boxes, kinds, strong, weak)
        matched, near = first.pairs, first.near
        if not first.shunned and len(matched) == len(strong) == len(free):  # the usual frame: each track took one
            strong_left, free = [], []
        else:
            used = {d for _, d in matched}
            used.update(first.shunned)  # neither a track's nor a new object
            strong_left = [d for d in strong if d not in used]
            taken = {m for m, _ in matched}
            free = [t for t in free if t not in taken]
        # round 2: weak detections keep confirmed tracks alive; they never start one
        if weak and free:
            if first.shunned:
                weak = self._not_round(boxes, kinds, weak, first.shunned)
            second = self._match(predicted, boxes, kinds, [t for t in free if tracks[t].confirmed], weak, _WEAK_IOU)
            matched += second
            taken = {m for m, _ in second}
            free = [t for t in free if t not in taken]
        # round 3: a confirmed track lost for a while (hidden, or crossed by another object) is recovered
        # by a confident detection near where its motion says it should be, though the boxes no longer overlap
        if strong_left and free:
            lost = [t for t in free if tracks[t].confirmed and tracks[t].misses > 0]
            third = self._recover(predicted, boxes, kinds, lost, strong_left, ts)
            matched += third
            taken = {m for m, _ in third}
            free = [t for t in free if t not in taken]
            recovered = {d for _, d in third}
            strong_left = [d for d in strong_left if d not in recovered]
        confirmed: list[Track] = []
        young = 0
        min_hits = self.min_hits
        bg, bk, half_life = _BOX_GAIN, _BOX_KEEP, _FIT_HALF_LIFE_S  # locals: read per object
        # The bounds of a steady box are for one frame at 15 fps; a camera at a lower rate allows as much
        # change per second. The frame interval, not a track's time since its last box: a box after a
        # hidden spell is as likely cut as ever.
        lo, hi = _STEADY_LO, _STEADY_HI
        frame_dt = ts - self._last_ts
        self._last_ts = ts
        if frame_dt > _STEADY_DT:
            span = min(frame_dt, _STEADY_MAX_DT) / _STEADY_DT
            lo, hi = lo**span, hi**span
        for t_i, d in matched:
            t = tracks[t_i]
            # The correction, written out here in plain float arithmetic (no calls): it runs once per
            # object per frame, and a function call costs as much as half of it.
            x1, y1, x2, y2 = rows[d]
            cx, cy, w, h = (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1
            if w < 1e-6:
                w = 1e-6
            if h < 1e-6:
                h = 1e-6
            px, py = t.cx, t.cy
            dt = ts - t.last_ts
            # Beside a neighbour (more than one detection overlapped the track: boxes round both, or cut
            # by the other; or its box overlaps another track's predicted box), the box's size and the
            # drift of its centre are the pair's, not the object's: the track keeps its own size and
            # velocity, and takes only the position (and from a box that changed size, only _BESIDE_GAIN
            # of the way).
            beside = t_i in near
            change = (w * h) / (t.w * t.h)
            steady = lo <= change <= hi
            if dt > 0:
                px += t.vx * dt
                py += t.vy * dt
                # A box that changed shape (partly hidden, or cut by the frame's edge) moves its centre for
                # that reason, not the object's motion: the velocity learns only from boxes that kept their size.
                # It is the slope of a least-squares line through their centres over time, each centre's
                # weight halved every _FIT_HALF_LIFE_S: a detector's box jitters by several pixels from one
                # frame to the next, and a velocity smoothed from frame-to-frame differences carries that
                # jitter into where a hidden object is looked for (the module's docstring says what that changed).
                if not beside and steady:
                    # the older points' times from this one (t - gap), their weights discounted (k), and this
                    # point added at t = 0
                    gap = ts - t.fit_ts
                    k = 0.5 ** (gap / half_life)
                    n, st, sx, sy = t.n, t.t_, t.x, t.y
                    stt = t.tt = (t.tt - 2.0 * gap * st + gap * gap * n) * k
                    stx = t.tx = (t.tx - gap * sx) * k
                    sty = t.ty = (t.ty - gap * sy) * k
                    st = t.t_ = (st - gap * n) * k
                    n = t.n = n * k + 1.0
                    sx = t.x = sx * k + cx
                    sy = t.y = sy * k + cy
                    t.fit_ts = ts
                    den = n * stt - st * st  # 0 for one point: no slope yet
                    if den > 1e-12:
                        t.vx = (n * stx - st * sx) / den
                        t.vy = (n * sty - st * sy) / den
            # a box widened over the pair or cut by it, or any box beside a neighbour for a track that found
            # none last frame (its object hidden: the box's centre is the pair's until it is seen apart):
            # mostly the prediction
            if beside and (not steady or t.misses):
                t.cx = _BESIDE_GAIN * cx + _BESIDE_KEEP * px
                t.cy = _BESIDE_GAIN * cy + _BESIDE_KEEP * py
            else:
                t.cx = bg * cx + bk * px
                t.cy = bg * cy + bk * py
            if not beside:
                t.w = bg * w + bk * t.w
                t.h = bg * h + bk * t.h
            t.score = score_of[d]
            t.last_ts = ts
            t.hits += 1
            t.misses = 0
            lb = labels[d]
            if lb != t.label or t.votes is not None:
                votes = t.votes
                if votes is None:
                    votes = t.votes = Counter({t.label: t.hits - 1})  # the hits before this one
                n_lb = votes[lb] = votes[lb] + 1
                if lb != t.label:
                    # a second box of the label, or a first that is the lone track's object's own box
                    if n_lb == _KIN_VOTES or (
                        n_lb < _KIN_VOTES
                        and not beside
                        and t.confirmed
                        # the predicted box: its size before the one learnt above from this box
                        and _fits(rows[d], px, py, (t.w - bg * w) / bk, (t.h - bg * h) / bk) >= _SAME_BOX
                    ):
                        self._join(t.label, lb)
                    if n_lb > votes[t.label]:
                        t.label = lb
            ids[d] = t.id
            if not t.confirmed:
                if t.hits >= min_hits:
                    t.confirmed = True
                    confirmed.append(t)
                else:
                    young += 1
        ended: list[Track] = []
        gone: set[int] = set()
        for t_i in free:
            t = tracks[t_i]
            t.misses += 1
            if not t.confirmed or ts - t.last_ts > self.max_age_s:
                gone.add(t_i)
                if t.confirmed:
                    ended.append(t)
        keep = [t for t_i, t in enumerate(tracks) if t_i not in gone] if gone else tracks
        unseen = [t_i for t_i in free if tracks[t_i].confirmed and t_i not in gone] if strong_left else []
        born = self._births(
            rows, score_of, boxes, kinds, strong_left, matched, strong, predicted[unseen] if unseen else None
        )
        for d in born:
            x1, y1, x2, y2 = rows[d]
            t = Track(
                next(self._ids),
                labels[d],
                (x1 + x2) / 2,
                (y1 + y2) / 2,
                max(x2 - x1, 1e-6),
                max(y2 - y1, 1e-6),
                float(scores[d]),
                ts,
                ts,
            )
            t.x, t.y, t.fit_ts = t.cx, t.cy, ts  # the first point of the velocity's fit
            self.created += 1
            if self.min_hits <= 1:
                t.confirmed = True
                confirmed.append(t)
            else:
                young += 1
            keep.append(t)
            ids[d] = t.id
        self.tracks = keep
        self._young = young  # an unconfirmed track that was missed is gone (above)
        return TrackUpdate(ids, confirmed, ended)

    def _of_kind(self, tracks: list[Track], labels: list[str], near: np.ndarray) -> np.ndarray | None:
        """[tracks, detections]: each track of the kind of each detection's label (`_kin`), where that label
        can tell the tracks `near` the detection apart (`_telling`); None where every label is one kind."""
        return _telling(_same(self._kinds(tracks), labels), near)

    def _kinds(self, tracks: list[Track]) -> list[str]:
        """The kind (`_kin`) of each track's label."""
        kin = self._kin
        return [kin.get(t.label, t.label) for t in tracks] if kin else [t.label for t in tracks]

    def _join(self, a: str, b: str) -> None:
        """Labels `a` and `b`, and those already of their kinds, are one kind from now on."""
        kin = self._kin
        ka, kb = kin.get(a, a), kin.get(b, b)
        if ka == kb:
            return
        for lb, k in list(kin.items()):
            if k == kb:
                kin[lb] = ka
        kin[kb] = kin[ka] = ka

    def _match(
        self,
        predicted: np.ndarray,
        boxes: np.ndarray,
        labels: list[str],
        tracks: list[int],
        dets: list[int],
        min_iou: float,
    ) -> list[tuple[int, int]]:
        """(track index, detection index) pairs of the weak round: IoU with the predicted boxes. A weak box
        that two tracks want alike (IoUs within _ALIKE) is no one's: where two objects overlap, a faint
        box is mostly a part of the one in front, and the hidden one's track, whose prediction lies over
        it, would take it as readily as its own."""
        if not tracks or not dets:
            return []
        iou = iou_matrix(predicted[tracks], boxes[dets])
        if self.class_aware:
            same = self._of_kind([self.tracks[t] for t in tracks], [labels[d] for d in dets], iou > 0.0)
            if same is not None:
                iou = np.where(same, iou, iou * _OTHER_LABEL)
        if len(tracks) >= 2:
            want = iou >= min_iou
            shared = (_sum(want, axis=0) >= 2).nonzero()[0].tolist()
            for c in shared:
                col = np.sort(iou[:, c])
                if col[-2] >= _ALIKE * col[-1]:
                    iou[:, c] = 0.0
        return [(tracks[r], dets[c]) for r, c in assign(1.0 - iou, 1.0 - min_iou)]

    def _first_round(
        self, predicted: np.ndarray, boxes: np.ndarray, labels: list[str], dets: list[int], weak: list[int]
    ) -> _Round:
        """The confident detections against every track, by IoU with the predicted boxes. Where objects
        come close, no track takes
        - a detection that holds most of the predicted boxes of two confirmed tracks of its label and is
          clearly larger than the largest (_ROUND): the detector's box round two objects that cross or
          walk close, one often partly hidden behind the other;
        - a detection that is the only candidate of two confirmed tracks of its label, which want it
          alike (IoUs within _ALIKE): two objects, one hidden behind the other, seen as one, and
          nothing yet to tell whose it is.
        Whichever track took such a box would be dragged to the middle of the pair and could leave with
        the wrong object; both coast on their motion instead until their objects are seen apart, or
        until one track's prediction clearly fits the box. A detection that holds most of the predicted
        box of a track with other candidates, one of them inside it, and is much larger than it
        (_LARGER), weighs half for every track: it is a box round the object and more, and the
        object's tight box wins its track (`_round_tight`). The tracks beside a neighbour (`near`: two
        candidates, a shunned box, or a box that overlaps another track's predicted box) learn only
        their position this frame: their boxes' size and the drift of their centres are the pair's,
        not the object's."""
        tracks = self.tracks
        if not tracks or not dets:
            return _Round([], set(), [])
        all_dets = len(dets) == len(boxes)  # the usual frame: positions are indices, and no copies
        db = boxes if all_dets else boxes[dets]
        inter, area_t, area_d = _overlap(predicted, db)
        iou = _iou(inter, area_t, area_d)  # a new array: the overlaps are wanted for the boxes round two
        same = None
        if self.class_aware:
            same = self._of_kind(tracks, labels if all_dets else [labels[d] for d in dets], inter > 0.0)
            if same is not None:
                iou = np.where(same, iou, iou * _OTHER_LABEL)
        cand = iou >= self.iou_threshold
        per_track = _sum(cand, axis=1)  # ufuncs, not ndarray.sum/any: Python wrappers round them
        rival = per_track >= 2
        any_rival = bool(_any(rival))
        near: set[int] = set()
        shun: list[int] = []
        # objects apart have one candidate each, and one track each wanting them: these checks cost
        # nothing then
        if any_rival or _max(_sum(cand, axis=0)) >= 2:
            # which detections hold most of the predicted box of a track (of their label) that wants them
            held = inter >= _ENCLOSED * area_t
            held &= cand
            if same is not None:
                held &= same
            # a box round two tracked objects is no one's, whether or not either track wants it most:
            # one may have its own box beside it, the other would be dragged into the pair's middle
            shun = _round_two(tracks, held, area_t, area_d, self._young > 0)
            if any_rival:
                near.update(rival.nonzero()[0].tolist())
                # a box round the object of a track that has others to choose from (its own tight box,
                # mostly), and much larger, weighs half: the object's own box wins its track
                round_one = held[rival]
                round_one &= area_d > _LARGER * area_t[rival]
                big = [c for c in _any(round_one, axis=0).nonzero()[0].tolist() if c not in shun]
                if big:
                    big = _round_tight(db, cand[rival], round_one, big)
                if big:
                    iou[:, big] *= _OTHER_LABEL
        if weak:
            self._faint_tight(predicted, boxes, labels, dets, inter, area_t, cand, per_track, iou, weak)
        cost = 1.0 - iou
        if shun:
            cost[:, shun] = 1.0
        pair: list[_Pair] = []  # made only where two tracks want one detection most

        def contested(cs: list[int]) -> list[int]:
            pair.append(_Pair(tracks, cand, iou, per_track, same))
            return pair[0].no_ones(cs)

        pairs = assign(cost, 1.0 - self.iou_threshold, contested)
        # a box that overlaps the predicted box of another object seen last frame may be cut by that
        # object in front of it, or stretched over it: its track learns its position only (a track
        # that is coasting is left out: a stale box, e.g. one round a pair, would freeze all inside it)
        over = inter > 0.0
        if pairs and _max(_sum(over, axis=0)) >= 2:
            seen = [t.misses == 0 for t in tracks]
            over &= np.array(seen)[:, None]
            by_seen = _sum(over, axis=0).tolist()
            # a matched pair overlaps: its own track, if seen, is one of the count
            near.update(r for r, c in pairs if by_seen[c] - seen[r] >= 1)
        if pair:
            shun += pair[0].dropped
            near.update(pair[0].near)
        for c in shun:
            near.update(cand[:, c].nonzero()[0].tolist())
        if all_dets:
            return _Round(pairs, near, shun)
        return _Round([(r, dets[c]) for r, c in pairs], near, [dets[c] for c in shun])

    def _faint_tight(
        self,
        predicted: np.ndarray,
        boxes: np.ndarray,
        labels: list[str],
        dets: list[int],
        inter: np.ndarray,
        area_t: np.ndarray,
        cand: np.ndarray,
        per_track: np.ndarray,
        iou: np.ndarray,
        weak: list[int],
    ) -> None:
        """A track seen last frame, with a faint box of its label that fits its predicted box whole (IoU
        _WEAK_IOU or more, its area within _STEADY_LO.._STEADY_HI of the track's), takes no confident box
        that fits it less well this round, where that box fits it poorly (under _WEAK_IOU) or is a box
        round the faint one (holding _ENCLOSED of it) and more: round the predicted box and much larger
        (_ENCLOSED, _LARGER), or round another box of the label beside the faint one (_ENCLOSED of it, at
        an IoU with the faint one under _DUPLICATE). Its IoU in `iou` goes to 0, and the faint box takes
        the track in round two. Two objects of a kind side by side or one above the other, one coming
        into view, are boxed together more confidently than either alone, and at times the new one alone
        more confidently than the other: taken by the other's track, either box dragged it onto the new
        object, which then, inside a box a track took, could start no track of its own (`benchmarks/
        bench_tracking.py --random 16 --seed 1-4 --objects 3`). Left alone: a track that found no box last
        frame (a faint box where a hidden object is looked for is mostly a part of the one in front, and
        a confident one near it the hidden one coming out, which an apple crossing showed); a faint box
        smaller or larger than the object (a part of it, or more); and a confident box that is the only
        candidate of another confirmed track (the rules for a box two tracks want judge it). In place,
        on the first round's overlaps (`dets`: the detections of `iou`'s columns)."""
        tracks = self.tracks
        fit = iou_matrix(predicted, boxes[weak])
        if self.class_aware:
            same = self._of_kind(tracks, [labels[d] for d in weak], fit > 0.0)
            if same is not None:
                fit = np.where(same, fit, 0.0)
        best_w = fit.argmax(axis=1).tolist()
        best = _max(fit, axis=1).tolist()
        rows: list[list[float]] | None = None
        wanted: list[int] = []
        lonely: list[bool] = []
        for r, b in enumerate(best):
            if b < _WEAK_IOU or tracks[r].misses:
                continue
            if rows is None:
                rows = boxes.tolist()
                wanted = _sum(cand, axis=0).tolist()
                lonely = (per_track == 1).tolist()
            w = weak[best_w[r]]
            tight = rows[w]
            area_w = (tight[2] - tight[0]) * (tight[3] - tight[1])
            t = tracks[r]
            if not _STEADY_LO <= area_w / (t.w * t.h) <= _STEADY_HI:
                continue
            for c in cand[r].nonzero()[0].tolist():
                v = float(iou[r, c])
                if v >= b:
                    continue
                if wanted[c] > 1 and any(
                    o != r and tracks[o].confirmed and lonely[o] for o in cand[:, c].nonzero()[0].tolist()
                ):
                    continue
                d = dets[c]
                box = rows[d]
                if v >= _WEAK_IOU and _inter(box, tight) < _ENCLOSED * area_w:
                    continue
                if v < _WEAK_IOU or (
                    inter[r, c] >= _ENCLOSED * area_t[r, 0]
                    and (box[2] - box[0]) * (box[3] - box[1]) > _LARGER * area_t[r, 0]
                ) or _holds_another(rows, labels, box, d, w):
                    iou[r, c] = 0.0

    @staticmethod
    def _not_round(boxes: np.ndarray, labels: list[str], weak: list[int], shunned: list[int]) -> list[int]:
        """The weak detections but those round a box that went to neither of two tracks (holding _ENCLOSED
        of it, of its label): where the tight box fits two objects alike, a looser one round it does as
        much, and a track coasting behind the other would take it only for want of a rival in round two."""
        inter, _, area_s = _overlap(boxes[weak], boxes[shunned])
        round_one = inter >= _ENCLOSED * area_s
        kinds = _same([labels[d] for d in weak], [labels[d] for d in shunned])
        if kinds is not None:
            round_one &= kinds
        return [d for d, no in zip(weak, _any(round_one, axis=1).tolist(), strict=True) if not no]

    def _births(
        self,
        rows: list[list[float]],
        score_of: list[float],
        boxes: np.ndarray,
        labels: list[str],
        dets: list[int],
        matched: list[tuple[int, int]],
        strong: list[int],
        unseen: np.ndarray | None,
    ) -> list[int]:
        """Unmatched confident detections that start tracks. A detector's box round two neighbours of
        one kind is not a third object: not one that encloses an object already tracked this frame,
        nor one that encloses two other confident detections of its label (objects that appear
        together, or a pair whose tracks are new). One that encloses a single new detection may be a
        near object with a far one inside its box, and starts a track. Where objects overlap, the
        detector also boxes what shows of one beside its whole box, or the object again with some of
        its neighbour, and an object coming out from behind another is boxed by its visible part, at
        times under another label, and boxes parts of two at once: none of these is a new object
        either (`_PART`, `_DUPLICATE`, `_UNSEEN`, `_HALF`), nor is a second box of one new object
        (`_one_each`). Each only puts a birth off: once clear of the other boxes, a new object starts
        its track. `rows` and `score_of`: the boxes and scores as Python floats."""
        if not dets:
            return []
        seen = {d for _, d in matched}
        others = sorted(seen.union(strong))
        held = enclosing(boxes[dets], boxes[others])
        kinds = _same([labels[d] for d in dets], [labels[d] for d in others])
        if kinds is not None:
            held &= kinds
        known = np.zeros(len(dets), bool)  # a part or a copy of a tracked object, or a hidden one coming back
        if seen:
            # mostly inside a box a track took this frame, of its label or its track's, and not much smaller
            # (a far object inside a near one's box is a small share of it); or overlapping it as the
            # detector's own suppression would not allow for one object; or holding half of each of two such
            # boxes
            taken = sorted(seen)
            inter, area_d, area_m = _overlap(boxes[dets], boxes[taken])
            copy = (inter >= _ENCLOSED * area_d) & (area_d >= _PART * area_m)
            copy |= _iou(inter, area_d, area_m) >= _DUPLICATE
            halves = inter >= _HALF * area_m
            kinds_m = _same([labels[d] for d in dets], [labels[m] for m in taken])
            if kinds_m is not None:
                kinds_m = self._owners_kind(kinds_m, labels, dets, taken, matched)
            if kinds_m is not None:
                copy &= kinds_m
                halves &= kinds_m
            known |= _any(copy, axis=1)
            known |= _sum(halves, axis=1) >= 2  # over the pair: half of each of two taken boxes
            touching = inter > 0.0
            if kinds_m is not None:
                touching &= kinds_m
            for i in (_sum(touching, axis=1) >= 2).nonzero()[0].tolist():  # between the pair: mostly inside two
                if not known[i]:
                    pair = boxes[[taken[j] for j in touching[i].nonzero()[0].tolist()]].tolist()
                    known[i] = _between(boxes[dets[i]].tolist(), pair)
        if unseen is not None:
            # mostly over where a confirmed track that found no box this frame is looked for, whatever its
            # label: that object coming out from behind another; the track takes such a box once it fits
            inter, area_d, _ = _overlap(boxes[dets], unseen)
            known |= _any(inter >= _UNSEEN * area_d, axis=1)
        out = []
        for d, row, no in zip(dets, held.tolist(), known.tolist(), strict=True):
            inside = [o for o, h in zip(others, row, strict=True) if h]
            if not no and len(inside) < 2 and not any(o in seen for o in inside):
                out.append(d)
        return _one_each(rows, score_of, labels, out) if len(out) > 1 else out

    def _owners_kind(
        self, same: np.ndarray, labels: list[str], dets: list[int], taken: list[int], matched: list[tuple[int, int]]
    ) -> np.ndarray | None:
        """`same` ([new boxes, taken boxes]: equal labels), also true where a new box is of the kind of the
        track that took a box under another name: that box is still the track's object, and a box of the
        track's kind over it is that object again (the SSD boxes a cup twice in one frame, once as a toilet
        and once as a cup: the toilet box went to the cup's track, and the cup box started a second track).
        None where every new box is then of every taken box's kind."""
        owner = {d: t_i for t_i, d in matched}
        named = self._kinds([self.tracks[owner[m]] for m in taken])
        if all(n == labels[m] for n, m in zip(named, taken, strict=True)):
            return same
        by_track = _same([labels[d] for d in dets], named)
        return None if by_track is None else same | by_track

    def _recover(
        self, predicted: np.ndarray, boxes: np.ndarray, labels: list[str], tracks: list[int], dets: list[int],
        ts: float,
    ) -> list[tuple[int, int]]:
        if not tracks or not dets:
            return []
        pc = (predicted[tracks, :2] + predicted[tracks, 2:]) / 2
        dc = (boxes[dets, :2] + boxes[dets, 2:]) / 2
        diag = np.array([np.hypot(self.tracks[t].w, self.tracks[t].h) for t in tracks])
        dist = np.linalg.norm(pc[:, None, :] - dc[None, :, :], axis=2) / diag[:, None]
        area_t = np.array([self.tracks[t].w * self.tracks[t].h for t in tracks])
        area_d = np.prod(np.maximum(boxes[dets, 2:] - boxes[dets, :2], 1e-6), axis=1)
        ratio = area_d[None, :] / area_t[:, None]
        ok = (ratio >= _RECOVER_AREA[0]) & (ratio <= _RECOVER_AREA[1])
        # how far the object may have gone from its prediction grows with the time it has been unseen
        unseen = np.array([ts - self.tracks[t].last_ts for t in tracks])
        ok &= dist <= _RECOVER_DIST * np.minimum(1.0, unseen / _RECOVER_FULL_S)[:, None]
        if self.class_aware:
            kinds = self._of_kind([self.tracks[t] for t in tracks], [labels[d] for d in dets], ok)
            if kinds is not None:
                ok &= kinds
        cost = np.where(ok, dist, _RECOVER_DIST + 1.0)
        return [(tracks[r], dets[c]) for r, c in assign(cost, _RECOVER_DIST)]

    def end_all(self) -> list[Track]:
        """Every confirmed track, ended (the pipeline stops or its model changes)."""
        ended = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        self._young = 0
        self._kin = {}  # another model names things its own way
        return ended
