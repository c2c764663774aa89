"""Scenes with known ground truth, cut from real photos: real object crops moving across a real background.

scikit-image's photos (the astronaut's face, Chelsea the cat) are pasted onto its grass texture and moved
along straight lines at a steady speed: two objects crossing (two faces; two cats four ways: at different
heights, at one height, on the diagonals, one fast and one slow), one passing behind a pillar (a band of
its brick texture drawn over it, so it is hidden for a few frames), one walking through a zone. Random
crossings (`random_scenes`) may also draw two apples cut from the shared photo of fruit, or two people
cut from scikit-image's cameraman, or two cups cut from its coffee photo (which the SSD calls a cup or a
traffic light from one frame to the next), objects none of the named scenes has. The ground truth box of each
object is known in every frame: the face's box inside the astronaut crop was marked by hand once, the
cat fills its crop, the apple nearly fills its own, and the man (cut at the photo's left and bottom
edges, as he is there) fills his but for the sky above his head and the camera's tripod at his right.
An object counts as visible when at least half its box is in view.
The real detectors (BlazeFace, the SSD) then run on every frame; `benchmarks/bench_tracking.py` scores the
tracker against this truth with py-motmetrics, and the tests check the events it raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

W, H, FPS = 640, 480, 15

Box = tuple[float, float, float, float]


def _bgr(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3][..., ::-1])


@cache
def _photos() -> dict[str, np.ndarray]:
    import skimage.data as d

    astro, cat, man, coffee = _bgr(d.astronaut()), _bgr(d.chelsea()), _bgr(d.camera()), _bgr(d.coffee())
    out = {
        "grass": cv2.resize(_bgr(d.grass()), (W, H)),
        "brick": cv2.resize(_bgr(d.brick()), (W, H)),
        "face": cv2.resize(astro[20:260, 130:330], (200, 240), interpolation=cv2.INTER_AREA),
        "cat": cv2.resize(cat[20:300, 100:380], (200, 200), interpolation=cv2.INTER_AREA),
        "person": cv2.resize(man[40:512, 0:340], (144, 200), interpolation=cv2.INTER_AREA),
        "cup": cv2.resize(coffee[10:315, 165:415], (200, 244), interpolation=cv2.INTER_AREA),
    }
    fruit = cv2.imread(str(FRUIT)) if FRUIT.is_file() else None
    if fruit is not None:  # the apple, cut from the shared photo by fractions of its size
        h, w = fruit.shape[:2]
        apple = fruit[round(h * 0.1583) : round(h * 0.5458), round(w * 0.6609) : round(w * 0.9375)]
        out["apple"] = cv2.resize(apple, (170, 180), interpolation=cv2.INTER_AREA)
    return out


#: The object's box inside its sprite (x1, y1, x2, y2): the face marked by hand; the cat fills its crop; the
#: apple fills its crop but for slivers of the table above it and at its right, marked by hand; the man
#: from the photo's left and bottom edges to the top of his hair (y 63 of 512) and the hand that holds the
#: camera (x 332), marked by hand; the cup from the top of its rim to the foot of its handle and from its
#: left side to its right (x 173 to 408, y 18 to 305 of the coffee photo), marked by hand, with slivers of
#: saucer, spoon and table round it.
SPRITE_TRUTH: dict[str, tuple[str, Box]] = {
    "face": ("face", (45.0, 49.0, 142.0, 146.0)),
    "cat": ("cat", (0.0, 0.0, 200.0, 200.0)),
    "apple": ("apple", (0.0, 4.0, 167.0, 177.0)),
    "person": ("person", (0.0, 10.0, 141.0, 200.0)),
    "cup": ("cup", (6.0, 6.0, 194.0, 236.0)),
}
#: What the detector calls each sprite where that is more than its truth's label: the SSD calls the cup,
#: out of its context on the grass, a traffic light in about half the frames (boxed where the cup is).
ALSO_CALLED: dict[str, tuple[str, ...]] = {"cup": ("traffic light",)}
#: The sprites a random crossing may draw, and the detector that finds each.
DETECTOR = {"face": "face", "cat": "ssd", "apple": "ssd", "person": "ssd", "cup": "ssd"}
#: A real photo of fruit on a table (an apple, a banana), beside the project when it is checked out
#: with its shared data: the apple is an object none of the scenes above was tuned on.
FRUIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fruit.jpg"


@dataclass(frozen=True)
class Actor:
    sprite: str
    start: tuple[float, float]  # sprite top-left at the first frame, pixels
    end: tuple[float, float]  # ... at the last frame
    first: int = 0
    last: int | None = None  # inclusive; None: the scene's last frame

    def at(self, i: int, n: int) -> tuple[int, int] | None:
        last = n - 1 if self.last is None else self.last
        if not self.first <= i <= last:
            return None
        t = (i - self.first) / max(1, last - self.first)
        return round(self.start[0] + (self.end[0] - self.start[0]) * t), round(
            self.start[1] + (self.end[1] - self.start[1]) * t
        )


@dataclass(frozen=True)
class Scene:
    name: str
    detector: str  # "face" (BlazeFace) or "ssd"
    frames: int
    actors: tuple[Actor, ...]
    pillar: tuple[int, int] | None = None  # x range of a band drawn over the actors
    zone: tuple[tuple[float, float], ...] | None = None  # normalised polygon, for the zone checks


SCENES: dict[str, Scene] = {
    s.name: s
    for s in (
        # two faces cross: one passes in front of the other
        Scene(
            "faces_crossing", "face", 60, (Actor("face", (-20, 40), (460, 120)), Actor("face", (460, 200), (-20, 140)))
        ),
        # a cat walks behind a pillar wide enough to hide it for a few frames
        Scene("cat_behind_pillar", "ssd", 60, (Actor("cat", (-40, 150), (500, 150)),), pillar=(200, 440)),
        # a cat walks through a zone drawn on the floor (the middle third of the frame)
        Scene(
            "cat_through_zone",
            "ssd",
            75,
            (Actor("cat", (-60, 200), (520, 200)),),
            zone=((0.35, 0.5), (0.65, 0.5), (0.65, 1.0), (0.35, 1.0)),
        ),
        # two cats cross at different heights
        Scene("cats_crossing", "ssd", 60, (Actor("cat", (-30, 40), (470, 200)), Actor("cat", (470, 250), (-30, 60)))),
        # ... at one height: the one behind is wholly hidden for a dozen frames
        Scene(
            "cats_crossing_level",
            "ssd",
            60,
            (Actor("cat", (-30, 150), (470, 170)), Actor("cat", (470, 140), (-30, 160))),
        ),
        # ... on the diagonals, meeting at the same point at the same time (seen as one box as they near)
        Scene(
            "cats_crossing_diagonal", "ssd", 60, (Actor("cat", (0, 0), (440, 280)), Actor("cat", (440, 0), (0, 280)))
        ),
        # ... one fast, one slow
        Scene(
            "cats_fast_and_slow", "ssd", 60, (Actor("cat", (-60, 60), (500, 230)), Actor("cat", (400, 230), (100, 80)))
        ),
    )
}


def random_scenes(
    seed: int, n: int, kinds: tuple[str, ...] = ("cat", "cat", "face"), objects: int = 2
) -> list[Scene]:
    """`n` crossings none of the scenes above was tuned on, the same for the same seed and kinds: two
    objects of a kind drawn from `kinds` (by default two cats two times in three, else two faces), one
    entering from the left and one from the right at heights drawn at random, each on a straight line
    to a random height on the other side, the second up to 10 frames later, in 45 to 90 frames. Which
    one passes in front, where they meet, and for how long one hides the other all follow from the draw.
    With `objects` above 2, each crossing is the same pair and more of its kind, each from a side and
    at heights drawn apart (from a draw of their own), up to 20 frames later: a crowd crossing."""
    import random

    unknown = set(kinds) - set(DETECTOR)
    if unknown:
        raise ValueError(f"no sprite for {sorted(unknown)}: the kinds are {sorted(DETECTOR)}")
    if "apple" in kinds and not FRUIT.is_file():
        raise ValueError(f"the apple is cut from {FRUIT}, which is not there")
    rng = random.Random(seed)
    out = []
    for k in range(n):
        kind = rng.choice(kinds)
        frames = rng.randint(45, 90)
        y = [rng.uniform(0, 280) for _ in range(4)]
        first = rng.randint(0, 10)
        actors = [Actor(kind, (-60, y[0]), (500, y[1])), Actor(kind, (500, y[2]), (-60, y[3]), first=first)]
        more = random.Random(f"{seed}-{k}-{objects}")
        for _ in range(objects - 2):
            a, b = more.uniform(0, 280), more.uniform(0, 280)
            start, end = ((-60, a), (500, b)) if more.random() < 0.5 else ((500, a), (-60, b))
            actors.append(Actor(kind, start, end, first=more.randint(0, 20)))
        name = f"random{seed}_{k}_{kind}" + (f"_{objects}" if objects > 2 else "")
        out.append(Scene(name, DETECTOR[kind], frames, tuple(actors)))
    return out


def boxes_at(scene: Scene, i: int) -> dict[int, Box]:
    """Each actor's truth box in frame `i` (ids from 1), whether or not it is in view."""
    out = {}
    for k, a in enumerate(scene.actors, start=1):
        pos = a.at(i, scene.frames)
        if pos is not None:
            _, (bx1, by1, bx2, by2) = SPRITE_TRUTH[a.sprite]
            out[k] = (pos[0] + bx1, pos[1] + by1, pos[0] + bx2, pos[1] + by2)
    return out


