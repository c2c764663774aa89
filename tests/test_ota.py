"""Model updates end to end: fleet push, a real HTTP server, the agent swapping models under a stream."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import orjson
import pytest

from edge_agent.fleet import FileServer, build_manifest
from edge_agent.ota.manifest import load_private_key, write_keypair
from edge_agent.sinks.mqtt import Subscriber
from edge_agent.topics import ota_chunk

from .conftest import (
    COCO_LABELS,
    DEMO_VIDEO,
    FULL,
    MODELS,
    SHORT,
    SHORT_INT8,
    SSD_MODEL,
    Broker,
    TopicRecorder,
    free_port,
    needs_shared,
    peak_rss_mb,
    run_cli,
    run_tty,
    scaled,
    wait_until,
)


class Watch(TopicRecorder):
    """Records predictions, model states and command results of one device."""

    def __init__(self, broker: Broker, device: str):
        self.device = device
        self.preds: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.ha_updates: list[dict[str, Any]] = []  # Home Assistant's update entity
        super().__init__(Subscriber(broker.mqtt(), [f"edge/{device}/predictions", f"edge/{device}/model/state",
                                                    f"edge/{device}/cmd/result", f"edge/{device}/ha/update"]))

    def on_message(self, topic: str, doc: Any, arrived: float) -> None:
        if topic.endswith("/predictions"):
            self.preds.append(doc)
        elif topic.endswith("/model/state"):
            self.states.append(doc)
        elif topic.endswith("/ha/update"):
            self.ha_updates.append(doc)
        else:
            self.results.append(doc)

    def state_names(self, version: int) -> list[str]:
        return [s["state"] for s in list(self.states) if s.get("version") == version]

    def deploy(self, manifest: dict[str, Any], cid: str) -> dict[str, Any]:
        return self.command("deploy", cid, {"manifest": manifest})

    def command(self, name: str, cid: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        doc: dict[str, Any] = {"id": cid, "command": name, **({"args": args} if args is not None else {})}
        self.sub.publish(f"edge/{self.device}/cmd", json.dumps(doc).encode())
        return wait_until(lambda: next((r for r in list(self.results) if r["id"] == cid), None), 10,
                          what=f"the answer to {cid}")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_keypair(tmp_path / "keys")


def ota_env(broker: Broker, pub: Path, **extra: str) -> dict[str, str]:
    # the probation's latency budget (1000 ms by default) scales with the machine, as the tests' limits do:
    # under emulation the first model's p95 alone is about 3 s
    budget = f"{min(60_000.0, scaled(1000.0)):g}"
    return {**broker.env(), "EDGE_AGENT_OTA__TRUSTED_KEYS": json.dumps([str(pub)]),
            "EDGE_AGENT_OTA__PROBATION_INFERENCES": "20", "EDGE_AGENT_OTA__PROBATION_S": "20",
            "EDGE_AGENT_OTA__MAX_INFERENCE_MS": budget, **extra}


STREAM = ["run", "--source", "synthetic", "--fps", "30", "--model", str(SHORT)]


def test_push_hot_swaps_without_losing_a_frame(broker: Broker, agent_factory, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keys
    w = Watch(broker, "d1")
    try:
        agent_factory([*STREAM, "--device-id", "d1"], env=ota_env(broker, pub, EDGE_AGENT_HOMEASSISTANT__ENABLED="1"))
        wait_until(lambda: len(w.preds) >= 30, 30, what="the stream")
        r = run_cli("fleet", "push", str(SHORT_INT8), "--version", "1", "--device", "d1", "--key", str(priv),
                    "--serve", "127.0.0.1:0", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port),
                    "--timeout", "120", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "d1: active" in r.stdout
        states = w.state_names(1)
        for s in ("received", "downloading", "verifying", "validating", "activating", "probation", "active"):
            assert s in states, (s, states)
        wait_until(lambda: sum(p["model"]["version"] == "1" for p in w.preds) >= 30, 20, what="new-model results")
        # Home Assistant's update entity offered version 1 while it was on its way, with the download's progress
        ups = list(w.ha_updates)
        flight = [u for u in ups if u["in_progress"]]
        assert flight and all(u["latest_version"] == "1" and u["installed_version"] != "1" for u in flight), ups
        assert any(u["update_percentage"] is not None and 0 <= u["update_percentage"] <= 100 for u in flight), ups
        assert ups[0]["in_progress"] is False and ups[0]["installed_version"] == ups[0]["latest_version"]
        done = wait_until(lambda: next((u for u in reversed(w.ha_updates) if u["installed_version"] == "1"), None),
                          10, what="the update entity to show version 1 installed")
        assert done["latest_version"] == "1" and done["in_progress"] is False
        preds = list(w.preds)
        seqs = [p["seq"] for p in preds]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost across the swap
        names = [p["model"]["name"] for p in preds]
        first_new = names.index("face_detection_short_range_int8")
        assert set(names[:first_new]) == {"face_detection_short_range"}
        assert set(names[first_new:]) == {"face_detection_short_range_int8"}
        gaps = np.diff([p["ts"] for p in preds])
        # the swap is between two frames, no stall: the gaps around it (a loaded machine's hiccup elsewhere
        # in the stream is not the swap's)
        around = gaps[max(0, first_new - 4) : first_new + 3]
        assert around.max() < 5 * np.median(gaps), (around, np.median(gaps))
        listing = w.command("list-models", "lm1")["result"]
        assert listing["current"]["version"] == 1 and any(v["current"] for v in listing["versions"])
        # the same version again is a downgrade now
        m = build_manifest(SHORT_INT8, 1, None, ["http://127.0.0.1:1/x"], None, 1).signed(load_private_key(priv))
        again = w.deploy(m.model_dump(mode="json"), "again")
        assert again["status"] == "rejected" and "not above" in again["reason"]
        # manual rollback goes back to the model the agent started with
        rb = w.command("rollback", "rb1")
        assert rb["status"] == "done"
        wait_until(lambda: w.preds[-1]["model"]["name"] == "face_detection_short_range", 10, what="rollback")
    finally:
        w.close()


def test_rejections_before_download(broker: Broker, agent_factory, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keys
    other_priv, _ = write_keypair(tmp_path / "other", "intruder")
    w = Watch(broker, "d2")
    try:
        agent_factory([*STREAM, "--device-id", "d2"], env=ota_env(broker, pub, EDGE_AGENT_OTA__MAX_BYTES="300000"))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        key = load_private_key(priv)
        base = build_manifest(SHORT, 5, None, ["http://127.0.0.1:9/m.tflite"], None, 1)
        cases: dict[str, tuple[Any, str]] = {
            "unsigned": (base.model_dump(mode="json"), "not signed"),
            "wrong-key": (base.signed(load_private_key(other_priv)).model_dump(mode="json"), "trusted key"),
            "tampered": ({**base.signed(key).model_dump(mode="json"), "version": 6}, "trusted key"),
            "expired": (base.model_copy(update={"expires": dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)})
                        .signed(key).model_dump(mode="json"), "expired"),
            "oversized": (build_manifest(SHORT_INT8, 5, None, ["http://127.0.0.1:9/m"], None, 1).signed(key)
                          .model_dump(mode="json"), "exceeds"),
            "bad-field": ({**base.signed(key).model_dump(mode="json"), "sha256": "xyz"}, "sha256"),
        }
        for cid, (manifest, reason) in cases.items():
            r = w.deploy(manifest, cid)
            assert r["status"] == "rejected" and reason in r["reason"], (cid, r)
        assert all(p["model"]["name"] == "face_detection_short_range" for p in w.preds[-5:])
    finally:
        w.close()


def test_download_and_validation_failures(broker: Broker, agent_factory, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    data = SHORT_INT8.read_bytes()
    (served / "good.tflite").write_bytes(data)
    (served / "broken.tflite").write_bytes(data[: len(data) // 2])

    def edit_input(shape: list[int]) -> bytes:
        from ai_edge_litert import schema_py_generated as sch

        mm = sch.ModelT.InitFromObj(sch.Model.GetRootAs(data, 0))
        sg = mm.subgraphs[0]
        sg.tensors[int(sg.inputs[0])].shape = np.array(shape, np.int32)
        bb = flatbuffers.Builder(0)
        bb.Finish(mm.Pack(bb), file_identifier=b"TFL3")
        return bytes(bb.Output())

    (served / "notimage.tflite").write_bytes(edit_input([1, 10]))  # incompatible input
    (served / "huge.tflite").write_bytes(edit_input([1, 1 << 20, 1 << 12, 3]))  # asks for 12 GiB
    from .test_validate import crashing_mutant

    (served / "crasher.tflite").write_bytes(crashing_mutant())
    fs = FileServer(served, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{fs.port}"
    w = Watch(broker, "d3")
    try:
        agent_factory([*STREAM, "--device-id", "d3"], env=ota_env(broker, pub))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        good = build_manifest(served / "good.tflite", 2, None, [f"{url}/good.tflite"], None, 1)
        lie = good.model_copy(update={"size": good.size - 100, "version": 3}).signed(key)
        mismatch = good.model_copy(update={"sha256": "ab" * 32, "version": 4}).signed(key)
        broken = build_manifest(served / "broken.tflite", 5, None, [f"{url}/broken.tflite"], None, 1).signed(key)
        notimage = build_manifest(served / "notimage.tflite", 6, None, [f"{url}/notimage.tflite"], None, 1).signed(key)
        huge = build_manifest(served / "huge.tflite", 7, None, [f"{url}/huge.tflite"], None, 1).signed(key)
        crasher = build_manifest(served / "crasher.tflite", 8, None, [f"{url}/crasher.tflite"], None, 1).signed(key)
        for cid, m, state, reason in (("lie", lie, "failed", "more than"), ("mm", mismatch, "failed", "mismatch"),
                                      ("broken", broken, "rejected", "truncated"),
                                      ("notimage", notimage, "rejected", "could not load"),
                                      ("huge", huge, "rejected", "out of memory: its tensors need about 12,291 MB"),
                                      ("crasher", crasher, "rejected", "SIGSEGV")):
            assert w.deploy(m.model_dump(mode="json"), cid)["status"] == "accepted"
            final = wait_until(lambda m=m, state=state: next((s for s in list(w.states) if s.get("version") == m.version
                                                              and s["state"] == state), None), 60, what=cid)
            assert reason in final["reason"], (cid, final)
            if state == "rejected":  # nothing of it is left on disk
                assert (tmp_path / "state" / "models" / "blobs").is_dir()
                assert not list((tmp_path / "state" / "models").rglob(f"{m.sha256}*")), cid
        assert w.preds[-1]["model"]["name"] == "face_detection_short_range"
    finally:
        fs.close()
        w.close()


@needs_shared
def test_an_update_without_a_label_the_configuration_names_is_rejected(  # type: ignore[no-untyped-def]
    broker: Broker, agent_factory, keys, tmp_path: Path
) -> None:
    """`run` refuses a configuration naming a label its model never produces (exit 2, which systemd does
    not restart). An update to such a model would serve until the next start, and the device would then
    stay stopped: it is rejected while it is validated, the model serving stays, and nothing of it is kept."""
    priv, pub = keys
    served = tmp_path / "served"
    served.mkdir()
    (served / "ssd.tflite").write_bytes(SSD_MODEL.read_bytes())
    coco = [ln.strip() for ln in COCO_LABELS.read_text().splitlines() if ln.strip()]
    fs = FileServer(served, "127.0.0.1", 0)
    w = Watch(broker, "d9")
    try:
        env = ota_env(broker, pub, EDGE_AGENT_SCENE__ENABLED="true", EDGE_AGENT_SCENE__LABELS='["face"]')
        agent_factory([*STREAM, "--device-id", "d9"], env=env)
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        m = build_manifest(served / "ssd.tflite", 2, None, [f"http://127.0.0.1:{fs.port}/ssd.tflite"], coco, 1)
        assert w.deploy(m.signed(load_private_key(priv)).model_dump(mode="json"), "ssd")["status"] == "accepted"
        final = wait_until(lambda: next((s for s in list(w.states) if s.get("version") == 2
                                         and s["state"] in ("rejected", "active", "rolled_back")), None), 60,
                           what="the update's end")
        assert final["state"] == "rejected", final
        assert "would refuse it at the next start: scene.labels: 'face' is not a label the model produces" in \
            final["reason"], final
        assert not list((tmp_path / "state" / "models").rglob(f"{m.sha256}*"))
        seen = len(w.preds)
        wait_until(lambda: len(w.preds) > seen + 3, 20, what="predictions after the rejection")
        assert w.preds[-1]["model"]["name"] == "face_detection_short_range"
    finally:
        fs.close()
        w.close()


def _degenerate(src: bytes) -> bytes:
    """A model whose every weight is zero: it loads and runs, and says the same thing for every frame."""
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromObj(s.Model.GetRootAs(src, 0))
    for b in m.buffers:
        if b.data is not None and len(b.data) > 64:
            b.data = np.zeros(len(b.data), np.uint8)
    b2 = flatbuffers.Builder(0)
    b2.Finish(m.Pack(b2), file_identifier=b"TFL3")
    return bytes(b2.Output())


def test_probation_failure_rolls_back_and_kill_during_probation_blocks(broker: Broker, agent_factory, keys,  # type: ignore[no-untyped-def]
                                                                       tmp_path: Path) -> None:
    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    (served / "zero.tflite").write_bytes(_degenerate(SHORT.read_bytes()))
    fs = FileServer(served, "127.0.0.1", 0)
    w = Watch(broker, "d4")
    try:
        env = ota_env(broker, pub, EDGE_AGENT_STATE_DIR=str(tmp_path / "state"))
        a = agent_factory([*STREAM, "--device-id", "d4"], env=env, name="a")
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        m = build_manifest(served / "zero.tflite", 7, "zeros", [f"http://127.0.0.1:{fs.port}/zero.tflite"], None, 1)
        assert w.deploy(m.signed(key).model_dump(mode="json"), "z1")["status"] == "accepted"
        rb = wait_until(lambda: next((s for s in list(w.states) if s["state"] == "rolled_back"), None), 60,
                        what="rollback")
        assert "degenerate" in rb["reason"]
        wait_until(lambda: w.preds[-1]["model"]["name"] == "face_detection_short_range", 10, what="old model back")

        # a model on probation when the agent dies is taken as a crash; twice and it is blocked
        slow = build_manifest(SHORT_INT8, 8, None, [f"http://127.0.0.1:{fs.port}/int8.tflite"], None, 1)
        (served / "int8.tflite").write_bytes(SHORT_INT8.read_bytes())
        penv = {**env, "EDGE_AGENT_OTA__PROBATION_INFERENCES": "100000", "EDGE_AGENT_OTA__PROBATION_S": "3600"}
        a.stop()
        for round_ in (1, 2):
            boots = {p["boot_id"] for p in list(w.preds)}
            agent = agent_factory([*STREAM, "--device-id", "d4"], env=penv, name=f"p{round_}")
            latest = wait_until(lambda boots=boots: next((p for p in reversed(list(w.preds))
                                                          if p["boot_id"] not in boots), None), 30, what="restart")
            assert latest["model"]["name"] == "face_detection_short_range"
            mv = slow.model_copy(update={"version": 8 + round_}).signed(key)
            w.deploy(mv.model_dump(mode="json"), f"k{round_}")
            wait_until(lambda mv=mv: mv.version in [s.get("version") for s in list(w.states)
                                                  if s["state"] == "probation"], 60, what="probation")
            agent.signal(signal.SIGKILL)
            agent.wait(5)
        boots = {p["boot_id"] for p in list(w.preds)}
        final = agent_factory([*STREAM, "--device-id", "d4"], env=penv, name="final")
        st = wait_until(lambda: next((s for s in list(w.states) if s.get("blocked")), None), 30, what="blocked")
        assert st["state"] == "rolled_back" and "restarted during probation" in st["reason"]
        latest = wait_until(lambda: next((p for p in reversed(list(w.preds)) if p["boot_id"] not in boots), None),
                            30, what="the final restart")
        assert latest["model"]["name"] == "face_detection_short_range"
        again = w.deploy(slow.model_copy(update={"version": 20}).signed(key).model_dump(mode="json"), "k3")
        assert again["status"] == "rejected" and "blocked" in again["reason"]
        assert final.proc.poll() is None
    finally:
        fs.close()
        w.close()


def _int8_mirror(tmp_path: Path, name: str) -> FileServer:
    """A mirror on a free port serving BlazeFace's int8 model as tmp_path/served/NAME."""
    served = tmp_path / "served"
    served.mkdir()
    (served / name).write_bytes(SHORT_INT8.read_bytes())
    return FileServer(served, "127.0.0.1", 0)


