"""Object events end to end: a real agent, a real mosquitto, the real SSD on a video cut from real photos.

A cat walks through a zone drawn on the lawn; the broker goes down while the cat is in view and comes
back. Checked: one `new` and one `end` event for the cat, none lost; its zone entry, exit and dwell;
the retained zone count going 1 then 0; the retained snapshot (a JPEG in which the SSD finds the cat);
the clip on disk (a playable file as long as the event plus its margins); Home Assistant's camera and
zone count entities; and the scene section of health.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from benchmarks.bench_tracking import detector
from benchmarks.scenes import FPS, SCENES, render
from edge_agent.sinks.mqtt import Subscriber

from .conftest import COCO_LABELS, SSD_MODEL, Broker, needs_shared, wait_until


class RawRecorder:
    """Every message (raw bytes, retained flag) on the device's topics and Home Assistant's, through a broker
    restart: a persistent session, so what is published while it reconnects waits for it at the broker."""

    def __init__(self, broker: Broker, device: str):
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.sub = Subscriber(
            broker.mqtt(keepalive_s=5, reconnect_max_s=1),
            [f"edge/{device}/#", "homeassistant/#"],
            client_id=f"scene-recorder-{device}",
            persistent=True,
        )
        assert self.sub.start(10)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self.sub.get(0.1)
            if m is not None:
                with self.lock:
                    self.msgs.append(m)

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.msgs if t == topic]

    def json(self, topic: str) -> list[Any]:
        return [json.loads(p) for p in self.on(topic)]

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sub.stop()


def _video(path: Path) -> Path:
    """Two seconds of empty lawn, the walk-through scene, three more seconds of lawn: an MJPG AVI at the
    scene's rate (the clip's pre-roll has frames before the cat to show)."""
    frames = [_lawn()] * (2 * FPS) + [img for img, _ in render(SCENES["cat_through_zone"])] + [_lawn()] * (3 * FPS)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (640, 480))
    for f in frames:
        w.write(f)
    w.release()
    return path


def _lawn() -> np.ndarray:
    from benchmarks.scenes import _photos

    return _photos()["grass"].copy()


@pytest.mark.emulation_slow(
    "the SSD on every frame of a 10 s video, through an agent with an outage, under qemu on two cores: still "
    "running after 25 minutes; the events, counts and media are the same on any CPU"
)
@needs_shared
def test_a_cat_through_a_zone_with_an_outage(tmp_path: Path) -> None:
    broker = Broker(tmp_path, persistence=True).start()
    video = _video(tmp_path / "lawn.avi")
    zone = [list(p) for p in SCENES["cat_through_zone"].zone or ()]
    cfg = tmp_path / "yard.toml"
    cfg.write_text(
        f"""
