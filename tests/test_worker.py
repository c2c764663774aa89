"""A model run in a process of its own (`runtime.own_process`): the same results as in the agent, and a
process that dies (killed with a real signal) is replaced or falls back without losing the frame."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import skimage.data

from edge_agent.config import ModelConfig, RuntimeConfig
from edge_agent.model import Model
from edge_agent.runtime.base import BackendError, BackendGone
from edge_agent.runtime.cpu import InterpreterBackend
from edge_agent.runtime.select import Runtime, Selection
from edge_agent.runtime.worker import ProcessBackend

from .conftest import FULL, SHORT, Broker, collect, wait_until
from .test_agent import synthetic_agent


def face() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])


def own(path: Path = SHORT, **rt: object) -> Model:
    return Model(ModelConfig(path=path), RuntimeConfig(accelerator="cpu", threads=1, own_process=True, **rt), None)


def kill(pid: int) -> None:
    """A real SIGKILL (the child is reaped by the backend that started it, which reads how it died)."""
    os.kill(pid, signal.SIGKILL)


def test_a_model_in_its_own_process_finds_what_it_finds_in_the_agent() -> None:
    here = Model(ModelConfig(path=SHORT), RuntimeConfig(accelerator="cpu", threads=1), None)
    apart = own()
    try:
        be = apart.runtime.backend
        assert isinstance(be, ProcessBackend) and be.own_process and be.pid != os.getpid()
        assert "in its own process" in be.description and be.kind == "cpu"
        assert apart.inputs == here.inputs and be.outputs == here.outputs
        want, got = here.infer(face()).result, apart.infer(face()).result
        assert got.detections and len(got.detections) == len(want.detections)
        assert got.detections[0].box == pytest.approx(want.detections[0].box, abs=1e-6)
        assert got.detections[0].score == pytest.approx(want.detections[0].score, abs=1e-6)
    finally:
        here.close()
        apart.close()
    assert be._proc.poll() == 0  # asked to close, it exits cleanly


@pytest.mark.parametrize("path", [SHORT, FULL], ids=["short", "full"])
def test_a_batch_in_its_own_process_matches_the_interpreters(path: Path) -> None:
    ref, apart = InterpreterBackend(path, threads=1), ProcessBackend("cpu", path, 1)
    try:
        rng = np.random.default_rng(7)
        for n in (1, 3):
            if n > 1:
                ref.resize_batch(n)
                apart.resize_batch(n)
            x = rng.random((n, *ref.inputs[0].shape[1:]), np.float32)
            want, got = ref.run([x]), apart.run([x])
            assert [o.shape for o in got] == [o.shape for o in want]
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
            got[0][...] = 0  # outputs are the caller's copies, not views into the shared block
            assert apart.output(0).any()
    finally:
        ref.close()
        apart.close()


def test_a_model_that_does_not_load_is_refused_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3" + os.urandom(512))
    with pytest.raises(BackendError, match="LiteRT could not load the model") as err:
        ProcessBackend("cpu", bad, 1)
    assert not isinstance(err.value, BackendGone)  # the process said why; it did not die


def test_a_killed_interpreter_process_is_replaced_and_the_frame_served() -> None:
    m = own()
    try:
        want = m.infer(face()).result.detections[0].box
        first = m.runtime.backend
        assert isinstance(first, ProcessBackend)
        kill(first.pid)
        got = m.infer(face()).result  # this frame's invoke finds the process gone and is redone
        assert got.detections[0].box == pytest.approx(want, abs=1e-6)
        now = m.runtime.backend
        assert isinstance(now, ProcessBackend) and now.pid != first.pid
        assert [(f.from_backend, f.to_backend) for f in m.runtime.fallbacks] == [("cpu", "cpu")]
        assert "killed by signal 9" in m.runtime.fallbacks[0].reason
    finally:
        m.close()


def test_a_hung_model_process_is_killed_and_replaced_without_losing_the_frame() -> None:
    """A driver that stops answering (the process stopped for real, with SIGSTOP) holds the frame only for
    the invoke timeout, not until the watchdog restarts the agent."""
    m = own()
    try:
        want = m.infer(face()).result.detections[0].box
        first = m.runtime.backend
        assert isinstance(first, ProcessBackend) and first.invoke_timeout_s == 15.0
        first.invoke_timeout_s = 0.5  # the seam: the same path as the 15 s default, sooner
        os.kill(first.pid, signal.SIGSTOP)
        got = m.infer(face()).result
        assert got.detections[0].box == pytest.approx(want, abs=1e-6)
        assert first._proc.returncode == -signal.SIGKILL  # killed while stopped, and reaped
        now = m.runtime.backend
        assert isinstance(now, ProcessBackend) and now.pid != first.pid
        assert "did not answer an invoke for 0.5 s and was killed" in m.runtime.fallbacks[0].reason
    finally:
        m.close()


@pytest.mark.parametrize("cpu_fallback", [True, False], ids=["falls-back", "fallback-off"])
def test_an_accelerator_whose_process_dies_falls_back_or_starts_again(cpu_fallback: bool) -> None:
    """With runtime.cpu_fallback (the default) the CPU in the agent takes over; with it off, the same backend
    starts in a new process."""
    m = Model(ModelConfig(path=SHORT), RuntimeConfig(accelerator="cpu", threads=1), None)
    accel = ProcessBackend("cpu", SHORT, 1)
    accel.kind = "gpu"  # the seam: no GPU here, so a CPU in a child stands in for an accelerator's process
    try:
        want = m.infer(face()).result.detections[0].box
        m.runtime = Runtime(Selection(accel), SHORT, 1, cpu_fallback=cpu_fallback)
        assert m.run(face()).accelerator == "gpu"
        kill(accel.pid)
        raw = m.run(face())  # this frame's invoke finds the process gone and is redone
        assert m.decode(raw).result.detections[0].box == pytest.approx(want, abs=1e-6)
        assert len(m.runtime.fallbacks) == 1 and "killed by signal 9" in m.runtime.fallbacks[0].reason
        now = m.runtime.backend
        if cpu_fallback:
            assert raw.accelerator == "cpu" and not now.own_process
            assert (m.runtime.fallbacks[0].from_backend, m.runtime.fallbacks[0].to_backend) == ("gpu", "cpu")
        else:
            assert isinstance(now, ProcessBackend) and now.pid != accel.pid and now.name == accel.name
    finally:
        m.close()


def test_pipelines_sharing_a_model_get_interpreter_processes_and_survive_them_dying() -> None:
    m = own(replicas=2)
    try:
        want = m.infer(face()).result.detections[0].box
        for user in ("a", "b"):  # a second pipeline: one interpreter (process) per lane
            assert m.run(face(), user).outputs
        lanes = m.engine._lanes
        pids = [ln.backend.pid for ln in lanes if isinstance(ln.backend, ProcessBackend)]
        assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids
        assert sorted(m.engine.info()["processes"]) == sorted(pids)  # shown in health's engines
        for pid in pids:
            kill(pid)
        x = np.zeros(m.inputs[0].shape, m.inputs[0].dtype)
        assert m.pre is not None
        m.pre(face(), x)
        ref = InterpreterBackend(SHORT, threads=1)
        expected = ref.run([x])
        ref.close()
        for lane in lanes:  # each lane's next frame: lane 0 through the runtime, the other as a replica
            outs, _ms = m.engine._invoke_one(lane, [x])
            for a, b in zip(outs, expected, strict=True):
                np.testing.assert_array_equal(a, b)
        now = [ln.backend.pid for ln in lanes if isinstance(ln.backend, ProcessBackend)]
        assert len(now) == 2 and not set(now) & set(pids)
        for user in ("a", "b"):
            got = m.decode(m.run(face(), user)).result
            assert got.detections[0].box == pytest.approx(want, abs=1e-6)
    finally:
        m.close()


def test_the_agent_says_its_model_process_died_and_goes_on(  # type: ignore[no-untyped-def]
    broker: Broker, subscriber_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = subscriber_factory(["edge/wk/health", "edge/wk/predictions"])
    agent = synthetic_agent(
        broker, tmp_path, monkeypatch, "wk", **{"runtime.accelerator": "cpu", "runtime.own_process": True}
    )
    try:
        agent.start()
        assert agent.first_published.wait(20)
        assert agent.model is not None
        be = agent.model.runtime.backend
        assert isinstance(be, ProcessBackend)
        kill(be.pid)
        h = collect(sub, lambda t, p, r: t.endswith("/health") and p["problems"], 10)[1]
        assert h["problems"] == ["a model's own process died and was started again (1x)"]
        fell = h["accelerator"]["fallbacks"]
        assert fell[0]["from"] == "cpu" and "signal 9" in fell[0]["reason"]
        st = agent.pipelines["default"].infer_stats
        before = st.count
        wait_until(lambda: st.count > before + 10, 10, what="the stream to go on")
        assert st.errors == 0
        now = agent.model.runtime.backend
        assert isinstance(now, ProcessBackend) and now.pid != be.pid and now._proc.poll() is None
    finally:
        agent.shutdown(3)
    assert now._proc.poll() is not None  # the agent's shutdown closes the process it started


def test_a_model_process_does_not_outlive_an_agent_killed_with_sigkill(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edge_agent.runtime.worker import ProcessBackend\n"
        f"be = ProcessBackend('cpu', Path({str(SHORT)!r}), 1)\n"
        "print(be.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    agent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        child = psutil.Process(int(agent.stdout.readline()))
        assert child.ppid() == agent.pid
        agent.kill()
        agent.wait(10)
        child.wait(10)  # raises if it is still there: it saw its parent's end of the socket close, and left
        assert not child.is_running()
    finally:
        agent.kill()


def test_the_device_check_of_own_process_passes_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/device_own_process.py, which the GPU machine runs on its GPU, kept working here on the CPU."""
    out = tmp_path / "own.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "device_own_process.py"
    run = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--accelerator", "cpu", "--frames", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    docs = json.loads(out.read_text())
    assert [d["ok"] for d in docs] == [True, True]
    assert all("signal 9" in d["fallbacks"][0] for d in docs)


def test_a_model_process_leaves_stopping_to_the_agent() -> None:
    """SIGTERM, SIGINT and SIGHUP reach every process of a service being stopped or reloaded: the child
    ignores them (the agent still has frames to finish), and leaves when the agent closes it."""
    be = ProcessBackend("cpu", SHORT, 1)
    try:
        x = np.random.default_rng(3).random(be.inputs[0].shape, np.float32)
        want = be.run([x])
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(be.pid, sig)
        for a, b in zip(be.run([x]), want, strict=True):  # answered after the signals, by the same process
            np.testing.assert_array_equal(a, b)
        assert be._proc.poll() is None
    finally:
        be.close()
    assert be._proc.returncode == 0
