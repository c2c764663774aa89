#!/usr/bin/env python3
"""What writing an event's clip costs: the demo video's frames kept in a clip recorder's ring (JPEG,
as the scene keeps them), then written as one clip, on this thread's CPU clock, two ways alternated:

  as they are   the ring's JPEGs put into the AVI unchanged (OpenCV 4.9 on, with FFmpeg: the default)
  re-encoded    each JPEG decoded and encoded again (what an OpenCV without that mode does)

    python benchmarks/bench_clips.py [--frames 150] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edge_agent.clips as clips  # noqa: E402
from edge_agent.bench import demo_frames  # noqa: E402
from edge_agent.config import ClipConfig  # noqa: E402


def write_once(frames: list[object], raw: object, tmp: Path, n: int) -> tuple[float, int]:
    """CPU seconds to write one clip of the frames, and its size in bytes."""
    rec = clips.ClipRecorder(ClipConfig(enabled=True, pre_s=0.0, post_s=0.0, fps=15), tmp)
    rec.begin("held", 0.0)  # an event in progress keeps its frames in the ring
    for i, f in enumerate(frames):
        rec.offer(f, i / 15)  # type: ignore[arg-type]
    kept = list(rec.ring)
    if len(kept) != len(frames):
        raise SystemExit(f"the ring kept {len(kept)} of {len(frames)} frames")
    rec.pending.clear()
    saved, clips._RAW = clips._RAW, raw
    try:
        t = time.thread_time()
        rec._write(f"run{n}", kept)
        cpu = time.thread_time() - t
    finally:
        clips._RAW = saved
        rec.close()
    path = tmp / f"run{n}.avi"
    if rec.stats.written != 1 or not path.is_file():
        raise SystemExit(f"the clip was not written: {rec.health()}")
    return cpu, path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150, help="frames in the clip (the demo video has 180)")
    ap.add_argument("--runs", type=int, default=5, help="clips written each way, alternated; medians shown")
    args = ap.parse_args()
    frames = demo_frames(args.frames)
    h, w = frames[0].shape[:2]
    modes = {"as they are": clips._RAW, "re-encoded": None}
    if clips._RAW is None:
        print("this OpenCV cannot write encoded frames: only the re-encoding row is measured")
        del modes["as they are"]
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    size: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            for m, raw in modes.items():
                s, b = write_once(frames, raw, Path(tmp), r * 10 + len(cpu[m]) + (5 if raw is None else 0))
                cpu[m].append(s)
                size[m] = b
    print(f"| clip of {len(frames)} frames ({w}x{h}) | CPU ms a frame | CPU ms the clip | bytes a frame |")
    print("| --- | --- | --- | --- |")
    for m in modes:
        med = statistics.median(cpu[m])
        print(f"| {m} | {1000 * med / len(frames):.3f} | {1000 * med:.1f} | {size[m] / len(frames):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
