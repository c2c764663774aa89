"""Backend choice: probes in child processes, rejection reasons, CPU fallback at run time."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import ModelConfig, RuntimeConfig
from edge_agent.model import Model, outputs_agree
from edge_agent.runtime.cpu import InterpreterBackend
from edge_agent.runtime.select import ProbeCache, Runtime, Selection, candidates, precheck, probe
from edge_agent.sources.synthetic import pattern

from .conftest import SHORT, run_cli


def build_so(tmp_path: Path, name: str, body: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to build the test delegate libraries")
    src = tmp_path / f"{name}.c"
    src.write_text(body)
    out = tmp_path / f"lib{name}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


ABORTING = "#include <stdlib.h>\n__attribute__((constructor)) static void boom(void) { abort(); }\n"
NOT_A_DELEGATE = "int not_a_delegate(void) { return 42; }\n"


def load(path: Path, accelerator: str, state: Path | None = None) -> Model:
    return Model(ModelConfig(path=path), RuntimeConfig(accelerator=accelerator, probe_timeout_s=60), state)


def test_auto_on_a_cpu_box_picks_cpu_and_says_why_not_others() -> None:
    m = load(SHORT, "auto")
    assert m.runtime.accelerator == "cpu"
    reasons = {p.backend: p.reason for p in m.runtime.probes if not p.ok}
    assert set(reasons) >= {"edgetpu", "npu", "gpu"}
    assert all(reasons.values())
    assert candidates("auto")[-1] == "cpu" and candidates("gpu") == ["gpu", "cpu"]


def test_gpu_probe_in_a_child_process_reports_the_failure() -> None:
    """Skipping the device-node precheck, the real LiteRT GPU accelerator is tried and refused."""
    cpu = InterpreterBackend(SHORT)
    x = np.zeros(cpu.inputs[0].shape, np.float32)
    res = probe("gpu", SHORT, [x], cpu.run([x]), lambda a, b: (True, ""), 0, {}, 120)
    if res.ok:  # a machine with a working GPU: then it must also have agreed with the CPU
        assert res.description.startswith("gpu")
    else:
        assert res.reason and "gpu" in res.reason.lower()


def test_delegate_that_aborts_the_process_is_rejected_and_cpu_serves(tmp_path: Path) -> None:
    lib = build_so(tmp_path, "aborting", ABORTING)
    assert precheck(str(lib)) is None
    m = load(SHORT, str(lib), tmp_path / "state")
    assert m.runtime.accelerator == "cpu"
    rej = next(p for p in m.runtime.probes if p.backend == str(lib))
    assert not rej.ok and "killed by SIGABRT" in rej.reason
    # the verdict is cached: a restart does not probe again
    again = load(SHORT, str(lib), tmp_path / "state")
    assert next(p for p in again.runtime.probes if p.backend == str(lib)).cached
    assert again.infer(pattern(320, 240, 1)).result.task == "detection"


def test_library_that_is_not_a_delegate(tmp_path: Path) -> None:
    lib = build_so(tmp_path, "notdelegate", NOT_A_DELEGATE)
    m = load(SHORT, str(lib))
    rej = next(p for p in m.runtime.probes if p.backend == str(lib))
    assert not rej.ok and "failed to load" in rej.reason
    assert precheck("/nonexistent/libnothing.so") == "delegate library not found: /nonexistent/libnothing.so"


_COMPILED_CHILD = """
import numpy as np, sys
from pathlib import Path
from edge_agent.runtime.base import BackendError
from edge_agent.runtime.compiled import CompiledBackend
from edge_agent.runtime.cpu import InterpreterBackend
path = Path(sys.argv[1])
ref = InterpreterBackend(path)
x = np.random.default_rng(0).uniform(-1, 1, ref.inputs[0].shape).astype(np.float32)
cm = CompiledBackend(path, "cpu", (ref.inputs, ref.outputs))
for a, b in zip(ref.run([x]), cm.run([x]), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4)
try:
    CompiledBackend(path, "npu", (ref.inputs, ref.outputs))
    print("npu opened")
