"""Zones, masks, tracking and object events on scenes cut from real photos, with the real detectors.

The scenes (benchmarks/scenes.py) move real crops (Chelsea the cat, the astronaut's face) along known
paths; the SSD or BlazeFace runs on every frame; py-motmetrics scores the tracks against the truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from benchmarks.bench_tracking import (
    Recorded,
    SceneRun,
    detector,
    events_per_object,
    known_ids,
    load_recorded,
    record,
    run_scene,
    save_recorded,
    score,
    switches_per_crossing,
    transfers,
)
from benchmarks.scenes import FPS, SCENES, Actor, Scene, boxes_at, crossings
from edge_agent.config import ConfigError, SceneConfig, load_settings, masked_dump
from edge_agent.results import Detection, Result
from edge_agent.scene import SceneStage
from edge_agent.tracker import Tracker
from edge_agent.zones import Polygon, inside_any, polygon_problem

from .conftest import SSD_MODEL, needs_shared, scaled

SQUARE = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]]


# --- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("points", "why"),
    [
        ([[0.1, 0.1], [0.9, 0.1]], "at least 3 points"),
        ([[0.1, 0.1], [1.2, 0.1], [0.5, 0.9]], "outside [0, 1]"),
        ([[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]], "edges 0 and 2 cross"),
        ([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]], "no area"),
    ],
)
def test_bad_polygons_are_refused_naming_the_key(points: list[list[float]], why: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"scene": {"zones": [{"name": "door", "points": points}]}})
    assert "scene.zones" in str(err.value) and why in str(err.value)
    with pytest.raises(ConfigError, match=r"scene\.masks"):
        load_settings(None, {"scene": {"masks": [{"points": points}]}})


def test_unknown_zone_in_a_filter_and_duplicate_zones_are_refused() -> None:
    with pytest.raises(ConfigError, match="required_zones: unknown zone 'porch'"):
        load_settings(None, {"scene": {"zones": [{"name": "door", "points": SQUARE}], "required_zones": ["porch"]}})
    with pytest.raises(ConfigError, match="duplicate name door"):
        load_settings(None, {"scene": {"zones": [{"name": "door", "points": SQUARE}] * 2}})
    with pytest.raises(ConfigError, match=r"pipeline 'cam'.*scene\.zones"):
        load_settings(None, {"pipelines": [{"name": "cam", "scene": {"zones": [{"name": "a b", "points": SQUARE}]}}]})


def test_zones_alone_switch_the_scene_stage_on() -> None:
    assert not load_settings(None, {}).scene.active
    assert load_settings(None, {"scene": {"zones": [{"name": "door", "points": SQUARE}]}}).scene.active
    # clips are of object events: asked for alone, they were taken and nothing recorded them
    assert load_settings(None, {"scene": {"clips": {"enabled": True}}}).scene.active
    # set to false on purpose: off, zones and all, as a camera's zones are kept while it is off
    off = load_settings(None, {"scene": {"enabled": False, "zones": [{"name": "door", "points": SQUARE}]}})
    assert not off.scene.active and off.scene.zones[0].name == "door"
    # the scenes `edge-agent config` prints (the effective configuration), written back into a file, run the same
    zone = {"name": "door", "points": SQUARE}
    for form in ({}, {"scene": {"zones": [zone]}}, {"scene": {"clips": {"enabled": True}}},
                 {"pipelines": [{"name": "cam", "scene": {"masks": [{"points": SQUARE}]}}, {"name": "mic"}]}):
        first = load_settings(None, form)
        printed = masked_dump(first)
        scenes = {"pipelines": [{"name": p["name"], "scene": p["scene"]} for p in printed["pipelines"]]}
        again = load_settings(None, scenes if first.pipelines else {"scene": printed["scene"]})
        assert again.scene.active == first.scene.active
        assert [p.scene.active for p in again.pipelines] == [p.scene.active for p in first.pipelines]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"scene": {"labels": ["person"]}}, "scene: labels: set, but the scene is off"),
        ({"scene": {"snapshots": {"enabled": True}}}, "scene: snapshots.enabled: set, but the scene is off"),
        ({"scene": {"tracking": {"min_hits": 3}, "anchor": "center"}}, "scene: anchor (and tracking.min_hits): set"),
        ({"pipelines": [{"name": "cam", "scene": {"snapshots": {"crop": True}}}]},
         "pipeline 'cam': scene: snapshots.crop: set, but the scene is off"),
    ],
)
def test_scene_settings_nothing_turns_on_are_refused_naming_the_key(overrides: dict[str, Any], key: str) -> None:
    """`scene.labels` or a snapshot or tracking setting alone does not turn the scene on: taken, it was never
    read (no track, no event, no snapshot) and nothing said so."""
    with pytest.raises(ConfigError) as err:
        load_settings(None, overrides)
    assert key in str(err.value) and "enabled = true" in str(err.value)
    on = {**overrides["scene"], "enabled": True} if "scene" in overrides else None
    if on is not None:  # turned on, or off on purpose, the same settings are taken
        assert load_settings(None, {"scene": on}).scene.active
        assert not load_settings(None, {"scene": {**on, "enabled": False}}).scene.active


def test_scene_settings_with_the_scene_off_are_refused_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_SCENE__TRACKING__MAX_AGE_S", "5")
    with pytest.raises(ConfigError, match=r"scene: tracking\.max_age_s: set, but the scene is off"):
        load_settings(None, {})
    assert load_settings(None, {"scene": {"enabled": True}}).scene.tracking.max_age_s == 5


# --- geometry ----------------------------------------------------------------------------------
@st.composite
def _polygon(draw: Any) -> list[list[float]]:
    """A simple polygon: random points sorted by angle round their centre (a star-shaped polygon)."""
    n = draw(st.integers(3, 9))
    pts = np.array(draw(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=n, max_size=n)))
    c = pts.mean(axis=0)
    order = np.argsort(np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0]))
    return [[float(x), float(y)] for x, y in pts[order]]


@settings(max_examples=150, deadline=None)
@given(_polygon(), st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30))
@example([[0.0, 2.2250738585e-313], [0.5, 0.0], [0.0, 1.0]], [(1.0, 0.0)])  # a nearly flat edge
def test_point_in_polygon_agrees_with_opencv(points: list[list[float]], xy: list[tuple[float, float]]) -> None:
    if polygon_problem(points) is not None:
        return  # degenerate (repeated points, no area): the configuration refuses it
    poly = Polygon(points)
    got = inside_any([poly, poly], np.array(xy))
    contour = (np.array(points) * 10_000).astype(np.float32).reshape(-1, 1, 2)
    for (x, y), g, single in zip(xy, got[:, 0], poly.contains(np.array(xy)), strict=True):
        d = cv2.pointPolygonTest(contour, (x * 10_000, y * 10_000), True)
        if abs(d) > 1.0:  # on an edge either answer is right
            assert bool(g) == (d > 0) == bool(single)
    assert (got[:, 0] == got[:, 1]).all()


# --- the tracker's shortcuts agree with the general forms -------------------------------------------
_BOX = st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.005, 0.5), st.floats(0.005, 0.5)).map(
    lambda b: (b[0], b[1], min(1.0, b[0] + b[2]), min(1.0, b[1] + b[3]))
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_BOX, min_size=1, max_size=10), st.lists(_BOX, min_size=1, max_size=10),
       st.lists(st.booleans(), min_size=10, max_size=10), st.data())
def test_boxes_round_two_in_arrays_agree_with_the_rule(predicted: list[tuple[float, ...]],
                                                       found: list[tuple[float, ...]], confirmed: list[bool],
                                                       data: Any) -> None:
    """The boxes round two tracked objects are found for all detections at once in arrays; each must be
    what the rule says, box by box in plain floats: a detection that at least two confirmed tracks
    want (IoU 0.2 or more), holding 80 % of each one's predicted box, and over 1.2 times the largest."""
    from edge_agent.tracker import Track, _overlap, _round_two

    p = np.array(predicted, np.float64)
    # add boxes round pairs of predicted boxes, a little wider or not, so that the rule has work to do
    pairs = data.draw(st.lists(st.tuples(st.integers(0, len(p) - 1), st.integers(0, len(p) - 1),
                                         st.floats(0.0, 0.05)), max_size=4))
    d = np.array(found + [(min(p[i, 0], p[j, 0]) - g, min(p[i, 1], p[j, 1]) - g,
                           max(p[i, 2], p[j, 2]) + g, max(p[i, 3], p[j, 3]) + g) for i, j, g in pairs], np.float64)
    tracks = [Track(k + 1, "cat", 0, 0, 1, 1, 0.9, 0, 0, confirmed=confirmed[k]) for k in range(len(p))]
    inter, area_t, area_d = _overlap(p, d)
    iou = inter / np.maximum(area_t + area_d - inter, 1e-12)
    cand = iou >= 0.2
    held = (inter >= 0.8 * area_t) & cand
    got = _round_two(tracks, held, area_t, area_d, not all(t.confirmed for t in tracks))

    def area(b: Any) -> float:
        return float((b[2] - b[0]) * (b[3] - b[1]))

    want = []
    for c, (x1, y1, x2, y2) in enumerate(d.tolist()):
        inside = []
        for r, (a1, b1, a2, b2) in enumerate(p.tolist()):
            iw, ih = max(0.0, min(a2, x2) - max(a1, x1)), max(0.0, min(b2, y2) - max(b1, y1))
            both = iw * ih
            overlap = both / max(area((a1, b1, a2, b2)) + area((x1, y1, x2, y2)) - both, 1e-12)
            if tracks[r].confirmed and overlap >= 0.2 and both >= 0.8 * area((a1, b1, a2, b2)):
                inside.append(area((a1, b1, a2, b2)))
        if len(inside) >= 2 and area((x1, y1, x2, y2)) > 1.2 * max(inside):
            want.append(c)
    assert got == want


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0.05, 0.6))
def test_the_assignment_shortcut_is_as_good_as_the_solver(n: int, m: int, seed: int, min_iou: float) -> None:
    """Rows whose best columns are all different take them; otherwise the solver decides. The total
    IoU is the solver's either way, and every pair clears the threshold."""
    import lap

    from edge_agent.tracker import assign

    rng = np.random.default_rng(seed)
    iou = rng.uniform(0, 1, (n, m)) * (rng.uniform(0, 1, (n, m)) < 0.4)  # sparse, as boxes are
    got = assign(1.0 - iou, 1.0 - min_iou)
    _, rows, _ = lap.lapjv(1.0 - iou, extend_cost=True, cost_limit=1.0 - min_iou)
    best = [(r, int(c)) for r, c in enumerate(rows) if c >= 0]
    assert len({r for r, _ in got}) == len(got) and len({c for _, c in got}) == len(got)
    assert all(iou[r, c] > min_iou for r, c in got)
    assert sum(iou[r, c] - min_iou for r, c in got) == pytest.approx(sum(iou[r, c] - min_iou for r, c in best))


