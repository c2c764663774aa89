"""Choose the best backend that really works, and fall back to the CPU when it stops working.

`auto` tries vendor delegates present on the board, then the LiteRT NPU and GPU accelerators,
then the CPU. Every non-CPU candidate is probed in a child process with a timeout and must
agree with the CPU on the same input; each rejection keeps its reason for health and `check`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.runtime import litert
from edge_agent.runtime.base import Backend, BackendError, BackendGone, Missing
from edge_agent.runtime.cpu import default_threads
from edge_agent.runtime.registry import ACCELERATORS, is_compiled, open_backend, precheck
from edge_agent.runtime.worker import ProcessBackend
from edge_agent.system import cpu_seconds

log = logging.getLogger(__name__)

#: Outputs compare (True, "") or (False, why) between the CPU and a candidate.
AgreeFn = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], tuple[bool, str]]


@dataclass
class ProbeResult:
    backend: str
    ok: bool
    reason: str = ""
    description: str = ""
    fully_accelerated: bool | None = None
    load_ms: float | None = None
    first_run_ms: float | None = None
    run_ms: float | None = None
    threads: int | None = None
    cached: bool = False
    #: the candidate could not be opened or run here (no device: a USB accelerator not plugged in, or
    #: not yet found at boot; busy; a driver error), or its probe timed out: not a verdict on the model,
    #: so it is not cached, and it is tried again while the agent runs (`runtime.recover_s`) and at the
    #: next start. Cached, such a failure kept the agent on the CPU at every later start, with the
    #: device there. A probe killed by a signal, or outputs that disagree with the CPU's, are verdicts:
    #: cached.
    transient: bool | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Fallback:
    ts: float
    from_backend: str
    to_backend: str
    reason: str
    #: the accelerator gave wrong outputs (`Runtime.judge`): a verdict on it for this model, not a device
    #: that went away, so it is not tried again while the agent runs
    verdict: bool = False


def candidates(accelerator: str) -> list[str]:
    if accelerator != "auto":
        return [accelerator] if accelerator == "cpu" else [accelerator, "cpu"]
    return [a.name for a in ACCELERATORS]


class ProbeCache:
    """Probe verdicts per (model digest, backend, runtime version), so restarts skip the probing."""

    def __init__(self, path: Path | None):
        self.path = path
        self._data: dict[str, dict[str, object]] = {}
        if path is not None:
            try:
                self._data = json.loads(path.read_text())
            except (OSError, ValueError):
                self._data = {}

    @staticmethod
    def key(sha256: str, backend: str) -> str:
        return f"{sha256}:{backend}:{litert.version()}:{platform.machine()}"

    def get(self, key: str) -> ProbeResult | None:
        d = self._data.get(key)
        if not isinstance(d, dict):
            return None
        try:
            return ProbeResult(**{**d, "cached": True})  # type: ignore[arg-type]
        except TypeError:
            return None

    def put(self, key: str, result: ProbeResult) -> None:
        if self.path is None:
            return
        self._data[key] = {k: v for k, v in asdict(result).items() if k != "cached"}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._data, indent=1))
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("cannot write probe cache %s: %s", self.path, err)


def probe(
    name: str,
    model_path: Path,
    inputs: Sequence[np.ndarray],
    cpu_outputs: Sequence[np.ndarray],
    agree: AgreeFn,
    threads: int,
    options: dict[str, str],
    timeout_s: float,
) -> ProbeResult:
    with tempfile.TemporaryDirectory(prefix="edge-agent-probe-") as tmp:
        in_path, out_path = Path(tmp, "in.npz"), Path(tmp, "out.npz")
        np.savez(in_path, **{f"in{i}": a for i, a in enumerate(inputs)})  # type: ignore[arg-type]
        cmd = [
            sys.executable,
            "-m",
            "edge_agent.runtime.probe",
            "--model",
            str(model_path),
            "--backend",
            name,
            "--threads",
            str(threads),
            "--options",
            json.dumps(options),
            "--inputs",
            str(in_path),
            "--outputs",
            str(out_path),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return ProbeResult(name, False, f"probe timed out after {timeout_s:.0f} s", transient=True)
        report: dict[str, object] = {}
        for line in reversed(proc.stdout.strip().splitlines()):
            try:
                report = json.loads(line)
                break
            except ValueError:
                continue
        if proc.returncode < 0:
            return ProbeResult(name, False, death_reason(name, proc.returncode))
        if not report.get("ok"):
            reason = str(report.get("reason") or _tail(proc.stderr) or f"probe exited {proc.returncode}")
            return ProbeResult(name, False, reason, transient=True)
        with np.load(out_path) as z:
            outs = [z[f"out{i}"] for i in range(len(z.files))]
    ok, why = agree(cpu_outputs, outs)
    res = ProbeResult(
        name,
        ok,
        "" if ok else f"outputs disagree with the CPU: {why}",
        str(report.get("description", name)),
        report.get("fully_accelerated"),  # type: ignore[arg-type]
        _f(report.get("load_ms")),
        _f(report.get("first_run_ms")),
        _f(report.get("run_ms")),
    )
    return res


def death_reason(name: str, returncode: int, missing: list[str] | None = None) -> str:
    """A probe child killed by a signal, in words: SIGILL from LiteRT's plugin names the CPU features
    this CPU lacks (`missing`, default: read from /proc/cpuinfo)."""
    from edge_agent.system import signal_name

    sig = signal_name(-returncode)
    if sig == "SIGILL":
        from edge_agent.runtime.compiled import missing_plugin_features

        lacks = missing_plugin_features() if missing is None else missing
        why = f"; this CPU lacks {', '.join(lacks)}" if lacks else ""
        return f"LiteRT {name.upper()} plugin: SIGILL (an instruction this CPU does not have){why}"
    if sig == "SIGSEGV":
        return f"the {name} probe crashed (SIGSEGV) in native code"
    if sig == "SIGABRT":
        return f"the {name} probe process was killed by SIGABRT (native code aborted)"
    return f"the {name} probe process was killed by {sig}"


def _f(v: object) -> float | None:
    return round(float(v), 2) if isinstance(v, int | float) else None


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


@dataclass
class Selection:
    backend: Backend
    probes: list[ProbeResult] = field(default_factory=list)


#: Thread counts within this fraction of the fastest count as just as fast: fewer threads then win,
#: since every core XNNPACK does not take is left to capture, preprocessing and publishing.
THREADS_TIE = 0.05
#: Busier than this (fraction of all cores, just before timing), thread counts are not timed.
BUSY_LIMIT = 0.25
_BUSY_WINDOW_S = 0.1
#: Timing rounds per thread count, alternated so a busy moment hits every count alike.
_TUNE_ROUNDS = 7
#: Share of rounds whose own pick must match the medians' pick for the figure to be kept.
_TUNE_AGREE = 0.7
#: Wall time of one timed batch of invokes.
_TUNE_BATCH_S = 0.008


def thread_candidates(cores: int) -> list[int]:
    """One per core, half of them, and one: the counts worth timing."""
    return sorted({cores, max(1, cores // 2), 1}, reverse=True)


def choose_threads(medians_ms: dict[int, float]) -> int:
    """The fewest threads whose invoke time is within THREADS_TIE of the fastest."""
    best = min(medians_ms.values())
    return min(t for t, ms in medians_ms.items() if ms <= best * (1 + THREADS_TIE))


def cpu_busy(window_s: float) -> float:
    """Fraction of all cores busy over the next window_s."""
    a = cpu_seconds()
    time.sleep(window_s)
    b = cpu_seconds()
    return (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else 0.0


def tune_threads(
    model_path: Path,
    sha256: str,
    inputs: list[np.ndarray],
    cores: int,
    cache: ProbeCache,
    busy_limit: float | None = None,
) -> ProbeResult:
    """Time invoke() with each candidate thread count on a real input; cached per model and core count.

    More threads are not always faster: a quantized model whose int8 kernels run outside XNNPACK
    ran no faster on two threads than on one on a 2-core x86 machine, and the second thread's
    CPU time was then taken from the rest of the pipeline.
    Timings taken while something else keeps the cores busy (a model arriving over the air while
    the old one serves) would favour fewer threads for good: then one per core, not cached, and
    the next start times it.
    """
    key = _threads_key(sha256, cores)
    cached = cache.get(key)
    if cached is not None and cached.threads:
        return cached
    limit = BUSY_LIMIT if busy_limit is None else busy_limit
    busy = cpu_busy(_BUSY_WINDOW_S)
    if busy > limit:
        why = f"cores {busy:.0%} busy: one thread per core until a quieter start times the model"
        log.info("CPU threads for %s: %s", model_path.name, why)
        return ProbeResult("cpu", True, why)
    backends = {t: open_backend("cpu", model_path, t) for t in thread_candidates(cores)}
    try:
        samples: dict[int, list[float]] = {t: [] for t in backends}
        batch = 1
        for be in backends.values():
            be.run(inputs)  # warm-up: first invoke plans and packs weights
            t0 = time.perf_counter()
            be.invoke()
            batch = max(batch, int(_TUNE_BATCH_S / max(time.perf_counter() - t0, 1e-6)))
        batch = min(batch, 50)
        sys0, own0 = cpu_seconds(), _own_cpu_s()
        for _ in range(_TUNE_ROUNDS):
            for t, be in backends.items():
                t0 = time.perf_counter()
                for _ in range(batch):
                    be.invoke()
                samples[t].append((time.perf_counter() - t0) / batch * 1e3)
        sys1, own1 = cpu_seconds(), _own_cpu_s()
    finally:
        for be in backends.values():
            be.close()
    other = _other_load(sys0, sys1, own1 - own0)
    chosen, why = judge_timings(samples, other, limit)
    if chosen is None:
        log.info("CPU threads for %s: %s", model_path.name, why)
        return ProbeResult("cpu", True, why)
    res = ProbeResult("cpu", True, why, threads=chosen, run_ms=round(float(np.median(samples[chosen])), 3))
    cache.put(key, res)
    log.info("CPU threads for %s: %d (%s)", model_path.name, chosen, why)
    return res


def judge_timings(samples: dict[int, list[float]], other: float, limit: float) -> tuple[int | None, str]:
    """The thread count to keep from per-round invoke times, or None and why they are not to be trusted.

    other: the share of the cores used by anything else (steal time included) while timing.
    """
    medians = {t: float(np.median(v)) for t, v in samples.items()}
    chosen = choose_threads(medians)
    timed = "invoke ms by threads " + ", ".join(f"{t}: {ms:.3f}" for t, ms in sorted(medians.items()))
    rounds = min(len(v) for v in samples.values())
    agree = sum(choose_threads({t: v[r] for t, v in samples.items()}) == chosen for r in range(rounds))
    if other > limit or agree < rounds * _TUNE_AGREE:
        # another process (or the hypervisor) took the cores, or the rounds disagree: not a figure to keep
        return None, (
            f"timing disturbed ({other:.0%} of the cores used elsewhere, {agree}/{rounds} rounds agree; {timed}): "
            "one thread per core until a quieter start"
        )
    return chosen, timed


def _threads_key(sha256: str, cores: int) -> str:
    return ProbeCache.key(sha256, f"cpu-threads-{cores}")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _other_load(before: tuple[float, float], after: tuple[float, float], own_s: float) -> float:
    """Fraction of all cores busy with anything but this process (steal time included) between two samples."""
    total = after[1] - before[1]
    return max(0.0, (after[0] - before[0] - own_s) / total) if total > 0 else 0.0


def select_backend(
    model_path: Path,
    sha256: str,
    accelerator: str,
    threads: int,
    options: dict[str, str],
    probe_inputs: Callable[[Backend], list[np.ndarray]],
    agree: AgreeFn,
    timeout_s: float,
    cache: ProbeCache,
    own_process: bool = False,
) -> Selection:
    """Open the first candidate that passes its probe; the CPU needs none and always closes the list.

    threads = 0 on the CPU: the thread count is timed per model (once, then cached), not assumed.
    own_process: run the chosen backend in a child process (`runtime.own_process`).
    """
    results: list[ProbeResult] = []
    cores = default_threads()
    timed = threads == 0 and cores > 1
    known = cache.get(_threads_key(sha256, cores)) if timed else None
    cpu = open_backend("cpu", model_path, known.threads if known and known.threads else threads)  # once, not twice
    inputs: list[np.ndarray] | None = None
    cpu_outs: list[np.ndarray] | None = None
    for name in candidates(accelerator):
        if name == "cpu":
            tuned: ProbeResult | None = None
            if timed:
                if inputs is None:
                    inputs = probe_inputs(cpu)
                tuned = tune_threads(model_path, sha256, inputs, cores, cache)
                if tuned.threads and tuned.threads != getattr(cpu, "threads", None):
                    cpu.close()
                    cpu = open_backend("cpu", model_path, tuned.threads)
            results.append(
                ProbeResult(
                    "cpu",
                    True,
                    tuned.reason if tuned else "",
                    description=cpu.description,
                    fully_accelerated=True,
                    run_ms=tuned.run_ms if tuned else None,
                    threads=tuned.threads if tuned else None,
                    cached=tuned.cached if tuned else False,
                )
            )
            if own_process:
                cpu.close()
                t = tuned.threads if tuned and tuned.threads else threads
                cpu = open_backend("cpu", model_path, t, own_process=True)
                results[-1].description = cpu.description
            return Selection(cpu, results)
        reason = precheck(name)
        if reason is not None:
            # a device node or library not there yet, for an accelerator the configuration names, may come
            # (a driver that loads after the service starts, a package installed meanwhile): tried again.
            # Under `auto` it is only one of the kinds this board may have.
            named = accelerator != "auto" and isinstance(reason, Missing)
            res = ProbeResult(name, False, str(reason), transient=True if named else None)
        else:
            key = ProbeCache.key(sha256, name)
            cached = cache.get(key)
            if cached is not None:
                res = cached
            else:
                if inputs is None:
                    inputs = probe_inputs(cpu)
                    cpu_outs = cpu.run(inputs)
                assert cpu_outs is not None
                res = probe(name, model_path, inputs, cpu_outs, agree, threads, options, timeout_s)
                if not res.transient:
                    cache.put(key, res)
        results.append(res)
        if not res.ok:
            again = " (tried again: runtime.recover_s, and the next start)" if res.transient else ""
            log.info("accelerator %s rejected%s: %s", name, again, res.reason)
            continue
        try:
            backend = open_backend(name, model_path, threads, options, own_process=own_process)
        except BackendError as err:
            where = "in its own process" if own_process else "in-process"
            results[-1] = ProbeResult(name, False, f"passed its probe but failed {where}: {err}", transient=True)
            log.warning("accelerator %s rejected: %s", name, err)
            continue
        cpu.close()
        log.info("accelerator %s selected: %s", name, backend.description)
        return Selection(backend, results)
    raise AssertionError("candidate list always ends with the CPU")  # pragma: no cover


class Runtime:
    """The pipeline's handle on inference: invokes the current backend, swaps to the CPU on failure."""

    def __init__(
        self,
        selection: Selection,
        model_path: Path,
        threads: int,
        cpu_fallback: bool = True,
        cpu_own_process: bool = False,
        reselect: Callable[[], Selection] | None = None,
    ):
        """reselect: the selection made again, as at start (probe cache and all): how an accelerator the
        CPU stands in for is tried again while the agent runs (`Engine.try_accelerator`)."""
        #: keeps a verdict on an accelerator (its kind, why) where the next start's selection reads it
        self.on_verdict: Callable[[str, str], None] | None = None
        #: the accelerator whose outputs held NaN, until the CPU's on the next frame judge it (`suspect`)
        self.suspected: str | None = None
        self.backend = selection.backend
        self.reselect = reselect
        #: the CPU fallback runs in a child process too (`runtime.own_process`)
        self.cpu_own_process = cpu_own_process
        self.probes = selection.probes
        self.model_path = model_path
        self.threads = threads
        self.cpu_fallback = cpu_fallback
        self.fallbacks: list[Fallback] = []
        self._lock = threading.Lock()

    @property
    def accelerator(self) -> str:
        return self.backend.kind

    def standing_in(self) -> str | None:
        """Why the CPU serves where an accelerator may serve again, or None: an accelerator that failed at
        run time (a USB device that dropped off the bus), or one that could not be opened at start (not
        plugged in, not yet found at boot). A verdict on the model (a crash, outputs that disagree) is not
        one of these."""
        if self.reselect is None or self.accelerator != "cpu":
            return None
        fell = next((f for f in reversed(self.fallbacks) if f.to_backend == "cpu" and f.from_backend != "cpu"), None)
        if fell is not None:
            return None if fell.verdict else f"{fell.from_backend} failed at run time ({fell.reason})"
        missed = next((p for p in self.probes if p.transient), None)
        return f"{missed.backend} unavailable at start ({missed.reason})" if missed is not None else None

    def invoke(self) -> bool:
        """Run once; True when a fallback happened (the caller must refill the input and call again)."""
        try:
            self.backend.invoke()
            return False
        except BackendGone as err:  # its process died: an accelerator falls back, else the same starts afresh
            if self.backend.kind != "cpu" and self.cpu_fallback:
                self._fall_back(str(err))
            else:
                self._restart(str(err))
            return True
        except Exception as err:  # native backends raise bare RuntimeError with driver text
            if self.backend.kind == "cpu" or not self.cpu_fallback:
                raise
            self._fall_back(f"{type(err).__name__}: {str(err).strip()[:300]}")
            return True

    def reset(self) -> None:
        """Start a stateful (streaming) model afresh: a new interpreter has its variables at their initial values."""
        try:
            self.backend.reset_state()
        except BackendError:  # a backend that cannot reload in place: a fresh one of the same family
            old = self.backend
            family = old.kind if is_compiled(old.kind) else "cpu"
            self.backend = open_backend(family, self.model_path, self.threads, own_process=old.own_process)
            old.close()

    def _restart(self, reason: str) -> None:
        """The backend's own process died (the CPU's, or an accelerator's with `runtime.cpu_fallback` off): the
        same backend in a new process (its frame is redone), recorded like a fallback. If it cannot be
        opened, the frame fails, and the next one tries again."""
        old = self.backend
        assert isinstance(old, ProcessBackend)  # the only backend whose process can die apart from the agent's
        log.error("the process of %s died (%s); starting another", old.kind, reason)
        self.backend = old.again()
        self.fallbacks.append(Fallback(time.time(), old.kind, self.backend.kind, reason))
        old.close()

    def suspect(self, reason: str) -> None:
        """The accelerator's outputs hold NaN or infinity (its 16-bit floats overflow on a frame unlike the
        one it was probed with): the CPU takes over, the frame is redone there, and the next frame the CPU
        serves judges the accelerator (`judge`)."""
        self.suspected = self.backend.kind
        self._fall_back(reason)

    def judge(self, cpu_finite: bool) -> None:
        """After `suspect`, the CPU's outputs on a frame: numbers there make it a verdict on the accelerator
        for this model, kept for the next start's selection (`on_verdict`) and not tried again while the
        agent runs, as a device that went away is. NaN on the CPU too is the model's (`Model.decode` counts
        it): the accelerator is tried again as after any failure."""
        kind, self.suspected = self.suspected, None
        if kind is None or not cpu_finite or not self.fallbacks:
            return
        fell = self.fallbacks[-1]
        fell.verdict, fell.reason = True, f"{fell.reason} where the CPU's are numbers"
        log.error("model %s: %s is not used for it again, here or at the next start", self.model_path.name, kind)
        if self.on_verdict is not None:
            self.on_verdict(kind, fell.reason)

    def _fall_back(self, reason: str, verdict: bool = False) -> None:
        old = self.backend
        log.error("accelerator %s failed at run time (%s); falling back to the CPU", old.kind, reason)
        self.backend = open_backend("cpu", self.model_path, self.threads, own_process=self.cpu_own_process)
        self.fallbacks.append(Fallback(time.time(), old.kind, "cpu", reason, verdict))
        try:
            old.close()
        except Exception:  # closing a broken backend may fail too; the CPU is already in place
            log.debug("closing failed backend raised", exc_info=True)
