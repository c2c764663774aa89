#!/usr/bin/env python3
"""The agent against the bare runtime, side by side in one run, on the same model and threads.

(1) bare: a loop doing nothing but `invoke()` on one LiteRT Interpreter.
(2) agent: the whole pipeline in this process (capture thread on frames already decoded in
    memory, preprocessing, inference, decoding, JSON, a real local mosquitto), paced by
    inference. Medians of several alternating runs; ratios, since the machine is noisy.

    python benchmarks/bench_agent.py                      # default models, 3 x 5 s each
    python benchmarks/bench_agent.py --model m.tflite --runs 5 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import load_settings  # noqa: E402
from edge_agent.runtime.cpu import InterpreterBackend, default_threads  # noqa: E402

DEFAULT_MODELS = [
    ROOT / "models" / "face_detection_short_range.tflite",
    ROOT / "models" / "face_detection_full_range.tflite",
    ROOT / "models" / "face_detection_short_range_int8.tflite",
    ROOT.parent / "shared" / "models" / "ssd_mobilenet_v1_coco_uint8.tflite",
]


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def bare(model: Path, threads: int, seconds: float) -> float:
    be = InterpreterBackend(model, threads)
    be.invoke()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        be.invoke()
        n += 1
    fps = n / (time.perf_counter() - t0)
    be.close()
    return fps


def agent(model: Path, threads: int, seconds: float, port: int, state: Path) -> dict[str, float]:
    settings = load_settings(None, {
        "mqtt.host": "127.0.0.1", "mqtt.port": port, "mqtt.qos": 0, "mqtt.queue_size": 10000,
        "source.uri": "replay:demo", "source.realtime": False, "model.path": str(model),
        "runtime.accelerator": "cpu", "runtime.threads": threads, "state_dir": str(state),
        "health.interval_s": 3600,
    })
    t_start = time.monotonic()
    a = Agent(settings)
    a.start()
    a.first_published.wait(30)
    first = time.monotonic() - t_start
    a.stop.wait(0.5)  # warm-up
    st = a.infer_stats
    n0, t0 = st.count, time.perf_counter()
    a.stop.wait(seconds)
    n1, t1 = st.count, time.perf_counter()
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
    print(f"# {os.uname().machine}, {os.cpu_count()} cores, {threads} inference threads, "
          f"{args.runs} runs x {args.seconds:g} s, medians", flush=True)
    print("| model | bare fps | agent fps | agent / bare | added latency p50 ms | added p99 ms | "
          "first prediction s | RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            for m in models:
                b, a = [], []
                for _ in range(args.runs):  # alternate, so drift hits both alike
                    b.append(bare(m, threads, args.seconds))
                    a.append(agent(m, threads, args.seconds, port, Path(tmp) / "state"))
                med = {k: statistics.median(r[k] for r in a) for k in a[0]}
                bf = statistics.median(b)
                print(f"| {m.name} | {bf:.1f} | {med['fps']:.1f} | {med['fps'] / bf:.3f} | {med['added_p50']:.2f} | "
                      f"{med['added_p99']:.2f} | {med['first_s']:.2f} | {med['rss_mb']:.0f} |", flush=True)
        finally:
            broker.terminate()
            broker.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
