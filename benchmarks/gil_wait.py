#!/usr/bin/env python3
"""What a thread hand-off costs in one process, and what batching saves on the CPU: the figures behind
running a frame to completion on one thread when several pipelines share an agent (docs/pipelines.md).

  gil     calls per second of invoke() (BlazeFace short range, one thread), of reading the MJPG demo video
          and of the preprocess resize, on a thread alone and beside a thread running Python: each call
          releases the interpreter lock, and the thread must win it back before it goes on
  batch   invoke time per frame at batch 1, 2, 4 and 8 on one single-threaded CPU interpreter

    python benchmarks/gil_wait.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edge_agent.bench import _video  # noqa: E402
from edge_agent.runtime.registry import open_backend  # noqa: E402

MODEL = ROOT / "models" / "face_detection_short_range.tflite"


def _calls(work: Callable[[], None], seconds: float, busy: bool) -> float:
    """Calls of `work` per second on a thread of its own, with or without a thread running Python."""
    stop = threading.Event()
    n = [0]

    def worker() -> None:
        while not stop.is_set():
            work()
            n[0] += 1

    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    threads = [threading.Thread(target=worker)] + ([threading.Thread(target=spin)] if busy else [])
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    return n[0] / seconds


def gil(seconds: float) -> None:
    be = open_backend("cpu", MODEL, 1)
    cap = cv2.VideoCapture(str(_video()))
    img = np.zeros((480, 640, 3), np.uint8)
    small = np.empty((256, 256, 3), np.uint8)

    def read() -> None:
        ok, _ = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def resize() -> None:
        cv2.resize(img, (256, 256), dst=small)

    print(f"switch interval {sys.getswitchinterval() * 1e3:g} ms")
    print("| call | alone, per s | beside a Python thread, per s | ratio |")
    print("| --- | --- | --- | --- |")
    for name, work in (("invoke", be.invoke), ("read", read), ("resize", resize)):
        alone, busy = _calls(work, seconds, False), _calls(work, seconds, True)
        print(f"| {name} | {alone:.0f} | {busy:.0f} | {busy / alone:.2f} |", flush=True)
    be.close()


def batch(seconds: float) -> None:
    print("| batch | invoke ms per frame (median of 5) |")
    print("| --- | --- |")
    for n in (1, 2, 4, 8):
        be = open_backend("cpu", MODEL, 1)
        if n > 1:
            be.resize_batch(n)
        for _ in range(10):
            be.invoke()
        per: list[float] = []
        for _ in range(5):
            k, t0 = 0, time.thread_time()
            while time.thread_time() - t0 < seconds / 5:
                be.invoke()
                k += 1
            per.append((time.thread_time() - t0) / (k * n) * 1e3)
        print(f"| {n} | {statistics.median(per):.3f} |", flush=True)
        be.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    gil(args.seconds)
    batch(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
