#!/usr/bin/env python3
"""Thousands of corrupted copies of real models through the agent's model checks.

Each mutant (truncated, bit-flipped, or a 4-byte field overwritten) is parsed in this process
and, if the parser lets it through, loaded in a limited child (edge_agent.validate). The
report counts how each was stopped; this process must survive every one of them.

    python benchmarks/model_mutants.py --count 2000
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.modelfile import ModelError, read_model_file  # noqa: E402
from edge_agent.mutants import mutate  # noqa: E402
from edge_agent.validate import validate_in_child  # noqa: E402

MODELS = [
    ROOT / "models" / "face_detection_short_range.tflite",
    ROOT / "models" / "face_detection_short_range_int8.tflite",
    ROOT.parent / "shared" / "models" / "ssd_mobilenet_v1_coco_uint8.tflite",
]


def one(i: int, data: bytes, seed: int, tmp: Path) -> tuple[str, str]:
    kind, mutant = mutate(data, np.random.default_rng(seed + i))
    p = tmp / f"m{i}.tflite"
    p.write_bytes(mutant)
    try:
        read_model_file(p)
    except ModelError:
        p.unlink()
        return kind, "rejected by parser"
    v = validate_in_child(p, timeout_s=30)
    p.unlink()
    if v["ok"]:
        return kind, "loads and runs"
    reason = str(v["reason"])
    if "crashed" in reason:
        return kind, "child crashed (isolated)"
    if "longer than" in reason:
        return kind, "child timed out"
    return kind, "rejected by child"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sources = [m.read_bytes() for m in MODELS if m.is_file()]
    t0 = time.monotonic()
    table: collections.Counter[tuple[str, str]] = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(one, i, sources[i % len(sources)], args.seed, Path(tmp)) for i in range(args.count)]
        for f in futures:
            table[f.result()] += 1
    print(f"{args.count} mutants of {len(sources)} models in {time.monotonic() - t0:.0f} s; this process survived all")
    print("| mutation | outcome | count |\n| --- | --- | --- |")
    for (kind, outcome), n in sorted(table.items()):
        print(f"| {kind} | {outcome} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
