"""Child-process probe of one accelerator: load the model there, run one input, save the outputs.

Run as ``python -m edge_agent.runtime.probe``; the parent compares the outputs with the CPU's.
A backend that aborts or hangs takes only this child with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge_agent.runtime.probe")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--backend", required=True, help="gpu, npu, edgetpu or a delegate .so path")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--options", default="{}", help="delegate options as JSON")
    ap.add_argument("--inputs", type=Path, required=True, help=".npz with arrays in0, in1, ...")
    ap.add_argument("--outputs", type=Path, required=True, help=".npz to write out0, out1, ...")
    args = ap.parse_args(argv)

    from edge_agent.runtime.base import BackendError
    from edge_agent.runtime.registry import open_backend

    report: dict[str, object] = {"backend": args.backend}
    try:
        t0 = time.perf_counter()
        backend = open_backend(args.backend, args.model, args.threads, json.loads(args.options))
        report["load_ms"] = (time.perf_counter() - t0) * 1000
        with np.load(args.inputs) as z:
            inputs = [z[f"in{i}"] for i in range(len(z.files))]
        t1 = time.perf_counter()
        outs = backend.run(inputs)  # first run includes kernel compilation on GPUs
        report["first_run_ms"] = (time.perf_counter() - t1) * 1000
        t2 = time.perf_counter()
        outs = backend.run(inputs)
        report["run_ms"] = (time.perf_counter() - t2) * 1000
        np.savez(args.outputs, **{f"out{i}": o for i, o in enumerate(outs)})  # type: ignore[arg-type]
        report.update(ok=True, description=backend.description, fully_accelerated=backend.fully_accelerated)
        backend.close()
    except BackendError as err:
        report.update(ok=False, reason=str(err))
    print(json.dumps(report), flush=True)
    return 0 if report.get("ok") else 3


if __name__ == "__main__":
    sys.exit(main())
