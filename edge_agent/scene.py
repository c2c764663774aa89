"""Detections -> the events people act on: masks, tracks, zones, one event per object, snapshots, clips.

One `SceneStage` per frame pipeline, on its post stage after decoding, before publishing:
  1. masks drop the detections anchored inside them (they are not published either);
  2. the tracker gives every detection of a tracked label a `track_id`;
  3. each track's zones are kept with inertia (so many frames in, or out, before it counts);
  4. a track confirmed (and inside a required zone, when some are set) raises `new`; changes of its
     zones or a better score raise `update`, at most once per `update_interval_s`; a track lost for
     `tracking.max_age_s` raises `end` with its zones, dwell times and best snapshot;
  5. the number of objects of each label in each zone is published, retained, when it changes;
  6. snapshots and clips are made from the frames the post stage hands in.
Everything here is pure computation on the post thread except the snapshot files (small, bounded)
and the clips, which a writer thread puts on disk.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.clips import ClipRecorder
from edge_agent.config import RuntimeConfig, SceneConfig, Settings
from edge_agent.model import misnamed_labels
from edge_agent.results import Detection, Result
from edge_agent.second_stage import SecondStage
from edge_agent.snapshots import Best, SnapshotStore, render
from edge_agent.tracker import Track, Tracker
from edge_agent.zones import MaskRule, Polygon, PolygonSet, ZoneRule, anchor_points, in_zones, masked

log = logging.getLogger(__name__)

#: A better best score re-announces an object only when it rises by this much.
_SCORE_STEP = 0.05
#: Zone visits an object's events list: the latest (`entered_zones`); `zone_entries` counts them all,
#: and `dwell_s` holds the time of all.
_MAX_VISITS = 20
#: An object's best picture, a camera frame while it may still be bettered, is cut down to what its
#: snapshot shows once it has stood this long (`SceneStage._compact`).
_COMPACT_AFTER_S = 2.0


@dataclass
class ZoneVisit:
    zone: str
    entered_ts: float
    left_ts: float | None = None

    def as_dict(self, offset: float = 0.0) -> dict[str, Any]:
        """offset: from the scene's clock to the wall clock (see `SceneStage.process`)."""
        return {
            "zone": self.zone,
            "entered_ts": round(self.entered_ts + offset, 6),
            "left_ts": None if self.left_ts is None else round(self.left_ts + offset, 6),
        }


@dataclass
class TrackedObject:
    """What is known of one track, for its events."""

    track_id: int
    event_id: str
    label: str
    start_ts: float
    last_ts: float
    score: float = 0.0
    best_score: float = 0.0
    best: Best | None = None
    box_norm: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    inside: set[str] = field(default_factory=set)
    streak: dict[str, int] = field(default_factory=dict)
    visits: list[ZoneVisit] = field(default_factory=list)
    announced: bool = False
    qualified: bool = False  # has been in a required zone (or none are required)
    last_update_ts: float = 0.0
    announced_score: float = 0.0
    changed: bool = False
    snapshot_ts: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    second_ts: float | None = None  # when the second stage last ran on it
    entries: int = 0  # zone entries in all, `visits` holding the latest
    dwell_before: dict[str, float] = field(default_factory=dict)  # seconds in each zone, of visits let go

    def enter(self, zone: str, ts: float) -> None:
        """A visit begins. Past _MAX_VISITS, the oldest visit that has ended is let go (its time stays
        in the dwell): an object that lives for hours at a zone's edge would otherwise carry every
        visit in every event it raises, and its events grow without bound."""
        self.visits.append(ZoneVisit(zone, ts))
        self.entries += 1
        if len(self.visits) > _MAX_VISITS:
            for i, v in enumerate(self.visits):
                if v.left_ts is not None:
                    self.dwell_before[v.zone] = self.dwell_before.get(v.zone, 0.0) + v.left_ts - v.entered_ts
                    del self.visits[i]
                    break

    def dwell(self, now: float) -> dict[str, float]:
        out = dict(self.dwell_before)
        for v in self.visits:
            out[v.zone] = out.get(v.zone, 0.0) + ((v.left_ts if v.left_ts is not None else now) - v.entered_ts)
        return {k: round(v, 3) for k, v in out.items()}


