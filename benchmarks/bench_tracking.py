"""Tracking and scene events, scored: the real detectors on every frame of scenes with known truth.

    python benchmarks/bench_tracking.py            # every scene, and the cost with 20 objects
    python benchmarks/bench_tracking.py --cost-only
    python benchmarks/bench_tracking.py --against REV   # the cost beside the tracker and zones of a commit
    python benchmarks/bench_tracking.py --shifts=-0.06,-0.04,-0.02,0.02,0.04,0.06   # and with scores moved
    python benchmarks/bench_tracking.py --record FILE   # only the detections, e.g. on a board, as JSON
    python benchmarks/bench_tracking.py --replay FILE   # the table from those detections instead
    python benchmarks/bench_tracking.py --random 16 --seed 3   # 16 random crossings instead of the scenes
    python benchmarks/bench_tracking.py --random 16 --seed 1-16   # 16 for each of seeds 1 to 16
    python benchmarks/bench_tracking.py --random 16 --kinds apple --labels apple   # an object never tuned on
    python benchmarks/bench_tracking.py --random 16 --seed 1-16 --every 3   # the same at 5 fps
    python benchmarks/bench_tracking.py --random 16 --objects 3   # three objects in each crossing

For each scene of `benchmarks/scenes.py` the real detector (BlazeFace or the SSD) runs on every frame, its
detections go through the agent's scene stage (masks, tracker, zones, events) exactly as on a device, and
py-motmetrics (the MOTChallenge reference implementation in Python) scores the tracks against the truth:
IDF1, ID switches, MOTA. It also counts the object events and zone entries each object raised.
The cost line times the scene stage alone (tracking + zones + events) on 20 moving objects with three
zones, in CPU ms per frame (median of runs), the detector excluded. `--against REV` times tracking +
zones of this tree and of `edge_agent/tracker.py` and `zones.py` at git revision REV side by side,
runs alternated in one process (this machine's speed drifts too much between separate commands to
compare them), and checks that both give the same track ids and zones. `--shifts` replays each
scene's recorded detections with every score moved up or down (`Recorded`), as another platform's
arithmetic moves them: a tracker whose ids hang on a score sitting just at a threshold shows it there.
`--record` and `--replay` carry one platform's detections to another, where this tracker scores them:
the way to tell a difference in the detector from one in the tracker. `--random N --seed S` scores N
crossings drawn at random (`scenes.random_scenes`) instead of the named scenes: trajectories the
tracker was not tuned on, the nearest this benchmark comes to inputs it has never seen; `--kinds apple`
draws them with an object it was not tuned on either (an apple cut from the shared photo of fruit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SSD = SHARED / "models" / "ssd_mobilenet_v1_coco_uint8.tflite"
COCO = SHARED / "models" / "coco_labels.txt"


@dataclass
class SceneRun:
    name: str
    frames: int
    truth: list[list[tuple[int, str, tuple[float, float, float, float]]]]
    tracks: list[list[tuple[int, str, tuple[float, float, float, float]]]]
    events: list[dict[str, Any]] = field(default_factory=list)
    counts: list[dict[tuple[str, str], int]] = field(default_factory=list)


def detector(kind: str) -> Any:
    from edge_agent.config import ModelConfig, RuntimeConfig
    from edge_agent.model import Model

    if kind == "face":
        return Model(ModelConfig(score_threshold=0.5), RuntimeConfig(accelerator="cpu"), None)
    return Model(ModelConfig(path=SSD, labels=COCO, score_threshold=0.3), RuntimeConfig(accelerator="cpu"), None)


class Recorded:
    """A detector that replays recorded results, each score moved by `shift` (within [0, 1]) and those
    that fall below the detector's threshold dropped. Another platform's arithmetic moves the real
    scores a little (the SSD's scores on arm64 differ from x86-64's by up to 0.02 in these scenes):
    the tracker must give the same ids either way, and this shows whether it does without a board."""

    def __init__(self, results: list[Any], shift: float = 0.0, threshold: float = 0.0):
        self._results = iter(results)
        self._shift = shift
        self._threshold = threshold

    def infer(self, frame: np.ndarray) -> Any:
        """What `run_scene` reads of a model's inference: its result."""
        res = next(self._results)
        if self._shift:
            moved = (replace(d, score=min(1.0, max(0.0, d.score + self._shift))) for d in res.detections)
            res = replace(res, detections=tuple(d for d in moved if d.score >= self._threshold))
        return SimpleNamespace(result=res)

    def close(self) -> None:
        pass


