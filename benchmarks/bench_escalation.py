#!/usr/bin/env python3
"""Hybrid mode end to end: an agent escalating to cloud workers through a real local mosquitto.

The agent runs BlazeFace short range on the demo video; results whose top score falls in the
band go up; two `edge-agent cloud-worker` processes (BlazeFace full range, sharing one
subscription) answer. For each content mode it reports the share of results escalated, bytes per
escalation, the round trip p50/p95 (publish of the escalation to the refined result arriving back
at the agent), answers and timeouts, from the agent's own health report.

    python benchmarks/bench_escalation.py --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Broker  # noqa: E402
from edge_agent.config import MQTTConfig  # noqa: E402
from edge_agent.sinks.mqtt import Subscriber  # noqa: E402

MODELS = ROOT / "models"


def _env(port: int, work: Path, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(EDGE_AGENT_MQTT__PORT=str(port), EDGE_AGENT_STATE_DIR=str(work / name), EDGE_AGENT_LOG_LEVEL="WARNING")
    return env


def run(content: str, seconds: float, fps: float, low: float, high: float, workers: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work).start()
        procs = []
        try:
            for i in range(workers):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "edge_agent",
                            "cloud-worker",
                            "--model",
                            str(MODELS / "face_detection_full_range.tflite"),
                            "--worker-id",
                            f"w{i + 1}",
                        ],
                        env=_env(broker.port, work, f"w{i}"),
                        cwd=ROOT,
                    )
                )
            sub = Subscriber(MQTTConfig(port=broker.port), ["edge/bench/health"])
            sub.start(10)
            time.sleep(1.5)  # workers subscribed before the first escalation
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge_agent",
                    "run",
                    "--device-id",
                    "bench",
                    "--source",
                    "demo",
                    "--fps",
                    str(fps),
                    "--model",
                    str(MODELS / "face_detection_short_range.tflite"),
                    "--seconds",
                    str(seconds),
                    "--set",
                    "escalation.enabled=true",
                    "--set",
                    f"escalation.content={content}",
                    "--set",
                    f"escalation.low={low}",
                    "--set",
                    f"escalation.high={high}",
                    "--set",
                    "escalation.max_per_minute=100000",
                    "--set",
                    "escalation.max_kbytes_per_s=100000",
                    "--set",
                    "health.interval_s=1",
                ],
                env=_env(broker.port, work, "agent"),
                cwd=ROOT,
            )
            procs.append(agent)
            last: dict[str, object] = {}
            while agent.poll() is None:
                m = sub.get(0.5)
                if m is not None:
                    last = json.loads(m[1])
            sub.stop()
            return last.get("escalation", {}) | {"frames": last.get("frames", {})}  # type: ignore[operator]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(10)
            broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--fps", type=float, default=15)
    ap.add_argument("--low", type=float, default=0.5)
    ap.add_argument("--high", type=float, default=0.9)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(
        f"agent: BlazeFace short range on the demo video at {args.fps} fps; band [{args.low}, {args.high}); "
        f"{args.workers} workers with BlazeFace full range; {args.seconds} s per mode\n"
    )
    print(
        "| content | results | escalated | share | bytes / escalation | round trip p50 ms | p95 ms | answered "
        "| timeouts |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for content in ("frame", "crops", "features"):
        e = run(content, args.seconds, args.fps, args.low, args.high, args.workers)
        rtt = e.get("rtt_ms") or {}
        print(
            f"| {content} | {e.get('considered')} | {e.get('sent')} | {e.get('share')} | "
            f"{e.get('bytes_per_escalation')} | {rtt.get('p50', '-')} | {rtt.get('p95', '-')} | "  # type: ignore[union-attr]
            f"{e.get('answered')} | {e.get('timeouts')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
