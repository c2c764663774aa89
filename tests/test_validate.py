"""Untrusted models are loaded in a limited child first; no mutant of a real model kills the server."""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
import pytest

from edge_agent.config import ModelConfig, RuntimeConfig
from edge_agent.model import Model
from edge_agent.modelfile import ModelError
from edge_agent.mutants import mutate
from edge_agent.validate import validate_in_child

from .conftest import SHORT, SHORT_INT8


def _rewrite(src: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromObj(s.Model.GetRootAs(src, 0))
    edit(m)
    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_good_model_passes() -> None:
    r = validate_in_child(SHORT)
    assert r["ok"] and r["finite_outputs"]


def test_known_hostile_classes_are_rejected(tmp_path: Path) -> None:
    src = SHORT_INT8.read_bytes()

    def negative_input(m) -> None:  # type: ignore[no-untyped-def]
        op = m.subgraphs[0].operators[0]
        ins = np.array(op.inputs).copy()
        ins[0] = -1
        op.inputs = ins

    def huge_shape(m) -> None:  # type: ignore[no-untyped-def]
        sg = m.subgraphs[0]  # the input asks for 12 GiB
        sg.tensors[int(sg.inputs[0])].shape = np.array([1, 1 << 20, 1 << 12, 3], np.int32)

    for name, edit in (("neg", negative_input), ("huge", huge_shape)):
        p = tmp_path / f"{name}.tflite"
        p.write_bytes(_rewrite(src, edit))
        r = validate_in_child(p, timeout_s=60)
        assert not r["ok"] and r["reason"], name
        with pytest.raises(ModelError, match=str(p)):
            Model(ModelConfig(path=p), RuntimeConfig(accelerator="cpu"), tmp_path / "state")


def crashing_mutant() -> bytes:
    """A bit-flipped BlazeFace that segfaults LiteRT 2.3.0 while loading (found by benchmarks/model_mutants.py)."""
    kind, data = mutate(SHORT.read_bytes(), np.random.default_rng(793))
    assert kind == "bitflip"
    return data


def test_a_model_that_segfaults_the_loader_only_kills_the_child(tmp_path: Path) -> None:
    p = tmp_path / "crasher.tflite"
    p.write_bytes(crashing_mutant())
    r = validate_in_child(p)
    assert not r["ok"] and "crashed the process (SIGSEGV)" in r["reason"]
    with pytest.raises(ModelError, match="SIGSEGV"):
        Model(ModelConfig(path=p), RuntimeConfig(accelerator="cpu"), tmp_path / "state")


def test_a_child_ended_by_a_signal_without_a_name_is_said_so() -> None:
    """A validating child ended by a real-time signal (one Python's `signal.Signals` has no name for,
    sent by a watchdog or a supervisor): `signal.Signals(40)` raised ValueError, and the update failed
    on that instead of saying how the child ended."""
    import os
    import threading

    import psutil

    from .conftest import wait_until

    def validating() -> psutil.Process | None:
        for c in psutil.Process().children():
            try:
                if "edge_agent.validate" in " ".join(c.cmdline()):
                    return c
            except psutil.Error:  # another child, come and gone
                continue
        return None

    out: dict[str, object] = {}
    t = threading.Thread(target=lambda: out.update(validate_in_child(SHORT)))
    t.start()
    child = wait_until(validating, 10, interval=0.005, what="the validating child")
    os.kill(child.pid, 40)  # SIGRTMIN+6: its default action ends the process
    t.join(30)
    assert out == {"ok": False, "reason": "loading crashed the process (signal 40)"}, out


def test_time_limit(tmp_path: Path) -> None:
    r = validate_in_child(SHORT, timeout_s=0.001)
    assert not r["ok"] and "longer than" in r["reason"]


@pytest.mark.emulation_slow("30 mutated models validated in child processes: each costs seconds of emulated start-up")
def test_random_mutants_never_kill_the_serving_process(tmp_path: Path) -> None:
    """Every mutant goes through the path a served model takes; this process must outlive all.
    (benchmarks/model_mutants.py runs many more.)"""
    rng = np.random.default_rng(7)
    sources = [SHORT.read_bytes(), SHORT_INT8.read_bytes()]
    outcomes: dict[str, int] = {}
    for i in range(30):
        kind, data = mutate(sources[i % 2], rng)
        p = tmp_path / f"m{i}.tflite"
        p.write_bytes(data)
        try:
            m = Model(ModelConfig(path=p), RuntimeConfig(accelerator="cpu"), tmp_path / "state")
            m.infer(np.zeros((48, 64, 3), np.uint8))
            outcomes["served"] = outcomes.get("served", 0) + 1
        except ModelError as err:
            assert str(p) in str(err)
            outcomes[kind] = outcomes.get(kind, 0) + 1
        p.unlink()
    assert sum(outcomes.values()) == 30 and len(outcomes) >= 3