def crossings(scene: Scene) -> list[tuple[int, int, int, int]]:
    """Each pair of objects whose boxes meet, and the frames from their first to their last touch:
    (id, id, first frame, last frame). The objects move on straight lines, so a pair meets once."""
    met: dict[tuple[int, int], list[int]] = {}
    for i in range(scene.frames):
        boxes = sorted(boxes_at(scene, i).items())
        for n, (a, box_a) in enumerate(boxes):
            for b, box_b in boxes[n + 1 :]:
                if _overlap(box_a, box_b) > 0:
                    met.setdefault((a, b), []).append(i)
    return [(a, b, min(f), max(f)) for (a, b), f in sorted(met.items())]


def _overlap(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _visible(box: Box, covers: list[Box]) -> bool:
    """At least half the box in the frame and not under what is drawn over it (pillar, later sprites)."""
    x1, y1, x2, y2 = box
    seen = _overlap(box, (0.0, 0.0, float(W), float(H))) - sum(_overlap(box, c) for c in covers)
    return seen >= 0.5 * (x2 - x1) * (y2 - y1)


def render(scene: Scene) -> Iterator[tuple[np.ndarray, list[tuple[int, str, Box]]]]:
    """(frame, ground truth [(object id, label, box in pixels)]) for every frame; ids count from 1."""
    ph = _photos()
    for i in range(scene.frames):
        img = ph["grass"].copy()
        truth: list[tuple[int, str, Box]] = []
        drawn: list[tuple[int, str, Box, Box]] = []  # (id, label, truth box, sprite rectangle)
        for k, a in enumerate(scene.actors, start=1):
            pos = a.at(i, scene.frames)
            if pos is None:
                continue
            spr = ph[a.sprite]
            x, y = pos
            sx1, sy1 = max(0, -x), max(0, -y)
            sx2, sy2 = min(spr.shape[1], W - x), min(spr.shape[0], H - y)
            if sx2 > sx1 and sy2 > sy1:
                img[y + sy1 : y + sy2, x + sx1 : x + sx2] = spr[sy1:sy2, sx1:sx2]
            label, (bx1, by1, bx2, by2) = SPRITE_TRUTH[a.sprite]
            drawn.append((k, label, (x + bx1, y + by1, x + bx2, y + by2), (x, y, x + spr.shape[1], y + spr.shape[0])))
        pillar = [] if scene.pillar is None else [(float(scene.pillar[0]), 0.0, float(scene.pillar[1]), float(H))]
        for j, (k, label, box, _) in enumerate(drawn):
            if _visible(box, pillar + [rect for *_, rect in drawn[j + 1 :]]):
                truth.append((k, label, box))
        if scene.pillar is not None:
            img[:, scene.pillar[0] : scene.pillar[1]] = ph["brick"][:, scene.pillar[0] : scene.pillar[1]]
        yield img, truth
