#!/usr/bin/env python3
"""The agent against the bare runtime, side by side in one run, on the same model and threads.

(1) bare: a loop doing nothing but `invoke()` on one LiteRT Interpreter.
(2) naive: what a user would write first: read and decode the MJPG video, resize, normalise,
    invoke, serialise, publish (blocking) to the same broker, one step after another.
(3) agent on frames already decoded in memory (only the agent's own work is measured), and
(4) agent on the MJPG video file (decoding included): the whole pipeline in this process to a
    real local mosquitto, paced by inference.
Medians of several alternating runs; ratios, since the machine is noisy. "host CPU ms/frame" is
the agent's process CPU time per frame beyond what the bare loop spends per invoke.

    python benchmarks/bench_agent.py                      # default models, 3 x 5 s each
    python benchmarks/bench_agent.py --model m.tflite --runs 5 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Broker  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import load_settings  # noqa: E402
from edge_agent.progress import Progress  # noqa: E402
from edge_agent.runtime.cpu import InterpreterBackend, default_threads  # noqa: E402

VIDEO = ROOT / "models" / "demo.avi"
DEFAULT_MODELS = [
    ROOT / "models" / "face_detection_short_range.tflite",
    ROOT / "models" / "face_detection_full_range.tflite",
    ROOT / "models" / "face_detection_short_range_int8.tflite",
    ROOT.parent / "shared" / "models" / "ssd_mobilenet_v1_coco_uint8.tflite",
]


def bare(model: Path, threads: int, seconds: float) -> tuple[float, float]:
    """(fps, CPU seconds per invoke)."""
    be = InterpreterBackend(model, threads)
    be.invoke()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        be.invoke()
        n += 1
    fps = n / (time.perf_counter() - t0)
    cpu = (time.process_time() - c0) / n
    be.close()
    return fps, cpu


def naive(model: Path, threads: int, seconds: float, port: int) -> float:
    import cv2
    import numpy as np
    import orjson

    from edge_agent.config import MQTTConfig
    from edge_agent.sinks.mqtt import Subscriber

    pub = Subscriber(MQTTConfig(host="127.0.0.1", port=port), ["bench/naive/ignored"])
    assert pub.start(10)
    be = InterpreterBackend(model, threads)
    spec = be.inputs[0]
    h, w = spec.shape[1], spec.shape[2]
    cap = cv2.VideoCapture(str(VIDEO))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ok, frame = cap.read()
        if not ok:
            cap = cv2.VideoCapture(str(VIDEO))
            continue
        rgb = cv2.cvtColor(cv2.resize(frame, (w, h)), cv2.COLOR_BGR2RGB)
        x = rgb if spec.dtype == np.uint8 else ((rgb.astype(np.float32) - 127.5) / 127.5).astype(spec.dtype)
        outs = be.run([x[None]])
        doc = {"ts": time.time(), "outputs": [float(o.max()) for o in outs]}
        pub.publish("bench/naive/predictions", orjson.dumps(doc), qos=0)
        n += 1
    fps = n / (time.perf_counter() - t0)
    pub.stop()
    be.close()
    return fps


def agent(model: Path, threads: int, seconds: float, port: int, state: Path, source: str) -> dict[str, float]:
    settings = load_settings(
        None,
        {
            "mqtt.host": "127.0.0.1",
            "mqtt.port": port,
            "mqtt.qos": 0,
            "mqtt.queue_size": 10000,
            "source.uri": source,
            "source.realtime": False,
            "model.path": str(model),
            "runtime.accelerator": "cpu",
            "runtime.threads": threads,
            "state_dir": str(state),
            "health.interval_s": 3600,
        },
    )
    t_start = time.monotonic()
    a = Agent(settings)
    a.start()
    a.first_published.wait(30)
    first = time.monotonic() - t_start
    a.stop.wait(0.5)  # warm-up
    st = a.infer_stats
    n0, t0, c0 = st.count, time.perf_counter(), time.process_time()
    a.stop.wait(seconds)
    n1, t1, c1 = st.count, time.perf_counter(), time.process_time()
    lat = {k: w.percentiles() or {} for k, w in st.latency.items()}
    rss = a.health()["process"]["rss_mb"]
    a.shutdown(5)
    c2p, inf = lat.get("capture_to_publish", {}), lat.get("inference", {})
    return {
        "fps": (n1 - n0) / (t1 - t0),
        "added_p50": c2p.get("p50", 0) - inf.get("p50", 0),
        "added_p99": c2p.get("p99", 0) - inf.get("p99", 0),
        "first_s": first,
        "rss_mb": rss,
        "cpu_per_frame": (c1 - c0) / max(1, n1 - n0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, action="append")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    models = [m for m in (args.model or DEFAULT_MODELS) if m.is_file()]
    threads = args.threads or default_threads()
    print(
        f"# {os.uname().machine}, {os.cpu_count()} cores, {threads} inference threads, "
        f"{args.runs} runs x {args.seconds:g} s, medians",
        flush=True,
    )
    print(
        "| model | bare fps | naive fps (video) | agent fps (memory) | agent / bare | agent fps (video) | "
        "video agent / naive | added latency p50 / p99 ms | host CPU ms/frame | first prediction s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp)).start()
        port = broker.port
        try:
            for m in models:
                b, c, nv, mem, vid = [], [], [], [], []
                bar = Progress(m.name, args.runs * 4, "runs")  # stderr: the table on stdout stays clean
                for _ in range(args.runs):  # alternate, so drift hits all alike
                    fps, cpu = bare(m, threads, args.seconds)
                    b.append(fps)
                    c.append(cpu)
                    bar.update()
                    nv.append(naive(m, threads, args.seconds, port))
                    bar.update()
                    mem.append(agent(m, threads, args.seconds, port, Path(tmp) / "state", "replay:demo"))
                    bar.update()
                    vid.append(agent(m, threads, args.seconds, port, Path(tmp) / "state", str(VIDEO)))
                    bar.update()
                bar.close()
                med = {k: statistics.median(r[k] for r in mem) for k in mem[0]}
                bf, cpu_inv, nf = statistics.median(b), statistics.median(c), statistics.median(nv)
                vf = statistics.median(r["fps"] for r in vid)
                host = (med["cpu_per_frame"] - cpu_inv) * 1e3
                print(
                    f"| {m.name} | {bf:.1f} | {nf:.1f} | {med['fps']:.1f} | {med['fps'] / bf:.3f} | {vf:.1f} | "
                    f"{vf / nf:.2f} | {med['added_p50']:.2f} / {med['added_p99']:.2f} | {host:.2f} | "
                    f"{med['first_s']:.2f} |",
                    flush=True,
                )
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