def test_a_clean_stop_during_probation_goes_back_without_counting_a_crash(  # type: ignore[no-untyped-def]
    broker: Broker, agent_factory, keys, tmp_path: Path
) -> None:
    """`systemctl restart` (SIGTERM) while a model is on probation: the agent goes back to the model that
    served, says so before it stops, and does not count a crash of the new one. Counted, two such restarts
    blocked a model that did nothing wrong, for good."""
    priv, pub = keys
    key = load_private_key(priv)
    fs = _int8_mirror(tmp_path, "int8.tflite")
    w = Watch(broker, "d5")
    env = ota_env(broker, pub, EDGE_AGENT_STATE_DIR=str(tmp_path / "state"),
                  EDGE_AGENT_OTA__PROBATION_INFERENCES="100000", EDGE_AGENT_OTA__PROBATION_S="3600")
    slow = build_manifest(SHORT_INT8, 1, None, [f"http://127.0.0.1:{fs.port}/int8.tflite"], None, 1)
    try:
        for round_ in (1, 2, 3):
            boots = {p["boot_id"] for p in list(w.preds)}
            agent = agent_factory([*STREAM, "--device-id", "d5"], env=env, name=f"r{round_}")
            latest = wait_until(lambda boots=boots: next((p for p in reversed(list(w.preds))
                                                          if p["boot_id"] not in boots), None), 30, what="start")
            assert latest["model"]["name"] == "face_detection_short_range"
            m = slow.model_copy(update={"version": round_}).signed(key)
            answer = w.deploy(m.model_dump(mode="json"), f"v{round_}")
            assert answer["status"] == "accepted", answer  # not blocked after two restarts
            wait_until(lambda m=m: "probation" in w.state_names(m.version), 60, what="probation")
            agent.signal(signal.SIGTERM)
            assert agent.wait(15) == 0
            st = [s for s in list(w.states) if s.get("version") == m.version][-1]
            assert st["state"] == "rolled_back", st
            assert "stopped during probation (not counted as a crash" in st["reason"], st
            assert st["serving"]["name"] == "face_detection_short_range", st
        agent = agent_factory([*STREAM, "--device-id", "d5"], env=env, name="last")
        wait_until(lambda: w.states and w.states[-1]["state"] == "active", 30, what="the state at the start")
        assert not any("restarted during probation" in s.get("reason", "") for s in list(w.states)), list(w.states)
    finally:
        fs.close()
        w.close()


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    r = run_cli("fleet", "keygen", "--dir", str(tmp_path))
    assert r.returncode == 0
    assert (tmp_path / "fleet.key").stat().st_mode & 0o777 == 0o600
    again = run_cli("fleet", "keygen", "--dir", str(tmp_path))
    assert again.returncode == 1 and "not overwriting" in again.stderr
    manifest = tmp_path / "m.json"
    manifest.write_text(build_manifest(SHORT, 1, None, ["http://x.example/m"], None, 1).model_dump_json())
    signed = run_cli("fleet", "sign", str(manifest), "--key", str(tmp_path / "fleet.key"))
    assert signed.returncode == 0 and json.loads(signed.stdout)["signature"]
    assert hashlib.sha256(SHORT.read_bytes()).hexdigest() == json.loads(signed.stdout)["sha256"]


