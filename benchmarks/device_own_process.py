#!/usr/bin/env python3
"""`runtime.own_process` on a real accelerator, for the lent GPU machine (run by device_own_process.sh).

Per model, with `runtime.accelerator = gpu` and `runtime.own_process = true`:
  - the GPU backend runs in a child process, and its detections on demo-video frames match the same
    model's on the CPU in the agent (IoU of matched boxes);
  - a batch of 4 opened in its own process gives each frame's single-run outputs;
  - its process killed with SIGKILL: the next frame is served on the CPU (in a child process too, as
    `own_process` asks), the fallback names the signal, and the detections still match.
Prints one JSON line per model and writes them all to --out; exit 1 if a check fails.

    python benchmarks/device_own_process.py --out own.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge_agent.bench import demo_frames  # noqa: E402
from edge_agent.config import ModelConfig, RuntimeConfig  # noqa: E402
from edge_agent.engine import _Request  # noqa: E402
from edge_agent.model import Model  # noqa: E402
from edge_agent.postprocess.geometry import iou_one_to_many  # noqa: E402
from edge_agent.runtime.base import BackendError  # noqa: E402
from edge_agent.runtime.worker import ProcessBackend  # noqa: E402

MODELS = [ROOT / "models" / "face_detection_short_range.tflite", ROOT / "models" / "face_detection_full_range.tflite"]


def boxes(m: Model, frame: np.ndarray) -> np.ndarray:
    return np.array([d.box for d in m.infer(frame).result.detections], np.float64).reshape(-1, 4)


def min_iou(a: np.ndarray, b: np.ndarray) -> float | None:
    """The worst IoU of each box of `a` with its best match in `b` (None when the counts differ)."""
    if len(a) != len(b):
        return None
    return min((float(iou_one_to_many(x, b).max()) for x in a), default=1.0)


def check(model: Path, frames: list[np.ndarray], accel: str) -> dict[str, Any]:
    cpu = Model(ModelConfig(path=model), RuntimeConfig(accelerator="cpu"), None)
    gpu = Model(ModelConfig(path=model), RuntimeConfig(accelerator=accel, own_process=True), None)
    out: dict[str, Any] = {"model": model.name}
    try:
        be = gpu.runtime.backend
        out["backend"] = be.description
        out["in_a_child"] = isinstance(be, ProcessBackend) and be.kind == accel and be.pid != os.getpid()
        want = [boxes(cpu, f) for f in frames]
        ious = [min_iou(boxes(gpu, f), w) for f, w in zip(frames, want, strict=True)]
        out["gpu_vs_cpu_min_iou"] = None if None in ious else min(i for i in ious if i is not None)
        x = [np.zeros(gpu.inputs[0].shape, gpu.inputs[0].dtype) for _ in range(4)]
        for k, f in enumerate(frames[:4]):
            assert gpu.pre is not None
            gpu.pre(f, x[k])
        batch = ProcessBackend(accel, model)
        try:
            batch.resize_batch(4)
            got = batch.run([np.concatenate(x)])
            # the engine's own check: each frame's part of the batch against the frame run alone
            gpu.engine._learn(gpu.engine._lanes[0], [_Request("p", [xi]) for xi in x], got)
            out["batch_of_4"] = True
        except BackendError as err:
            out["batch_of_4"], out["batch_refused"] = False, str(err)
        finally:
            batch.close()
        os.kill(be.pid, signal.SIGKILL)
        t0 = time.perf_counter()
        after = [min_iou(boxes(gpu, f), w) for f, w in zip(frames, want, strict=True)]
        out["first_frames_after_kill_s"] = round(time.perf_counter() - t0, 3)
        out["after_kill_min_iou"] = None if None in after else min(i for i in after if i is not None)
        out["now_on"] = gpu.runtime.backend.description
        out["fallbacks"] = [f"{f.from_backend} -> {f.to_backend}: {f.reason}" for f in gpu.runtime.fallbacks]
        out["ok"] = bool(
            out["in_a_child"]
            and (out["gpu_vs_cpu_min_iou"] or 0) >= 0.9
            and out["batch_of_4"]
            and (out["after_kill_min_iou"] or 0) >= 0.99
            and gpu.runtime.accelerator == "cpu"
            and len(gpu.runtime.fallbacks) == 1
            and "signal 9" in gpu.runtime.fallbacks[0].reason
        )
    finally:
        cpu.close()
        gpu.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--accelerator", default="gpu", help="cpu runs the same checks where there is no GPU")
    args = ap.parse_args()
    frames = demo_frames(args.frames * 3)[::3]
    docs = []
    for m in MODELS:
        try:
            doc = check(m, frames, args.accelerator)
        except Exception as err:  # the report says what failed; the next model still runs
            doc = {"model": m.name, "ok": False, "error": f"{type(err).__name__}: {err}"}
        docs.append(doc)
        print(json.dumps(doc), flush=True)
        args.out.write_text(json.dumps(docs, indent=2) + "\n")
    return 0 if all(d["ok"] for d in docs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