@dataclass
class SceneOutput:
    """One frame through the scene stage."""

    result: Result  # masked detections removed
    extras: list[dict[str, Any]]  # per detection of `result`: track_id, zones
    events: list[dict[str, Any]]  # event bodies (type, id, track_id, ...)
    counts: dict[tuple[str, str], int]  # (zone, label) -> objects now inside, where it changed
    snapshots: list[tuple[str, bytes]]  # (label, JPEG) to publish


class SceneStage:
    def __init__(
        self,
        cfg: SceneConfig,
        pipeline: str,
        state_dir: Path,
        runtime: RuntimeConfig | None = None,
        snapshot_url: str = "/snapshots",
    ):
        """runtime: where the second stage's model runs (default: the CPU)."""
        self.cfg = cfg
        self.second = (
            SecondStage(cfg.second_stage, runtime or RuntimeConfig(accelerator="cpu"), state_dir, None)
            if cfg.second_stage is not None
            else None
        )
        self.pipeline = pipeline
        self.tracker = Tracker(
            cfg.tracking.iou_threshold, cfg.tracking.max_age_s, cfg.tracking.min_hits, cfg.tracking.high_score
        )
        self.zones = [
            ZoneRule(
                z.name,
                Polygon(z.points),
                frozenset(z.labels) if z.labels is not None else None,
                z.min_score,
                z.min_area,
                z.inertia,
            )
            for z in cfg.zones
        ]
        self.zone_shapes = PolygonSet([z.polygon for z in self.zones])
        self.masks = [
            MaskRule(Polygon(m.points), frozenset(m.labels) if m.labels is not None else None) for m in cfg.masks
        ]
        self.labels = set(cfg.labels) if cfg.labels is not None else None
        self.objects: dict[int, TrackedObject] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.snapshots = SnapshotStore(state_dir / "snapshots" / pipeline, cfg.snapshots.keep)
        self.snapshot_url = f"{snapshot_url}/{pipeline}"
        self.clips = ClipRecorder(cfg.clips, state_dir / "clips" / pipeline) if cfg.clips.enabled else None
        self.event_counts = {"new": 0, "update": 0, "end": 0}
        #: objects whose `end` this frame raised, for their last snapshot
        self._ended: dict[str, TrackedObject] = {}
        self.masked = 0
        #: tracks confirmed since start: the objects, each with an id that predictions and events name
        self.objects_created = 0
        #: the wall clock less the scene's clock, at the latest frame: what the times it publishes add
        self._offset = 0.0
        self._clock: float | None = None  # the latest frame's time on the scene's clock

    @property
    def needs_images(self) -> bool:
        """Whether the scene wants each frame's picture: for snapshots, clips, or the second stage's crops."""
        return self.cfg.snapshots.enabled or self.clips is not None or self.second is not None

    # --- one frame -----------------------------------------------------------------------------
    def process(self, result: Result, ts: float, image: np.ndarray | None, clock: float | None = None) -> SceneOutput:
        """One frame: `ts` its wall-clock time, `clock` its time on a clock that never steps (the
        monotonic clock, or a file's own; default `ts`). Tracks, zones, dwell times and clips run on
        `clock`; every time published is on the wall clock as it stands at this frame. A board
        without a real-time clock has its wall clock set hours or days at once when it reaches a
        time server: tracks go on through it, and an object's times are published moved with it
        from then on."""
        now = ts if clock is None else clock
        self._offset, self._clock = ts - now, now
        dets = list(result.detections)
        boxes = np.array([d.box_norm for d in dets], np.float64).reshape(-1, 4)
        anchors = anchor_points(boxes, self.cfg.anchor)
        if self.masks and dets:
            drop = masked(self.masks, [d.label for d in dets], anchors)
            if drop.any():
                self.masked += int(drop.sum())
                keep = np.flatnonzero(~drop)
                dets, boxes, anchors = [dets[i] for i in keep], boxes[keep], anchors[keep]
        out_result = Result(task=result.task, detections=tuple(dets)) if len(dets) != len(result.detections) else result
        tracked = [i for i, d in enumerate(dets) if self.labels is None or d.label in self.labels]
        up = self.tracker.update(
            boxes[tracked], np.array([dets[i].score for i in tracked]), [dets[i].label for i in tracked], now
        )
        geo = (
            in_zones(self.zones, [d.label for d in dets], [d.score for d in dets], boxes, anchors, self.zone_shapes)
            if self.zones
            else [[] for _ in dets]
        )
        extras: list[dict[str, Any]] = [{} for _ in dets]
        self.objects_created += len(up.confirmed)
        for t in up.confirmed:
            self.objects[t.id] = TrackedObject(
                t.id, f"{t.first_ts + self._offset:.3f}-{secrets.token_hex(3)}", t.label, t.first_ts, now,
                qualified=not self.cfg.required_zones,
            )
        for k, i in enumerate(tracked):
            tid = up.ids[k]
            if tid is None:
                continue
            obj = self.objects.get(tid)
            if obj is None:  # tentative: not yet an object, and its id not yet published (a flicker that
                continue  # never lasts `min_hits` frames would leave an id no event ever names)
            extras[i]["track_id"] = tid
            self._observe(obj, dets[i], geo[i], now, image)
            extras[i]["zones"] = sorted(obj.inside)
            if self.second is not None and image is not None:
                self._second(obj, dets[i], now, image)
            if "second_stage" in obj.attributes:
                extras[i]["attributes"] = {"second_stage": brief(obj.attributes["second_stage"])}
        # a track missed this frame keeps its zones: a detector's flicker or a brief occlusion is not a
        # departure; it leaves by being seen outside, or when its track ends
        events = self._events(now, up.ended)
        if self.cfg.snapshots.enabled:
            self._compact(now)
        if self.clips is not None and image is not None:
            self.clips.offer(image, now)
        counts = self._recount()
        snaps = self._snapshots(events)
        return SceneOutput(out_result, extras, events, counts, snaps)

    def end_all(self, ts: float) -> SceneOutput:
        """Every object ends (the pipeline stops or changes model); ts: the wall clock's time now."""
        now = ts - self._offset
        if self._clock is not None:
            now = max(now, self._clock)
        ended = self.tracker.end_all()
        events = self._events(now, ended)
        counts = self._recount()
        return SceneOutput(Result(task="detection"), [], events, counts, self._snapshots(events))

    def close(self) -> None:
        if self.clips is not None:
            self.clips.close()
        if self.second is not None:
            self.second.close()

    def _second(self, obj: TrackedObject, det: Detection, ts: float, image: np.ndarray) -> None:
        """The second model on this object's crop, once per interval; a failure disables it alone.
        ts: on the scene's clock."""
        second = self.second
        if second is None or not second.wants(obj.label) or second.error is not None:
            return
        if obj.second_ts is not None and ts - obj.second_ts < second.cfg.interval_s:
            return
        obj.second_ts = ts
        try:
            res = second.run(image, det.box, ts + self._offset)
        except Exception as err:  # any failure of the second model: it stops, the first goes on
            second.error = f"{type(err).__name__}: {err}"
            log.error("%s: second stage %s disabled: %s", self.pipeline, second.name, second.error)
            return
        if res is not None:
            obj.attributes["second_stage"] = res
            obj.changed = True

    # --- internals ---------------------------------------------------------------------------
    def _compact(self, ts: float) -> None:
        """One object a frame whose best picture is still a camera frame, held _COMPACT_AFTER_S, gets it
        cropped and scaled to what its snapshot shows: objects that stay for hours (parked cars) hold
        a few hundred kB each, not a frame each (6 MB at 1080p, 25 at 4K). Not when the best is taken:
        a track's score rises over its first frames, and scaling a 4K frame costs about 13 ms here."""
        for obj in self.objects.values():
            best = obj.best
            if best is not None and not best.compact and ts - best.ts >= _COMPACT_AFTER_S:
                obj.best = best.compacted(self.cfg.snapshots)
                return

    def _observe(
        self, obj: TrackedObject, det: Detection, zones: Sequence[str], ts: float, img: np.ndarray | None
    ) -> None:
        obj.last_ts, obj.score, obj.box_norm = ts, det.score, det.box_norm
        if det.score > obj.best_score:
            obj.best_score = det.score
            if img is not None and img.size and self.cfg.snapshots.enabled:
                obj.best = Best(img, det.box, det.score, ts)  # the frame itself: free on this path
            if det.score >= obj.announced_score + _SCORE_STEP:
                obj.changed = True
        if self.zones:
            self._zones(obj, set(zones), ts)

    def _zones(self, obj: TrackedObject, now_in: set[str], ts: float) -> None:
        for z in self.zones:
            want = z.name in now_in
            if want == (z.name in obj.inside):
                obj.streak.pop(z.name, None)
                continue
            n = obj.streak.get(z.name, 0) + 1
            if n < z.inertia:
                obj.streak[z.name] = n
                continue
            obj.streak.pop(z.name, None)
            obj.changed = True
            if want:
                obj.inside.add(z.name)
                obj.enter(z.name, ts)
                if z.name in self.cfg.required_zones:
                    obj.qualified = True
            else:
                obj.inside.discard(z.name)
                for v in reversed(obj.visits):
                    if v.zone == z.name and v.left_ts is None:
                        v.left_ts = ts
                        break

    def _events(self, ts: float, ended: Sequence[Track]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for obj in self.objects.values():
            if not obj.qualified or obj.track_id in {t.id for t in ended}:
                continue
            if not obj.announced:
                obj.announced, obj.last_update_ts, obj.announced_score, obj.changed = True, ts, obj.best_score, False
                out.append(self._body("new", obj, ts))
                if self.clips is not None:
                    self.clips.begin(obj.event_id, obj.start_ts)
            elif obj.changed and ts - obj.last_update_ts >= self.cfg.update_interval_s:
                obj.last_update_ts, obj.announced_score, obj.changed = ts, obj.best_score, False
                out.append(self._body("update", obj, ts))
        self._ended = {}
        for t in ended:
            if t.id not in self.objects:
                continue
            obj = self.objects.pop(t.id)
            self._ended[obj.event_id] = obj
            end_ts = obj.last_ts
            for z in list(obj.inside):
                obj.inside.discard(z)
                for v in obj.visits:
                    if v.zone == z and v.left_ts is None:
                        v.left_ts = end_ts
            if obj.announced:
                out.append(self._body("end", obj, end_ts))
                if self.clips is not None:
                    self.clips.end(obj.event_id, end_ts)
        for e in out:
            self.event_counts[e["type"]] += 1
        return out

    def _body(self, kind: str, obj: TrackedObject, ts: float) -> dict[str, Any]:
        """The event's fields; its times on the wall clock (ts and the object's: on the scene's)."""
        off = self._offset
        body: dict[str, Any] = {
            "type": kind,
            "id": obj.event_id,
            "track_id": obj.track_id,
            "label": obj.label,
            "score": round(obj.best_score, 5),
            "current_score": round(obj.score, 5),
            "box_norm": [round(v, 5) for v in obj.box_norm],
            "start_ts": round(obj.start_ts + off, 6),
            "end_ts": round(ts + off, 6) if kind == "end" else None,
            "zones": sorted(obj.inside),
            "entered_zones": [v.as_dict(off) for v in obj.visits],
            "zone_entries": obj.entries,
            "dwell_s": obj.dwell(ts),
            "snapshot": None,
            "clip": None,
        }
        if obj.best is not None:
            body["snapshot"] = {
                "url": f"{self.snapshot_url}/{obj.event_id}.jpg",
                "ts": round(obj.best.ts + off, 6),
                "score": round(obj.best.score, 5),
            }
        if kind == "end" and self.clips is not None:
            body["clip"] = {"url": f"/clips/{self.pipeline}/{obj.event_id}.avi", "pre_s": self.cfg.clips.pre_s,
                            "post_s": self.cfg.clips.post_s}
        if obj.attributes:
            body["attributes"] = obj.attributes
        return body

    def _snapshots(self, events: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
        """At `new` and at `end` (when the best frame improved since): publish, and keep the file."""
        out: list[tuple[str, bytes]] = []
        if not self.cfg.snapshots.enabled:
            return out
        for e in events:
            if e["type"] == "update" or e["snapshot"] is None:
                continue
            obj_best = self._best_of(e)
            if obj_best is None:
                continue
            best, last_ts = obj_best
            if e["type"] == "end" and last_ts == best.ts:
                continue  # the frame already published at `new`, or an update since
            jpeg = render(best, e["label"], self.cfg.snapshots)
            self.snapshots.save(e["id"], jpeg)
            out.append((e["label"], jpeg))
        return out

    def _best_of(self, e: dict[str, Any]) -> tuple[Best, float | None] | None:
        obj = self.objects.get(e["track_id"]) or self._ended.get(e["id"])
        if obj is None or obj.best is None:
            return None
        last = obj.snapshot_ts
        obj.snapshot_ts = obj.best.ts
        return obj.best, last

    def start_counts(self) -> dict[tuple[str, str], int]:
        """Every count this scene can name (each zone with each of its labels, or of the scene's), at 0:
        what the pipeline publishes as it starts. A count is retained state that was published only
        when it changed, so one left at 1 by a run that ended without ending its objects (a power
        cut, a crash, a watchdog restart) stayed 1 with nobody there, and Home Assistant showed it."""
        zero = {
            (z.name, label): 0 for z in self.zones for label in sorted(z.labels or self.labels or ())
        }
        self.counts.update(zero)
        return zero

    def counted_labels(self) -> dict[str, set[str] | None]:
        """Per zone, the labels it counts (its own, else the scene's), or None where it counts any: then
        only the counts it published before (the retained ledger) can be set to 0 as it starts."""
        return {z.name: (set(z.labels) if z.labels else None) or self.labels for z in self.zones}

    def _recount(self) -> dict[tuple[str, str], int]:
        now: dict[tuple[str, str], int] = {}
        for obj in self.objects.values():
            for z in obj.inside:
                now[(z, obj.label)] = now.get((z, obj.label), 0) + 1
        changed = {k: v for k, v in now.items() if self.counts.get(k) != v}
        changed.update({k: 0 for k in self.counts if k not in now and self.counts[k] != 0})
        self.counts.update(changed)
        return changed

    def health(self) -> dict[str, Any]:
        return {
            "active_tracks": self.tracker.active,
            "tracks_created": self.objects_created,
            "label_kinds": self.tracker.label_kinds(),
            "objects": len(self.objects),
            "events": dict(self.event_counts),
            "masked": self.masked,
            "zones": {f"{z}/{label}": n for (z, label), n in sorted(self.counts.items())},
            "snapshots": {"saved": self.snapshots.saved, "error": self.snapshots.error},
            "clips": self.clips.health() if self.clips is not None else None,
            "second_stage": self.second.health() if self.second is not None else None,
        }


def brief(res: dict[str, Any]) -> dict[str, Any]:
    """The second stage's result without its bulk (keypoints, raw values): what each prediction carries."""
    out: dict[str, Any] = {k: res[k] for k in ("model", "ts", "task") if k in res}
    if res.get("task") == "classification":
        out["classes"] = res["classes"][:3]
    elif res.get("task") == "detection":
        out["detections"] = [{k: d[k] for k in ("label", "score", "box")} for d in res["detections"]]
    return out


def unknown_labels(cfg: SceneConfig, produced: Sequence[str]) -> str | None:
    """Where the scene names a label the model never produces: it would track, count, mask or crop
    nothing (`misnamed_labels`)."""
    named: list[tuple[str, list[str] | None]] = [("scene.labels", cfg.labels)]
    named += [(f"scene.zones[{z.name}].labels", z.labels) for z in cfg.zones]
    named += [(f"scene.masks[{i}].labels", m.labels) for i, m in enumerate(cfg.masks)]
    if cfg.second_stage is not None:
        named.append(("scene.second_stage.labels", cfg.second_stage.labels))
    return misnamed_labels(named, produced)


def labels_problem(settings: Settings, produced: Sequence[str], pipeline: str | None = None) -> str | None:
    """A pipeline's settings naming a label its model never produces: the scene's on a camera, the events'
    (`signal.events.labels`) on an audio or sensor source; None where all are the model's. `pipeline`: its
    name, which the key then carries (None: the single form's top-level keys)."""
    from edge_agent.signals import signal_kind

    if signal_kind(settings.source.uri) is not None:
        why = misnamed_labels([("signal.events.labels", settings.signal.events.labels)], produced)
    else:
        why = unknown_labels(settings.scene, produced) if settings.scene.active else None
    return why if why is None or pipeline is None else f"pipelines[{pipeline}].{why}"