def test_group_push_to_three_agents(broker: Broker, agent_factory, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keys
    watches = [Watch(broker, f"g{i}") for i in range(3)]
    try:
        for i in range(3):
            env = ota_env(broker, pub, EDGE_AGENT_GROUPS='["lab"]', EDGE_AGENT_STATE_DIR=str(tmp_path / f"s{i}"))
            agent_factory([*STREAM, "--device-id", f"g{i}"], env=env, name=f"g{i}")
        for w in watches:
            wait_until(lambda w=w: len(w.preds) >= 5, 30, what=f"{w.device} streaming")
        r = run_cli("fleet", "push", str(SHORT_INT8), "--version", "3", "--group", "lab", "--key", str(priv),
                    "--serve", "127.0.0.1:0", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port),
                    "--timeout", "120", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        status = json.loads(r.stdout[r.stdout.index("{"):])
        assert set(status) == {"g0", "g1", "g2"} and all(s["state"] == "active" for s in status.values())
    finally:
        for w in watches:
            w.close()


def test_fleet_status_and_rollback_cli(broker: Broker, agent_factory, keys) -> None:  # type: ignore[no-untyped-def]
    _, pub = keys
    w = Watch(broker, "st1")
    try:
        # health only once a minute: what `fleet status` shows must come from asking the device
        agent_factory([*STREAM, "--device-id", "st1"], env=ota_env(broker, pub, EDGE_AGENT_HEALTH__INTERVAL_S="60"))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        # anything may publish under the prefix (a buggy client, an old tool): the fleet's view goes on
        odd = {"odd1/info": b"[1, 2]", "odd1/model/state": b"5", "odd1/availability": b"online",
               "odd2/info": b'{"model": [1], "groups": "abc"}', "odd2/health": b'{"fps": "fast", "status": [3]}',
               "odd2/model/state": b'{"state": ["a"]}',
               # an agent of several pipelines: each pipeline's model, once
               "many/info": json.dumps({"model": {"name": "ssd", "version": "3"}, "pipelines": {
                   "door": {"model": {"name": "ssd", "version": "3"}},
                   "yard": {"model": {"name": "ssd", "version": "3"}},
                   "hall": {"model": {"name": "blazeface", "version": None}}}}).encode()}
        for leaf, body in odd.items():
            w.sub.publish(f"edge/{leaf}", body, retain=True)
        mq = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]
        r = run_cli("fleet", "status", *mq, "--json", "--wait", "2")
        assert r.returncode == 0, r.stderr
        devices = json.loads(r.stdout)
        assert "info" not in devices["odd1"] and devices["odd2"]["info"]["groups"] == "abc"
        assert devices["st1"]["availability"] == "online"
        assert devices["st1"]["info"]["model"]["name"] == "face_detection_short_range"
        assert devices["st1"]["status"]["status"] == "ok" and devices["st1"]["status"]["fps"]["inferred"] > 0
        table = run_cli("fleet", "status", *mq, "--wait", "1.5")
        assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
        row = next(line.split() for line in table.stdout.splitlines() if line.startswith("st1"))
        assert row[1] == "online" and row[-1] == "ok" and float(row[-2]) > 0, table.stdout
        assert row[2] == "face_detection_short_range" and row[3] == "active", row  # no version: none shown
        assert "None" not in table.stdout, table.stdout  # (it read "vNone")
        many = next(line for line in table.stdout.splitlines() if line.startswith("many"))
        assert "ssd v3, blazeface " in many, many
        assert {line.split()[0] for line in table.stdout.splitlines()[1:]} == {"st1", "odd1", "odd2", "many"}
        nothing = run_cli("fleet", "rollback", *mq, "--device", "st1")
        assert nothing.returncode == 1 and "no installed update" in nothing.stdout
        named = run_cli("fleet", "rollback", *mq, "--device", "st1", "--version", "3")
        assert named.returncode == 1 and "version 3" in named.stdout and "nothing to undo" in named.stdout
    finally:
        w.close()


def test_fleet_cli_says_what_is_wrong_without_a_traceback(broker: Broker, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keys
    mq = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]
    base = ["fleet", "push", str(SHORT_INT8), "--version", "1", "--serve", "127.0.0.1:0", *mq]
    missing = run_cli(*base, "--device", "x", "--key", str(tmp_path / "nope.key"))
    assert missing.returncode == 2 and "cannot read the key" in missing.stderr and "Traceback" not in missing.stderr
    public = run_cli(*base, "--device", "x", "--key", str(pub))
    assert public.returncode == 2 and "is a public key" in public.stderr
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    assert "is not a PEM private key" in run_cli(*base, "--device", "x", "--key", str(junk)).stderr
    everywhere = run_cli("fleet", "push", str(SHORT_INT8), "--version", "1", "--serve", "0.0.0.0:0", "--device", "x",
                         "--key", str(priv), *mq)
    assert everywhere.returncode == 2 and "--advertise" in everywhere.stderr
    # a device this broker has never seen: said within seconds, not after --timeout
    t0 = time.monotonic()
    ghost = run_cli(*base, "--device", "ghost", "--key", str(priv), "--timeout", "600")
    assert ghost.returncode == 1 and "ghost: unknown" in ghost.stdout and time.monotonic() - t0 < 30
    rc, shown, err = run_tty(*base, "--device", "ghost")  # unsigned, at a terminal: words, not JSON
    assert "warning: no --key" in err
    assert rc == 1 and shown.strip().splitlines()[-1].split()[:2] == ["ghost", "unknown"], shown
    # an online device that says nothing, and one whose availability is offline
    quiet = Subscriber(broker.mqtt(), [], client_id="quiet")
    assert quiet.start(10)
    quiet.publish("edge/mute/availability", b"online", retain=True)
    quiet.publish("edge/gone/availability", b"offline", retain=True)
    quiet.stop()
    t0 = time.monotonic()
    r = run_cli(*base, "--device", "mute", "--device", "gone", "--key", str(priv), "--answer-timeout", "3")
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    assert "mute: no_answer" in r.stdout and "gone: offline" in r.stdout
    port = free_port()  # nothing listens there
    for cmd in (["fleet", "status"], ["fleet", "rollback", "--device", "x"],
                ["fleet", "push", str(SHORT_INT8), "--version", "1", "--url", "http://x/m", "--device", "x",
                 "--key", str(priv)]):
        r = run_cli(*cmd, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), timeout=60)
        assert r.returncode == 1 and f"no broker at 127.0.0.1:{port}" in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr


#: What a device (or anything else on the broker) may publish where the fleet commands read documents:
#: not UTF-8, brackets nested past the JSON parser's depth (RecursionError, not ValueError), JSON of
#: another shape, and fields of the wrong type.
_GARBAGE = [b"\xff\xfe", b"[" * 100_000, b"[1, 2]", b'"text"', b'{"id": 5, "status": ["done"]}']