except BackendError:
    print("ok")
"""


def test_compiled_model_cpu_path_matches_the_interpreter() -> None:
    """In a child process: even its CPU path loads LiteRT's accelerator plugin, which kills a process
    with SIGILL on a CPU it rejects (a Pi 4); this process must outlive that, as the agent does."""
    import signal
    import subprocess
    import sys

    from edge_agent.runtime.compiled import missing_plugin_features

    r = subprocess.run([sys.executable, "-c", _COMPILED_CHILD, str(SHORT)], capture_output=True, text=True,
                       timeout=120)
    if missing_plugin_features():  # the expected outcome on such a CPU
        assert r.returncode in (0, -signal.SIGILL), r.stderr[-2000:]
    else:
        assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "ok", r.stdout + r.stderr[-2000:]


def test_a_cpu_the_plugin_rejects_is_named_before_any_probe_and_after_a_sigill() -> None:
    import signal
    import subprocess
    import sys

    from edge_agent.runtime.compiled import cpu_features, missing_plugin_features
    from edge_agent.runtime.select import death_reason

    pi4 = FIXTURES / "cpuinfo" / "pi4"
    pi5 = FIXTURES / "cpuinfo" / "pi5"
    imx8mp = FIXTURES / "cpuinfo" / "imx8mp"
    assert missing_plugin_features(cpu_features(str(pi4)), "aarch64") == [
        "aes", "dotprod", "fp16", "lse", "rcpc", "rdm", "sha2",
    ]
    assert missing_plugin_features(cpu_features(str(pi5)), "aarch64") == []
    assert missing_plugin_features(cpu_features(str(imx8mp)), "aarch64") == ["dotprod", "fp16", "lse", "rcpc", "rdm"]
    assert missing_plugin_features(set(), "x86_64") == []  # no such check on x86
    # a real child killed by SIGILL gets a reason a person understands
    r = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"], timeout=30)
    assert r.returncode == -signal.SIGILL
    why = death_reason("npu", r.returncode, ["lse", "rcpc"])
    assert why == "LiteRT NPU plugin: SIGILL (an instruction this CPU does not have); this CPU lacks lse, rcpc"
    assert death_reason("gpu", -signal.SIGKILL) == "the gpu probe process was killed by SIGKILL"


FIXTURES = Path(__file__).parent / "fixtures"


class FailingBackend(InterpreterBackend):
    """Stands in for an accelerator that dies mid-stream (no real one can be made to here)."""

    kind = "gpu"

    def __init__(self, path: Path, fail_after: int):
        super().__init__(path)
        self.calls, self.fail_after = 0, fail_after

    def invoke(self) -> None:
        self.calls += 1
        if self.calls > self.fail_after:
            raise RuntimeError("GPU device lost")
        super().invoke()


def test_runtime_failure_falls_back_to_cpu_without_losing_the_frame() -> None:
    m = load(SHORT, "cpu")
    frame = pattern(640, 480, 3)
    import skimage.data

    face = np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])
    expected = m.infer(face).result
    m.runtime = Runtime(Selection(FailingBackend(SHORT, fail_after=2)), SHORT, 0)
    m.infer(frame)
    m.infer(frame)
    assert m.runtime.accelerator == "gpu"
    got = m.infer(face).result  # this invoke fails on the "GPU" and is redone on the CPU
    assert m.runtime.accelerator == "cpu"
    assert [f.reason for f in m.runtime.fallbacks] == ["RuntimeError: GPU device lost"]
    assert got.detections[0].box == pytest.approx(expected.detections[0].box)


class OverflowingBackend(InterpreterBackend):
    """Stands in for a GPU whose 16-bit floats overflow on frames unlike the one it was probed with: its
    float outputs are NaN from the (after + 1)-th invoke on (no real one can be had here)."""

    kind = "gpu"

    def __init__(self, path: Path, after: int):
        super().__init__(path)
        self.calls, self.after = 0, after

    def invoke(self) -> None:
        self.calls += 1
        super().invoke()

    def output(self, i: int) -> np.ndarray:
        out = super().output(i)
        return np.full_like(out, np.nan) if self.calls > self.after and out.dtype.kind == "f" else out


def test_an_accelerator_whose_outputs_turn_nan_gives_way_to_the_cpu_for_good(tmp_path: Path) -> None:
    """NaN where the CPU gives numbers is a verdict on the accelerator for this model: the frame is redone
    on the CPU, which serves from then on; it is not tried again while the agent runs (as a device that
    went away is), and the probe cache keeps the verdict for the next start."""
    import skimage.data

    m = load(SHORT, "cpu", tmp_path)
    face = np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])
    expected = m.infer(face).result
    rt = Runtime(Selection(OverflowingBackend(SHORT, after=2)), SHORT, 0, reselect=m.runtime.reselect)
    seen: list[tuple[str, str]] = []
    keep = m.runtime.on_verdict  # the model's own: into its probe cache
    assert keep is not None

    def verdict(kind: str, why: str) -> None:
        seen.append((kind, why))
        keep(kind, why)

    rt.on_verdict = verdict
    m.runtime = rt
    m.infer(face)
    m.infer(face)
    assert m.runtime.accelerator == "gpu"
    got = m.infer(face).result  # NaN on the "GPU": redone on the CPU
    assert m.runtime.accelerator == "cpu" and m.not_finite == 0
    assert got.detections[0].box == pytest.approx(expected.detections[0].box)
    reason = "outputs not finite (NaN or infinity) on gpu where the CPU's are numbers"
    assert [(f.reason, f.verdict) for f in rt.fallbacks] == [(reason, True)] and seen == [("gpu", reason)]
    assert rt.standing_in() is None  # recovery does not try it again
    kept = ProbeCache(tmp_path / "probe-cache.json").get(ProbeCache.key(m.file.sha256, "gpu"))
    assert kept is not None and not kept.ok and kept.reason == reason  # nor does the next start
    # NaN on the CPU too is the model's: no verdict on the accelerator, which recovery tries again
    from .test_models import _log_model

    log_model = _log_model(tmp_path / "log.tflite")
    n = load(log_model, "cpu", tmp_path)
    n.runtime = both = Runtime(Selection(OverflowingBackend(log_model, after=0)), log_model, 0,
                               reselect=n.runtime.reselect)
    n.infer(face)
    assert n.runtime.accelerator == "cpu" and n.not_finite == 1 and n.not_finite_on == "cpu"
    assert [(f.reason, f.verdict) for f in both.fallbacks] == [("outputs not finite (NaN or infinity) on gpu", False)]
    assert both.standing_in() == "gpu failed at run time (outputs not finite (NaN or infinity) on gpu)"
    # with the CPU fallback off, the frames go out as they are, counted and said
    m.runtime = Runtime(Selection(OverflowingBackend(SHORT, after=0)), SHORT, 0, cpu_fallback=False)
    assert m.infer(face).result.detections == ()
    assert m.not_finite == 1 and m.not_finite_on == "gpu"


def test_cpu_failure_is_not_hidden() -> None:
    m = load(SHORT, "cpu")

    class Broken(InterpreterBackend):
        def invoke(self) -> None:
            raise RuntimeError("boom")

    m.runtime = Runtime(Selection(Broken(SHORT)), SHORT, 0)
    with pytest.raises(RuntimeError, match="boom"):
        m.infer(pattern(64, 48, 0))


def test_agreement_uses_decoded_detections() -> None:
    m = load(SHORT, "cpu")
    import skimage.data

    face = np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])
    be = m.runtime.backend
    be.write_input(0, lambda v: m.pre(face, v))
    be.invoke()
    outs = [be.output(i) for i in range(len(m.outputs))]
    agree = outputs_agree(m.decoder, m.outputs)
    assert agree(outs, outs) == (True, "")
    noisy = [o + np.random.default_rng(0).normal(0, 0.3, o.shape).astype(o.dtype) for o in outs]
    assert agree(outs, noisy)[0]  # half-precision-sized noise on raw regressors is fine
    shifted = [o.copy() for o in outs]
    reg = next(i for i, s in enumerate(m.outputs) if s.shape[-1] == 16)
    shifted[reg][..., 0] += 40.0  # every box moved by a third of the input
    ok, why = agree(outs, shifted)
    assert not ok and "IoU" in why


def test_probe_cache_round_trip(tmp_path: Path) -> None:
    from edge_agent.runtime.select import ProbeResult

    c = ProbeCache(tmp_path / "p.json")
    key = ProbeCache.key("abc", "gpu")
    c.put(key, ProbeResult("gpu", False, "no adapters"))
    got = ProbeCache(tmp_path / "p.json").get(key)
    assert got is not None and got.cached and got.reason == "no adapters"
    (tmp_path / "bad.json").write_text("{not json")
    assert ProbeCache(tmp_path / "bad.json").get(key) is None


def test_check_lists_accelerators_and_fails_for_unusable_gpu() -> None:
    ok = run_cli("check", "--offline", "--model", str(SHORT), "--source", "synthetic", "--accelerator", "auto")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["accelerator"]["selected"] == "cpu"
    assert {c["backend"] for c in doc["accelerator"]["candidates"]} >= {"gpu", "npu", "edgetpu", "cpu"}
    assert doc["source"]["frame"] == [640, 480] and doc["problems"] == []
    bad = run_cli("check", "--offline", "--model", str(SHORT), "--source", "synthetic", "--accelerator", "gpu")
    assert bad.returncode == 1
    assert "accelerator gpu unusable" in json.loads(bad.stdout)["problems"][0]


def test_thread_choice_prefers_fewer_threads_when_they_are_as_fast() -> None:
    from edge_agent.runtime.select import choose_threads, thread_candidates

    assert thread_candidates(1) == [1] and thread_candidates(2) == [2, 1] and thread_candidates(8) == [8, 4, 1]
    assert choose_threads({2: 1.00, 1: 1.04}) == 1  # within 5%: one thread leaves a core to the pipeline
    assert choose_threads({2: 1.00, 1: 1.90}) == 2
    assert choose_threads({4: 1.00, 2: 1.03, 1: 1.60}) == 2
    assert choose_threads({2: 1.10, 1: 1.00}) == 1


def test_timings_are_kept_only_when_undisturbed_and_consistent() -> None:
    from edge_agent.runtime.select import judge_timings

    assert judge_timings({2: [1.0] * 7, 1: [1.9] * 7}, 0.0, 0.25) == (2, "invoke ms by threads 1: 1.900, 2: 1.000")
    assert judge_timings({2: [1.0] * 7, 1: [1.02] * 7}, 0.0, 0.25)[0] == 1
    threads, why = judge_timings({2: [1.0] * 7, 1: [1.9] * 7}, 0.5, 0.25)  # half the cores used elsewhere
    assert threads is None and "50% of the cores used elsewhere" in why
    flapping = {2: [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0], 1: [1.5] * 7}  # rounds pick 2, 1, 2, 1, ...
    threads, why = judge_timings(flapping, 0.0, 0.25)
    assert threads is None and "4/7 rounds agree" in why


def test_threads_are_timed_once_per_model_and_core_count(tmp_path: Path) -> None:
    from edge_agent.modelfile import read_model_file
    from edge_agent.runtime.select import tune_threads

    sha = read_model_file(SHORT).sha256
    be = InterpreterBackend(SHORT, 1)
    x = np.zeros(be.inputs[0].shape, be.inputs[0].dtype)
    be.close()
    cache_file = tmp_path / "probe.json"
    busy = tune_threads(SHORT, sha, [x], 2, ProbeCache(cache_file), busy_limit=-1.0)  # as if the cores were taken
    assert busy.threads is None and "busy" in busy.reason and not cache_file.exists()
    for _ in range(5):  # a disturbed timing is not kept; a later one is
        first = tune_threads(SHORT, sha, [x], 2, ProbeCache(cache_file), busy_limit=1.01)
        assert "invoke ms by threads 1: " in first.reason and ", 2: " in first.reason
        if first.threads is not None:
            break
        assert "timing disturbed" in first.reason and not cache_file.exists()
    assert first.threads in (1, 2) and not first.cached and first.run_ms is not None and first.run_ms > 0
    again = tune_threads(SHORT, sha, [x], 2, ProbeCache(cache_file), busy_limit=-1.0)  # a restart
    assert again.cached and again.threads == first.threads  # the cache answers before any busy check
    other = tune_threads(SHORT, sha, [x], 4, ProbeCache(cache_file), busy_limit=1.01)  # another core count
    assert not other.cached and "4: " in other.reason


def test_a_model_on_threads_0_runs_on_the_timed_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from edge_agent.runtime import select

    monkeypatch.setattr(select, "BUSY_LIMIT", 1.01)  # time it even if the machine is busy right now
    m = Model(ModelConfig(path=SHORT), RuntimeConfig(accelerator="cpu", threads=0), tmp_path)
    cpu = m.runtime.probes[-1]
    cores = len(os.sched_getaffinity(0))
    if cores > 1 and cpu.threads is not None:
        assert f"{cpu.threads} threads" in m.runtime.backend.description and "invoke ms by threads" in cpu.reason
        cached = json.loads((tmp_path / "probe-cache.json").read_text())
        assert any(":cpu-threads-" in k for k in cached)
        again = Model(ModelConfig(path=SHORT), RuntimeConfig(accelerator="cpu", threads=0), tmp_path)  # a restart
        assert again.runtime.probes[-1].cached and again.runtime.backend.description == m.runtime.backend.description
        again.close()
    elif cores > 1:  # a timing disturbed by something else on the machine: one per core, nothing kept
        assert "timing disturbed" in cpu.reason and f"{cores} threads" in m.runtime.backend.description
        assert not (tmp_path / "probe-cache.json").exists()
    else:
        assert cpu.threads is None  # one core: nothing to choose
    m.close()
    fixed = Model(ModelConfig(path=SHORT), RuntimeConfig(accelerator="cpu", threads=2), tmp_path)
    assert fixed.runtime.probes[-1].threads is None and "2 threads" in fixed.runtime.backend.description
    fixed.close()


def test_busy_cores_are_measured_from_proc_stat() -> None:
    import threading

    from edge_agent.runtime.select import cpu_busy

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            np.linalg.norm(np.arange(10000.0))  # keeps one core busy while the window is measured

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        busy = cpu_busy(0.3)
    finally:
        stop.set()
        spinner.join()
    import os

    assert busy > 0.6 / len(os.sched_getaffinity(0))  # most of one core, of however many there are


PASS_THROUGH = r"""
#include <stdint.h>
#include <stdlib.h>
typedef struct TfLiteDelegate {
  void* data_;
  int (*Prepare)(void* context, struct TfLiteDelegate* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* opaque_delegate_builder;
} TfLiteDelegate;
static int created = 0;
static int prepare(void* context, TfLiteDelegate* delegate) { return 0; }  /* claims no node: CPU kernels run */
TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n, void (*report)(const char*)) {
  TfLiteDelegate* d = calloc(1, sizeof(TfLiteDelegate));
  d->Prepare = prepare;
  created++;
  return d;
}
void tflite_plugin_destroy_delegate(TfLiteDelegate* d) { free(d); }
int delegates_created(void) { return created; }
"""


#: PASS_THROUGH, except that it makes no delegate while the file $TEST_ACCELERATOR_DEVICE names is missing,
#: as a vendor's delegate does without its USB accelerator
NEEDS_DEVICE = PASS_THROUGH.replace("#include <stdlib.h>", "#include <stdlib.h>\n#include <unistd.h>").replace(
    "  TfLiteDelegate* d = calloc(1, sizeof(TfLiteDelegate));",
    '  if (access(getenv("TEST_ACCELERATOR_DEVICE"), F_OK) != 0) return 0;  /* no device: no delegate */\n'
    "  TfLiteDelegate* d = calloc(1, sizeof(TfLiteDelegate));",
)
assert "access(" in NEEDS_DEVICE


def test_an_accelerator_missing_at_one_start_is_probed_again_at_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delegate that cannot open its device (a USB accelerator not plugged in, or not yet found at
    boot) was cached as rejected: every later start ran on the CPU with the device there. Now such a
    failure is probed again at the next start; a verdict on the model (a crash, outputs that disagree)
    stays cached (`test_delegate_that_aborts_the_process_is_rejected_and_cpu_serves`)."""
    device = tmp_path / "device"
    lib = build_so(tmp_path, "needsdevice", NEEDS_DEVICE)
    monkeypatch.setenv("TEST_ACCELERATOR_DEVICE", str(device))  # the probe's child process inherits it
    state = tmp_path / "state"
    unplugged = load(SHORT, str(lib), state)
    assert unplugged.runtime.accelerator == "cpu"
    rejected = next(p for p in unplugged.runtime.probes if p.backend == str(lib))
    assert not rejected.ok and rejected.transient and "failed to load" in rejected.reason
    unplugged.close()
    device.write_text("")  # plugged in
    plugged = load(SHORT, str(lib), state)
    assert plugged.runtime.accelerator == "delegate"
    chosen = next(p for p in plugged.runtime.probes if p.backend == str(lib))
    assert chosen.ok and not chosen.cached
    assert plugged.infer(pattern(320, 240, 1)).result.task == "detection"
    plugged.close()
    assert load(SHORT, str(lib), state).runtime.probes[0].cached  # a verdict that it works is kept


