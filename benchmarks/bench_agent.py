#!/usr/bin/env python3
"""The agent against the bare runtime, side by side in one run, on the same model and threads.

The same harness as `edge-agent bench` (edge_agent/bench.py), over more models by default: each
variant (bare invoke loop, MJPG decode alone, naive loop, agent on frames in memory, agent on the
MJPG video) runs in its own process, alternating, and the table shows medians and ratios.

    python benchmarks/bench_agent.py                      # default models, 3 x 5 s each
    python benchmarks/bench_agent.py --model m.tflite --runs 5 --seconds 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.bench import HEADER, compare  # noqa: E402

DEFAULT_MODELS = [
    ROOT / "models" / "face_detection_short_range.tflite",
    ROOT / "models" / "face_detection_full_range.tflite",
    ROOT / "models" / "face_detection_short_range_int8.tflite",
    ROOT.parent / "shared" / "models" / "ssd_mobilenet_v1_coco_uint8.tflite",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, action="append")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    models = [m for m in (args.model or DEFAULT_MODELS) if m.is_file()]
    print(HEADER, flush=True)
    rows = compare(models, args.threads, args.seconds, args.runs, sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
