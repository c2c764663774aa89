"""The measure behind shadow evaluation: how far a candidate's results agree with the serving model's."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.ota.shadow import (
    Probation,
    agreement,
    class_agreement,
    detection_agreement,
    input_signature,
    output_agreement,
)
from edge_agent.results import ClassScore, Detection, RawOutput, Result


def det(label: str, x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Detection:
    return Detection(label, 0, score, (x1 * 100, y1 * 100, x2 * 100, y2 * 100), (x1, y1, x2, y2))


def test_detections_agree_by_one_to_one_matching() -> None:
    a = [det("face", 0.1, 0.1, 0.3, 0.3), det("face", 0.6, 0.6, 0.8, 0.8)]
    assert detection_agreement(a, list(reversed(a)), 0.5) == (1.0, 2)  # order does not matter
    assert detection_agreement([], [], 0.5) == (1.0, 0)  # both saw nothing: they agree
    assert detection_agreement(a, [], 0.5) == (0.0, 0)
    # one of two found, the other moved off: F1 = 2 * 1 / (2 + 2)
    moved = [a[0], det("face", 0.0, 0.6, 0.1, 0.7)]
    assert detection_agreement(a, moved, 0.5) == (0.5, 1)
    # a box shifted by a tenth of its width still matches at IoU 0.5, not at 0.9
    shifted = [det("face", 0.12, 0.1, 0.32, 0.3), a[1]]
    assert detection_agreement(a, shifted, 0.5)[0] == 1.0
    assert detection_agreement(a, shifted, 0.9)[0] == 0.5
    # the same place under another label is not agreement
    assert detection_agreement(a[:1], [det("cat", 0.1, 0.1, 0.3, 0.3)], 0.5) == (0.0, 0)
    # one box cannot match two: two candidates on one reference box give one match
    assert detection_agreement(a[:1], [a[0], det("face", 0.11, 0.1, 0.31, 0.3)], 0.5) == (2 / 3, 1)


def test_classes_agree_on_the_top_class() -> None:
    def res(*scores: tuple[str, float]) -> Result:
        return Result("classification", classes=tuple(ClassScore(lbl, i, s) for i, (lbl, s) in enumerate(scores)))

    assert class_agreement(res(("cat", 0.7), ("dog", 0.2)), res(("dog", 0.1), ("cat", 0.5))) == 1.0
    assert class_agreement(res(("cat", 0.7), ("dog", 0.2)), res(("cat", 0.1), ("dog", 0.5))) == 0.0
    assert class_agreement(res(), res()) == 1.0
    assert class_agreement(res(("cat", 0.7)), res()) == 0.0


def test_raw_outputs_agree_by_relative_distance() -> None:
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    assert output_agreement([x], [x.copy()]) == 1.0
    assert output_agreement([x], [x * 1.1]) == pytest.approx(1 - 0.1 / 1.1, abs=1e-6)
    assert output_agreement([x], [-x]) == 0.0  # as far apart as they are large, and more
    assert output_agreement([x], [x[:50]]) == 0.0  # another shape
    assert output_agreement([x], [x, x]) == 0.0
    ra = Result("raw", outputs=(RawOutput("o", (100,), x.tolist()),))
    rb = Result("raw", outputs=(RawOutput("o", (100,), (x + 0.01).tolist()),))
    assert 0.98 < agreement(ra, rb, 0.5) < 1.0
    assert agreement(ra, Result("detection"), 0.5) == 0.0  # another task


def test_probation_verdicts_in_order() -> None:
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(10)]
    out = [np.arange(4, dtype=np.float32)]

    p = Probation("s", need=10, until=1e12, min_agreement=0.8)
    for i in range(9):
        p.observe([out[0] + i], 5.0, input_signature(frames[i]), 0.95)
    assert p.verdict(100.0) is None  # 9 of 10 frames
    p.observe([out[0] + 9], 5.0, input_signature(frames[9]), 0.95)
    assert p.verdict(100.0) == ""
    assert p.figures()["shadow"]["agreement"] == 0.95  # type: ignore[index]

    low = Probation("s", need=10, until=1e12, min_agreement=0.8)
    for i in range(10):
        low.observe([out[0] + i], 5.0, input_signature(frames[i]), 0.5)
    assert "agreement 0.50" in (low.verdict(100.0) or "")

    same = Probation("s", need=10, until=1e12, min_agreement=0.0)
    for i in range(10):  # one answer for ten different frames: it ignores its input
        same.observe(out, 5.0, input_signature(frames[i]), 1.0)
    assert "degenerate" in (same.verdict(100.0) or "")
    still = Probation("s", need=10, until=1e12, min_agreement=0.0)
    for _ in range(10):  # one answer for one frame ten times: a still scene, which is right
        still.observe(out, 5.0, input_signature(frames[0]), 1.0)
    assert still.verdict(100.0) == ""

    slow = Probation("s", need=10, until=1e12, min_agreement=0.0)
    for i in range(10):
        slow.observe([out[0] + i], 500.0, input_signature(frames[i]), 1.0)
    assert "p95" in (slow.verdict(100.0) or "")

    failing = Probation("s", need=10, until=1e12, min_agreement=0.0)
    failing.error("RuntimeError: boom")
    assert "boom" in (failing.verdict(100.0) or "")  # at once, before the count is reached

    # the time is up with too few frames to judge agreement on: nothing showed the model wrong
    idle = Probation("s", need=10, until=0.0, min_agreement=0.8)
    idle.observe(out, 5.0, input_signature(frames[0]), 0.0)
    assert idle.verdict(100.0, now=1.0) == ""