def record(name: str, model: Any = None) -> tuple[list[Any], float]:
    """The detector's results on every frame of a scene, and its score threshold."""
    from benchmarks.scenes import SCENES, render

    own = model is None
    model = model or detector(SCENES[name].detector)
    try:
        return [model.infer(img).result for img, _ in render(SCENES[name])], model.cfg.score_threshold
    finally:
        if own:
            model.close()


def run_scene(name: str, model: Any = None, scene_cfg: dict[str, Any] | None = None, every: int = 1) -> SceneRun:
    """Detect on every frame, track through the scene stage; frame times at the scene's own fps. With
    `every` K, only every K-th frame goes to the scene stage and is scored (at its own time): a camera
    or a board that keeps up with a K-th of the scene's frame rate."""
    from benchmarks.scenes import FPS, SCENES, render
    from edge_agent.config import SceneConfig
    from edge_agent.scene import SceneStage

    scene = SCENES[name]
    own = model is None
    model = model or detector(scene.detector)
    cfg: dict[str, Any] = {"enabled": True, **(scene_cfg or {})}
    if scene.zone is not None and "zones" not in cfg:
        cfg["zones"] = [{"name": "zone", "points": [list(p) for p in scene.zone], "inertia": 2}]
    with tempfile.TemporaryDirectory() as tmp:
        stage = SceneStage(SceneConfig(**cfg), name, Path(tmp))
        run = SceneRun(name, 0, [], [])
        t0 = 1_700_000_000.0
        for i, (img, truth) in enumerate(render(scene)):
            ts = t0 + i / FPS
            res = model.infer(img).result  # on every frame: a replay stays in step
            if i % every:
                continue
            run.frames += 1
            out = stage.process(res, ts, img)
            run.truth.append(truth)
            run.tracks.append(
                [(x["track_id"], d.label, d.box) for d, x in zip(out.result.detections, out.extras, strict=True)
                 if "track_id" in x]
            )
            run.events += out.events
            run.counts.append(out.counts)
        end = stage.end_all(t0 + scene.frames / FPS)
        run.events += end.events
        stage.close()
    if own:
        model.close()
    return run


_METRICS = ["idf1", "num_switches", "num_transfer", "mota", "num_objects", "num_false_positives", "num_misses"]


def known_ids(run: SceneRun, results: list[Any], threshold: float, labels: set[str] | None, every: int = 1) -> SceneRun:
    """The same frames with each detection of a tracked label that matches a truth box (IoU >= 0.5, paired
    optimally) given that object's id, and the others dropped: what a tracker that knew which object each
    box is would score with these detections. What it misses, the detector missed (one box over two
    objects, a hidden object's part); the gap to the tracker's own score is the tracker's."""
    from edge_agent.tracker import assign, iou_matrix

    out = SceneRun(run.name + " (ids known)", run.frames, run.truth, [])
    for truth, res in zip(run.truth, results[::every], strict=True):
        dets = [d for d in res.detections if d.score >= threshold and (labels is None or d.label in labels)]
        if not truth or not dets:
            out.tracks.append([])
            continue
        iou = iou_matrix(np.array([b for *_, b in truth], np.float64), np.array([d.box for d in dets], np.float64))
        out.tracks.append([(truth[r][0], dets[c].label, dets[c].box) for r, c in assign(1.0 - iou, 0.5 + 1e-9)])
    return out


def accumulate(run: SceneRun) -> Any:
    """IDF1, ID switches and MOTA from py-motmetrics, matched at IoU >= 0.5. The distance matrix is
    1 - IoU from the agent's own IoU (motmetrics 1.4's `iou_matrix` calls `np.asfarray`, gone in numpy 2)."""
    import motmetrics as mm

    from edge_agent.tracker import iou_matrix

    acc = mm.MOTAccumulator(auto_id=True)
    for truth, tracks in zip(run.truth, run.tracks, strict=True):
        gt = np.array([b for _, _, b in truth], np.float64).reshape(-1, 4)
        hyp = np.array([b for _, _, b in tracks], np.float64).reshape(-1, 4)
        dist = 1.0 - iou_matrix(gt, hyp)
        dist[dist > 0.5] = np.nan
        acc.update([k for k, _, _ in truth], [t for t, _, _ in tracks], dist)
    return acc