# --- tracking on real detections ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ssd() -> Any:
    if not SSD_MODEL.is_file():
        pytest.skip("../shared/models is absent (a plain clone has no shared test models)")
    m = detector("ssd")
    yield m
    m.close()


def test_the_truth_of_each_sprite_is_where_the_detector_boxes_it(ssd: Any) -> None:
    """Each random crossing's truth box is marked by hand inside its sprite; the detector that finds
    that sprite must box it there, alone on the grass, wherever it is drawn (the man cut from the
    cameraman photo included: his box stops at his hair and at the hand holding the camera, not at the
    crop's sky and tripod; the cup, which it also calls a traffic light, under either label)."""
    from benchmarks.scenes import ALSO_CALLED, DETECTOR, render
    from edge_agent.tracker import iou_matrix

    for sprite in sorted(DETECTOR):
        if DETECTOR[sprite] != "ssd":
            continue
        scene = Scene(f"alone_{sprite}", "ssd", 9, (Actor(sprite, (20, 20), (440, 260)),))
        for i, (img, truth) in enumerate(render(scene)):
            if i % 4:
                continue
            ((_, label, box),) = truth
            names = (label, *ALSO_CALLED.get(sprite, ()))
            found = [d.box for d in ssd.infer(img).result.detections if d.label in names]
            best = float(iou_matrix(np.array([box]), np.array(found).reshape(-1, 4)).max(initial=0.0))
            assert best >= 0.7, (sprite, i, box, found)


def test_faces_crossing_keep_their_ids() -> None:
    run = run_scene("faces_crossing")
    s = score(run)
    assert s["idf1"] >= 0.9 and s["num_switches"] == 0, s
    assert all(c == {"new": 1, "update": c["update"], "end": 1} for c in events_per_object(run).values())
    assert len(events_per_object(run)) == 2


@needs_shared
def test_cat_behind_a_pillar_is_one_object(ssd: Any) -> None:
    run = run_scene("cat_behind_pillar", ssd)
    hidden = sum(1 for t in run.truth if not t)
    assert hidden >= 15  # it really was out of sight for a second
    s = score(run)
    assert s["num_switches"] == 0 and s["idf1"] >= 0.9, s
    assert [e["type"] for e in run.events if e["type"] != "update"] == ["new", "end"]


@needs_shared
def test_cats_crossing_at_most_one_switch(ssd: Any) -> None:
    run = run_scene("cats_crossing", ssd)
    s = score(run)
    assert s["num_switches"] <= 1 and s["idf1"] >= 0.9, s
    per = events_per_object(run)
    assert sum(c["new"] for c in per.values()) == 2 and all(c["new"] == c["end"] == 1 for c in per.values())


@pytest.mark.parametrize("every", [1, 2])
def test_id_switches_are_counted_per_crossing(every: int) -> None:
    """Three objects: two cross, the third stays apart. The benchmark gives each ID switch to the
    crossing of its object nearest in time, and counts apart those of an object that crosses nothing."""
    scene = Scene("three", "ssd", 60, (Actor("cat", (0, 0), (400, 0)), Actor("cat", (400, 0), (0, 0)),
                                        Actor("cat", (0, 270), (0, 270))))
    met = crossings(scene)
    assert [(a, b) for a, b, *_ in met] == [(1, 2)] and met[0][2] < 30 < met[0][3]
    run = SceneRun("three", 0, [], [])
    for i in range(0, scene.frames, every):
        boxes = boxes_at(scene, i)
        run.frames += 1
        run.truth.append([(k, "cat", b) for k, b in boxes.items()])
        # the first object's track changes id twice, once as the pair meet and once just after it;
        # the third's once, far from any crossing
        first = 10 if i < 28 else 11 if i < 40 else 12
        run.tracks.append([(first, "cat", boxes[1]), (20, "cat", boxes[2]), (30 if i < 50 else 31, "cat", boxes[3])])
    assert score(run)["num_switches"] == 3
    assert switches_per_crossing(run, scene, every) == ([2], 1)

    # all three meet at once, and the first takes the third's track: the switch is that crossing's,
    # though the first meets the second at the same time; the third's new track goes with it
    scene = Scene("pile", "ssd", 60, (Actor("cat", (0, 100), (400, 100)), Actor("cat", (400, 160), (0, 160)),
                                      Actor("cat", (200, 40), (200, 40))))
    assert [(a, b) for a, b, *_ in crossings(scene)] == [(1, 2), (1, 3), (2, 3)]
    run = SceneRun("pile", 0, [], [])
    for i in range(0, scene.frames, every):
        boxes = boxes_at(scene, i)
        run.frames += 1
        run.truth.append([(k, "cat", b) for k, b in boxes.items()])
        swapped = i >= 20
        run.tracks.append([(30 if swapped else 10, "cat", boxes[1]), (20, "cat", boxes[2]),
                           (31 if swapped else 30, "cat", boxes[3])])
    assert score(run)["num_switches"] == 2
    assert switches_per_crossing(run, scene, every) == ([0, 2, 0], 0)
    assert transfers(run) == (1, 0)  # the third's track went on with the first


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("hidden", [False, True])
def test_a_track_going_on_with_another_object_is_counted_as_a_transfer(every: int, hidden: bool) -> None:
    """A track that leaves its object for another, untracked one is an identity error that the count of
    ID switches leaves out (only the object that lost its track switched): the benchmark counts it as a
    transfer, and says whether the object the track had followed was hidden at that moment (out of the
    truth: a third object of its kind drawn over it)."""
    scene = Scene("pair", "ssd", 60, (Actor("cat", (0, 0), (400, 0)), Actor("cat", (400, 0), (0, 0))))
    run = SceneRun("pair", 0, [], [])
    for i in range(0, scene.frames, every):
        boxes = boxes_at(scene, i)
        run.frames += 1
        gone = hidden and 50 <= i < 56  # the first object out of sight as its track moves on
        run.truth.append([(k, "cat", b) for k, b in boxes.items() if not (gone and k == 1)])
        if i < 50:  # the second object untracked, the first on track 10
            run.tracks.append([(10, "cat", boxes[1])])
        else:  # once they are apart, track 10 on the second; the first, in sight, on a new track
            run.tracks.append([(10, "cat", boxes[2])] + ([] if gone else [(11, "cat", boxes[1])]))
    s = score(run)
    assert (s["num_switches"], s["num_transfer"]) == (1, 1), s
    assert switches_per_crossing(run, scene, every) == ([1], 0)
    assert transfers(run) == (1, int(hidden))


