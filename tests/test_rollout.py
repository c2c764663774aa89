"""Staged rollouts: how a fleet is split into waves, and a real rollout across 20 agent processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import MQTTConfig
from edge_agent.ota.manifest import write_keypair
from edge_agent.rollout import Rollout, group_members, plan_waves, share
from edge_agent.sinks.mqtt import Subscriber

from .conftest import ROOT, SHORT, SHORT_INT8, Broker, scaled, wait_until

specs = st.one_of(st.integers(0, 30).map(str), st.integers(1, 100).map(lambda p: f"{p}%"))


@given(st.sets(st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True), max_size=40), specs, st.lists(specs, max_size=4))
def test_waves_cover_every_device_once_in_order(devices: set[str], canary: str, waves: list[str]) -> None:
    plan = plan_waves(list(devices), canary, waves)
    assert [d for w in plan for d in w] == sorted(devices)  # each once, in a stable order
    assert all(plan)  # no empty wave
    if devices and share(canary, len(devices)):
        assert len(plan[0]) == share(canary, len(devices))


def test_shares() -> None:
    assert share("1", 20) == 1 and share("25%", 20) == 5 and share("1%", 20) == 1 and share("100%", 20) == 20
    assert share("30", 20) == 20
    assert plan_waves([f"d{i:02}" for i in range(20)], "2", ["50%", "100%"]) == [
        ["d00", "d01"], [f"d{i:02}" for i in range(2, 10)], [f"d{i:02}" for i in range(10, 20)]]
    for bad in ("0%", "101%", "-1", "x"):
        with pytest.raises(ValueError):
            share(bad, 10)


SEEING = {"r04", "r06", "r09"}  # cameras that see a face; the others look at a synthetic pattern


def _rollout(broker: Broker, keys: tuple[Path, Path], state: Path, version: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent", "fleet", "rollout", str(SHORT_INT8), "--version", str(version),
            "--group", "rollout", "--key", str(keys[0]), "--serve", "127.0.0.1:0", "--state", str(state),
            "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--canary", "2", "--waves", "50%,100%",
            "--soak-s", "2", "--max-failures", "1", "--json", *extra]


def _retained_states(broker: Broker, devices: list[str]) -> dict[str, dict[str, Any]]:
    sub = Subscriber(broker.mqtt(), [f"edge/{d}/model/state" for d in devices])
    assert sub.start(10)
    got: dict[str, dict[str, Any]] = {}
    try:
        while len(got) < len(devices) and (m := sub.get(5)) is not None:
            got[m[0].split("/")[1]] = json.loads(m[1])
    finally:
        sub.stop()
    return got


@pytest.mark.emulation_slow(
    "20 agent processes inferring at once: far beyond two emulated cores; the rollout logic is the same "
    "on any CPU"
)
def test_a_staged_rollout_across_20_agents_halts_on_a_bad_model_and_completes_a_good_one(  # type: ignore[no-untyped-def]
        broker: Broker, agent_factory, tmp_path: Path) -> None:
    import skimage.data

    keys = write_keypair(tmp_path / "keys")
    face = tmp_path / "face"
    face.mkdir()
    cv2.imwrite(str(face / "astronaut.png"), np.ascontiguousarray(skimage.data.astronaut()[..., ::-1]))
    names = [f"r{i:02}" for i in range(20)]
    env = {**broker.env(), "EDGE_AGENT_GROUPS": '["rollout"]',
           "EDGE_AGENT_OTA__TRUSTED_KEYS": json.dumps([str(keys[1])]),
           "EDGE_AGENT_OTA__PROBATION_INFERENCES": "6", "EDGE_AGENT_OTA__PROBATION_S": "60",
           # 20 agents on two cores: an inference can wait past the default 1 s budget, and the
           # verdict this test is about is agreement, not speed
           "EDGE_AGENT_OTA__MAX_INFERENCE_MS": "60000",
           "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5", "EDGE_AGENT_RUNTIME__THREADS": "1"}
    for n in names:
        source = str(face) if n in SEEING else "synthetic"
        # 2 fps: at 5 the 20 agents took 1.8 of the two cores for the whole test (137 s of CPU in 77 s
        # here), at 2 1.4 (96 in 69)
        agent_factory(["run", "--source", source, "--fps", "2", "--model", str(SHORT), "--device-id", n],
                      env={**env, "EDGE_AGENT_STATE_DIR": str(tmp_path / n)}, name=n)
    cfg = MQTTConfig(host="127.0.0.1", port=broker.port)
    wait_until(lambda: group_members(cfg, "rollout", 0.5) == names, scaled(120), what="20 agents in the group")

    # a bad release: the int8 model with a threshold no face reaches. It agrees with the serving model
    # where there is nothing to see, so the canary passes; cameras that see faces refuse it in probation
    bad_state = tmp_path / "bad.json"
    bad = subprocess.run(_rollout(broker, keys, bad_state, 5, "--score-threshold", "1.0", "--rollback"),
                         capture_output=True, text=True, timeout=scaled(300), cwd=str(ROOT))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    plan = Rollout.load(bad_state)
    assert plan.status == "halted" and plan.waves[0].state == "passed" and plan.waves[1].state == "halted", plan
    wave1 = plan.waves[1].devices
    refused = {d for d in wave1 if plan.devices[d].state == "rolled_back"}
    assert 2 <= len(refused) and refused <= SEEING, plan.devices  # the halt comes with the second refusal
    assert all("agreement" in (plan.devices[d].reason or "") for d in refused), {
        d: plan.devices[d].reason for d in refused}
    # the rest of the halted wave was rolled back by the rollout; the last wave never got it
    assert all(plan.devices[d].state == "rolled_back_by_rollout" for d in set(wave1) - refused), {
        d: plan.devices[d] for d in sorted(set(wave1) - refused) if plan.devices[d].state != "rolled_back_by_rollout"
    }
    assert all(plan.devices[d].state == "pending" for d in plan.waves[2].devices)
    after = _retained_states(broker, names)
    assert {d for d in names if after.get(d, {}).get("version") == 5 and after[d]["state"] == "active"} == \
        {"r00", "r01"}  # only the canary serves it
    assert not any(after.get(d, {}).get("version") == 5 for d in plan.waves[2].devices)
    assert json.loads(bad.stdout)["status"] == "halted"

    # a good release; the fleet host dies during it and the rollout is resumed from its state file
    good_state = tmp_path / "good.json"
    proc = subprocess.Popen(_rollout(broker, keys, good_state, 7), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(ROOT))
    try:
        wait_until(lambda: good_state.exists() and Rollout.load(good_state).waves[1].state != "pending",
                   scaled(120), what="the first wave after the canary")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    cmd = [sys.executable, "-m", "edge_agent", "fleet", "rollout", "--resume", str(good_state), "--json",
           "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port)]
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(300), cwd=str(ROOT))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    plan = Rollout.load(good_state)
    assert plan.status == "completed" and all(w.state == "passed" for w in plan.waves)
    assert all(p.state == "active" for p in plan.devices.values()), plan.devices
    final = _retained_states(broker, names)
    assert all(final[d]["version"] == 7 and final[d]["state"] == "active" for d in names), final
    # nothing was deployed twice: a second deploy of version 7 would have been refused and failed the wave
    assert all(p.reason is None for p in plan.devices.values())


def test_a_halted_wave_rolls_back_the_devices_that_had_not_answered_yet(  # type: ignore[no-untyped-def]
        broker: Broker, agent_factory, tmp_path: Path) -> None:
    """A device that has not answered the deploy when its wave halts may still be installing the model:
    it is sent the rollback too, and never serves the release. With no time at all to answer, every
    device is silent when the wave is judged, so the canary halts at once."""
    keys = write_keypair(tmp_path / "keys")
    names = ["q0", "q1"]
    env = {**broker.env(), "EDGE_AGENT_GROUPS": '["quick"]', "EDGE_AGENT_OTA__TRUSTED_KEYS": json.dumps([str(keys[1])]),
           "EDGE_AGENT_OTA__PROBATION_INFERENCES": "3", "EDGE_AGENT_RUNTIME__THREADS": "1"}
    for n in names:
        agent_factory(["run", "--source", "synthetic", "--fps", "5", "--model", str(SHORT), "--device-id", n],
                      env={**env, "EDGE_AGENT_STATE_DIR": str(tmp_path / n)}, name=n)
    cfg = MQTTConfig(host="127.0.0.1", port=broker.port)
    wait_until(lambda: group_members(cfg, "quick", 0.5) == names, scaled(60), what="2 agents in the group")

    state = tmp_path / "quick.json"
    cmd = [sys.executable, "-m", "edge_agent", "fleet", "rollout", str(SHORT_INT8), "--version", "3",
           "--group", "quick", "--key", str(keys[0]), "--serve", "127.0.0.1:0", "--state", str(state),
           "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--canary", "2", "--waves", "100%",
           "--max-failures", "0", "--answer-timeout", "0", "--rollback", "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(120), cwd=str(ROOT))
    assert run.returncode == 1, run.stdout + run.stderr
    plan = Rollout.load(state)
    assert plan.status == "halted" and plan.waves[0].state == "halted", plan
    assert {d: plan.devices[d].state for d in names} == dict.fromkeys(names, "rolled_back_by_rollout"), plan.devices
    # each device heard the deploy before the rollback, and the release never serves
    wait_until(lambda: all(s.get("version") == 3 and s["state"] in ("superseded", "rolled_back")
                           for s in _retained_states(broker, names).values()), scaled(30),
               what="the release given up on both devices")


def test_a_group_is_a_list_member_not_a_substring_and_odd_infos_are_skipped(broker: Broker) -> None:
    """Group members come from retained `info` documents, which anything on the broker can write: a
    device whose `groups` is the string "kitchen-west" is not in the group "kitchen" (a substring test
    would take it into that rollout), a document under one device's topic does not put another device
    in the group, and documents of the wrong shape are skipped, not fatal."""
    cfg = broker.mqtt()
    pub = Subscriber(cfg, [])
    assert pub.start(10)
    docs = {
        "k1": {"device_id": "k1", "groups": ["kitchen", "west"]},
        "kw": {"device_id": "kw", "groups": "kitchen-west"},
        "kn": {"device_id": "kn", "groups": 7},
        "kl": ["kitchen"],
        "ks": {"device_id": 5, "groups": ["kitchen"]},
        "kx": {"device_id": "k1-other", "groups": ["kitchen"]},  # under another device's topic: not that device
    }
    for device, doc in docs.items():
        pub.publish(f"edge/{device}/info", json.dumps(doc).encode(), retain=True)
    pub.stop()
    assert group_members(cfg, "kitchen", 1.0) == ["k1"]
    assert group_members(cfg, "kitchen-west", 1.0) == []
