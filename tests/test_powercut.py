"""Real power cuts (tests/lazyfs.py: writes not fsynced are lost) at random points: the outbox keeps
every result it reported stored, the model store always starts on a whole model, and an agent cut
off in the middle of an update comes back serving what its store says. `python
benchmarks/power_cut.py --cuts 300` is the larger count."""

from __future__ import annotations

import hashlib
import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from edge_agent.fleet import FileServer, build_manifest
from edge_agent.ota.manifest import load_private_key, write_keypair
from edge_agent.sinks.mqtt import Subscriber

from .conftest import FULL, SHORT, SHORT_INT8, Broker, wait_until
from .powercut import LazyMount, run_cuts


@pytest.fixture
def mount(tmp_path: Path):  # type: ignore[no-untyped-def]
    with LazyMount(tmp_path / "lazy") as m:
        yield m


@pytest.mark.emulation_slow(
    "hundreds of file operations through a FUSE file system written in Python, all emulated: file-system "
    "semantics do not depend on the CPU"
)
@pytest.mark.parametrize(("kind", "max_ops"), [("outbox", 400), ("store", 120)])
def test_power_cuts_lose_nothing_reported_durable(mount: LazyMount, kind: str, max_ops: int) -> None:
    result = run_cuts(mount, kind, 10, seed=7, max_ops=max_ops)
    assert result["problems"] == []
    assert len(result["points"]) >= 3, result["points"]  # the cuts fell on several kinds of operation and file
    assert result["stored"] + result["passed"] > 0  # and something was reported done before them


def test_an_agent_cut_off_during_an_update_comes_back_on_a_consistent_model(  # type: ignore[no-untyped-def]
        mount: LazyMount, broker: Broker, agent_factory, tmp_path: Path) -> None:
    priv, pub = write_keypair(tmp_path / "keys")
    served = tmp_path / "served"
    served.mkdir()
    fs = FileServer(served, "127.0.0.1", 0)
    state = mount.path / "agent"
    env = {**broker.env(), "EDGE_AGENT_STATE_DIR": str(state),
           "EDGE_AGENT_OTA__TRUSTED_KEYS": json.dumps([str(pub)]),
           "EDGE_AGENT_OTA__PROBATION_INFERENCES": "10", "EDGE_AGENT_RUNTIME__THREADS": "1"}
    args = ["run", "--source", "synthetic", "--fps", "20", "--model", str(SHORT), "--device-id", "pc"]
    preds: list[dict[str, Any]] = []
    states: list[dict[str, Any]] = []
    sub = Subscriber(broker.mqtt(), ["edge/pc/predictions", "edge/pc/model/state"])
    assert sub.start(10)

    def take() -> None:
        while (m := sub.get(0.05)) is not None:
            (preds if m[0].endswith("predictions") else states).append(json.loads(m[1]))

    rng = random.Random(3)
    points = []
    try:
        for i, model in enumerate((SHORT_INT8, FULL)):
            agent = agent_factory(args, env=env, name=f"before{i}")
            boots = {p["boot_id"] for p in preds}
            wait_until(lambda boots=boots: take() or any(p["boot_id"] not in boots for p in preds), 60,
                       what="the stream")
            (served / model.name).write_bytes(model.read_bytes())
            m = build_manifest(served / model.name, i + 1, None, [f"http://127.0.0.1:{fs.port}/{model.name}"], None, 1)
            mount.tell(f"arm {rng.randint(1, 25)}")
            cmd = {"id": f"d{i}", "command": "deploy", "args": {"manifest": m.signed(load_private_key(priv)).model_dump(
                mode="json")}}
            sub.publish("edge/pc/cmd", json.dumps(cmd).encode())
            wait_until(lambda: not mount.status()["powered"], 60, what="the power cut")
            agent.signal(signal.SIGKILL)
            agent.wait(10)
            points.append(mount.status()["point"])
            mount.tell("on")
            boots = {p["boot_id"] for p in preds}
            after = agent_factory(args, env=env, name=f"after{i}")
            first = wait_until(lambda boots=boots: take() or next((p for p in preds if p["boot_id"] not in boots),
                                                                  None), 60, what="the agent after the cut")
            # what it serves is what its store says, and that file is whole
            store_state = state / "models" / "state.json"
            st = json.loads(store_state.read_text()) if store_state.exists() else {}
            cur = st.get("current")
            sha = first["model"]["sha256"]
            if cur is None:
                assert sha == hashlib.sha256(SHORT.read_bytes()).hexdigest(), (points[-1], st)
            else:
                assert sha == cur["sha256"], (points[-1], st)
                assert hashlib.sha256((state / "models" / "blobs" / f"{sha}.tflite").read_bytes()).hexdigest() == sha
            retained = wait_until(lambda sha=sha: take() or next((s for s in reversed(states)
                                                                  if (s.get("serving") or {}).get("sha256")), None),
                                  30, what="the state republished at start")
            assert retained["serving"]["sha256"] == sha, (points[-1], retained)
            after.stop()
    finally:
        sub.stop()
        fs.close()