class _HostileDevice:
    """A device on the real broker that answers each command with every kind of garbage before its real
    answer, and reports an update's progress the same way: the fleet commands must read past all of it,
    and print what it says without its escape sequences (the terminal of the person running them would
    obey them: clear the screen, retitle the window)."""

    def __init__(self, broker: Broker, name: str, outcome: str = "failed"):
        self.name, self.outcome, self.active = name, outcome, False
        self.sub = Subscriber(broker.mqtt(), [f"edge/{name}/cmd"], client_id=f"hostile-{name}")
        assert self.sub.start(10)
        self.sub.publish(f"edge/{name}/info", json.dumps({"device_id": name, "groups": [name]}).encode(), retain=True)
        self.sub.publish(f"edge/{name}/availability", b"online", retain=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"hostile-{name}", daemon=True)
        self.thread.start()

    def _say(self, leaf: str, doc: dict[str, Any]) -> None:
        for junk in _GARBAGE:
            self.sub.publish(f"edge/{self.name}/{leaf}", junk)
        self.sub.publish(f"edge/{self.name}/{leaf}", json.dumps(doc).encode())

    def _run(self) -> None:
        while not self.stop.is_set():
            m = self.sub.get(0.1)
            if self.active:  # health as it soaks: a time that is no number, then a real one
                self._say("health", {"status": "ok", "ts": "later"})
                self._say("health", {"status": "ok", "ts": time.time()})
            if m is None:
                continue
            cmd = json.loads(m[1])
            if cmd["command"] == "deploy":
                self._say("cmd/result", {"id": cmd["id"], "status": "accepted"})
                manifest = cmd["args"]["manifest"]
                mine = {"sha256": manifest["sha256"], "version": manifest["version"]}
                odd = [{**mine, "state": "downloading", "percent": "half"}, {**mine, "percent": 5},
                       {**mine, "state": ["downloading"], "percent": [1]}, {**mine, "state": "downloading"}]
                for doc in odd:
                    self._say("model/state", doc)
                infinite = b'{"sha256": "%s", "state": "downloading", "percent": 1e999}' % mine["sha256"].encode()
                self.sub.publish(f"edge/{self.name}/model/state", infinite)
                if self.outcome == "failed":
                    self._say("model/state", {**mine, "name": "m\x1b[2J", "state": "failed",
                                              "reason": "disk full\x1b]0;pwned\x07\u202e"})
                else:
                    self._say("model/state", {**mine, "name": "m", "state": "active", "ts": "now"})
                    self.active = True
            else:
                self._say("cmd/result", {"id": cmd["id"], "command": cmd["command"], "status": "failed",
                                         "reason": "nothing to undo\x1b[31m\x9b2J"})

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sub.stop()


