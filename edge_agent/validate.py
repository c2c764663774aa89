"""Load a model nobody has vouched for in a child process with memory and time limits.

A crafted or corrupted .tflite can crash native code (an operator input index of -1 makes
XNNPACK segfault in allocate_tensors() in ai-edge-litert 2.3.0) or ask for gigabytes (one
flipped byte in a shape). The child parses, allocates and invokes the model once; whatever
happens to it, the serving process only reads a verdict.

    python -m edge_agent.validate --model m.tflite     # the child side: prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Address space a validating child may map. LiteRT and numpy alone map ~0.5 GB of it.
DEFAULT_MEMORY_MB = 2048
DEFAULT_TIMEOUT_S = 60.0


def check_model(path: Path, threads: int = 1, memory_mb: int = 0) -> dict[str, Any]:
    """In this process: parse, build an interpreter, allocate, invoke once on zeros. memory_mb: the
    limit this process runs under; a model whose tensors alone exceed it is refused by name, since
    LiteRT's own message for a failed allocation does not say so."""
    import numpy as np

    from edge_agent.modelfile import ModelError, read_model_file
    from edge_agent.runtime.base import BackendError
    from edge_agent.runtime.cpu import InterpreterBackend

    try:
        mf = read_model_file(path)
        if memory_mb and mf.tensor_bytes > memory_mb * 2**20 * 0.9:
            return {
                "ok": False,
                "reason": f"out of memory: its tensors need about {mf.tensor_bytes / 2**20:,.0f} MB, more than the "
                f"{memory_mb} MB a model may take here",
            }
        t0 = time.perf_counter()
        be = InterpreterBackend(path, threads)
        for i in range(len(be.inputs)):
            be.write_input(i, lambda v: v.fill(0))
        be.invoke()
        outs = [be.output(i) for i in range(len(be.outputs))]
        ms = (time.perf_counter() - t0) * 1e3
        be.close()
    except (ModelError, BackendError) as err:
        return {"ok": False, "reason": str(err)}
    except (ValueError, RuntimeError, MemoryError, IndexError, TypeError) as err:
        return {"ok": False, "reason": f"{type(err).__name__}: {str(err).strip()[:300]}"}
    finite = all(bool(np.isfinite(o.astype(np.float64)).all()) for o in outs)
    return {"ok": True, "sha256": mf.sha256, "load_invoke_ms": round(ms, 2), "finite_outputs": finite}


def _limits(memory_mb: int) -> Any:
    def apply() -> None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files on an SD card

    return apply


def validate_in_child(
    path: Path, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB
) -> dict[str, Any]:
    """The verdict of a child that loaded the model; {"ok": False, "reason": ...} however it ended."""
    cmd = [sys.executable, "-m", "edge_agent.validate", "--model", str(path), "--memory-mb", str(memory_mb)]
    env = {**os.environ, "PYTHONFAULTHANDLER": "0"}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, check=False, preexec_fn=_limits(memory_mb), env=env
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"loading took longer than {timeout_s:g} s"}
    if proc.returncode < 0:
        from edge_agent.system import signal_name

        return {"ok": False, "reason": f"loading crashed the process ({signal_name(-proc.returncode)})"}
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and "ok" in report:
            return report
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    if any("MemoryError" in ln or "bad_alloc" in ln or "Cannot allocate" in ln for ln in tail):
        return {"ok": False, "reason": f"loading needs more than {memory_mb} MB"}
    return {"ok": False, "reason": f"validator exited {proc.returncode}: {(tail or ['no output'])[-1][:300]}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge_agent.validate")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--memory-mb", type=int, default=0, help="the memory limit this process runs under")
    args = ap.parse_args(argv)
    report = check_model(args.model, memory_mb=args.memory_mb)
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
