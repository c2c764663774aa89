#!/usr/bin/env python3
"""What decoding a model's outputs costs per frame: each real model on the demo video's frames (and the
shared SSD on them too, where ../shared has it), its outputs decoded into detections by the agent's own
decoder, on this thread's CPU clock.

  warm          the frames' outputs decoded one after another (caches hold the decoder's code and data)
  after invoke  each decode right after an invoke, as a pipeline runs them (the invoke has filled the
                caches with the model's weights)

    python benchmarks/bench_decode.py [--frames 300] [--repeats 5] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_agent import DEFAULT_MODELS as MODELS  # noqa: E402
from edge_agent.bench import demo_frames  # noqa: E402
from edge_agent.config import ModelConfig, RuntimeConfig  # noqa: E402
from edge_agent.model import Model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300, help="demo video frames decoded (at most all 180)")
    ap.add_argument("--repeats", type=int, default=5, help="passes over the frames; the median is shown")
    ap.add_argument("--threshold", type=float, default=0.5, help="model.score_threshold")
    args = ap.parse_args()
    frames = demo_frames(args.frames)
    print(f"| model | detections a frame | decode ms a frame, warm | after invoke |  ({len(frames)} frames)")
    print("| --- | --- | --- | --- |")
    for path in MODELS:
        if not path.is_file():
            print(f"| {path.name} | (absent) | | |")
            continue
        m = Model(ModelConfig(path=path, score_threshold=args.threshold), RuntimeConfig(accelerator="cpu"), None)
        raws = [m.run(f) for f in frames]
        found = sum(len(m.decode(r).result.detections) for r in raws)
        warm, cold = [], []
        for _ in range(args.repeats):
            t = time.thread_time()
            for r in raws:
                m.decode(r)
            warm.append((time.thread_time() - t) / len(raws))
            spent = 0.0
            for f, r in zip(frames, raws, strict=True):
                m.run(f)
                t = time.thread_time()
                m.decode(r)
                spent += time.thread_time() - t
            cold.append(spent / len(raws))
        w, c = statistics.median(warm) * 1e3, statistics.median(cold) * 1e3
        print(f"| {path.name} | {found / len(raws):.2f} | {w:.3f} | {c:.3f} |", flush=True)
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