device_id = "box"
state_dir = "{tmp_path / 'state'}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
keepalive_s = 5
reconnect_max_s = 1
[outbox]
flush_interval_s = 0.2
replay_rate = 1000
[health]
interval_s = 1
[homeassistant]
enabled = true
labels = ["cat"]
[[pipelines]]
name = "yard"
source.uri = "{video}"
source.loop = false
model.path = "{SSD_MODEL}"
model.labels = "{COCO_LABELS}"
model.score_threshold = 0.4
scene.labels = ["cat"]
scene.update_interval_s = 0.5
scene.snapshots.crop = false
scene.clips.enabled = true
scene.clips.pre_s = 1
scene.clips.post_s = 1
[[pipelines.scene.zones]]
name = "lawn"
points = {json.dumps(zone)}
inertia = 2
""",
    )
    from .conftest import AgentProcess

    rec = RawRecorder(broker, "box")
    agent = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path)
    try:
        events = "edge/box/yard/events"
        wait_until(lambda: any(e["type"] == "new" for e in rec.json(events)), 40, what="the cat's new event")
        count = "edge/box/yard/zones/lawn/cat"
        wait_until(lambda: b"1" in rec.on(count), 20, what="the cat counted on the lawn")
        broker.stop()  # the cat is on the lawn: it leaves, and its track ends, while the broker is down
        threading.Event().wait(4)
        broker.start()
        wait_until(lambda: any(e["type"] == "end" for e in rec.json(events)), 40, what="the cat's end event")
        # nothing lost through the outage: an event raised once the broker is back goes out at once, beside
        # the replay of those the outbox kept, so the last of these may still be on its way
        wait_until(lambda: (s := sorted({e["seq"] for e in rec.json(events)})) == list(range(1, s[-1] + 1)),
                   20, what="every event, through the outage")
        evs = rec.json(events)
        by_type = {t: [e for e in evs if e["type"] == t] for t in ("new", "update", "end")}
        assert len({e["seq"] for e in by_type["new"]}) == 1 and len({e["seq"] for e in by_type["end"]}) == 1
        new, end = by_type["new"][0], by_type["end"][0]
        assert new["id"] == end["id"] and new["track_id"] == end["track_id"] and end["label"] == "cat"
        assert end["pipeline"] == "yard" and end["score"] >= 0.4
        assert [v["zone"] for v in end["entered_zones"]] == ["lawn"] and end["dwell_s"]["lawn"] > 0.5
        assert end["end_ts"] > end["start_ts"]
        # predictions carry the track id and zones of each detection
        preds = rec.json("edge/box/yard/predictions")
        tracked = [d for p in preds for d in p["detections"] if d.get("track_id") == end["track_id"]]
        assert tracked and any(d.get("zones") == ["lawn"] for d in tracked)
        # the retained count: 0 as the agent starts, 1 with the cat and, as republished on reconnect, 0 again
        counts = [int(p) for p in rec.on(count)]
        assert counts[0] == 0 and max(counts) == 1 and counts[-1] == 0, counts
        # the retained snapshot: a JPEG in which the SSD finds the cat
        snap = wait_until(lambda: rec.on("edge/box/yard/snapshot/cat"), 10, what="a snapshot")[-1]
        img = cv2.imdecode(np.frombuffer(snap, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and len(snap) <= 150_000
        ssd = detector("ssd")
        try:
            assert "cat" in {d.label for d in ssd.infer(img).result.detections}
        finally:
            ssd.close()
        assert (tmp_path / "state" / "snapshots" / "yard" / f"{end['id']}.jpg").is_file()
        # the clip: written after post_s, as long as the event with its margins
        clip = tmp_path / "state" / "clips" / "yard" / f"{end['id']}.avi"
        wait_until(clip.is_file, 20, what="the clip")
        cap = cv2.VideoCapture(str(clip))
        n, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        assert abs(n / fps - (end["end_ts"] - end["start_ts"] + 2.0)) < 0.6, (n, fps)
        # Home Assistant: a camera on the snapshot topic, a sensor on the zone count
        configs = {t: json.loads(p) for t, p, _ in list(rec.msgs) if t.startswith("homeassistant/") and p}
        cams = [c for t, c in configs.items() if t.startswith("homeassistant/camera/")]
        assert any(c["topic"] == "edge/box/yard/snapshot/cat" for c in cams)
        assert any(c.get("state_topic") == "edge/box/yard/zones/lawn/cat" for c in configs.values())
        # health's scene section
        def scene_health() -> dict[str, Any] | None:  # a document from after the clip was written
            for d in reversed(rec.json("edge/box/health")):
                sc = d["pipelines"]["yard"]["scene"] or {}
                if sc.get("events", {}).get("end") and (sc.get("clips") or {}).get("written"):
                    return dict(sc)
            return None

        sc = wait_until(scene_health, 10, what="health with the scene")
        assert sc["tracks_created"] >= 1 and sc["events"]["new"] == 1 and sc["clips"]["written"] == 1
    finally:
        agent.stop()
        rec.close()
        broker.stop()


def _door(broker: Broker, uri: str, zone: str, model: str = "") -> str:
    """The configuration of device `door`: BlazeFace on `uri` (or the `model` table's keys), with one zone
    (its TOML keys)."""
    from .conftest import SHORT

    model = model or f'path = "{SHORT}"\n'
    return (f'device_id = "door"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n[source]\nuri = "{uri}"\n'
            f'[model]\n{model}[[scene.zones]]\n{zone}')


def test_zones_change_on_reload_without_a_restart(tmp_path: Path) -> None:
    """SIGHUP with a new zone: the running pipeline takes it between two frames; boot and tracks go on."""
    import signal

    from .conftest import DEMO_VIDEO, AgentProcess

    broker = Broker(tmp_path).start()
    cfg = tmp_path / "door.toml"
    base = _door(broker, str(DEMO_VIDEO), 'name = "top"\npoints = [[0.0, 0.0], [1.0, 0.0], [1.0, 0.05], [0.0, 0.05]]\n')
    whole = '[[scene.zones]]\nname = "all"\npoints = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\ninertia = 1\n'
    cfg.write_text(base)
    rec = RawRecorder(broker, "door")
    agent = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path)
    try:
        preds = "edge/door/predictions"

        def tracked(zone: str | None) -> list[Any]:
            return [d for p in rec.json(preds) for d in p["detections"]
                    if "track_id" in d and (zone is None or zone in d.get("zones", []))]

        wait_until(lambda: tracked(None), 40, what="a tracked face")
        assert not tracked("all")
        boot = rec.json(preds)[-1]["boot_id"]
        cfg.write_text(base + whole)
        agent.signal(signal.SIGHUP)
        wait_until(lambda: tracked("all"), 30, what="faces in the zone added by the reload")
        assert {p["boot_id"] for p in rec.json(preds)} == {boot}
        # the count is retained state, published apart from the predictions: it may come a moment later
        wait_until(lambda: any(c.isdigit() and int(c) >= 1 for c in rec.on("edge/door/zones/all/face")), 10,
                   what="the retained count of the zone added by the reload")
    finally:
        agent.stop()
        rec.close()
        broker.stop()


def test_a_pipeline_removed_on_reload_leaves_no_retained_state(tmp_path: Path) -> None:
    """A camera taken out of the configuration (SIGHUP) takes its retained zone counts and snapshots
    off the broker, as its Home Assistant entities go: a newcomer sees none of them."""
    import signal

    from .conftest import DEMO_VIDEO, SHORT, AgentProcess

    broker = Broker(tmp_path).start()
    cfg = tmp_path / "two.toml"
    head = f'device_id = "two"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'

    def pipe(name: str) -> str:
        return (f'[[pipelines]]\nname = "{name}"\nsource = {{ uri = "{DEMO_VIDEO}" }}\nmodel.path = "{SHORT}"\n'
                f'[[pipelines.scene.zones]]\nname = "all"\npoints = [[0, 0], [1, 0], [1, 1], [0, 1]]\ninertia = 1\n')

    cfg.write_text(head + pipe("door") + pipe("porch"))
    rec = RawRecorder(broker, "two")
    agent = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path)
    try:
        for topic in ("edge/two/porch/zones/all/face", "edge/two/porch/snapshot/face", "edge/two/door/zones/all/face"):
            wait_until(lambda t=topic: any(rec.on(t)), 60, what=topic)
        cfg.write_text(head + pipe("door"))
        agent.signal(signal.SIGHUP)
        porch = ("edge/two/porch/snapshot/face", "edge/two/porch/zones/all/face", "edge/two/models/porch/state")
        wait_until(lambda: all(b"" in rec.on(t) for t in porch), 20, what="the removed pipeline's state cleared")
        late = Subscriber(broker.mqtt(), ["edge/two/#"], client_id="late")
        assert late.start(10)
        seen: set[str] = set()

        def door_retained() -> bool:  # the retained messages come together, right after the subscription
            while (m := late.get(0.05)) is not None:
                if m[2]:
                    seen.add(m[0])
            return {"edge/two/door/zones/all/face", "edge/two/door/snapshot/face"} <= seen

        wait_until(door_retained, 10, what="door's retained count and snapshot, to a newcomer")
        late.stop()
        assert not [t for t in seen if "/porch/" in t], seen
        assert "pipeline porch removed" in agent.log()
    finally:
        agent.stop()
        rec.close()
        broker.stop()


def test_a_count_left_by_a_run_that_ended_badly_is_zero_as_the_agent_starts(tmp_path: Path) -> None:
    """A zone count is retained, and was published only when it changed: a run killed while a face was
    in the zone (a power cut, a crash) left `1` there, and the next run, seeing nobody, never said
    otherwise (Home Assistant showed a face at the door for good). Each count a zone can name is 0 as
    the pipeline starts."""
    from edge_agent.sinks.base import Message
    from edge_agent.sinks.mqtt import MqttSink

    from .conftest import AgentProcess

    broker = Broker(tmp_path).start()
    left = MqttSink(broker.mqtt(), "left-behind")
    left.start()
    assert left.wait_connected(10)
    left.submit(Message("edge/door/zones/porch/face", b"1", qos=1, retain=True))
    assert wait_until(lambda: left.sent >= 1, 10)
    left.close(2)
    cfg = tmp_path / "door.toml"
    porch = 'name = "porch"\npoints = [[0, 0], [1, 0], [1, 1], [0, 1]]\nlabels = ["face"]\n'
    cfg.write_text(_door(broker, "synthetic", porch))
    rec = RawRecorder(broker, "door")
    agent = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path)
    try:
        topic = "edge/door/zones/porch/face"
        assert wait_until(lambda: rec.on(topic)[:1] == [b"1"], 10, what="the count left behind")
        wait_until(lambda: rec.on(topic)[-1:] == [b"0"], 40, what="the count set to 0 as the agent starts")
    finally:
        agent.stop()
        rec.close()
        broker.stop()


def test_a_count_of_a_zone_that_counts_any_label_left_by_a_killed_run_is_zero_at_the_next_start(
    tmp_path: Path,
) -> None:
    """A zone with no `labels` (and no `scene.labels`) names no count in advance, so nothing was set to
    0 as the agent started, and a count a killed run left at 1 stayed 1. The retained ledger remembers
    the counts the zone published: each is 0 at the next start, with no face in view to say so. Once the
    zone counts only persons, the face count it left is cleared instead."""
    import signal

    from .conftest import COCO_LABELS, DEMO_VIDEO, SSD_MODEL, AgentProcess

    broker = Broker(tmp_path).start()
    cfg = tmp_path / "door.toml"
    porch = 'name = "porch"\npoints = [[0, 0], [1, 0], [1, 1], [0, 1]]\ninertia = 1\n'
    cfg.write_text(_door(broker, str(DEMO_VIDEO), porch))
    rec = RawRecorder(broker, "door")
    topic = "edge/door/zones/porch/face"
    try:
        first = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path, name="first")
        try:
            wait_until(lambda: b"1" in rec.on(topic), 60, what="a face counted in the zone")
            first.signal(signal.SIGKILL)  # a power cut: no `end`, the count stays 1 on the broker
            first.wait(10)
        finally:
            first.stop()
        assert rec.on(topic)[-1] != b"0"
        cfg.write_text(_door(broker, "synthetic", porch))  # nobody in view now
        shown = len(rec.on(topic))
        second = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path, name="second")
        try:
            # (0 as the pipeline starts, and again as the connection's retained state is republished)
            wait_until(lambda: set(rec.on(topic)[shown:]) == {b"0"}, 40, what="the count left behind set to 0 at start")
        finally:
            second.stop()
        # a detector of persons (BlazeFace's one label is "face": a zone of persons there is refused)
        ssd = f'path = "{SSD_MODEL}"\nlabels = "{COCO_LABELS}"\n'
        cfg.write_text(_door(broker, "synthetic", porch + 'labels = ["person"]\n', ssd))
        third = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path, name="third")
        try:
            wait_until(lambda: b"" in rec.on(topic), 40, what="the face count of a zone now counting persons cleared")
            wait_until(lambda: b"0" in rec.on("edge/door/zones/porch/person"), 40, what="the person count at 0")
        finally:
            third.stop()
    finally:
        rec.close()
        broker.stop()


def test_retained_state_of_a_pipeline_or_zone_removed_while_stopped_is_cleared_at_start(tmp_path: Path) -> None:
    """Edit the file, restart the service: a camera taken out that way left its retained zone counts and
    snapshots on the broker for good (only a reload took them off), and its model's update state, and
    a renamed zone its counts. The agent keeps a ledger of the retained topics it published (state_dir)
    and clears, as it starts, those of pipelines, zones and models the configuration no longer has; a
    newcomer sees only what exists."""
    from .conftest import DEMO_VIDEO, SHORT, AgentProcess

    broker = Broker(tmp_path).start()
    cfg = tmp_path / "two.toml"
    head = f'device_id = "two"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'

    def pipe(name: str, zone: str) -> str:
        return (f'[[pipelines]]\nname = "{name}"\nsource = {{ uri = "{DEMO_VIDEO}" }}\nmodel.path = "{SHORT}"\n'
                f'[[pipelines.scene.zones]]\nname = "{zone}"\npoints = [[0, 0], [1, 0], [1, 1], [0, 1]]\ninertia = 1\n')

    def retained_now(expected: set[str]) -> set[str]:
        """What a newcomer gets: the broker sends a subscription's retained messages together, at once."""
        late = Subscriber(broker.mqtt(), ["edge/two/+/zones/#", "edge/two/+/snapshot/#", "edge/two/models/+/state"],
                          client_id="late")
        assert late.start(10)
        seen: set[str] = set()

        def arrived() -> bool:
            while (m := late.get(0.05)) is not None:
                seen.add(m[0])
            return expected <= seen

        wait_until(arrived, 10, what=f"{expected} to a newcomer")
        late.stop()
        return seen

    cfg.write_text(head + pipe("door", "all") + pipe("porch", "all"))
    rec = RawRecorder(broker, "two")
    first = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path, name="first")
    try:
        for topic in ("edge/two/porch/zones/all/face", "edge/two/porch/snapshot/face", "edge/two/door/zones/all/face",
                      "edge/two/models/porch/state"):
            wait_until(lambda t=topic: any(rec.on(t)), 60, what=topic)
    finally:
        first.stop()
    cfg.write_text(head + pipe("door", "front"))  # porch taken out, door's zone renamed, while stopped
    second = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path, name="second")
    try:
        wait_until(lambda: b"" in rec.on("edge/two/porch/snapshot/face"), 30, what="porch's snapshot cleared")
        wait_until(lambda: b"" in rec.on("edge/two/models/porch/state"), 30, what="porch's model state cleared")
        wait_until(lambda: any(rec.on("edge/two/door/zones/front/face")), 30, what="the new zone's count")
        seen = retained_now(
            {"edge/two/door/snapshot/face", "edge/two/door/zones/front/face", "edge/two/models/door/state"}
        )
        assert not [t for t in seen if "/porch/" in t or "/zones/all/" in t], seen
        assert "clearing retained edge/two/porch/zones/all/face" in second.log()
    finally:
        second.stop()
        rec.close()
        broker.stop()