@needs_shared
@pytest.mark.parametrize(
    "name",
    [
        *("cats_crossing", "cats_crossing_level", "cats_crossing_diagonal", "cats_fast_and_slow"),
        *("random13_0_cat", "random13_8_cat", "random13_12_cat", "random7_1_cat"),
        *("random1_5_apple", "random2_2_apple", "random3_14_apple", "random1_8_apple"),
        *("random21_13_apple", "random19_15_apple", "random31_13_apple"),
        *("random1_7_cup", "random8_5_cup", "random4_4_cup", "random3_8_cup", "random2_10_cup"),
        "random2_3_cup",
    ],
)
def test_crossings_hold_whatever_the_scores_do(ssd: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids of crossing cats must not hang on the exact scores the detector gives: another platform's
    arithmetic moves them (the SSD's scores on arm64 differ from x86-64's by up to 0.02 here, enough to
    put a partly hidden cat on the other side of the confident-detection threshold). The SSD's
    detections on each crossing, replayed with every score moved up and down, give at most one id
    switch and exactly one object event per cat each time. The last four are crossings drawn at
    random (`benchmarks/scenes.py`, seeds 13 and 7), none of the named scenes. The three of seed 13
    gave two ID switches at some of these shifts while the velocity was smoothed from frame-to-frame
    differences (the hidden cat's track, sent off by a few jittering boxes, missed it as it came
    out); `random7_1_cat` gave two while a track took its whole position from boxes widened over the
    pair (the front cat's track, drawn towards the other, fell behind its cat). The apples (cut from
    the shared photo of fruit, an object the tracker was never tuned on; only the label `apple`
    tracked, as a user would set it) gave two or more at most shifts while a part of the apple coming
    out from behind the other, boxed beside its whole box, started a track of its own (`random1_5`),
    as did the apple again with some of its neighbour (`random2_2`), and while a faint box both
    tracks fitted alike went to the hidden apple's (`random3_14`); and while a box over the two
    apples' facing halves started a track (`random21_13`), and a faint box round one that went to
    neither went to the hidden apple's track (`random19_15`); and while the hidden apple's coasting
    track moved most of the way to a box of the pair it took, and lost its apple as it came out
    (`random31_13`). The cups (cut from scikit-image's coffee photo; every label tracked) the SSD
    names a cup, a traffic light or a toilet from one frame to the next: they gave two to four ID
    switches and a third object at every shift while a box under a name neither cup's track had went
    past the checks for a box two tracks want, to the track it fitted a hair better, and a box over the
    pair under another name than theirs started a track; the last two gave two at some shifts until a
    single box under another name, a lone cup's own, made the names one kind
    (`test_one_box_of_another_label_that_is_a_lone_track_s_own_makes_them_one_kind`); and `random2_3_cup`
    gave two at four of the five shifts while a cut box of a cup, under the cup's own name, inside the box its track
    took under another, started a track
    (`test_a_box_of_a_track_s_kind_inside_the_box_it_took_under_another_name_is_no_new_object`)."""
    cfg = None
    if name not in SCENES:
        from benchmarks.scenes import random_scenes

        seed_text, _, kind = name.removeprefix("random").partition("_")
        kinds = ("apple",) if kind.endswith("apple") else ("cup",) if kind.endswith("cup") else ("cat", "cat", "face")
        cfg = {"labels": ["apple"]} if kinds == ("apple",) else None
        drawn = random_scenes(int(seed_text), 16, kinds)
        monkeypatch.setitem(SCENES, name, next(sc for sc in drawn if sc.name == name))
    results, threshold = record(name, ssd)
    for shift in (-0.04, -0.02, 0.0, 0.02, 0.04):
        run = run_scene(name, Recorded(results, shift, threshold), cfg)
        s = score(run)
        per = events_per_object(run)
        assert s["num_switches"] <= 1, (shift, s)
        assert sorted(c["new"] for c in per.values()) == [1, 1], (shift, per)
        assert all(c["end"] == 1 for c in per.values()), (shift, per)


@needs_shared
@pytest.mark.parametrize("name", ["random4_2_cat", "random20_14_cat"])
def test_a_cat_boxed_twice_as_it_comes_into_view_keeps_one_id(
    ssd: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crossings drawn at random (`benchmarks/scenes.py`; seed 20 was drawn after the tracker's other
    rules were settled) where the SSD boxes a cat coming into view twice, whole and with what is below
    it, the second box under the confident-detection threshold by less than 0.06: with the scores
    moved up by that much, it started a second track on the cat in the same frame as the first, and the
    two took the cat's boxes in turn (four ID switches in each). The detections replayed with every
    score moved from -0.06 to +0.06: at most one switch and one event per cat each time."""
    from benchmarks.scenes import random_scenes

    drawn = random_scenes(int(name.removeprefix("random").partition("_")[0]), 16)
    monkeypatch.setitem(SCENES, name, next(sc for sc in drawn if sc.name == name))
    results, threshold = record(name, ssd)
    for shift in (-0.06, -0.04, -0.02, 0.0, 0.02, 0.04, 0.06):
        run = run_scene(name, Recorded(results, shift, threshold))
        per = events_per_object(run)
        assert score(run)["num_switches"] <= 1, shift
        assert sorted(c["new"] for c in per.values()) == [1, 1], (shift, per)
        assert all(c["end"] == 1 for c in per.values()), (shift, per)


def test_a_face_hidden_behind_another_comes_out_with_its_own_id() -> None:
    """A crossing the tracker was not tuned on (`random_scenes(1, 5)`, the fifth: one face passes
    behind the other and is hidden for 12 frames). Partly hidden just before, its face's box shrinks
    and moves towards the visible part; learnt as motion, that sent its track off, and the face came
    out as a third object. The real BlazeFace on every frame: two objects, one event each, no switch."""
    from benchmarks.scenes import random_scenes

    scene = random_scenes(1, 5)[4]
    assert scene.name == "random1_4_face"
    SCENES[scene.name] = scene
    try:
        run = run_scene(scene.name)
    finally:
        del SCENES[scene.name]
    s = score(run)
    assert s["num_switches"] == 0 and s["idf1"] >= 0.9, s
    per = events_per_object(run)
    assert len(per) == 2 and all(c["new"] == c["end"] == 1 for c in per.values()), per


def test_recorded_detections_replay_exactly(tmp_path: Path) -> None:
    """`bench_tracking.py --record` on one platform and `--replay` on another must score exactly what
    the detector found there: written and read back, the detections give the same tracks."""
    results, threshold = record("faces_crossing")
    save_recorded(tmp_path / "d.json", {"faces_crossing": (results, threshold)})
    back, t2 = load_recorded(tmp_path / "d.json")["faces_crossing"]
    assert back == results and t2 == threshold and sum(len(r.detections) for r in back) > 60
    a = run_scene("faces_crossing", Recorded(results, 0.0, threshold))
    assert a.tracks == run_scene("faces_crossing", Recorded(back, 0.0, t2)).tracks
    # the bound the benchmark prints beside the tracker's score: each box given its object's id
    bound, own = score(known_ids(a, results, threshold, None)), score(a)
    assert bound["num_switches"] == 0 and bound["num_false_positives"] == 0 and bound["idf1"] >= own["idf1"]
    assert score(known_ids(a, results, threshold, {"cat"}))["idf1"] == 0.0  # no face box is a tracked label


@needs_shared
def test_walking_through_a_zone(ssd: Any, tmp_path: Path) -> None:
    scene = SCENES["cat_through_zone"]
    run = run_scene("cat_through_zone", ssd)
    new = [e for e in run.events if e["type"] == "new"]
    end = [e for e in run.events if e["type"] == "end"]
    assert len(new) == 1 and len(end) == 1 and new[0]["id"] == end[0]["id"]
    e = end[0]
    assert [v["zone"] for v in e["entered_zones"]] == ["zone"]  # once in, once out: no flicker entries
    visit = e["entered_zones"][0]
    assert visit["left_ts"] is not None and visit["entered_ts"] < visit["left_ts"] <= e["end_ts"]
    # the cat's anchor (bottom centre) crosses x = 0.35..0.65 of 640 px; it moves 580 px in 74 frames
    speed = 580 / (scene.frames - 1) * FPS
    expected = (0.30 * 640) / speed
    assert e["dwell_s"]["zone"] == pytest.approx(expected, abs=0.5)
    counts = [c[("zone", "cat")] for c in run.counts if ("zone", "cat") in c]
    assert counts == [1, 0]  # the retained count changes twice: in, out
    assert e["snapshot"]["url"].endswith(f"{e['id']}.jpg") and e["score"] >= 0.5


@needs_shared
def test_a_mask_drops_what_is_inside_it(ssd: Any) -> None:
    whole = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    run = run_scene("cat_through_zone", ssd, {"masks": [{"points": whole}]})
    assert run.events == [] and all(not t for t in run.tracks)
    other = run_scene("cat_through_zone", ssd, {"masks": [{"points": whole, "labels": ["dog"]}]})
    assert len([e for e in other.events if e["type"] == "new"]) == 1  # a mask for dogs leaves the cat


# --- snapshots and clips -----------------------------------------------------------------------
def _walk(stage: SceneStage, frames: int, t0: float = 1000.0) -> list[dict[str, Any]]:
    """A bright square walking left to right; its detection, as a detector would report it."""
    events = []
    for i in range(frames):
        img = np.full((240, 320, 3), 40, np.uint8)
        x = 10 + i * 8
        cv2.rectangle(img, (x, 80), (x + 60, 160), (255, 255, 255), cv2.FILLED)
        box = (float(x), 80.0, float(x + 60), 160.0)
        det = Detection("box", 0, 0.6 + 0.01 * (i % 20), box, (box[0] / 320, box[1] / 240, box[2] / 320, box[3] / 240))
        out = stage.process(Result(task="detection", detections=(det,)), t0 + i / FPS, img)
        events += out.events
    return events


def test_the_wall_clock_set_back_mid_track_keeps_the_track_and_moves_its_times(tmp_path: Path) -> None:
    """A board without a real-time clock has its wall clock set at once when it reaches a time server,
    back as well as forward. Tracks and zones run on the monotonic clock: an object walking through as
    the clock is set back an hour keeps its track (one `new`, one `end`), its dwell is the time it
    spent, and its times are published on the wall clock as it now stands. (The tracker given a clock
    that steps back raised OverflowError on every frame after it.)"""
    zone = {"name": "all", "points": [[0, 0], [1, 0], [1, 1], [0, 1]], "inertia": 1}
    stage = SceneStage(SceneConfig(enabled=True, zones=[zone], snapshots={"enabled": False}), "cam", tmp_path)
    wall, mono, events = 1_800_000_000.0, 500.0, []
    for i in range(45):
        if i == 20:
            wall -= 3600.0  # the time server's answer
        box = (10.0 + 8 * i, 80.0, 70.0 + 8 * i, 160.0)
        det = Detection("box", 0, 0.8, box, (box[0] / 640, box[1] / 480, box[2] / 640, box[3] / 480))
        out = stage.process(Result(task="detection", detections=(det,)), wall + i / FPS, None, mono + i / FPS)
        assert [x.get("track_id") for x in out.extras] == ([None] if i == 0 else [1])  # confirmed at 2
        events += out.events
    events += stage.end_all(wall + 45 / FPS).events
    assert [e["type"] for e in events if e["type"] != "update"] == ["new", "end"], events
    new, end = events[0], events[-1]
    assert new["start_ts"] == pytest.approx(1_800_000_000.0, abs=1e-3)  # as the clock stood then
    assert end["start_ts"] == pytest.approx(1_800_000_000.0 - 3600.0, abs=1e-3)  # moved with it
    assert end["end_ts"] == pytest.approx(wall + 44 / FPS, abs=1e-3)
    assert end["dwell_s"]["all"] == pytest.approx(43 / FPS, abs=1e-3)  # in the zone from its second frame on


def test_a_tracker_given_a_clock_that_steps_back_keeps_its_tracks() -> None:
    tracker = Tracker()
    for i in range(30):
        ts = 1000.0 + i / FPS - (3600.0 if i >= 15 else 0.0)
        box = np.array([[0.1 + 0.01 * i, 0.2, 0.2 + 0.01 * i, 0.4]])
        up = tracker.update(box, np.array([0.9]), ["box"], ts)
        assert up.ids == [1] and not up.ended
    assert tracker.tracks[0].vx == pytest.approx(0.01 * FPS, rel=0.05)  # its velocity learnt through the step


def test_snapshot_is_a_readable_jpeg_of_the_object(tmp_path: Path) -> None:
    stage = SceneStage(SceneConfig(enabled=True, snapshots={"max_bytes": 20_000, "crop": True}), "cam", tmp_path)
    events = _walk(stage, 30)
    out = stage.end_all(2000.0)
    stage.close()
    end = next(e for e in events + out.events if e["type"] == "end")
    path = tmp_path / "snapshots" / "cam" / f"{end['id']}.jpg"
    data = path.read_bytes()
    assert len(data) <= 20_000
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 50
    # the crop is centred on the white square, and the label sits on a filled box above it
    h, w = img.shape[:2]
    assert img[h // 2, w // 2].mean() > 200


@pytest.mark.parametrize("crop", [False, True])
def test_an_object_holds_its_snapshots_picture_not_a_camera_frame(tmp_path: Path, crop: bool) -> None:
    """Objects that stay for hours (parked cars) each hold the picture of their best moment until their
    event ends. From a 4K camera that is 25 MB a frame; once its best has stood two seconds, each holds
    what its snapshot will show, at most `snapshots.max_width` wide (the object's surroundings with
    `crop`, copied out of the frame), and the snapshot still shows the object in its box. Until then it
    holds the frame itself: a track's score rises over its first frames, and each new best costs
    nothing on the frame's path. A frame no wider is held as it is, not copied. Before, each held the
    whole frame until its event ended."""
    from edge_agent.snapshots import Best

    cfg = SceneConfig(enabled=True, snapshots={"crop": crop, "max_width": 640})
    frame = np.full((2160, 3840, 3), 40, np.uint8)
    box = (2000.0, 1000.0, 2400.0, 1400.0)
    frame[1000:1400, 2000:2400] = 255
    best = Best.take(frame, box, 0.9, 1000.0, cfg.snapshots)
    assert best.image.shape[1] <= 640 and not np.shares_memory(best.image, frame)
    assert best.image.nbytes * 20 < frame.nbytes
    x1, y1, x2, y2 = (round(v) for v in best.box)
    assert best.image[(y1 + y2) // 2, (x1 + x2) // 2].min() == 255  # the object, where the box says
    assert best.image[y1 - 5, x1 - 5].max() == 40  # and around it, the frame
    small = np.full((480, 640, 3), 40, np.uint8)
    kept = Best.take(small, (100.0, 100.0, 200.0, 200.0), 0.9, 1000.0, cfg.snapshots)
    assert (kept.image is small) == (not crop)

    stage = SceneStage(cfg, "cam", tmp_path)
    held: list[Any] = []
    snaps: list[bytes] = []
    for i in range(60):  # 4 s at 15 fps; the score rises over the first six frames
        d = Detection("car", 0, 0.8 + min(i, 5) / 100, box,
                      (box[0] / 3840, box[1] / 2160, box[2] / 3840, box[3] / 2160))
        out = stage.process(Result(task="detection", detections=(d,)), 1000.0 + i / 15, frame)
        snaps += [j for _, j in out.snapshots]
        held.append(next(iter(stage.objects.values())).best if stage.objects else None)
    assert held[5] is not None and held[5].image is frame  # the new best, as it came
    assert held[-1] is not None and held[-1].image.shape[1] <= 640 and held[-1].score == pytest.approx(0.85)
    end = stage.end_all(1005.0)
    stage.close()
    jpeg = (snaps + [j for _, j in end.snapshots])[-1]
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] <= 640
    h, w = img.shape[:2]
    y, x = (h // 2, w // 2) if crop else (h * 1200 // 2160, w * 2200 // 3840)  # the object's centre
    assert img[y, x].mean() > 200


def test_clip_covers_the_event_with_its_margins(tmp_path: Path) -> None:
    cfg = SceneConfig(enabled=True, clips={"enabled": True, "pre_s": 1.0, "post_s": 1.0, "fps": 10.0})
    stage = SceneStage(cfg, "cam", tmp_path)
    for i in range(15):  # an empty second before the object comes
        stage.process(Result(task="detection"), 1000.0 + i / FPS - 1.0, np.zeros((240, 320, 3), np.uint8))
    events = _walk(stage, 30)  # 2 s in view
    blank = np.zeros((240, 320, 3), np.uint8)  # the track ends after max_age_s, then post_s passes
    quiet = [stage.process(Result(task="detection"), 1000.0 + (30 + i) / FPS, blank) for i in range(60)]
    events += [e for q in quiet for e in q.events]
    stage.close()
    end = next(e for e in events if e["type"] == "end")
    clip = tmp_path / "clips" / "cam" / f"{end['id']}.avi"
    cap = cv2.VideoCapture(str(clip))
    n, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape[:2] == (240, 320)
    expected = (end["end_ts"] - end["start_ts"]) + 1.0 + 1.0
    assert n / fps == pytest.approx(expected, abs=0.4), (n, fps)
    assert stage.clips is not None and stage.clips.health()["written"] == 1


def test_a_read_only_disk_loses_media_not_detections(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        media = tmp_path / "media"
        media.write_text("a file where the directories should go")  # mkdir fails even for root
        state = media
    else:
        state = tmp_path / "ro"
        state.mkdir(mode=0o500)
    cfg = SceneConfig(enabled=True, clips={"enabled": True, "pre_s": 0.0, "post_s": 0.0})
    stage = SceneStage(cfg, "cam", state)
    events = _walk(stage, 20)
    out = stage.end_all(2000.0)
    stage.close()
    assert [e["type"] for e in events + out.events if e["type"] != "update"] == ["new", "end"]
    h = stage.health()
    assert h["snapshots"]["error"] and h["clips"]["error"], h


def test_a_hidden_object_does_not_take_the_box_round_the_pair() -> None:
    """B walks behind A and is missed; the detector then reports A's own box and one round both. The
    box round both must not carry B's track (it would drag B onto A); B's track coasts and takes B's
    own box when B comes out. While B's predicted box lies exactly on A's, A's box is no one's (no
    telling which object it shows); it is A's again as soon as B's motion has moved on. A near
    object's box round a far one is not a pair: it keeps its track."""
    tr = Tracker(min_hits=1)
    a = [0.40, 0.40, 0.60, 0.70]
    ids = tr.update(np.array([a, [0.10, 0.42, 0.30, 0.72]]), np.array([0.9, 0.9]), ["cat", "cat"], 0.0).ids
    id_a, id_b = ids
    for i in range(1, 6):  # B moves right, 0.05 a frame, towards A
        x = 0.10 + 0.05 * i
        up = tr.update(np.array([a, [x, 0.42, x + 0.2, 0.72]]), np.array([0.9, 0.9]), ["cat", "cat"], i / 15)
        assert up.ids == [id_a, id_b]
    hidden = [tr.update(np.array([a]), np.array([0.9]), ["cat"], i / 15).ids for i in (6, 7)]  # only A is seen
    assert hidden == [[None], [id_a]], hidden
    for i in range(8, 10):  # A's box, and one round A and where B is
        up = tr.update(np.array([a, [0.38, 0.38, 0.72, 0.74]]), np.array([0.9, 0.9]), ["cat", "cat"], i / 15)
        assert up.ids[0] == id_a and up.ids[1] != id_b, up.ids
    x = 0.10 + 0.05 * 10  # B comes out on A's right, where its motion says
    up = tr.update(np.array([a, [x, 0.42, x + 0.2, 0.72]]), np.array([0.9, 0.9]), ["cat", "cat"], 10 / 15)
    assert up.ids == [id_a, id_b]

    near = Tracker(min_hits=1)  # a person close to the camera, another far behind, inside their box
    big, small = [0.20, 0.10, 0.80, 0.95], [0.40, 0.30, 0.50, 0.50]
    first = near.update(np.array([big, small]), np.array([0.9, 0.9]), ["person", "person"], 0.0).ids
    for i in range(1, 5):
        assert near.update(np.array([big, small]), np.array([0.9, 0.9]), ["person", "person"], i / 15).ids == first


def _round_both(a: list[float], b: list[float]) -> list[float]:
    return [min(a[0], b[0]) - 0.01, min(a[1], b[1]) - 0.01, max(a[2], b[2]) + 0.01, max(a[3], b[3]) + 0.01]


@pytest.mark.parametrize("merged", ["round both", "the front one"])
def test_two_objects_seen_as_one_leave_with_their_own_ids(merged: str) -> None:
    """A walks right, B walks left in front of it. As they close in, the detector's box of B hangs back
    towards A (its centre moves slower than B) and a box round both appears; then, for five frames, it
    sees one box only (round both, or B's own). Neither box may teach a track its motion, and neither
    track may be dragged off by the single box: each leaves the crossing with its own id, and no id
    is created."""
    tr = Tracker()
    ids: list[list[int | None]] = []
    for i in range(26):
        xa, xb = 0.04 * i, 0.84 - 0.04 * i
        a, b = [xa, 0.40, xa + 0.16, 0.70], [xb, 0.42, xb + 0.16, 0.72]
        if 6 <= i <= 8:
            lag = 0.03 * (i - 5)
            boxes = [a, [b[0] + lag, b[1], b[2] + lag, b[3]], _round_both(a, b)]
        elif 9 <= i <= 13:
            boxes = [_round_both(a, b) if merged == "round both" else b]
        else:
            boxes = [a, b]
        ids.append(tr.update(np.array(boxes), np.full(len(boxes), 0.9), ["cat"] * len(boxes), i / 15).ids)
    assert ids[:6] == [[1, 2]] * 6 and ids[-8:] == [[1, 2]] * 8, ids
    assert tr.created == 2


@pytest.mark.parametrize("fps", [5, 15, 30])
def test_the_velocity_is_fitted_through_jittering_boxes(fps: int) -> None:
    """An object crosses the frame at 0.15 of its width a second, its boxes jittering by up to 0.005
    either way (a detector's few pixels). From half a second on, the velocity stays within 10 % of the
    truth, and the vertical one within 15 % of the speed, at every frame rate: where a hidden object
    is looked for hangs on it. A velocity smoothed from frame-to-frame differences (the tracker's
    earlier one, gain 0.5) fails this at each of these rates."""
    rng = np.random.default_rng(7)
    tr = Tracker(min_hits=1)
    errors = []
    for i in range(4 * fps):
        ts = 1_700_000_000.0 + i / fps  # wall-clock times, as in the agent
        x = 0.1 + 0.15 * i / fps + rng.uniform(-0.005, 0.005)
        y = 0.4 + rng.uniform(-0.005, 0.005)
        tr.update(np.array([[x, y, x + 0.2, y + 0.3]]), np.array([0.9]), ["cat"], ts)
        (t,) = tr.tracks
        if i >= fps // 2:
            errors.append((abs(t.vx - 0.15) / 0.15, abs(t.vy) / 0.15))
    assert max(e[0] for e in errors) < 0.1 and max(e[1] for e in errors) < 0.15, errors


def test_the_velocity_learnt_at_the_frames_edge_does_not_hang_on_the_frame_rate() -> None:
    """An object comes in through the frame's left edge, its box cut there and growing. A box that
    changed its area by more than a third from one frame to the next teaches no motion (it is cut or
    hidden), a bound set for 15 fps: at 5 fps the same motion changes the area three frames' worth,
    and the track learnt no velocity until the object was wholly in view (and met a crossing
    standing still). The bound is per second of the camera's frame interval: the velocity at 5 fps
    follows the one at 15 fps at every one of its frames."""

    def velocities(fps: int) -> dict[int, float]:
        tr = Tracker(min_hits=1)
        out = {}
        for i in range(int(1.4 * fps) + 1):
            t = i / fps
            x = -0.27 + 0.3 * t  # the object's left edge, 0.3 of the frame's width wide, 0.3 a second
            tr.update(np.array([[max(0.0, x), 0.3, x + 0.3, 0.6]]), np.array([0.9]), ["cat"], 1_700_000_000.0 + t)
            out[round(t * 1000)] = tr.tracks[0].vx
        return out

    slow, fast = velocities(5), velocities(15)
    assert all(abs(v - fast[ms]) < 0.02 for ms, v in slow.items()), (slow, fast)
    assert slow[600] > 0.1, slow


@pytest.mark.parametrize("other", [True, False])
def test_a_box_cut_by_an_object_in_front_teaches_no_motion(other: bool) -> None:
    """A walks right at 0.02 a frame. Then its box jumps 0.05 to the right (cut by B coming in front of
    it, only A's right part is seen): where that box overlaps B's predicted box, A's track takes the
    position but keeps its velocity, so that while hidden it goes on where A goes. Alone (no B), the
    same jump is A's own motion, and the velocity learns from it."""
    tr = Tracker(min_hits=1)
    b_box = [0.45, 0.40, 0.61, 0.70]  # B stands still, just right of where A's box will be
    for i in range(8):
        xa = 0.10 + 0.02 * i
        boxes = [[xa, 0.40, xa + 0.16, 0.70]] + ([b_box] if other else [])
        tr.update(np.array(boxes), np.full(len(boxes), 0.9), ["cat"] * len(boxes), i / 15)
    track_a = next(t for t in tr.tracks if t.id == 1)
    vx = track_a.vx
    assert abs(vx - 0.02 * 15) < 0.05, vx
    xa = 0.10 + 0.02 * 8 + 0.05  # cut: the box's left edge jumps, its right edge now over B's box
    boxes = [[xa + 0.03, 0.40, xa + 0.18, 0.70]] + ([b_box] if other else [])
    ids = tr.update(np.array(boxes), np.full(len(boxes), 0.9), ["cat"] * len(boxes), 8 / 15).ids
    assert ids[0] == 1
    if other:
        assert track_a.vx == vx  # position only
    else:
        assert track_a.vx > vx + 0.05  # the jump, learnt as motion (one point of the fit over the last centres)


@pytest.mark.parametrize("hidden", [True, False])
def test_a_track_that_lost_its_object_is_not_dragged_onto_its_neighbour(hidden: bool) -> None:
    """B walks right towards A, which stands still, and (`hidden`) is missed for two frames behind it.
    Then the detector reports A's box and one of B's size over the facing halves of both, which B's
    track takes. A track that found no box last frame has nothing of its own to weigh that box's centre
    against: it moves only _BESIDE_GAIN of the way there from where its motion says B is, so that it
    is not pulled onto A and does not lose B when B comes out. A track seen last frame takes
    _BOX_GAIN of the way."""
    tr = Tracker(min_hits=1)
    a = [0.50, 0.40, 0.66, 0.70]
    for i in range(10):
        xb = 0.10 + 0.02 * i
        seen_b = not (hidden and i >= 8)
        boxes = [a] + ([[xb, 0.40, xb + 0.16, 0.70]] if seen_b else [])
        tr.update(np.array(boxes), np.full(len(boxes), 0.9), ["cat"] * len(boxes), i / 15)
    track_b = next(t for t in tr.tracks if t.id == 2)
    assert track_b.misses == (2 if hidden else 0)
    predicted = track_b.cx + track_b.vx * (10 / 15 - track_b.last_ts)
    box = [0.40, 0.40, 0.56, 0.70]  # B's size, over A's left part: a box of the pair
    ids = tr.update(np.array([a, box]), np.full(2, 0.9), ["cat"] * 2, 10 / 15).ids
    assert ids == [1, 2]
    gain = 0.3 if hidden else 0.85
    assert track_b.cx == pytest.approx(predicted + gain * (0.48 - predicted)), (track_b.cx, predicted)


def test_a_box_round_two_goes_to_neither_when_one_has_its_own_box() -> None:
    """Two cats sit close, B partly behind A. For three frames the detector reports A's own box and
    one round both, and none of B's own. A takes its own box; B wants the box round both as its only
    candidate, and must not take it (it would pull B's track onto the pair's middle and teach it the
    pair's size), although the box is too small to count as enclosing A's (1.47 times its area, under
    _LARGER). B's track coasts and takes B's box when the detector sees B again."""
    tr = Tracker()
    a, b = [0.30, 0.40, 0.50, 0.70], [0.34, 0.42, 0.54, 0.72]
    both = _round_both(a, b)
    ids: list[list[int | None]] = []
    for i in range(10):
        boxes = [a, both] if 5 <= i <= 7 else [a, b]
        ids.append(tr.update(np.array(boxes), np.full(2, 0.9), ["cat"] * 2, i / 15).ids)
    assert ids[1:5] == [[1, 2]] * 4, ids
    assert ids[5:8] == [[1, None]] * 3, ids
    assert ids[8:] == [[1, 2]] * 2, ids
    assert tr.created == 2
    w, h = b[2] - b[0], b[3] - b[1]
    assert [t.w for t in tr.tracks if t.id == 2] == [pytest.approx(w)], "B's size came from the box round both"
    assert [t.h for t in tr.tracks if t.id == 2] == [pytest.approx(h)]


@pytest.mark.parametrize("seen", ["round both", "overlapping"])
def test_a_track_keeps_its_faint_box_when_a_new_object_comes_into_view_beside_it(seen: str) -> None:
    """Cat A is tracked; cat B comes into view just below it. The detector boxes A faintly now (0.39)
    and, confidently, either a box round both or B alone where it overlaps where A is looked for (an
    IoU of 0.34). A's track keeps A's own faint box (which fits it whole) rather than the confident box,
    which would drag it onto B and, with A's track on B's box or round it, leave B no track of its own
    (three cats in a crowd, `benchmarks/bench_tracking.py --random 16 --seed 1-4 --objects 3`). B
    starts its own."""
    tr = Tracker()
    a = [0.05, 0.10, 0.40, 0.55]
    b = [0.02, 0.48, 0.38, 0.93] if seen == "round both" else [0.02, 0.30, 0.37, 0.75]
    ids: list[list[int | None]] = []
    for i in range(12):
        if i < 5:
            boxes, scores = [a], [0.8]
        elif seen == "round both":
            boxes, scores = [a, _round_both(a, b), b], [0.39, 0.7, 0.6]
        else:
            boxes, scores = [a, b], [0.39, 0.6]
        ids.append(tr.update(np.array(boxes), np.array(scores), ["cat"] * len(boxes), i / 15).ids)
    assert [i[0] for i in ids[1:]] == [1] * 11, ids
    assert tr.created == 2, ids
    assert ids[-1][-1] == 2 and (seen != "round both" or ids[-1][1] is None), ids
    (track,) = [t for t in tr.tracks if t.id == 1]
    assert (track.w, track.h) == (pytest.approx(a[2] - a[0]), pytest.approx(a[3] - a[1]))


@pytest.mark.parametrize("unseen_frames", [1, 8])
def test_a_track_unseen_for_a_moment_is_not_recovered_by_a_box_far_from_where_it_is_looked_for(
    unseen_frames: int,
) -> None:
    """A cat walking left goes unseen; then a box of its kind shows half its diagonal from where the cat is
    looked for, not overlapping it. After one frame unseen that is another cat coming into view (in a
    crowd of three, the third cat coming in at the frame's edge took the track of one hidden for a
    frame, `benchmarks/bench_tracking.py --random 16 --seed 1-4 --objects 3`): it starts its own track.
    After half a second unseen, the cat may well be there (its motion changed behind the other
    object): the box continues its track."""
    tr = Tracker()
    w, h, vx = 0.2, 0.3, -0.02  # a frame at 15 fps
    ids: list[list[int | None]] = []
    last = 5
    for i in range(last + 1):
        x = 0.6 + vx * i
        ids.append(tr.update(np.array([[x, 0.4, x + w, 0.4 + h]]), np.array([0.8]), ["cat"], i / 15).ids)
    at = last + unseen_frames + 1
    for i in range(last + 1, at):
        tr.update(np.zeros((0, 4)), np.zeros(0), [], i / 15)
    x, y = 0.6 + vx * at + 0.12, 0.4 - 0.12  # half the diagonal away: an IoU of 0.14 with the prediction
    got = tr.update(np.array([[x, y, x + w, y + h]]), np.array([0.8]), ["cat"], at / 15).ids
    assert ids[-1] == [1]
    assert got == ([2] if unseen_frames == 1 else [1]), got


def test_a_box_round_two_new_objects_starts_no_track() -> None:
    """Two cats come into view together, and the detector also reports a box round both: two tracks,
    not three. A box round one other (a near object with a far one inside) still starts its own."""
    tr = Tracker(min_hits=1)
    a, b = [0.10, 0.40, 0.30, 0.70], [0.26, 0.42, 0.46, 0.72]
    assert tr.update(np.array([a, b, _round_both(a, b)]), np.full(3, 0.9), ["cat"] * 3, 0.0).ids == [1, 2, None]
    near = Tracker(min_hits=1)
    big, small = [0.20, 0.10, 0.80, 0.95], [0.40, 0.30, 0.50, 0.50]
    assert near.update(np.array([big, small]), np.full(2, 0.9), ["person"] * 2, 0.0).ids == [1, 2]


def test_a_part_a_copy_or_a_pair_of_tracked_objects_starts_no_track() -> None:
    """Where objects overlap, the detector boxes what shows of one beside its whole box (a part, mostly
    inside it), or the object again with some of its neighbour (overlapping it at an IoU of 0.5 or
    more, under the detector's own suppression), or parts of two side by side. None is a new object.
    A far object inside a near one's box, a small share of it, is still its own (the test above)."""
    tr = Tracker()
    a = [0.30, 0.30, 0.56, 0.70]
    part = [0.44, 0.32, 0.56, 0.68]  # the right part: 42 % of the box, all inside it
    copy = [0.30, 0.30, 0.62, 0.78]  # IoU 0.68
    ids = []
    for i in range(8):
        boxes = [a] + ([part] if i % 2 else [copy]) * (i >= 2)
        ids.append(tr.update(np.array(boxes), np.full(len(boxes), 0.8), ["apple"] * len(boxes), i / 15).ids)
    assert [i[0] for i in ids] == [1] * 8 and all(i[1:] == [None] for i in ids[2:]), ids
    assert tr.created == 1
    two = Tracker()  # two objects side by side, and a box over the right half of one and the left of the other
    a, b = [0.10, 0.30, 0.40, 0.70], [0.50, 0.30, 0.80, 0.70]
    over = [0.22, 0.30, 0.66, 0.70]  # 60 % of A's box and 53 % of B's
    for i in range(6):
        boxes = [a, b] + [over] * (i >= 2)
        two.update(np.array(boxes), np.full(len(boxes), 0.8), ["apple"] * len(boxes), i / 15)
    assert two.created == 2
    # overlapping, and a box over their facing halves: 37 % of A's box and 35 % of B's, but 74 % of it
    # inside the two together (two apples' facing halves, boxed as one as they cross)
    two = Tracker()
    a, b = [0.10, 0.30, 0.40, 0.70], [0.34, 0.36, 0.64, 0.76]
    between = [0.26, 0.22, 0.50, 0.62]
    for i in range(6):
        boxes = [a, b] + [between] * (i >= 2)
        two.update(np.array(boxes), np.full(len(boxes), 0.8), ["apple"] * len(boxes), i / 15)
    assert two.created == 2


@pytest.mark.parametrize("loose_first", [False, True])
def test_an_object_boxed_twice_as_it_comes_into_view_starts_one_track(loose_first: bool) -> None:
    """A cat comes into view, and in its first frame the detector boxes it twice: whole, and again with
    what is below it (the whole box all inside the loose one, half its area). One track, on the more
    confident box; the other box is a copy of a tracked object from then on, and starts nothing. Two
    objects both new in one frame, one far inside the other's box (4 % of it), start two
    (`test_a_box_round_two_new_objects_starts_no_track`)."""
    tr = Tracker()
    ids = []
    for i in range(8):
        x = 0.70 - 0.02 * i  # coming in from the right
        whole, loose = [x, 0.10, x + 0.24, 0.55], [x - 0.02, 0.10, x + 0.25, 0.85]
        scores = [0.55, 0.8] if loose_first else [0.8, 0.55]
        ids.append(tr.update(np.array([whole, loose]), np.array(scores), ["cat"] * 2, i / 15).ids)
    assert tr.created == 1, ids
    assert ids == ([[None, 1]] if loose_first else [[1, None]]) * 8, ids


def test_a_box_where_a_hidden_object_is_looked_for_starts_no_track() -> None:
    """B walks behind A and is missed. As it comes out, the detector boxes the part that shows, now and
    then under another label (an apple's edge called an orange): a box mostly over B's predicted box
    is B coming back, and starts no third track; B's track takes its own box once seen whole. A box
    away from any hidden object's track starts one as always."""
    tr = Tracker()
    a = [0.40, 0.30, 0.60, 0.60]
    created = []
    for i in range(14):
        xb = 0.05 + 0.04 * i  # B moves right, 0.04 a frame, behind A from frame 6
        b = [xb, 0.32, xb + 0.2, 0.62]
        if i < 6:
            boxes, labels = [a, b], ["apple", "apple"]
        elif i < 10:
            boxes, labels = [a], ["apple"]
        elif i < 12:  # B's right part shows beyond A, called an orange
            boxes, labels = [a, [0.60, 0.32, b[2], 0.62]], ["apple", "orange"]
        else:
            boxes, labels = [a, b], ["apple", "apple"]
        up = tr.update(np.array(boxes), np.full(len(boxes), 0.8), labels, i / 15)
        created.append(tr.created)
        if i >= 12:
            assert up.ids == [1, 2], (i, up.ids)
    assert created[-1] == 2, created
    far = tr.update(np.array([a, b, [0.05, 0.7, 0.2, 0.95]]), np.full(3, 0.8), ["apple", "apple", "orange"], 1.0)
    assert far.ids[2] is not None


def test_a_faint_box_two_tracks_want_alike_goes_to_neither() -> None:
    """Two objects overlap, and for a frame the detector gives only a faint box between them, which
    both tracks fit alike: it is no one's (the hidden one's track would take it as readily as the
    front one's). A faint box only one track fits keeps that track, as in ByteTrack."""
    tr = Tracker()
    a, b = [0.30, 0.40, 0.50, 0.70], [0.34, 0.40, 0.54, 0.70]
    for i in range(4):
        tr.update(np.array([a, b]), np.full(2, 0.9), ["cat"] * 2, i / 15)
    assert tr.active == 2
    between = [0.32, 0.40, 0.52, 0.70]
    assert tr.update(np.array([between]), np.array([0.3]), ["cat"], 4 / 15).ids == [None]
    alone = Tracker()
    for i in range(4):
        alone.update(np.array([a]), np.array([0.9]), ["cat"], i / 15)
    assert alone.update(np.array([between]), np.array([0.3]), ["cat"], 4 / 15).ids == [1]


def test_a_box_of_a_label_neither_track_has_tells_them_apart_no_better() -> None:
    """Two cups overlap, one hidden behind the other, and the detector, which knows cups poorly, names
    the one box it gives "toilet": both tracks want it alike, and it is no one's, as a box labelled
    "cup" would be (it went to the track it fitted a hair better, which then left with the other cup).
    A label one of the two has and the other has not still tells them apart. And labels the detector
    gives one tracked object twice are one kind from then on, to the rules that tell a new object from
    a tracked one boxed again."""
    a, b = [0.30, 0.40, 0.50, 0.70], [0.34, 0.40, 0.54, 0.70]
    one = [0.32, 0.40, 0.52, 0.70]  # the same IoU with either track's predicted box
    for label, second, want in (("cup", "cup", None), ("toilet", "cup", None), ("bowl", "bowl", 2)):
        tr = Tracker()
        for i in range(4):
            tr.update(np.array([a, b]), np.full(2, 0.9), ["cup", second], i / 15)
        assert tr.active == 2
        assert tr.update(np.array([one]), np.array([0.9]), [label], 4 / 15).ids == [want], label
    cup, again = [0.30, 0.40, 0.50, 0.70], [0.31, 0.41, 0.52, 0.72]  # again: the cup boxed a second time
    for names in (["cup", "traffic light", "cup", "traffic light"], ["cup"] * 4):
        tr = Tracker(min_hits=1)
        for i, name in enumerate(names):
            assert tr.update(np.array([cup]), np.array([0.9]), [name], i / 15).ids == [1]
        got = tr.update(np.array([cup, again]), np.array([0.9, 0.8]), ["cup", "traffic light"], 4 / 15).ids
        # a cup named a traffic light twice: the box is the cup again; never so named: another object
        assert got == ([1, None] if "traffic light" in names else [1, 2]), (names, got)
        assert tr.label_kinds() == ({"traffic light": "cup"} if "traffic light" in names else {})
        tr.end_all()  # the pipeline's model changes: another detector names things its own way
        assert tr.label_kinds() == {}


def test_one_box_of_another_label_that_is_a_lone_track_s_own_makes_them_one_kind() -> None:
    """The SSD names a cup on grass a traffic light now and then, with the cup's own box. One such box
    that fits a track with no neighbour as its own does (an IoU of 0.7 or more with its predicted box)
    makes the two labels one kind at once: in a crossing drawn at random (`random2_2_cup`), the first
    boxes over the pair under that name came six frames after the one before them, before a second
    could make them one kind, and started a third track, which went on with a cup. A looser box of
    the other label, or one a track takes beside a neighbour, is no such proof: it needs a second."""
    cup, again = [0.30, 0.40, 0.50, 0.70], [0.31, 0.41, 0.52, 0.72]  # again: the cup boxed a second time
    own, loose = [0.31, 0.41, 0.51, 0.71], [0.30, 0.36, 0.54, 0.74]  # IoU 0.85 and 0.66 with the cup's box
    for named, kinds in ((own, {"traffic light": "cup"}), (loose, {})):
        tr = Tracker(min_hits=1)
        for i in range(3):
            tr.update(np.array([cup]), np.array([0.9]), ["cup"], i / 15)
        assert tr.update(np.array([named]), np.array([0.9]), ["traffic light"], 3 / 15).ids == [1]
        assert tr.label_kinds() == kinds, named
        got = tr.update(np.array([cup, again]), np.array([0.9, 0.8]), ["cup", "traffic light"], 4 / 15).ids
        # one kind: either box is the cup again, and the other no new object; else a second object
        assert set(got) == ({1, None} if kinds else {1, 2}), (named, got)
    twice = Tracker(min_hits=1)
    for i, (box, name) in enumerate([(cup, "cup"), (loose, "traffic light")] * 2):
        twice.update(np.array([box]), np.array([0.9]), [name], i / 15)
    assert twice.label_kinds() == {"traffic light": "cup"}  # two loose ones: one kind
    beside = Tracker(min_hits=1)
    b = [0.45, 0.40, 0.65, 0.70]  # overlapping the cup's box
    for i in range(3):
        beside.update(np.array([cup, b]), np.full(2, 0.9), ["cup", "cup"], i / 15)
    assert beside.update(np.array([own, b]), np.full(2, 0.9), ["traffic light", "cup"], 3 / 15).ids == [1, 2]
    assert beside.label_kinds() == {}


def test_a_box_of_a_track_s_kind_inside_the_box_it_took_under_another_name_is_no_new_object() -> None:
    """The SSD boxes a cup twice in one frame: whole, named a toilet, and cut, named a cup. The cup's
    track takes the whole box, which fits it better whatever its name, and the cut box inside it is
    that cup again: the track is a cup whatever the name of the box it took. It started a second track
    (`random2_3_cup`, where the other cup cut the box, and that track took the cup from its own for
    four frames). A box of a third name there is still another object."""
    cup = [0.30, 0.40, 0.50, 0.70]
    cut = [0.30, 0.40, 0.39, 0.70]  # 45 % of the cup's box, inside it
    for second, want in (("cup", [1, None]), ("person", [1, 2])):
        tr = Tracker(min_hits=1)
        for i in range(3):
            tr.update(np.array([cup]), np.array([0.9]), ["cup"], i / 15)
        got = tr.update(np.array([cup, cut]), np.array([0.6, 0.6]), ["toilet", second], 3 / 15).ids
        assert got == want, (second, got)


def test_a_faint_box_round_one_that_went_to_neither_goes_to_neither() -> None:
    """B is behind A, a little to its right. The detector's confident box fits both tracks alike and
    goes to neither; a faint box round it, reaching to B's side, fits only B's track, which took it in
    the second round for want of a rival and was dragged over A. It fits the pair as the tight box
    does, and is no one's either; each takes its own box when the two are seen apart."""
    tr = Tracker()
    a, b = [0.30, 0.40, 0.50, 0.70], [0.36, 0.40, 0.56, 0.70]
    for i in range(4):
        tr.update(np.array([a, b]), np.full(2, 0.9), ["cat"] * 2, i / 15)
    both, loose = [0.33, 0.40, 0.53, 0.70], [0.33, 0.36, 0.62, 0.72]
    assert tr.update(np.array([both, loose]), np.array([0.9, 0.3]), ["cat"] * 2, 4 / 15).ids == [None, None]
    assert tr.update(np.array([a, b]), np.full(2, 0.9), ["cat"] * 2, 5 / 15).ids == [1, 2]


def test_a_loose_box_is_the_objects_own_when_nothing_tighter_is_inside_it() -> None:
    """A box much larger than a track's object (1.5 times and more) weighs half while the object's own
    tighter box is inside it: that one wins its track. With no box inside it, the loose box is the
    object's own (one coming out from behind another is boxed loosely for a frame or two) and keeps
    its weight: the track must not go to a box beside its object instead."""
    tr = Tracker(min_hits=1)
    a = [0.30, 0.30, 0.50, 0.50]
    for i in range(4):
        tr.update(np.array([a]), np.array([0.9]), ["apple"], i / 15)
    loose = [0.27, 0.27, 0.535, 0.535]  # 1.76 times A's area, A wholly inside
    beside = [0.35, 0.32, 0.58, 0.55]  # IoU 0.41 with A, 75 % of it inside the loose box
    assert tr.update(np.array([beside, loose]), np.full(2, 0.8), ["apple"] * 2, 4 / 15).ids[1] == 1
    tight = Tracker(min_hits=1)
    for i in range(4):
        tight.update(np.array([a]), np.array([0.9]), ["apple"], i / 15)
    inner = [0.31, 0.30, 0.50, 0.49]
    assert tight.update(np.array([inner, loose]), np.full(2, 0.8), ["apple"] * 2, 4 / 15).ids[0] == 1


def test_track_ids_are_never_reused() -> None:
    tr = Tracker(min_hits=1, max_age_s=0.1)
    seen: list[int] = []
    for i in range(40):  # an object appears for 3 frames, vanishes long enough to end, and again
        boxes = np.array([[0.1, 0.1, 0.3, 0.3]]) if i % 10 < 3 else np.zeros((0, 4))
        up = tr.update(boxes, np.full(len(boxes), 0.9), ["x"] * len(boxes), i * 0.1)
        seen += [t for t in up.ids if t is not None and t not in seen]
    assert seen == [1, 2, 3, 4]


def _det(x1: float, y1: float, x2: float, y2: float, label: str = "cat") -> Detection:
    return Detection(label, 0, 0.8, (x1 * 640, y1 * 480, x2 * 640, y2 * 480), (x1, y1, x2, y2))


def test_predictions_name_only_confirmed_tracks_so_every_published_id_has_its_events(tmp_path: Path) -> None:
    """A flicker (a box seen for one frame, here and there) starts tracks that never confirm: its
    detections are published with no id, and health does not count it. The object that stays gets
    its id from the frame it is confirmed on, the id its `new` and `end` carry."""
    stage = SceneStage(SceneConfig(enabled=True, snapshots={"enabled": False}), "cam", tmp_path)
    ids: list[list[int | None]] = []
    events: list[dict[str, Any]] = []
    for i in range(30):
        dets = [_det(0.1 + 0.01 * i, 0.2, 0.25 + 0.01 * i, 0.5)]
        if i % 7 == 3:  # a flicker far from the object, never twice in one place
            dets.append(_det(0.6 + 0.01 * i, 0.7, 0.7 + 0.01 * i, 0.9))
        out = stage.process(Result(task="detection", detections=tuple(dets)), 1000 + i / FPS, None)
        ids.append([x.get("track_id") for x in out.extras])
        events += out.events
    events += stage.end_all(1000 + 30 / FPS).events
    published = {t for row in ids for t in row if t is not None}
    assert ids[0] == [None] and ids[1][0] is not None, ids[:2]
    assert all(row[1:] == [None] for row in ids if len(row) > 1), ids
    assert published == {e["track_id"] for e in events} and len(published) == 1, (ids, events)
    assert [e["type"] for e in events if e["type"] != "update"] == ["new", "end"]
    assert stage.health()["tracks_created"] == 1
    assert stage.tracker.created == 5  # the object's track and the four flickers' tentative ones


def test_a_track_takes_the_label_it_is_seen_with_most() -> None:
    """A cat called a dog now and then stays one track and stays a cat; the label changes once dog
    has been seen more often than cat (counting the hits from before the first dog)."""
    tr = Tracker(min_hits=1)
    box = np.array([[0.3, 0.3, 0.5, 0.5]])
    seq = ["cat", "cat", "cat", "dog", "cat", "dog", "dog", "dog", "dog"]
    got = []
    for i, lb in enumerate(seq):
        up = tr.update(box, np.array([0.9]), [lb], i / 15)
        got.append((up.ids[0], tr.tracks[0].label))
    assert {i for i, _ in got} == {1}
    # cat:3 dog:1, cat:4 dog:1, ... cat:4 dog:4 (a tie keeps cat), cat:4 dog:5 -> dog
    assert [lb for _, lb in got] == ["cat"] * 8 + ["dog"]


# --- second stage -----------------------------------------------------------------------------
LANDMARKS = Path(__file__).resolve().parents[1] / "models" / "face_landmark.tflite"


def _share_inside(pts: np.ndarray, b: tuple[float, float, float, float], grow: float = 0.2) -> float:
    gx, gy = (b[2] - b[0]) * grow, (b[3] - b[1]) * grow
    inside = (pts[:, 0] > b[0] - gx) & (pts[:, 0] < b[2] + gx) & (pts[:, 1] > b[1] - gy) & (pts[:, 1] < b[3] + gy)
    return float(inside.mean())


def test_face_mesh_on_blazeface_crops_is_attached_to_tracks_and_events() -> None:
    second = {"model": {"path": str(LANDMARKS)}, "labels": ["face"], "interval_s": 1.0}
    run = run_scene("faces_crossing", scene_cfg={"second_stage": second})
    ends = [e for e in run.events if e["type"] == "end"]
    assert len(ends) == 2
    for e in ends:
        ss = e["attributes"]["second_stage"]
        assert ss["model"] == "face_landmark" and ss["task"] == "detection"
        face = ss["detections"][0]
        assert face["score"] > 0.5 and len(face["keypoints"]) == 468
        # the mesh lies on a face: the truth boxes of the frame it ran on, grown by a fifth
        i = round((ss["ts"] - 1_700_000_000.0) * FPS)
        pts = np.array(face["keypoints"])
        assert max(_share_inside(pts, b) for _, _, b in run.truth[i]) >= 0.95


def test_second_stage_runs_per_interval_not_per_frame(tmp_path: Path) -> None:
    from edge_agent.config import SecondStageConfig

    cfg = SecondStageConfig(model={"path": LANDMARKS}, labels=["box"], interval_s=0.5)
    stage = SceneStage(SceneConfig(enabled=True, second_stage=cfg), "cam", tmp_path)
    _walk(stage, 30)  # 2 s at 15 fps, one track
    stage.close()
    assert stage.second is not None and 3 <= stage.second.runs <= 5  # every 0.5 s once a track: not 29 times


def test_a_second_stage_that_cannot_take_crops_is_refused(tmp_path: Path) -> None:
    from .conftest import MODELS, run_cli

    wake = MODELS / "wakeword" / "okay_nabu.tflite"
    r = run_cli("run", "--seconds", "2", "--source", "synthetic", "--set", f"state_dir={tmp_path}",
                "--set", f'scene={{"second_stage": {{"model": {{"path": "{wake}"}}, "labels": ["face"]}}}}',
                "--sink", "stdout")
    assert r.returncode == 2, r.stderr[-1500:]
    assert "scene.second_stage.model" in r.stderr and "cannot take crops" in r.stderr


def test_run_to_stdout_prints_one_line_a_message_and_a_snapshot_as_what_it_is(tmp_path: Path) -> None:
    """`run --sink stdout` is lines of `topic payload`: a snapshot's JPEG bytes, written as they are,
    broke them apart into lines of noise; it is a line saying it is a JPEG and its size."""
    from .conftest import DEMO_VIDEO, SHORT, run_cli

    r = run_cli("run", "--seconds", "5", "--device-id", "so", "--source", str(DEMO_VIDEO), "--model", str(SHORT),
                "--set", f"state_dir={tmp_path}", "--set", "scene.enabled=true", "--sink", "stdout")
    assert r.returncode == 0, r.stderr[-1500:]
    lines = [line.split(" ", 1) for line in r.stdout.splitlines()]
    docs = [(topic, json.loads(rest)) for topic, rest in lines]  # every line parses
    snaps = [d for topic, d in docs if topic.startswith("edge/so/snapshot/")]
    assert snaps and all(d["binary"] == "image/jpeg" and d["bytes"] > 1000 for d in snaps), snaps
    assert any(topic == "edge/so/events" and d["type"] == "new" for topic, d in docs)


def test_a_second_stage_failing_at_run_time_disables_only_itself(tmp_path: Path) -> None:
    from edge_agent.config import SecondStageConfig

    cfg = SecondStageConfig(model={"path": LANDMARKS}, labels=["box"], interval_s=0.0)
    stage = SceneStage(SceneConfig(enabled=True, second_stage=cfg), "cam", tmp_path)
    assert stage.second is not None
    stage.second.model.engine.close()  # its engine is gone: every run now fails inside the model
    events = _walk(stage, 20)
    stage.close()
    assert [e["type"] for e in events] == ["new"] and "attributes" not in events[0]
    h = stage.health()["second_stage"]
    assert h["state"] == "disabled" and h["error"] and h["runs"] == 0


def test_the_documented_scene_example_loads(tmp_path: Path) -> None:
    """The TOML of the scene page (docs/scenes.md), as pasted (with the shared model it names defined)."""
    import re

    from .conftest import ROOT, SHORT

    section = (ROOT / "docs" / "scenes.md").read_text()
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    landmarks = "/usr/share/edge-agent/models/face_landmark.tflite"
    text = example.group(1).replace(landmarks, str(LANDMARKS))
    cfg = tmp_path / "scene.toml"
    cfg.write_text(f'[models.ssd]\npath = "{SHORT}"\n' + text)
    s = load_settings(cfg, {})
    scene = s.pipelines[0].scene
    assert [z.name for z in scene.zones] == ["path"] and scene.masks[0].labels == ["car"]
    assert scene.second_stage is not None and scene.second_stage.labels == ["face"] and scene.clips.enabled


def test_zone_filters_label_score_and_size(tmp_path: Path) -> None:
    whole = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    zones = [
        {"name": "cats", "points": whole, "labels": ["cat"], "inertia": 1},
        {"name": "sure", "points": whole, "min_score": 0.8, "inertia": 1},
        {"name": "big", "points": whole, "min_area": 0.1, "inertia": 1},
    ]
    stage = SceneStage(SceneConfig(zones=zones, tracking={"min_hits": 1}), "cam", tmp_path)

    def det(label: str, score: float, side: float, x: float) -> Detection:
        b = (x, 0.1, x + side, 0.1 + side)
        return Detection(label, 0, score, (b[0] * 100, b[1] * 100, b[2] * 100, b[3] * 100), b)

    frame = (det("cat", 0.6, 0.1, 0.0), det("dog", 0.9, 0.1, 0.3), det("dog", 0.6, 0.5, 0.5))
    out = stage.process(Result(task="detection", detections=frame), 1000.0, None)
    stage.close()
    assert [x["zones"] for x in out.extras] == [["cats"], ["sure"], ["big"]]
    assert out.counts == {("cats", "cat"): 1, ("sure", "dog"): 1, ("big", "dog"): 1}


def test_inertia_keeps_a_flicker_out(tmp_path: Path) -> None:
    left = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
    stage = SceneStage(SceneConfig(zones=[{"name": "left", "points": left, "inertia": 3}]), "cam", tmp_path)
    seen = []
    for i, x in enumerate([0.51, 0.51, 0.49, 0.51, 0.51, 0.49, 0.49, 0.49, 0.49]):  # one frame in, then three
        b = (x - 0.1, 0.4, x + 0.1, 0.6)
        d = Detection("cat", 0, 0.9, (b[0] * 100, b[1] * 100, b[2] * 100, b[3] * 100), b)
        out = stage.process(Result(task="detection", detections=(d,)), 1000.0 + i / 15, None)
        seen.append(out.extras[0].get("zones"))
    stage.close()
    assert seen[:6] == [None, [], [], [], [], []] and seen[7:] == [["left"], ["left"]]


def test_an_object_pacing_at_a_zones_edge_for_hours_raises_events_of_bounded_size(tmp_path: Path) -> None:
    """A person at a desk by a doorway, tracked for hours, walks into the `door` zone and out again
    hundreds of times, inside `room` all along. Its events list the latest visits only (the open one
    in `room` among them, however old), count every entry, and keep the time in each zone exact. Before,
    every visit went into every event the object raised: its updates grew without bound."""
    from edge_agent.scene import _MAX_VISITS

    whole = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    door = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]
    cfg = SceneConfig(zones=[{"name": "room", "points": whole, "inertia": 1},
                             {"name": "door", "points": door, "inertia": 1}], update_interval_s=0.1)
    stage = SceneStage(cfg, "cam", tmp_path)
    t0, passes, sizes, ts = 1000.0, 300, [], 1000.0
    for i in range(passes * 6):  # three frames by the door, three away from it, at 15 fps
        x = 0.53 if i % 6 < 3 else 0.47  # the box's bottom centre over the door's edge, and back
        b = (x - 0.15, 0.3, x + 0.15, 0.7)
        d = Detection("person", 0, 0.9, (b[0] * 100, b[1] * 100, b[2] * 100, b[3] * 100), b)
        ts = t0 + i / 15
        out = stage.process(Result(task="detection", detections=(d,)), ts, None)
        sizes += [len(json.dumps(e)) for e in out.events]
    end = next(e for e in stage.end_all(ts + 10).events if e["type"] == "end")
    stage.close()
    door_visits = [v for v in end["entered_zones"] if v["zone"] == "door"]
    assert end["zone_entries"] == passes + 1  # the room once, the door every pass
    assert len(end["entered_zones"]) == _MAX_VISITS
    # an object from its second frame (`tracking.min_hits`): in the room from then on, by the door three
    # frames of every six (two the first time), last seen at `ts`
    first = t0 + 1 / 15
    assert end["entered_zones"][0] == {"zone": "room", "entered_ts": pytest.approx(first), "left_ts": pytest.approx(ts)}
    assert door_visits[-1]["entered_ts"] == pytest.approx(t0 + (passes - 1) * 6 / 15)
    assert end["dwell_s"]["room"] == pytest.approx(ts - first, abs=1e-3)
    assert end["dwell_s"]["door"] == pytest.approx((passes * 3 - 1) / 15, abs=1e-3)
    assert max(sizes) < 2 * min(sizes[-10:]) and max(sizes) < 4000, (min(sizes), max(sizes))


def test_a_crowd_in_view_when_clips_close_loses_none_of_its_clips(tmp_path: Path) -> None:
    """A crowd in view when the pipeline stops (or its scene is reloaded) ends more events at once
    than the writer's queue holds: each clip waits for room, within the close's time, and is written."""
    from edge_agent.clips import _WRITE_QUEUE, ClipRecorder
    from edge_agent.config import ClipConfig

    rec = ClipRecorder(ClipConfig(enabled=True, pre_s=1.0, post_s=1.0, fps=15), tmp_path)
    img = np.zeros((240, 320, 3), np.uint8)
    crowd = 2 * _WRITE_QUEUE + 3
    for k in range(crowd):
        rec.begin(f"e{k}", 0.0)
    for i in range(45):  # three seconds of frames, every event still in progress
        img[:] = i * 5
        rec.offer(img, i / 15)
    rec.close(timeout=scaled(60.0))
    assert rec.stats.dropped == 0 and rec.stats.written == crowd, rec.health()
    for k in range(crowd):
        cap = cv2.VideoCapture(str(tmp_path / f"e{k}.avi"))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 45


def _clip_frames(rec: Any, path: Path, size: tuple[int, int], frames: list[np.ndarray], t0: float = 0.0) -> None:
    """One event over `frames` (offered at 15 a second), ended and written."""
    rec.begin(path.stem, t0)
    for i, img in enumerate(frames):
        rec.offer(img, t0 + i / 15)
    rec.end(path.stem, t0 + (len(frames) - 1) / 15)
    rec.close(timeout=scaled(30.0))


def _packets(path: Path) -> list[bytes]:
    """The encoded frames of a video file, as they are stored (no decoding)."""
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_FORMAT, -1)
    out = []
    while True:
        ok, buf = cap.read()
        if not ok:
            break
        out.append(buf.tobytes())
    cap.release()
    return out


def _moving(n: int, w: int = 320, h: int = 240) -> list[np.ndarray]:
    """Frames with something in them that moves (not flat colour, which any codec keeps exactly)."""
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (9, 9), 0)
    return [np.roll(base, 4 * i, axis=1) for i in range(n)]


def test_a_clip_holds_the_rings_jpegs_as_they_are(tmp_path: Path) -> None:
    """The writer puts the ring's JPEGs into the AVI unchanged: no decode and second encode (a few
    ms of CPU a frame on the board, and a second loss of quality)."""
    from edge_agent.clips import _QUALITY, ClipRecorder
    from edge_agent.config import ClipConfig

    rec = ClipRecorder(ClipConfig(enabled=True, pre_s=0.0, post_s=0.0, fps=15), tmp_path)
    frames = _moving(20)
    _clip_frames(rec, tmp_path / "e1.avi", (320, 240), frames)
    assert rec.stats.written == 1, rec.health()
    want = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, _QUALITY])[1].tobytes() for f in frames]
    got = _packets(tmp_path / "e1.avi")
    assert len(got) == 20 and all(g == w for g, w in zip(got, want, strict=True))
    cap = cv2.VideoCapture(str(tmp_path / "e1.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 20 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(15, abs=0.1)


@pytest.mark.parametrize("passthrough", [True, False])
def test_a_camera_that_changes_size_mid_clip_gives_one_playable_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passthrough: bool
) -> None:
    """A camera reconfigured during an event (640x480 to 320x240 here) gives one clip at the size it
    began with, every frame in it; so does an OpenCV that cannot take encoded frames (it decodes and
    encodes them instead)."""
    import edge_agent.clips as clips

    if not passthrough:
        monkeypatch.setattr(clips, "_RAW", None)
    rec = clips.ClipRecorder(clips.ClipConfig(enabled=True, pre_s=0.0, post_s=0.0, fps=15), tmp_path)
    frames = _moving(10, 640, 480) + _moving(10)
    _clip_frames(rec, tmp_path / "e1.avi", (640, 480), frames)
    assert rec.stats.written == 1, rec.health()
    cap = cv2.VideoCapture(str(tmp_path / "e1.avi"))
    shown = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        shown.append(img)
    assert len(shown) == 20 and {im.shape for im in shown} == {(480, 640, 3)}
    # the small frames were scaled up, not lost or left black: each looks like its frame
    for got, want in ((shown[3], frames[3]), (shown[15], cv2.resize(frames[15], (640, 480)))):
        assert float(np.abs(got.astype(np.int16) - want).mean()) < 6


def test_clips_beyond_the_bounds_go_oldest_first(tmp_path: Path) -> None:
    from edge_agent.clips import ClipRecorder
    from edge_agent.config import ClipConfig

    rec = ClipRecorder(ClipConfig(enabled=True, pre_s=0.0, post_s=0.0, max_clips=2, fps=15), tmp_path)
    img = np.zeros((120, 160, 3), np.uint8)
    t = 0.0
    for k in range(4):
        rec.begin(f"e{k}", t)
        for _ in range(5):
            img[:] = (k * 60) % 255
            rec.offer(img, t)
            t += 1 / 15
        rec.end(f"e{k}", t - 1 / 15)
        rec.offer(img, t)
        t += 1 / 15
    rec.close()
    assert sorted(p.name for p in tmp_path.glob("*.avi")) == ["e2.avi", "e3.avi"]
    assert rec.stats.written == 4


def test_the_retained_ledger_says_what_the_configuration_no_longer_has(tmp_path: Path) -> None:
    """Kept across runs; a damaged file starts a new ledger rather than stopping the agent."""
    from edge_agent.retained import SINGLE, RetainedLedger

    path = tmp_path / "retained.json"
    ledger = RetainedLedger(path)
    ledger.note("edge/d/porch/zones/all/face", "porch", "all")
    ledger.note("edge/d/door/zones/all/face", "door", "all")
    ledger.note("edge/d/door/snapshot/face", "door")
    ledger.note("edge/d/zones/all/face", None, "all")
    again = RetainedLedger(path)
    assert again.stale({"door": {"front"}}) == [
        "edge/d/door/zones/all/face", "edge/d/porch/zones/all/face", "edge/d/zones/all/face"]
    assert again.stale({"door": {"all"}, "porch": {"all"}, SINGLE: {"all"}}) == []
    again.forget("edge/d/porch/zones/all/face")
    assert "edge/d/porch/zones/all/face" not in RetainedLedger(path).topics()
    path.write_text('{"edge/d/x": [1')
    assert RetainedLedger(path).topics() == []