def score(run: SceneRun, acc: Any = None) -> dict[str, float]:
    """The run's metrics; `acc`: its accumulator, where the caller has built it already."""
    import motmetrics as mm

    s = mm.metrics.create().compute(acc if acc is not None else accumulate(run), metrics=_METRICS, name=run.name)
    return {k: float(s[k].iloc[0]) for k in s.columns}


def switches_per_crossing(run: SceneRun, scene: Any, every: int = 1, acc: Any = None) -> tuple[list[int], int]:
    """The ID switches of each crossing in the scene (`scenes.crossings`), and those of objects that
    cross nothing: in a crowd, where three objects cross up to three times, "at most one ID switch
    per crossing" is counted per crossing, not per scene. A switch to a track that last followed
    another object goes to the crossing of the two; one to a new track, to the crossing of its object
    nearest in time to the frame it came in (none nearer than the frames the pair touched)."""
    from benchmarks.scenes import crossings

    met = crossings(scene)
    index = {(a, b): n for n, (a, b, _, _) in enumerate(met)}
    per = [0] * len(met)
    alone = 0
    owner: dict[int, int] = {}  # track id -> the object it followed last
    events = (acc if acc is not None else accumulate(run)).mot_events
    for frame, row in _followed(events, ("MATCH", "SWITCH"), owner):
        if row["Type"] != "SWITCH":
            continue
        oid, hid = int(row["OId"]), int(row["HId"])
        before = owner.get(hid)
        i = int(frame) * every
        taken = index.get((min(oid, before), max(oid, before))) if before is not None else None
        near = [(max(first - i, i - last, 0), n) for n, (a, b, first, last) in enumerate(met) if oid in (a, b)]
        if taken is not None:
            per[taken] += 1
        elif near:
            per[min(near)[1]] += 1
        else:
            alone += 1
    return per, alone


def transfers(run: SceneRun, acc: Any = None) -> tuple[int, int]:
    """py-motmetrics' transfers (a track that followed one object going on with another, which its count
    of ID switches leaves out: that counts an object taking a new track, not a track taking a new
    object), and of those, how many came while the object the track had followed was out of the truth:
    hidden (under half of it in view) behind another, most often a third of the same kind drawn over it
    as it came into view. With identical sprites the picture is then one object, whichever it is."""
    events = (acc if acc is not None else accumulate(run)).mot_events
    owner: dict[int, int] = {}  # track id -> the object it followed last
    count = hidden = 0
    for frame, row in _followed(events, ("MATCH", "SWITCH", "TRANSFER"), owner):
        if row["Type"] == "TRANSFER":
            count += 1
            hidden += owner.get(int(row["HId"])) not in {k for k, _, _ in run.truth[frame]}
    return count, hidden


def _followed(events: Any, types: tuple[str, ...], owner: dict[int, int]) -> Iterator[tuple[int, Any]]:
    """py-motmetrics' events of `types`, frame by frame, with `owner` (track id -> the object it followed)
    as of the frames before: within a frame the events come in no set order, and a switch to a track
    listed before that track's transfer would hide where the track came from. Each frame's matches
    are added once its events have been handed out."""
    now: dict[int, int] = {}
    last = None
    for (frame, _), row in events[events["Type"].isin(types)].iterrows():
        if frame != last:
            owner.update(now)
            now.clear()
            last = frame
        now[int(row["HId"])] = int(row["OId"])
        yield int(frame), row
    owner.update(now)


def score_all(runs: list[SceneRun]) -> dict[str, float]:
    """The scenes together, as MOTChallenge sums its sequences."""
    import motmetrics as mm

    s = mm.metrics.create().compute_many(
        [accumulate(r) for r in runs], metrics=_METRICS, names=[r.name for r in runs], generate_overall=True
    )
    return {k: float(s.loc["OVERALL", k]) for k in s.columns}


_COST_ZONES = [
    {"name": f"z{k}", "points": [[x, 0.1], [x + 0.3, 0.1], [x + 0.3, 0.9], [x, 0.9]]}
    for k, x in enumerate((0.05, 0.35, 0.65))
]


