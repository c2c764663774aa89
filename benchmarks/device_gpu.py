#!/usr/bin/env python3
"""The GPU half of the performance figures, for the lent GPU machine (run by benchmarks/device_gpu.sh).

Per model: what `accelerator = auto` selects, how its detections agree with the CPU's on
demo-video frames (matched by IoU), and side by side in alternating runs the bare loop on the
GPU and on the CPU and the agent (frames in memory, a real mosquitto) with `auto` and with the
CPU. Writes one JSON summary with the issue's targets checked for BlazeFace full range: agent
at least 0.8x the bare GPU loop and at least 4x the agent on the CPU, matched IoU at least 0.9.

    python benchmarks/device_gpu.py --out gpu.json [--seconds 3 --runs 3]

On a machine without a GPU it still runs: `selected` is then `cpu`, the bare GPU loop's error is
in `errors`, and the targets read false.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.bench import compare_accelerator  # noqa: E402

TARGET_MODEL = ROOT / "models" / "face_detection_full_range.tflite"
MODELS = [TARGET_MODEL, ROOT / "models" / "face_detection_short_range.tflite"]


def targets(doc: dict) -> dict[str, bool]:  # type: ignore[type-arg]
    r, a = doc["ratios"], doc["agreement"]
    return {
        "gpu_selected_by_auto": doc["selected"] == "gpu",
        "iou_at_least_0.9": bool(a.get("matched")) and (a.get("min_iou") or 0) >= 0.9,
        "agent_at_least_0.8x_bare_gpu": r.get("agent_vs_bare_accelerator", 0) >= 0.8,
        "agent_at_least_4x_agent_cpu": r.get("agent_accelerator_vs_agent_cpu", 0) >= 4.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=60, help="demo-video frames for the agreement check")
    ap.add_argument("--model", type=Path, action="append")
    args = ap.parse_args()
    summary: dict = {"machine": platform.machine(), "python": platform.python_version(), "models": []}  # type: ignore[type-arg]
    for m in args.model or MODELS:
        doc = compare_accelerator(m, args.seconds, args.runs, args.frames)
        if m.name == TARGET_MODEL.name:
            doc["targets"] = targets(doc)
        summary["models"].append(doc)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")  # after each model: a timeout keeps what ran
        shown = ("model", "selected", "fps", "bare_read_ms", "ratios", "agreement")
        print(json.dumps({k: doc[k] for k in shown}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