def test_fleet_commands_read_past_what_a_hostile_device_publishes(broker: Broker, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A device that answers with documents of every wrong shape (and control characters in its words)
    ends neither `fleet push`, `fleet rollback` nor `fleet rollout` with a traceback; each takes the real
    answer after the garbage, and what reaches a terminal carries no escape character."""
    priv, _ = keys
    mq = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]
    evil = _HostileDevice(broker, "evil")
    try:
        push = ["fleet", "push", str(SHORT_INT8), "--version", "4", "--serve", "127.0.0.1:0", *mq,
                "--device", "evil", "--key", str(priv), "--timeout", "60"]
        r = run_cli(*push)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        status = json.loads(r.stdout[r.stdout.index("{"):])
        assert status["evil"]["state"] == "failed" and status["evil"]["reason"].startswith("disk full"), status
        rc, shown, err = run_tty(*push)
        assert rc == 1 and "Traceback" not in err, err
        last = shown.strip().splitlines()[-1]
        assert last.split()[:2] == ["evil", "failed"] and "disk full\\u001b]0;pwned\\u0007\\u202e" in last, last
        assert not any(c in shown for c in "\x1b\x07\x9b\u202e"), repr(shown)
        rc, shown, err = run_tty("fleet", "rollback", *mq, "--device", "evil", "--timeout", "20")
        assert rc == 1 and "Traceback" not in err, err
        assert "rollback: failed (nothing to undo\\u001b[31m\\u009b2J)" in shown, repr(shown)
        assert not any(c in shown for c in "\x1b\x9b"), repr(shown)
    finally:
        evil.close()
    # a staged rollout to a device that installs the model, soaking on its health reports
    odd = _HostileDevice(broker, "odd", outcome="active")
    try:
        r = run_cli("fleet", "rollout", str(SHORT_INT8), "--version", "5", "--group", "odd", "--key", str(priv),
                    "--serve", "127.0.0.1:0", "--state", str(tmp_path / "odd.json"), *mq, "--canary", "1",
                    "--waves", "100%", "--soak-s", "1", "--json")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
        plan = json.loads(r.stdout[r.stdout.index("{"):])
        assert plan["status"] == "completed" and plan["waves"][0]["devices"] == {"odd": "active"}, plan
    finally:
        odd.close()


@pytest.mark.emulation_slow(
    "a dozen hot swaps with an RSS bound: the bound is about the allocator, and each swap's validation "
    "takes a minute under qemu"
)
def test_a_dozen_updates_in_a_row_stay_within_bounds(broker: Broker, agent_factory, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import io

    from edge_agent.fleet import push
    from edge_agent.modelfile import rewrite_model

    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    fs = FileServer(served, "127.0.0.1", 0)
    state = tmp_path / "state50"
    w = Watch(broker, "u50")
    hsub = Subscriber(broker.mqtt(), ["edge/u50/health"])
    assert hsub.start(10)
    try:
        env = ota_env(broker, pub, EDGE_AGENT_STATE_DIR=str(state), EDGE_AGENT_OTA__PROBATION_INFERENCES="10",
                      EDGE_AGENT_HEALTH__INTERVAL_S="0.5")
        agent_factory([*STREAM, "--device-id", "u50"], env=env)
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        rss: dict[int, float] = {}
        sources = [SHORT_INT8.read_bytes(), SHORT.read_bytes()]
        for v in range(1, 13):  # benchmarks/bench_update.py --updates 30 runs the longer series
            f = served / f"v{v}.tflite"
            f.write_bytes(rewrite_model(sources[v % 2], files={"release.txt": str(v).encode()}))
            m = build_manifest(f, v, f"m{v % 2}", [f"http://127.0.0.1:{fs.port}/{f.name}"], None, 1).signed(key)
            assert push(broker.mqtt(), m, ["u50"], None, 60, io.StringIO())["u50"]["state"] == "active", v
            f.unlink()
            if v >= 4:  # the first updates fill caches once: the RSS of each from the fourth on
                deadline = time.monotonic() + 30
                while (h := hsub.get(0.1)) is None or orjson.loads(h[1])["model"]["version"] != str(v):
                    assert time.monotonic() < deadline, f"no health with version {v}"
                rss[v] = orjson.loads(h[1])["process"]["rss_mb"]
        blobs = list((state / "models" / "blobs").glob("*.tflite"))
        assert len(blobs) <= 3 and not list((state / "models" / "incoming").iterdir())
        # Each replaced model kept instead of closed added 7-8 MB an update here (15 MB every two, the
        # median below); the models alternate, so a leak of one of them shows every two updates. Without a
        # leak, the allocator's own drift comes in steps a few MB high, between some of these samples and
        # not others (-2.6 to 7.6 MB every two, median 1.6; 12.6 MB between the fourth and the twelfth in
        # one run): it moves a few of the seven differences, not their median
        grown = [rss[v + 2] - rss[v] for v in range(4, 11)]
        assert statistics.median(grown) < 4, rss
        seqs = [p["seq"] for p in w.preds]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # not a frame lost in 12 swaps
    finally:
        hsub.stop()
        fs.close()
        w.close()


class _Slow(__import__("http.server").server.SimpleHTTPRequestHandler):
    """Serves files slowly enough that a test can act while the download runs."""

    def log_message(self, *a: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        while chunk := source.read(8192):
            outputfile.write(chunk)
            time.sleep(0.02)


class _Slower(_Slow):
    """About 80 kB/s: a BlazeFace download takes a few seconds."""

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        while chunk := source.read(8192):
            outputfile.write(chunk)
            time.sleep(0.1)


def _slow_server(directory: Path, handler: type = _Slow) -> tuple[Any, int]:
    import functools
    import http.server

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, int(srv.server_address[1])


@pytest.mark.parametrize("step", ["downloading", "validating", "activating", "probation"])
def test_kill_9_at_each_step_comes_back_consistent(step: str, broker: Broker, agent_factory, keys,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    (served / "new.tflite").write_bytes(SHORT_INT8.read_bytes())
    srv, port = _slow_server(served)
    w = Watch(broker, "k9")
    try:
        env = ota_env(broker, pub, EDGE_AGENT_STATE_DIR=str(tmp_path / "st"),
                      EDGE_AGENT_OTA__PROBATION_INFERENCES="100000" if step == "probation" else "20")
        a = agent_factory([*STREAM, "--device-id", "k9"], env=env, name="before")
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        m = build_manifest(served / "new.tflite", 1, None, [f"http://127.0.0.1:{port}/new.tflite"], None, 1)
        assert w.deploy(m.signed(key).model_dump(mode="json"), "d1")["status"] == "accepted"
        wait_until(lambda: step in w.state_names(1), 60, what=step)
        a.signal(signal.SIGKILL)
        a.wait(5)
        boots = {p["boot_id"] for p in list(w.preds)}
        b = agent_factory([*STREAM, "--device-id", "k9"], env={**env, "EDGE_AGENT_OTA__PROBATION_INFERENCES": "20"},
                          name="after")
        first = wait_until(lambda: next((p for p in list(w.preds) if p["boot_id"] not in boots), None), 30,
                           what="the restarted agent")
        # consistent: the new model only if it had been switched to and not left on probation
        assert first["model"]["name"] in ("face_detection_short_range", "face_detection_short_range_int8")
        if step in ("downloading", "validating", "probation"):
            assert first["model"]["name"] == "face_detection_short_range"
        # and the next update goes through
        m2 = build_manifest(served / "new.tflite", 2, None, [f"http://127.0.0.1:{port}/new.tflite"], None, 1)
        assert w.deploy(m2.signed(key).model_dump(mode="json"), "d2")["status"] == "accepted"
        wait_until(lambda: "active" in w.state_names(2), 60, what="the next update")
        assert b.proc.poll() is None
    finally:
        srv.shutdown()
        w.close()


def test_broker_lost_mid_update(tmp_path: Path, agent_factory, keys) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keys
    key = load_private_key(priv)
    b = Broker(tmp_path, persistence=True).start()
    served = tmp_path / "served"
    served.mkdir()
    (served / "new.tflite").write_bytes(SHORT_INT8.read_bytes())
    srv, port = _slow_server(served)
    rec = Subscriber(b.mqtt(reconnect_max_s=1), ["edge/bl/model/state"], client_id="bl-rec", persistent=True)
    assert rec.start(10)
    w = Watch(b, "bl")
    try:
        agent_factory([*STREAM, "--device-id", "bl"], env=ota_env(b, pub, EDGE_AGENT_MQTT__RECONNECT_MAX_S="1"))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        m = build_manifest(served / "new.tflite", 1, None, [f"http://127.0.0.1:{port}/new.tflite"], None, 1)
        assert w.deploy(m.signed(key).model_dump(mode="json"), "d1")["status"] == "accepted"
        wait_until(lambda: "downloading" in w.state_names(1), 30, what="downloading")
        b.stop()
        threading.Event().wait(3)  # the update goes on while the broker is away
        b.start()
        states: list[str] = []
        deadline = time.monotonic() + 60
        while "active" not in states and time.monotonic() < deadline:
            msg = rec.get(0.2)
            if msg is not None:
                states.append(orjson.loads(msg[1])["state"])
        assert "active" in states, states
    finally:
        rec.stop()
        srv.shutdown()
        w.close()
        b.stop()


def test_acceptance_tests_in_the_manifest(broker: Broker, agent_factory, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import base64

    import cv2
    import skimage.data

    from edge_agent.ota.manifest import AcceptanceTest, ExpectedDetection

    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    (served / "new.tflite").write_bytes(SHORT_INT8.read_bytes())
    fs = FileServer(served, "127.0.0.1", 0)

    def b64(img: np.ndarray) -> str:  # small JPEGs: a whole command stays under 64 KiB
        small = cv2.resize(img, (256, 256 * img.shape[0] // img.shape[1]), interpolation=cv2.INTER_AREA)
        return base64.b64encode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()).decode()

    face = b64(np.ascontiguousarray(skimage.data.astronaut()[..., ::-1]))
    cup = b64(np.ascontiguousarray(skimage.data.coffee()[..., ::-1]))
    w = Watch(broker, "acc")
    try:
        agent_factory([*STREAM, "--device-id", "acc"], env=ota_env(broker, pub))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        base = build_manifest(served / "new.tflite", 1, None, [f"http://127.0.0.1:{fs.port}/new.tflite"], None, 1)
        wrong = base.model_copy(update={"tests": [AcceptanceTest(image=face, detections=[
            ExpectedDetection(label="face", box_norm=(0.0, 0.0, 0.1, 0.1))])]}).signed(key)
        assert w.deploy(wrong.model_dump(mode="json"), "a1")["status"] == "accepted"
        rej = wait_until(lambda: next((s for s in list(w.states) if s["state"] == "rejected"), None), 60,
                         what="rejection")
        assert "acceptance test 1 failed" in rej["reason"]
        right = base.model_copy(update={"version": 2, "tests": [
            AcceptanceTest(image=face, detections=[ExpectedDetection(label="face", box_norm=(0.34, 0.16, 0.53, 0.34))]),
            AcceptanceTest(image=cup, nothing=True)]}).signed(key)
        assert w.deploy(right.model_dump(mode="json"), "a2")["status"] == "accepted"
        wait_until(lambda: "active" in w.state_names(2), 60, what="the update with passing tests")
    finally:
        fs.close()
        w.close()


def test_mqtt_chunk_delivery(broker: Broker, agent_factory, keys) -> None:  # type: ignore[no-untyped-def]
    priv, pub = keys
    w = Watch(broker, "mq1")
    try:
        agent = agent_factory([*STREAM, "--device-id", "mq1"], env=ota_env(broker, pub))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        # a stray chunk of the model's first place, the wrong size, ahead of the fleet's: before, it
        # ended the delivery; it is ignored, and the fleet's own chunk takes the place
        sha = hashlib.sha256(SHORT_INT8.read_bytes()).hexdigest()
        stray = Subscriber(broker.mqtt(), [])
        assert stray.start(10)
        try:
            stray.publish(ota_chunk("edge/mq1", sha, 0), b"not the model", qos=1)
            # and 100 MiB of chunks of a model no update awaits, and some larger than any chunk may be, while
            # none runs: anyone who may publish there sent them, and the agent held them all (256 at most,
            # of any size); now a few MiB, and the fleet's push below goes through as before
            before = peak_rss_mb(agent.proc.pid)
            for i in range(100):
                stray.publish(ota_chunk("edge/mq1", "0" * 64, i), b"\0" * (1 << 20), qos=1)
            for i in range(5):
                stray.publish(ota_chunk("edge/mq1", "0" * 64, 100 + i), b"\0" * (2 << 20), qos=1)
            # indexes that str.isdigit() takes and int() does not: the ValueError, raised on the MQTT
            # client's own thread, ended it (no more commands, no reconnection)
            for index in ("\u00b2", "\u0661\u0662", "9" * 5000):
                stray.publish(f"edge/mq1/ota/{'0' * 64}/{index}", b"\0", qos=1)
            assert w.command("ping", "after-the-chunks")["status"] == "done"  # read after them, on one connection
            grew = peak_rss_mb(agent.proc.pid) - before
            assert grew < 40, f"peak RSS grew {grew:.0f} MB"
        finally:
            stray.stop()
        r = run_cli("fleet", "push", str(SHORT_INT8), "--version", "1", "--device", "mq1", "--key", str(priv),
                    "--mqtt", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--timeout", "120",
                    timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "mq1: active" in r.stdout and "mq1: downloading" in r.stdout
        wait_until(lambda: w.preds[-1]["model"]["name"] == "face_detection_short_range_int8", 10, what="new model")
    finally:
        w.close()


def test_start_uses_the_installed_version_and_its_settings(tmp_path: Path) -> None:
    import shutil

    from edge_agent.config import load_settings
    from edge_agent.ota.store import ModelStore
    from edge_agent.ota.updater import model_for_start

    store = ModelStore(tmp_path / "models", keep=3)
    m = build_manifest(SHORT_INT8, 4, "faces", ["http://x.example/m"], None, 1)
    m = m.model_copy(update={"score_threshold": 0.9, "resize": "stretch", "mean": [0.0], "std": [255.0]})
    part = store.incoming / "x.part"
    shutil.copy(SHORT_INT8, part)
    store.install(part, m.sha256, m.model_dump(mode="json"))
    store.activate(m.sha256, 4)
    store.pass_probation()
    cfg, report = model_for_start(load_settings(None, {"model.path": str(SHORT)}), store)
    assert report is None and cfg.path == store.blob(m.sha256) and cfg.version == "4" and cfg.name == "faces"
    assert (cfg.score_threshold, cfg.resize, cfg.mean, cfg.std) == (0.9, "stretch", [0.0], [255.0])
    # a version left on probation is rolled back at start, and the crash is counted
    store.activate(m.sha256, 5)
    _, report2 = model_for_start(load_settings(None, {"model.path": str(SHORT)}), store)
    assert report2 is not None and report2["state"] == "rolled_back" and store.state["crashes"][m.sha256] == 1


def _installed(store: Any, releases: tuple[tuple[int, Path], ...]) -> list[str]:
    """Each (version, model file) installed, activated and through probation, in turn: their digests."""
    import shutil

    shas = []
    for v, src in releases:
        m = build_manifest(src, v, None, ["http://x.example/m"], None, 1)
        part = store.incoming / f"{v}.part"
        shutil.copy(src, part)
        store.install(part, m.sha256, m.model_dump(mode="json"))
        store.activate(m.sha256, v)
        store.pass_probation()
        shas.append(m.sha256)
    return shas


def test_start_never_serves_a_damaged_installed_file(tmp_path: Path) -> None:
    """A disk that lost writes (a power cut before the file reached it) leaves `current` naming a file
    that is not what was installed: start goes back to the previous version, or the configured model."""

    from edge_agent.config import load_settings
    from edge_agent.ota.store import ModelStore
    from edge_agent.ota.updater import model_for_start

    store = ModelStore(tmp_path / "models", keep=3)
    shas = _installed(store, ((1, SHORT_INT8), (2, FULL)))
    settings = load_settings(None, {"model.path": str(SHORT)})
    store.blob(shas[1]).write_bytes(b"\0" * 4096)  # v2's blocks never reached the disk
    cfg, report = model_for_start(settings, store)
    assert cfg.path == store.blob(shas[0]) and cfg.version == "1"
    assert report is not None and report["state"] == "rolled_back" and "damaged" in report["reason"]
    store.blob(shas[0]).unlink()  # and v1's file is gone: the configured model serves
    cfg, report = model_for_start(settings, store)
    assert cfg.path == SHORT and report is not None and "damaged" in report["reason"]


def test_a_version_pruned_leaves_none_of_its_files(tmp_path: Path) -> None:
    """Past `keep` versions the oldest goes, with the labels its manifest shipped: they were left behind
    once the model and manifest were pruned, one file per update for as long as the box took updates."""
    from edge_agent.ota.store import ModelStore

    store = ModelStore(tmp_path / "models", keep=3)
    more = (MODELS / "face_detection_full_range_int8.tflite", MODELS / "face_landmark.tflite")
    releases = (SHORT_INT8, FULL, SHORT, *more)
    shas = []
    for v, src in enumerate(releases, 1):
        sha = _installed(store, ((v, src),))[0]
        store.labels(sha).write_text("face\n")  # as the updater writes a manifest's labels
        store.prune()  # as pass_probation does, now that the labels are there
        shas.append(sha)
    kept = {p.name for d in (store.blobs, store.manifests) for p in d.iterdir()}
    for sha in shas[:2]:
        assert not any(name.startswith(sha) for name in kept), sorted(kept)
    for sha in shas[2:]:
        assert {f"{sha}.tflite", f"{sha}.json", f"{sha}.labels.txt"} <= kept
    assert [v["sha256"] for v in store.versions()] == shas[:1:-1]


def test_a_damaged_store_state_falls_back_to_its_copy_then_to_what_the_disk_shows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's state (which release serves, the highest version accepted, what is blocked) is
    written twice; a lost sector in one copy leaves the other. With both lost, the configured model
    serves and the versions whose manifests are still on disk are not accepted again."""

    from edge_agent.config import load_settings
    from edge_agent.ota.store import ModelStore
    from edge_agent.ota.updater import model_for_start

    root = tmp_path / "models"
    store = ModelStore(root, keep=3)
    shas = _installed(store, ((3, SHORT_INT8), (7, FULL)))
    settings = load_settings(None, {"model.path": str(SHORT)})
    (root / "state.json").write_bytes(b"\0" * 512)  # the first copy's sector lost
    again = ModelStore(root, keep=3)
    cfg, report = model_for_start(settings, again)
    assert cfg.path == again.blob(shas[1]) and cfg.version == "7" and report is None
    assert again.state["highest_version"] == 7 and "using its copy state.json.bak" in caplog.text
    (root / "state.json.bak").write_text('{"current": 12}')  # and the second's: JSON, not a state
    lost = ModelStore(root, keep=3)
    cfg, _ = model_for_start(settings, lost)
    assert cfg.path == SHORT and lost.state["current"] is None
    assert lost.state["highest_version"] == 7, lost.state  # v7 and below are refused again
    assert "the configured model serves" in caplog.text
    lost.activate(shas[0], 8)  # a save mends both copies
    assert ModelStore(root, keep=3).state["current"]["version"] == 8
    assert json.loads((root / "state.json.bak").read_text())["current"]["version"] == 8


def test_an_older_deploy_never_replaces_a_newer_one(broker: Broker, agent_factory, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two signed deploys 0.3 s apart: a newer one supersedes an older one queued or downloading, and an
    older one arriving after a newer is refused; the version check is repeated at activation."""
    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    for name, src in (("int8.tflite", SHORT_INT8), ("float.tflite", SHORT), ("full.tflite", FULL)):
        (served / name).write_bytes(src.read_bytes())  # a distinct file per version: each one downloads
    srv, port = _slow_server(served, _Slower)
    w = Watch(broker, "dg")
    try:
        agent_factory([*STREAM, "--device-id", "dg"], env=ota_env(broker, pub))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        files = {61: "int8.tflite", 60: "float.tflite", 70: "float.tflite", 71: "full.tflite"}

        def manifest(v: int) -> dict[str, Any]:
            url = [f"http://127.0.0.1:{port}/{files[v]}"]
            return build_manifest(served / files[v], v, None, url, None, 1).signed(key).model_dump(mode="json")

        # newer first (slow download), then older: the older is refused on arrival
        assert w.deploy(manifest(61), "v61")["status"] == "accepted"
        time.sleep(0.3)
        old = w.deploy(manifest(60), "v60")
        assert old["status"] == "rejected" and "61" in old["reason"] and old["command"] == "deploy"
        wait_until(lambda: "active" in w.state_names(61), 90, what="v61 active")
        assert "active" not in w.state_names(60)
        # older first (slow download), then newer: the older gives way mid-download
        assert w.deploy(manifest(70), "v70")["status"] == "accepted"
        wait_until(lambda: "downloading" in w.state_names(70), 30, what="v70 downloading")
        time.sleep(0.3)
        assert w.deploy(manifest(71), "v71")["status"] == "accepted"
        wait_until(lambda: "active" in w.state_names(71), 90, what="v71 active")
        assert "superseded" in w.state_names(70) and "active" not in w.state_names(70)
        listing = w.command("list-models", "lm")["result"]
        assert listing["current"]["version"] == 71 and listing["highest_version"] == 71
    finally:
        srv.shutdown()
        w.close()


def test_a_size_larger_than_the_file_fails_at_once_and_the_next_deploy_goes_through(  # type: ignore[no-untyped-def]
    broker: Broker, agent_factory, keys, tmp_path: Path
) -> None:
    """The server answers 416 to the Range request for the bytes the manifest promises beyond the file's end:
    a permanent error, named, not a 30-minute wedge at 'downloading 90%'."""
    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    data = SHORT_INT8.read_bytes()
    (served / "m.tflite").write_bytes(data)
    fs = FileServer(served, "127.0.0.1", 0)
    w = Watch(broker, "sz")
    try:
        agent_factory([*STREAM, "--device-id", "sz"], env=ota_env(broker, pub))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        url = [f"http://127.0.0.1:{fs.port}/m.tflite"]
        good = build_manifest(served / "m.tflite", 5, None, url, None, 1)
        padded = good.model_copy(update={"size": len(data) + len(data) // 9, "sha256": "cd" * 32}).signed(key)
        t0 = time.monotonic()
        assert w.deploy(padded.model_dump(mode="json"), "big")["status"] == "accepted"
        failed = wait_until(lambda: next((s for s in list(w.states) if s.get("version") == 5
                                          and s["state"] == "failed"), None), 30, what="the failure")
        assert time.monotonic() - t0 < 20 and "416" in failed["reason"] and "smaller" in failed["reason"]
        fixed = build_manifest(served / "m.tflite", 5, None, url, None, 1).signed(key)  # the same version, fixed
        assert w.deploy(fixed.model_dump(mode="json"), "fixed")["status"] == "accepted"
        wait_until(lambda: "active" in w.state_names(5), 60, what="the corrected deploy")
    finally:
        fs.close()
        w.close()


def test_a_read_only_state_directory_fails_the_download_at_once(tmp_path: Path) -> None:
    """A local write error is permanent: the download stops with it, instead of retrying to the deadline."""
    import os

    from edge_agent.ota.download import DownloadError, download

    served = tmp_path / "served"
    served.mkdir()
    (served / "m.tflite").write_bytes(SHORT_INT8.read_bytes())
    fs = FileServer(served, "127.0.0.1", 0)
    try:
        blocked = tmp_path / "blocked"
        blocked.write_text("a file where the directory should be")  # no write, even as root
        dest = blocked / "m.part" if os.geteuid() == 0 else tmp_path / "ro" / "m.part"
        if os.geteuid() != 0:
            dest.parent.mkdir(mode=0o500)
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match="cannot write"):
            download([f"http://127.0.0.1:{fs.port}/m.tflite"], dest, SHORT_INT8.stat().st_size, "ab" * 32,
                     5.0, 300.0)
        assert time.monotonic() - t0 < 5
    finally:
        fs.close()


def test_a_power_cut_during_probation_is_not_a_crash_of_the_model(tmp_path: Path) -> None:
    """The kernel's boot id at activation tells a restart of the system (not counted, never blocks a good
    model) from a crash of the agent on the same boot (counted; two block the model)."""
    import shutil

    from edge_agent.config import load_settings
    from edge_agent.ota.store import ModelStore
    from edge_agent.ota.updater import kernel_boot_id, model_for_start

    assert kernel_boot_id()  # Linux: /proc/sys/kernel/random/boot_id
    store = ModelStore(tmp_path / "models", keep=3)
    m = build_manifest(SHORT_INT8, 4, None, ["http://x.example/m"], None, 1)
    part = store.incoming / "x.part"
    shutil.copy(SHORT_INT8, part)
    store.install(part, m.sha256, m.model_dump(mode="json"))
    settings = load_settings(None, {"model.path": str(SHORT)})
    for version in (5, 6, 7):  # three power cuts in a row, each during probation
        store.activate(m.sha256, version, "an-earlier-boot")
        _, report = model_for_start(settings, store)
        assert report is not None and "system restarted" in report["reason"] and not report["blocked"]
    assert store.state["crashes"].get(m.sha256, 0) == 0 and not store.is_blocked(m.sha256)
    for version in (8, 9):  # two crashes of the agent on this boot
        store.activate(m.sha256, version, kernel_boot_id())
        _, report = model_for_start(settings, store)
    assert report is not None and report["blocked"] and store.is_blocked(m.sha256)


def test_a_rollback_during_probation_leaves_the_truth_retained(broker: Broker, agent_factory, keys,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    """The retained state once said `active v62` while v60 served; after a restart it stayed stale."""
    priv, pub = keys
    key = load_private_key(priv)
    fs = _int8_mirror(tmp_path, "new.tflite")
    served = tmp_path / "served"
    w = Watch(broker, "rb")
    env = ota_env(broker, pub, EDGE_AGENT_OTA__PROBATION_INFERENCES="100000", EDGE_AGENT_OTA__PROBATION_S="600",
                  EDGE_AGENT_STATE_DIR=str(tmp_path / "st"))
    try:
        a = agent_factory([*STREAM, "--device-id", "rb"], env=env, name="first")
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        m = build_manifest(served / "new.tflite", 62, None, [f"http://127.0.0.1:{fs.port}/new.tflite"], None, 1)
        assert w.deploy(m.signed(key).model_dump(mode="json"), "d62")["status"] == "accepted"
        wait_until(lambda: "probation" in w.state_names(62), 60, what="probation")
        assert w.command("rollback", "rb62")["status"] == "done"
        wait_until(lambda: w.preds[-1]["model"]["name"] == "face_detection_short_range", 10, what="the old model")
        time.sleep(1.0)  # the update thread comes round: it must not report the model it no longer judges
        assert w.state_names(62)[-1] == "rolled_back" and "active" not in w.state_names(62)

        def retained() -> dict[str, Any]:
            sub = Subscriber(broker.mqtt(), ["edge/rb/model/state"])
            assert sub.start(10)
            try:
                got = sub.get(5)
                assert got is not None and got[2], "no retained state"
                return dict(orjson.loads(got[1]))
            finally:
                sub.stop()

        before = retained()
        assert before["state"] == "rolled_back" and before["serving"]["name"] == "face_detection_short_range"
        a.signal(signal.SIGTERM)
        assert a.wait(15) == 0
        boots = {p["boot_id"] for p in list(w.preds)}
        agent_factory([*STREAM, "--device-id", "rb"], env=env, name="second")
        first = wait_until(lambda: next((p for p in list(w.preds) if p["boot_id"] not in boots), None), 30,
                           what="the restarted agent")
        wait_until(lambda: (r := retained()) and r.get("ts", 0) > before["ts"], 10, what="the state republished")
        after = retained()
        assert after["serving"]["sha256"] == first["model"]["sha256"]
    finally:
        fs.close()
        w.close()


def test_a_rollback_that_names_a_release_undoes_that_release_only(broker: Broker, agent_factory, keys,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    """A halted rollout's rollback can cross the device's own verdict: its probation refuses the release
    as the command arrives. "Undo the latest" would then take away the release that served before it;
    a rollback naming the release is refused instead, and the one before keeps serving."""
    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    (served / "good.tflite").write_bytes(SHORT_INT8.read_bytes())
    (served / "zero.tflite").write_bytes(_degenerate(SHORT.read_bytes()))
    fs = FileServer(served, "127.0.0.1", 0)
    w = Watch(broker, "rv")
    try:
        env = ota_env(broker, pub, EDGE_AGENT_STATE_DIR=str(tmp_path / "st"))
        agent_factory([*STREAM, "--device-id", "rv"], env=env)
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        good = build_manifest(served / "good.tflite", 4, None, [f"http://127.0.0.1:{fs.port}/good.tflite"], None, 1)
        assert w.deploy(good.signed(key).model_dump(mode="json"), "g4")["status"] == "accepted"
        wait_until(lambda: "active" in w.state_names(4), 60, what="version 4 active")
        bad = build_manifest(served / "zero.tflite", 5, "zeros", [f"http://127.0.0.1:{fs.port}/zero.tflite"], None, 1)
        assert w.deploy(bad.signed(key).model_dump(mode="json"), "z5")["status"] == "accepted"
        wait_until(lambda: "rolled_back" in w.state_names(5), 60, what="probation refusing version 5")

        late = w.command("rollback", "rb5", {"version": 5})
        assert late["status"] == "rejected" and "version 5" in late["reason"] and "nothing to undo" in late["reason"]
        for cid, wrong in (("rb-str", "4"), ("rb-zero", 0), ("rb-bool", True)):
            answer = w.command("rollback", cid, {"version": wrong})
            assert answer["status"] == "rejected" and "positive whole number" in answer["reason"], answer
        seen = len(w.preds)
        wait_until(lambda: len(w.preds) >= seen + 10, 30, what="results after the refused rollbacks")
        assert {p["model"]["version"] for p in list(w.preds)[seen:]} == {"4"}  # the release before still serves

        assert w.command("rollback", "rb4", {"version": 4})["status"] == "done"
        wait_until(lambda: w.preds[-1]["model"]["name"] == "face_detection_short_range", 10, what="the config's model")
        assert w.state_names(4)[-1] == "rolled_back"
    finally:
        fs.close()
        w.close()


def test_read_only_state_dir_at_start_serves_the_installed_model(broker: Broker, agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The card is remounted read-only (as a kernel does after I/O errors): the installed update still
    serves, OTA commands are refused with the reason, and health says why it is degraded."""
    import hashlib
    import subprocess

    from edge_agent.ota.store import ModelStore

    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(state)], check=True)
    try:
        store = ModelStore(state / "models")
        sha = hashlib.sha256(SHORT_INT8.read_bytes()).hexdigest()
        part = store.incoming / "m.part"
        part.write_bytes(SHORT_INT8.read_bytes())
        store.install(part, sha, {"name": "face_detection_short_range_int8", "version": 7, "sha256": sha})
        store.activate(sha, 7)
        store.pass_probation()
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        w = Watch(broker, "rodev")
        hsub = Subscriber(broker.mqtt(), ["edge/rodev/health"])
        assert hsub.start(10)
        try:
            agent_factory([*STREAM, "--device-id", "rodev"],
                          env={**broker.env(), "EDGE_AGENT_STATE_DIR": str(state),
                               "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5"})
            wait_until(lambda: len(w.preds) >= 10, 30, what="the stream")
            assert {(p["model"]["name"], p["model"]["version"]) for p in w.preds} == {
                ("face_detection_short_range_int8", "7")}  # the installed version, not the configured model
            m = build_manifest(SHORT, 8, None, ["http://127.0.0.1:1/x"], None, 1)
            answer = w.deploy(m.model_dump(mode="json"), "ro-deploy")
            assert answer["status"] == "rejected" and "read-only" in answer["reason"], answer
            assert w.command("rollback", "ro-rb")["status"] == "rejected"
            listing = w.command("list-models", "ro-ls")
            assert listing["status"] == "done" and listing["result"]["current"]["version"] == 7
            while (h := hsub.get(10)) is not None:
                doc = json.loads(h[1])
                if doc["frames"]["inferred"] > 0:
                    break
            assert h is not None
            assert doc["status"] == "degraded" and any("read-only" in p for p in doc["problems"]), doc["problems"]
        finally:
            hsub.stop()
            w.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_a_still_scene_does_not_fail_probation(broker: Broker, agent_factory, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A fixed camera at night, one image: every input is the same, so every output is too, and that is
    right. Only identical outputs for inputs that differed mean a degenerate model."""
    import cv2

    priv, pub = keys
    still = tmp_path / "still"
    still.mkdir()
    ok, frame = cv2.VideoCapture(str(DEMO_VIDEO)).read()
    assert ok
    cv2.imwrite(str(still / "frame.png"), frame)
    served = tmp_path / "served"
    served.mkdir()
    (served / "int8.tflite").write_bytes(SHORT_INT8.read_bytes())
    fs = FileServer(served, "127.0.0.1", 0)
    w = Watch(broker, "still")
    try:
        agent_factory(["run", "--source", str(still), "--fps", "20", "--model", str(SHORT), "--device-id", "still"],
                      env=ota_env(broker, pub, EDGE_AGENT_STATE_DIR=str(tmp_path / "state")))
        wait_until(lambda: len(w.preds) >= 5, 30, what="the stream")
        assert len({json.dumps(p["detections"]) for p in list(w.preds)[-5:]}) == 1  # a still scene indeed
        m = build_manifest(served / "int8.tflite", 3, None, [f"http://127.0.0.1:{fs.port}/int8.tflite"], None, 1)
        assert w.deploy(m.signed(load_private_key(priv)).model_dump(mode="json"), "s1")["status"] == "accepted"
        done = wait_until(lambda: next((s for s in list(w.states) if s.get("version") == 3
                                        and s["state"] in ("active", "rolled_back")), None), 60, what="the verdict")
        assert done["state"] == "active", done
    finally:
        fs.close()
        w.close()


def test_shadow_evaluation_keeps_a_model_that_agrees_and_refuses_one_that_does_not(  # type: ignore[no-untyped-def]
        broker: Broker, agent_factory, keys, tmp_path: Path) -> None:
    """During probation the new model runs beside the serving one on the same frames and publishes
    nothing; its agreement is in the retained state and in health before it takes over. A model meant
    to differ is taken on its acceptance tests only if its manifest asks for that."""
    import base64

    import cv2
    import skimage.data

    from edge_agent.ota.manifest import AcceptanceTest

    priv, pub = keys
    key = load_private_key(priv)
    served = tmp_path / "served"
    served.mkdir()
    (served / "int8.tflite").write_bytes(SHORT_INT8.read_bytes())
    fs = FileServer(served, "127.0.0.1", 0)
    w = Watch(broker, "sh")
    health: list[dict[str, Any]] = []
    hsub = Subscriber(broker.mqtt(), ["edge/sh/health"])
    assert hsub.start(10)
    threading.Thread(target=lambda: [health.append(json.loads(m[1])) for m in iter(lambda: hsub.get(60), None)],
                     daemon=True).start()
    base = build_manifest(served / "int8.tflite", 1, None, [f"http://127.0.0.1:{fs.port}/int8.tflite"], None, 1)
    try:
        agent_factory(["run", "--source", str(DEMO_VIDEO), "--fps", "15", "--model", str(SHORT), "--device-id", "sh"],
                      env=ota_env(broker, pub, EDGE_AGENT_OTA__PROBATION_INFERENCES="90",
                                  EDGE_AGENT_OTA__PROBATION_S="120", EDGE_AGENT_HEALTH__INTERVAL_S="0.5",
                                  EDGE_AGENT_STATE_DIR=str(tmp_path / "state")))
        wait_until(lambda: sum(bool(p["detections"]) for p in list(w.preds)) >= 5, 30, what="faces in the stream")

        # blind: the same network asked for a score no face reaches, so it finds nothing where faces are
        # (90 frames: half the demo video, of which a quarter has no face, so it cannot pass by chance)
        blind = base.model_copy(update={"version": 5, "score_threshold": 1.0}).signed(key)
        assert w.deploy(blind.model_dump(mode="json"), "b5")["status"] == "accepted"
        rb = wait_until(lambda: next((s for s in list(w.states) if s.get("version") == 5
                                      and s["state"] in ("active", "rolled_back")), None), 90, what="the verdict on v5")
        assert rb["state"] == "rolled_back" and "agreement" in rb["reason"], rb
        shadow = rb["shadow"]
        assert shadow["compared"] >= 90 and shadow["agreement"] < 0.8, shadow
        assert rb["serving"]["name"] == "face_detection_short_range"
        # while it was judged, its figures were there to see, and it published nothing
        judged = [s for s in list(w.states) if s.get("version") == 5 and s["state"] == "probation"]
        assert any(s["shadow"]["compared"] > 0 for s in judged), judged
        assert any(((h.get("model") or {}).get("update") or {}).get("state") == "probation"
                   and h["model"]["update"]["shadow"]["compared"] > 0 for h in list(health)), "no figures in health"
        assert {p["model"]["version"] for p in list(w.preds)} == {None}
        assert not (tmp_path / "state" / "models" / "blobs" / f"{blind.sha256}.tflite").exists()

        # the same file at its own threshold agrees closely, and takes over
        good = base.model_copy(update={"version": 6}).signed(key)
        assert w.deploy(good.model_dump(mode="json"), "g6")["status"] == "accepted"
        ok = wait_until(lambda: next((s for s in list(w.states) if s.get("version") == 6
                                      and s["state"] in ("active", "rolled_back")), None), 90, what="the verdict on v6")
        assert ok["state"] == "active" and ok["shadow"]["agreement"] >= 0.8, ok
        wait_until(lambda: w.preds[-1]["model"]["version"] == "6", 10, what="v6 serving")
        assert (tmp_path / "state" / "models" / "blobs" / f"{good.sha256}.tflite").exists()

        # a model meant to differ: asking for less agreement needs acceptance tests, which then decide
        differ = blind.model_copy(update={"version": 7, "min_agreement": 0.0, "signature": None}).signed(key)
        answer = w.deploy(differ.model_dump(mode="json"), "d7")
        assert answer["status"] == "rejected" and "acceptance tests" in answer["reason"], answer
        cup = cv2.imencode(".jpg", cv2.resize(skimage.data.coffee()[..., ::-1], (200, 150)))[1].tobytes()
        tested = differ.model_copy(update={"version": 8, "tests": [
            AcceptanceTest(image=base64.b64encode(cup).decode(), nothing=True)]}).signed(key)
        assert w.deploy(tested.model_dump(mode="json"), "t8")["status"] == "accepted"
        done = wait_until(lambda: next((s for s in list(w.states) if s.get("version") == 8
                                        and s["state"] in ("active", "rolled_back")), None), 90, what="v8's verdict")
        assert done["state"] == "active" and done["shadow"]["agreement"] < 0.8, done
    finally:
        hsub.stop()
        fs.close()
        w.close()


def test_the_store_takes_writes_from_two_threads_at_once(tmp_path: Path) -> None:
    """The update thread applies a verdict while the command thread rolls back: both save the store. One
    at a time, or both write the same temporary file and one of them fails (a rollout once read
    `FileNotFoundError: ... state.json` as a device's answer to its rollback)."""
    import shutil

    from edge_agent.ota.store import ModelStore

    store = ModelStore(tmp_path / "models", keep=3)
    m = build_manifest(SHORT_INT8, 4, None, ["http://x.example/m"], None, 1)
    part = store.incoming / "x.part"
    shutil.copy(SHORT_INT8, part)
    store.install(part, m.sha256, m.model_dump(mode="json"))
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def churn(k: int) -> None:
        go.wait()
        try:
            for i in range(25):
                store.activate(m.sha256, 100 * k + i)
                if i % 2:
                    store.rollback(f"thread {k}")
                else:
                    store.pass_probation()
        except Exception as err:  # what each thread met is the test's result
            errors.append(err)

    threads = [threading.Thread(target=churn, args=(k,), name=f"churn-{k}") for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert json.loads(store.state_path.read_text()) == store.state  # the last write is the whole state
    assert store.state["highest_version"] == 324 and len(store.state["history"]) == 50


def _updater_beside_a_slow_mirror(
    keys: tuple[Path, Path], tmp_path: Path
) -> tuple[Any, Any, Any, list[object], Any, str]:
    """A started updater of its own (its store under tmp_path), the states it publishes, the models it
    swaps in, and a mirror serving the int8 model at about 80 kB/s: (updater, store, states, swapped,
    server, the model's URL)."""
    import queue

    from edge_agent.config import load_settings
    from edge_agent.ota.store import ModelStore
    from edge_agent.ota.updater import Updater

    served = tmp_path / "served"
    served.mkdir()
    (served / "new.tflite").write_bytes(SHORT_INT8.read_bytes())
    srv, port = _slow_server(served, _Slower)
    settings = load_settings(None, {"model.path": str(SHORT), "ota.trusted_keys": [str(keys[1])],
                                    "state_dir": str(tmp_path / "st")})
    store = ModelStore(tmp_path / "st" / "models")
    states: queue.Queue[dict[str, Any]] = queue.Queue()
    swapped: list[object] = []
    up = Updater(settings, store, states.put, lambda new: swapped.append(new), lambda: None, threading.Event())
    up.start()
    return up, store, states, swapped, srv, f"http://127.0.0.1:{port}/new.tflite"


def test_a_rollback_while_an_update_downloads_cancels_it_and_the_serving_model_stays(  # type: ignore[no-untyped-def]
        keys, tmp_path: Path) -> None:
    """Undo the latest update at whatever stage it is: one still on its way never takes over, and the
    model that served before it was sent keeps serving (a halted rollout sends this to devices that may
    still be downloading)."""
    from edge_agent.ota.updater import TERMINAL

    priv, _ = keys
    up, store, states, swapped, srv, url = _updater_beside_a_slow_mirror(keys, tmp_path)
    stop = up.stop
    try:
        m = build_manifest(tmp_path / "served" / "new.tflite", 3, None, [url], None, 1)
        up.submit(m.signed(load_private_key(priv)))
        seen = []
        while not seen or seen[-1]["state"] != "downloading":
            seen.append(states.get(timeout=30))
        assert up.rollback("manual rollback")
        while seen[-1]["state"] not in TERMINAL:
            seen.append(states.get(timeout=30))
        assert seen[-1]["state"] == "superseded", seen
        assert seen[-1]["reason"] == "cancelled by a rollback (manual rollback)"
        assert swapped == [] and store.state["current"] is None and store.state["highest_version"] == 0
        assert not store.blob(m.sha256).exists()
        assert not any(s["state"] in ("activating", "probation", "active") for s in seen)
    finally:
        stop.set()
        srv.shutdown()


def test_a_closed_updater_ends_its_download_at_once_and_takes_no_further_deploy(  # type: ignore[no-untyped-def]
        keys, tmp_path: Path) -> None:
    """A reload that removes a model's last pipeline closes its updater: a download under way gives way at
    its next block and the thread ends, nothing more is said on the state topic (the broker has been
    told to forget it), nothing is installed, and a deploy taken after that is refused rather than queued
    for a thread that has ended."""
    from edge_agent.ota.manifest import ManifestError

    priv, _ = keys
    up, store, states, _, srv, url = _updater_beside_a_slow_mirror(keys, tmp_path)
    try:
        m = build_manifest(tmp_path / "served" / "new.tflite", 3, None, [url], None, 1)
        up.submit(m.signed(load_private_key(priv)))
        while states.get(timeout=30)["state"] != "downloading":
            pass
        assert up.close(5.0), "the update thread did not end"
        said = []
        while not states.empty():
            said.append(states.get_nowait()["state"])
        assert set(said) <= {"downloading"}, said  # progress said before the close, nothing after it
        assert not store.blob(m.sha256).exists() and store.state["current"] is None
        with pytest.raises(ManifestError, match="pipelines were removed"):
            up.submit(m.model_copy(update={"version": 4}).signed(load_private_key(priv)))
    finally:
        srv.shutdown()