def test_an_accelerator_back_while_the_agent_runs_serves_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the CPU stands in for an accelerator, `try_accelerator` selects again as at start: nothing
    while the device is missing (the reason kept up to date), the accelerator in place once it is there,
    with the same detections. One that failed at run time is tried again too (a GPU that is lost and
    back cannot be made here: a backend that fails stands in for it, as above)."""
    import skimage.data

    from edge_agent.runtime.select import Fallback

    lib = build_so(tmp_path, "needsdevice", NEEDS_DEVICE)
    monkeypatch.setenv("TEST_ACCELERATOR_DEVICE", str(tmp_path / "device"))
    m = load(SHORT, str(lib), tmp_path / "state")
    face = np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])
    try:
        on_cpu = m.infer(face).result
        assert m.runtime.accelerator == "cpu" and "unavailable at start" in (m.runtime.standing_in() or "")
        assert not m.engine.try_accelerator() and m.runtime.accelerator == "cpu"
        (tmp_path / "device").write_text("")  # plugged in
        assert m.engine.try_accelerator()  # no frame in flight: in place at once
        assert m.runtime.accelerator == "delegate" and m.runtime.standing_in() is None
        assert [(f.from_backend, f.to_backend, f.reason) for f in m.runtime.fallbacks] == [
            ("cpu", "delegate", "the accelerator is back")]
        back = m.infer(face).result
        assert len(back.detections) == len(on_cpu.detections) == 1
        assert back.detections[0].box == pytest.approx(on_cpu.detections[0].box)
        assert not m.engine.try_accelerator()  # nothing stands in any more

        # lost at run time: the CPU takes over; selected again, the accelerator serves again
        class Gpu(InterpreterBackend):
            kind = "gpu"

        m.runtime = Runtime(Selection(FailingBackend(SHORT, fail_after=1)), SHORT, 0,
                            reselect=lambda: Selection(Gpu(SHORT)))
        m.infer(face)
        m.infer(face)  # fails on the "GPU", redone on the CPU
        assert m.runtime.accelerator == "cpu" and "gpu failed at run time" in (m.runtime.standing_in() or "")
        assert m.engine.try_accelerator() and m.runtime.accelerator == "gpu"
        assert isinstance(m.runtime.fallbacks[-1], Fallback) and m.runtime.fallbacks[-1].to_backend == "gpu"
        assert m.infer(face).result.detections[0].box == pytest.approx(on_cpu.detections[0].box)
    finally:
        m.close()


def test_a_delegate_installed_while_the_agent_runs_serves_once_it_is_there(tmp_path: Path) -> None:
    """The accelerator the configuration names has no library yet (a package installed after the agent
    started; a device node a driver makes later is the same case): the CPU stands in, and the next
    selection finds it. Under `auto` what a board lacks is not waited for."""
    lib = tmp_path / "libinstalled.so"
    m = load(SHORT, str(lib), tmp_path / "state")
    try:
        assert m.runtime.accelerator == "cpu"
        missing = m.runtime.probes[0]
        assert missing.transient and missing.reason == f"delegate library not found: {lib}"
        assert "unavailable at start" in (m.runtime.standing_in() or "")
        assert not m.engine.try_accelerator()
        assert build_so(tmp_path, "installed", PASS_THROUGH) == lib  # installed
        assert m.engine.try_accelerator() and m.runtime.accelerator == "delegate"
    finally:
        m.close()
    auto = load(SHORT, "auto")
    try:
        assert auto.runtime.accelerator == "cpu" and auto.runtime.standing_in() is None
        assert not any(p.transient for p in auto.runtime.probes)
    finally:
        auto.close()


def test_the_batch_settings_follow_what_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an accelerator frames are batched by default (4, waiting 3 ms); on the CPU not (a batch gains
    nothing there, docs/benchmarks.md). After a fallback the CPU kept the accelerator's batching, and the
    accelerator back takes its own again."""
    lib = build_so(tmp_path, "needsdevice", NEEDS_DEVICE)
    monkeypatch.setenv("TEST_ACCELERATOR_DEVICE", str(tmp_path / "device"))
    (tmp_path / "device").write_text("")
    m = load(SHORT, str(lib), tmp_path / "state")
    try:
        engine = m.engine
        assert m.runtime.accelerator == "delegate" and engine.max_batch == 4 and engine.batch_wait_s == 0.003

        class Gpu(InterpreterBackend):
            kind = "gpu"

        m.runtime = Runtime(Selection(FailingBackend(SHORT, fail_after=0)), SHORT, 0,
                            reselect=lambda: Selection(Gpu(SHORT)))
        m.infer(pattern(320, 240, 1))  # lost at once: the frame is redone on the CPU
        assert m.runtime.accelerator == "cpu"
        assert (engine.max_batch, engine.batch_wait_s, engine.batching_off) == (1, 0.0, "runtime.max_batch is 1")
        assert engine.try_accelerator()
        assert (engine.max_batch, engine.batch_wait_s, engine.batching_off) == (4, 0.003, "")
    finally:
        m.close()


def test_an_external_delegate_is_opened_once_per_process(tmp_path: Path) -> None:
    """Two models (two pipelines) on one delegate device share the process's one instance of it."""
    import ctypes

    from edge_agent.runtime.registry import open_backend

    from .conftest import SHORT_INT8

    lib = build_so(tmp_path, "passthrough", PASS_THROUGH)
    a = open_backend(str(lib), SHORT)
    b = open_backend(str(lib), SHORT_INT8)
    c = open_backend(str(lib), SHORT, options={"device": "usb:1"})  # another device: its own instance
    x = np.zeros(a.inputs[0].shape, a.inputs[0].dtype)
    assert [o.shape for o in a.run([x])] == [o.shape for o in b.outputs]  # both serve on it
    assert b.run([np.zeros(b.inputs[0].shape, b.inputs[0].dtype)])
    assert ctypes.CDLL(str(lib)).delegates_created() == 2
    for be in (a, b, c):
        be.close()