def test_a_second_stage_gets_its_crops_with_snapshots_and_clips_off(tmp_path: Path) -> None:
    """The second stage crops from the frame's picture. With snapshots and clips off it was the only part
    of the scene that wanted the picture, and was not counted: the pipeline let each picture go after
    inference, and the face mesh never ran. Now the mesh rides on the faces' predictions, and the frames
    are decoded whole for it (the crops are cut in the frame's own pixels)."""
    from .conftest import DEMO_VIDEO, SHORT, AgentProcess

    mesh = Path(__file__).resolve().parents[1] / "models" / "face_landmark.tflite"
    broker = Broker(tmp_path).start()
    cfg = tmp_path / "mesh.toml"
    cfg.write_text(
        f'device_id = "mesh"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n[health]\ninterval_s = 1\n'
        f'[source]\nuri = "{DEMO_VIDEO}"\n[model]\npath = "{SHORT}"\n'
        f'[scene]\nenabled = true\nsnapshots.enabled = false\n'
        f'[scene.second_stage]\nmodel.path = "{mesh}"\nlabels = ["face"]\ninterval_s = 0.5\n'
    )
    rec = RawRecorder(broker, "mesh")
    agent = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path)
    try:
        meshes = wait_until(
            lambda: [d["attributes"]["second_stage"] for p in rec.json("edge/mesh/predictions")
                     for d in p["detections"] if "second_stage" in d.get("attributes", {})], 40,
            what="a face mesh on a face's prediction",
        )
        assert meshes[0]["model"] == "face_landmark"
        health = wait_until(lambda: next((h for h in reversed(rec.json("edge/mesh/health"))
                                          if h["frames"]["inferred"] > 5), None), 20, what="health")
        assert health["source"]["decode_scale"] == 1
    finally:
        agent.stop()
        rec.close()
        broker.stop()


