#!/usr/bin/env python3
"""Batching on LiteRT's GPU accelerator, for the lent GPU machine (run by benchmarks/device_batch.sh).

Per model and batch size (1, 2, 4), side by side on the same machine:
  bare    invoke() alone on a backend whose input holds n real demo frames: ms per batch and per frame,
          on the GPU (CompiledModel, resized) and on the CPU (the interpreter, resized)
  check   whether the batch's outputs, split the way the engine learns them, match the frames run one
          by one (the engine uses a batch size only then)
  agent   one agent, 4 pipelines on in-memory frames, a real mosquitto, runtime.max_batch = n:
          aggregate fps and capture-to-publish latency (edge-agent bench --batch, on the GPU), at each
          runtime.batch_wait_ms of --gpu-waits and runtime.own_process of --gpu-own (the GPU model run
          in the agent, or in a process of its own), then on the CPU; with --single, one pipeline too

    python benchmarks/device_batch.py --out batch.json [--seconds 3 --runs 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge_agent.bench import demo_frames  # noqa: E402
from edge_agent.bench_pipelines import compare_batches  # noqa: E402

MODELS = [ROOT / "models" / "face_detection_short_range.tflite", ROOT / "models" / "face_detection_full_range.tflite"]


def bare(model: Path, kind: str, n: int, seconds: float) -> dict[str, Any]:
    from edge_agent.config import ModelConfig, RuntimeConfig
    from edge_agent.engine import _Request, open_batched
    from edge_agent.model import Model

    m = Model(ModelConfig(path=model, isolated_check=False), RuntimeConfig(accelerator="cpu", threads=0), None)
    frames = demo_frames(4 * n)[::4][:n]
    inputs = []
    for f in frames:
        x = np.zeros(m.inputs[0].shape, m.inputs[0].dtype)
        assert m.pre is not None
        m.pre(f, x)
        inputs.append(x)
    out: dict[str, Any] = {"kind": kind, "batch": n}
    try:
        if n == 1:
            from edge_agent.runtime.registry import open_backend

            be = open_backend(kind, model, 0)
        else:
            be = open_batched(kind, model, 0, {}, n)

        def fill(v: np.ndarray) -> None:
            for k, x in enumerate(inputs):
                v[k : k + 1] = x.reshape((1, *v.shape[1:]))

        be.write_input(0, fill)
        t0 = time.perf_counter()
        be.invoke()
        out["first_ms"] = (time.perf_counter() - t0) * 1e3
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            be.invoke()
            times.append((time.perf_counter() - t) * 1e3)
        out["ms_per_batch"] = float(np.median(times))
        out["ms_per_frame"] = out["ms_per_batch"] / n
        out["fps"] = 1e3 / out["ms_per_frame"]
        if n > 1 and kind != "cpu":  # does the engine accept this batch? (its own check, on these frames)
            eng = m.engine
            eng.runtime.backend.close()
            from edge_agent.runtime.registry import open_backend

            eng.runtime.backend = open_backend(kind, model, 0)
            eng.max_batch = n
            lane = eng._lanes[0]
            lane.batched[(kind, n)] = be
            reqs = [_Request(f"p{k}", [x]) for k, x in enumerate(inputs)]
            try:
                eng._invoke_batch(lane, reqs)
                out["check"] = "outputs match the single runs"
            except Exception as err:  # the reason the engine would give
                out["check"] = f"refused: {err}"
        else:
            be.close()
    except Exception as err:
        out["error"] = f"{type(err).__name__}: {err}"
        out["trace"] = traceback.format_exc()[-800:]
    m.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-agent", action="store_true")
    ap.add_argument("--gpu-waits", default="0", help="runtime.batch_wait_ms values for the agent rows on the GPU")
    ap.add_argument("--gpu-own", default="default", help="runtime.own_process for the GPU rows: off, on, default")
    ap.add_argument("--skip-bare", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true", help="no agent rows on the CPU")
    ap.add_argument("--single", action="store_true", help="also one pipeline, for each GPU row's settings")
    ap.add_argument("--sizes", default="1,2,4", help="runtime.max_batch values for the agent rows")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds after every pipeline has published")
    args = ap.parse_args()
    doc: dict[str, Any] = {"bare": [], "agent": []}
    for m in MODELS if not args.skip_bare else []:
        for kind in ("gpu", "cpu"):
            for n in (1, 2, 4):
                r = {"model": m.name, **bare(m, kind, n, args.seconds)}
                doc["bare"].append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "trace"}), flush=True)
                args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if not args.skip_agent:
        owns = {"off": False, "on": True, "default": None}
        plan = [("gpu", float(w), owns[o]) for o in args.gpu_own.split(",") for w in args.gpu_waits.split(",")]
        plan += [] if args.skip_cpu else [("cpu", 0.0, None)]
        four = [int(x) for x in args.sizes.split(",")]
        for accel, wait, own in plan:
            for n, sizes in [(1, [1])] * (args.single and accel == "gpu") + [(4, four)]:
                print(f"agent, {n} pipeline(s) on the {accel.upper()}, runtime.batch_wait_ms = {wait:g}, "
                      f"runtime.own_process = {own}", flush=True)
                try:
                    doc["agent"] += compare_batches(
                        MODELS, n, sizes, args.seconds, args.runs, 0, sys.stdout, accel, batch_wait_ms=wait,
                        own_process=own, warmup=args.warmup,
                    )
                except Exception as err:
                    doc.setdefault("errors", []).append(
                        f"agent on {accel}, wait {wait} ms, own process {own}: {type(err).__name__}: {err}"
                    )
                    print(doc["errors"][-1], flush=True)
                args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