def _cost_frames(objects: int, frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(normalised boxes, scores) of `objects` boxes moving in straight lines, crowding at one edge."""
    rng = np.random.default_rng(7)
    start = rng.uniform(0.05, 0.75, (objects, 2))
    vel = rng.uniform(-0.004, 0.004, (objects, 2))
    size = rng.uniform(0.06, 0.15, (objects, 2))
    out = []
    for i in range(frames):
        xy = np.clip(start + vel * i, 0.0, 0.8)
        out.append((np.concatenate([xy, xy + size], axis=1), np.full(objects, 0.9)))
    return out


def _core(tracker_mod: Any, zones_mod: Any, arrays: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[Any]]:
    """Tracking + zones over the frames with the given modules: CPU ms per frame, and what they gave."""
    rules = [zones_mod.ZoneRule(z["name"], zones_mod.Polygon(z["points"]), None, 0.0, 0.0, 1) for z in _COST_ZONES]
    shapes = zones_mod.PolygonSet([r.polygon for r in rules])
    tracker = tracker_mod.Tracker()
    names = ["person"] * len(arrays[0][0])
    out = []
    c0 = time.process_time()
    for i, (boxes, scores) in enumerate(arrays):
        up = tracker.update(boxes, scores, names, 1000.0 + i / 15)
        inside = zones_mod.in_zones(rules, names, scores.tolist(), boxes,
                                    zones_mod.anchor_points(boxes, "bottom_center"), shapes)
        out.append((up.ids, inside))
    return (time.process_time() - c0) / len(arrays) * 1e3, out


def cost_against(rev: str, objects: int = 20, frames: int = 300, runs: int = 9) -> dict[str, Any]:
    """Tracking + zones of this tree beside those of git revision `rev`, runs alternated in one process."""
    import importlib.util
    import subprocess

    from edge_agent import tracker, zones

    def load(name: str) -> Any:
        src = subprocess.run(["git", "show", f"{rev}:edge_agent/{name}.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location(f"at_{rev}_{name}", f.name)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        Path(f.name).unlink()
        return mod

    old_tracker, old_zones = load("tracker"), load("zones")
    arrays = _cost_frames(objects, frames)
    now_ms, then_ms = [], []
    for _ in range(runs):
        t_now, got_now = _core(tracker, zones, arrays)
        t_then, got_then = _core(old_tracker, old_zones, arrays)
        now_ms.append(t_now)
        then_ms.append(t_then)
    return {"rev": rev, "now_ms": statistics.median(now_ms), "then_ms": statistics.median(then_ms),
            "ratio": statistics.median(now_ms) / statistics.median(then_ms), "runs": runs,
            "same": got_now == got_then}


def cost(objects: int = 20, frames: int = 300, runs: int = 5) -> dict[str, float]:
    """CPU ms per frame of the scene stage on `objects` moving boxes with three zones (no images)."""
    from edge_agent import tracker, zones
    from edge_agent.config import SceneConfig
    from edge_agent.results import Detection, Result
    from edge_agent.scene import SceneStage

    arrays = _cost_frames(objects, frames)
    cfg = SceneConfig(enabled=True, zones=_COST_ZONES, snapshots={"enabled": False})
    results = [
        Result(task="detection", detections=tuple(
            Detection("person", 0, 0.9, (x1 * 640, y1 * 480, x2 * 640, y2 * 480), (x1, y1, x2, y2))
            for x1, y1, x2, y2 in boxes.tolist()
        ))
        for boxes, _ in arrays
    ]
    stage_ms, core_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):  # alternated, so the machine's drift hits both figures alike
            stage = SceneStage(cfg, "cost", Path(tmp))
            c0 = time.process_time()
            for i, r in enumerate(results):
                stage.process(r, 1000.0 + i / 15, None)
            stage_ms.append((time.process_time() - c0) / frames * 1e3)
            stage.close()
            core_ms.append(_core(tracker, zones, arrays)[0])
    return {
        "objects": objects,
        "ms_per_frame": statistics.median(stage_ms),
        "tracking_zones_ms": statistics.median(core_ms),
        "runs": runs,
    }


def events_per_object(run: SceneRun) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for e in run.events:
        c = out.setdefault(e["track_id"], {"new": 0, "update": 0, "end": 0})
        c[e["type"]] += 1
    return out


def save_recorded(path: Path, recorded: dict[str, tuple[list[Any], float]]) -> None:
    """Each scene's detections and threshold as JSON, at full precision: another platform's run read
    back here replays through this tracker exactly."""
    out = {
        name: {
            "threshold": threshold,
            "frames": [
                [[d.label, d.index, d.score, list(d.box), list(d.box_norm), [list(k) for k in d.keypoints]]
                 for d in r.detections]
                for r in results
            ],
        }
        for name, (results, threshold) in recorded.items()
    }
    path.write_text(json.dumps(out))


def load_recorded(path: Path) -> dict[str, tuple[list[Any], float]]:
    from edge_agent.results import Detection, Result

    def det(v: list[Any]) -> Detection:
        return Detection(v[0], v[1], v[2], tuple(v[3]), tuple(v[4]), tuple(tuple(k) for k in v[5]))

    data = json.loads(path.read_text())
    return {
        name: ([Result(task="detection", detections=tuple(det(v) for v in frame)) for frame in s["frames"]],
               float(s["threshold"]))
        for name, s in data.items()
    }


def _seeds(text: str) -> list[int]:
    """`--seed`: "3" or "1-16"."""
    lo, _, hi = text.partition("-")
    first, last = int(lo), int(hi or lo)
    if last < first:
        raise argparse.ArgumentTypeError(f"{text}: the range's end comes before its start")
    return list(range(first, last + 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--against", metavar="REV", help="also time tracking + zones of git revision REV beside these")
    ap.add_argument("--scenes", default="", help="comma-separated scene names (default: all)")
    ap.add_argument("--shifts", default="", metavar="S,S,...",
                    help="also replay each scene's detections with every score moved by each S (e.g. "
                         "-0.04,-0.02,0.02,0.04): the ids must not hang on the detector's exact scores")
    ap.add_argument("--record", type=Path, metavar="FILE",
                    help="only run the detectors on every scene and write what they found to FILE (JSON)")
    ap.add_argument("--replay", type=Path, metavar="FILE",
                    help="score the detections in FILE (from --record, e.g. on another platform) instead "
                         "of running the detectors here")
    ap.add_argument("--random", type=int, default=0, metavar="N",
                    help="score N crossings drawn at random (with --seed) instead of the named scenes")
    ap.add_argument("--seed", type=_seeds, default=[1], metavar="S|A-B",
                    help="the draw of --random: one seed, or a range (N crossings for each)")
    ap.add_argument("--kinds", default="cat,cat,face", metavar="K,K,...",
                    help="the objects --random draws each crossing's pair from, as often as each is named: "
                         "cat, face, apple (cut from ../shared/data/fruit.jpg: an object the tracker was "
                         "never tuned on), person (scikit-image's cameraman, another), cup (scikit-image's "
                         "coffee, which the SSD also calls a traffic light: track it with every label)")
    ap.add_argument("--objects", type=int, default=2, choices=range(2, 5), metavar="N",
                    help="objects in each --random crossing, 2 to 4: the same pair and more of its kind")
    ap.add_argument("--labels", default="", metavar="L,L,...",
                    help="track only these labels (the scene stage's `labels`, as a user sets it for the "
                         "objects they care about; default: every label the detector reports)")
    ap.add_argument("--every", type=int, default=1, metavar="K",
                    help="track and score only every K-th frame, at its own time: the scenes run at 15 fps, "
                         "so --every 3 is a camera or board at 5 fps (the same detections)")
    args = ap.parse_args(argv)
    if args.every < 1:
        ap.error("--every must be 1 or more")
    scene_cfg = {"labels": args.labels.split(",")} if args.labels else None
    sys.path.insert(0, str(ROOT))
    from benchmarks.scenes import SCENES, random_scenes

    if args.random:
        kinds = tuple(args.kinds.split(","))
        try:
            drawn = [sc for seed in args.seed for sc in random_scenes(seed, args.random, kinds, args.objects)]
        except ValueError as err:
            ap.error(str(err))
        SCENES.update({sc.name: sc for sc in drawn})
        names = [sc.name for sc in drawn]
    else:
        names = args.scenes.split(",") if args.scenes else list(SCENES)
    if args.record:
        save_recorded(args.record, {name: record(name) for name in names})
        print(f"wrote the detections of {len(names)} scenes to {args.record}")
        return 0
    recorded = load_recorded(args.replay) if args.replay else {}
    if not args.cost_only and not args.against:
        print("| scene | frames | objects | IDF1 | ID switches | transfers | MOTA | misses | false positives | "
              "events (new/update/end) | IDF1 with ids known |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        runs, bounds = [], []
        tracked = set(args.labels.split(",")) if args.labels else None
        unmoved: list[int] = []  # ID switches per scene, scored once
        per_crossing: list[int] = []  # ID switches per crossing, all scenes
        alone = 0  # ... and those of objects that cross no other
        moved = hid = 0  # transfers, and those while the track's object was hidden
        for name in names:
            if name not in recorded:
                recorded[name] = record(name)
            results, threshold = recorded[name]
            run = run_scene(name, Recorded(results, 0.0, threshold), scene_cfg, args.every)
            runs.append(run)
            bounds.append(known_ids(run, results, threshold, tracked, args.every))
            acc = accumulate(run)  # one for both: it is the costly part of scoring
            s = score(run, acc)
            unmoved.append(int(s["num_switches"]))
            per, off = switches_per_crossing(run, SCENES[name], args.every, acc)
            per_crossing += per
            alone += off
            n_tr, n_hid = transfers(run, acc)
            moved += n_tr
            hid += n_hid
            ev = {k: sum(1 for e in run.events if e["type"] == k) for k in ("new", "update", "end")}
            n_obj = len(SCENES[name].actors)
            print(
                f"| {name} | {run.frames} | {n_obj} | {s['idf1']:.3f} | {int(s['num_switches'])} | {n_tr} | "
                f"{s['mota']:.3f} | "
                f"{int(s['num_misses'])} | {int(s['num_false_positives'])} | {ev['new']}/{ev['update']}/{ev['end']} | "
                f"{score(bounds[-1])['idf1']:.3f} |",
                flush=True,
            )
        t = score_all(runs)
        print(f"| all | {sum(r.frames for r in runs)} | | {t['idf1']:.3f} | {int(t['num_switches'])} | "
              f"{int(t['num_transfer'])} | {t['mota']:.3f} | {int(t['num_misses'])} | "
              f"{int(t['num_false_positives'])} | | "
              f"{score_all(bounds)['idf1']:.3f} |")
        over = [r.name for r, n in zip(runs, unmoved, strict=True) if n > 1]
        which = f" ({', '.join(over)})" if over else ""
        print(f"\nscenes with more than one ID switch: {len(over)} of {len(runs)}{which}")
        print(f"crossings (pairs of objects whose boxes meet): {len(per_crossing)}, with more than one ID "
              f"switch: {sum(n > 1 for n in per_crossing)}; ID switches of objects that cross none: {alone}")
        print(f"transfers (a track going on with another object, which ID switches leave out): {moved}, of which "
              f"{hid} while the object it had followed was hidden")
        if args.shifts:
            shifts = [float(x) for x in args.shifts.split(",")]
            print("\nIDF1 / ID switches with every detection's score moved by:\n")
            print("| scene | " + " | ".join(f"{x:+.2f}" for x in shifts) + " |")
            print("| --- |" + " --- |" * len(shifts))
            # ID switches per scene: unmoved first, then each shift
            switches: list[list[int]] = [unmoved] + [[] for _ in shifts]
            for name in names:
                results, threshold = recorded[name]
                cells = []
                for j, x in enumerate(shifts, start=1):
                    s = score(run_scene(name, Recorded(results, x, threshold), scene_cfg, args.every))
                    switches[j].append(int(s["num_switches"]))
                    cells.append(f"{s['idf1']:.3f} / {int(s['num_switches'])}")
                print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
            moved = switches[1:]
            print("| ID switches in all | " + " | ".join(str(sum(c)) for c in moved) + " |")
            print("| scenes with more than one | " + " | ".join(str(sum(n > 1 for n in c)) for c in moved) + " |")
            over_all = sum(n > 1 for c in switches for n in c)
            print(f"\nat no shift and the {len(shifts)} shifts, {len(names) * len(switches)} scenes scored: "
                  f"{sum(map(sum, switches))} ID switches, {over_all} scenes with more than one")
    c = cost()
    print(f"\n{c['objects']} objects, 3 zones, CPU ms per frame (median of {c['runs']} runs of 300 frames): "
          f"tracking + zones {c['tracking_zones_ms']:.3f}, the whole scene stage (with events and counts) "
          f"{c['ms_per_frame']:.3f}")
    if args.against:
        a = cost_against(args.against)
        print(f"tracking + zones beside {a['rev']}, CPU ms per frame (medians of {a['runs']} alternated runs): "
              f"this tree {a['now_ms']:.3f}, {a['rev']} {a['then_ms']:.3f}, ratio {a['ratio']:.2f}; "
              f"same track ids and zones: {a['same']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