def test_a_label_with_a_character_no_topic_may_hold_never_ends_the_connection(tmp_path: Path) -> None:
    """A label is part of the snapshot and zone count topics, and comes from a labels file or a model's
    metadata, which an update may ship. One with a control character in it made each such publish end
    the connection (the broker refuses the topic), again after every reconnect: nothing else got out.
    It now stands as `_` in the topic, and keeps its own spelling in the payloads."""
    from .conftest import DEMO_VIDEO, SHORT, AgentProcess

    broker = Broker(tmp_path).start()
    labels = tmp_path / "labels.txt"
    labels.write_text("fa\x01ce\n")
    cfg = tmp_path / "ctl.toml"
    cfg.write_text(
        f'device_id = "ctl"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n[health]\ninterval_s = 1\n'
        f'[source]\nuri = "{DEMO_VIDEO}"\n[model]\npath = "{SHORT}"\nlabels = "{labels}"\n'
        '[scene]\nenabled = true\n[[scene.zones]]\nname = "all"\npoints = [[0, 0], [1, 0], [1, 1], [0, 1]]\n'
    )
    rec = RawRecorder(broker, "ctl")
    agent = AgentProcess(["run", "--config", str(cfg)], {}, tmp_path)
    try:
        snap = wait_until(lambda: rec.on("edge/ctl/snapshot/fa_ce"), 40, what="the snapshot")[-1]
        assert cv2.imdecode(np.frombuffer(snap, np.uint8), cv2.IMREAD_COLOR) is not None
        wait_until(lambda: b"1" in rec.on("edge/ctl/zones/all/fa_ce"), 20, what="the zone count")
        new = next(e for e in rec.json("edge/ctl/events") if e["type"] == "new")
        assert new["label"] == "fa\x01ce"
        seen = len(rec.on("edge/ctl/predictions"))
        wait_until(lambda: len(rec.on("edge/ctl/predictions")) > seen + 20, 20, what="predictions after them")
        health = wait_until(lambda: next((h for h in reversed(rec.json("edge/ctl/health"))
                                          if h["frames"]["inferred"] > 30), None), 20, what="health")
        assert health["broker"]["state"] == "connected" and health["broker"]["connects"] == 1, health["broker"]
    finally:
        agent.stop()
        rec.close()
        broker.stop()
