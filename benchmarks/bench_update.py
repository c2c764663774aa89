#!/usr/bin/env python3
"""Model updates during a 30 fps stream: frames lost, the longest gap, time from push to active.

Pushes `--updates` distinct versions one after another to a running agent (real mosquitto,
real HTTP file server, signed manifests) and reports, per run and at the end: frames lost
(gaps in `seq`), the longest gap between two published predictions around each swap against
the steady-state median gap, push-to-active time, and the agent's RSS and model-store size.

    python benchmarks/bench_update.py --updates 5
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Broker  # noqa: E402
from edge_agent.config import MQTTConfig  # noqa: E402
from edge_agent.fleet import FileServer, build_manifest, push  # noqa: E402
from edge_agent.modelfile import rewrite_model  # noqa: E402
from edge_agent.ota.manifest import load_private_key, write_keypair  # noqa: E402
from edge_agent.sinks.mqtt import Subscriber  # noqa: E402

MODELS = [
    ROOT / "models" / "face_detection_short_range_int8.tflite",
    ROOT / "models" / "face_detection_short_range.tflite",
]


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=5)
    ap.add_argument("--fps", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work).start()
        port = broker.port
        priv, pub = write_keypair(work / "keys")
        key = load_private_key(priv)
        served = work / "served"
        served.mkdir()
        fs = FileServer(served, "127.0.0.1", 0)
        cfg = MQTTConfig(host="127.0.0.1", port=port)
        preds: list[tuple[float, dict[str, Any]]] = []
        health: list[dict[str, Any]] = []
        sub = Subscriber(cfg, ["edge/bench/predictions", "edge/bench/health"])
        assert sub.start(10)
        stop = threading.Event()

        def record() -> None:
            while not stop.is_set():
                m = sub.get(0.1)
                if m is not None:
                    doc = orjson.loads(m[1])
                    (preds.append((time.monotonic(), doc)) if m[0].endswith("predictions") else health.append(doc))

        threading.Thread(target=record, daemon=True).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        env.update(
            {
                "EDGE_AGENT_MQTT__HOST": "127.0.0.1",
                "EDGE_AGENT_MQTT__PORT": str(port),
                "EDGE_AGENT_STATE_DIR": str(work / "state"),
                "EDGE_AGENT_DEVICE_ID": "bench",
                "EDGE_AGENT_OTA__TRUSTED_KEYS": json.dumps([str(pub)]),
                "EDGE_AGENT_HEALTH__INTERVAL_S": "1",
                "EDGE_AGENT_OTA__PROBATION_INFERENCES": "30",
                "EDGE_AGENT_LOG_LEVEL": "WARNING",
            }
        )
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_agent",
                "run",
                "--source",
                "synthetic",
                "--fps",
                str(args.fps),
                "--model",
                str(MODELS[1]),
            ],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=(work / "agent.log").open("wb"),
        )
        while len(preds) < 60:
            stop.wait(0.1)
        rss0 = health[-1]["process"]["rss_mb"] if health else None
        rows = []
        for i in range(args.updates):
            src = MODELS[i % 2].read_bytes()
            variant = served / f"v{i + 1}.tflite"  # a distinct file (and digest) per version
            variant.write_bytes(rewrite_model(src, files={"release.txt": f"{i + 1}".encode()}))
            m = build_manifest(
                variant, i + 1, MODELS[i % 2].stem, [f"http://127.0.0.1:{fs.port}/{variant.name}"], None, 1
            ).signed(key)
            n0 = len(preds)
            t0 = time.monotonic()
            status = push(cfg, m, ["bench"], None, 120, io.StringIO())
            t_active = time.monotonic() - t0
            stop.wait(1.0)
            window = preds[max(0, n0 - 30) :]
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(window)]
            seqs = [d["seq"] for _, d in window]
            lost = (seqs[-1] - seqs[0] + 1) - len(set(seqs))
            rss = health[-1]["process"]["rss_mb"] if health else float("nan")
            rows.append(
                (i + 1, status["bench"]["state"], lost, max(gaps) * 1e3, statistics.median(gaps) * 1e3, t_active, rss)
            )
        stop.wait(2)
        rss1 = health[-1]["process"]["rss_mb"] if health else None
        store = dir_size(work / "state" / "models")
        agent.terminate()
        agent.wait(20)
        stop.set()
        sub.stop()
        fs.close()
        broker.stop()
        print("| update | outcome | frames lost | longest gap ms | median gap ms | push to active s | RSS MB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| v{r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.1f} |")
        print(f"\nRSS {rss0} -> {rss1} MB after {args.updates} updates; model store {store / 2**20:.2f} MiB")
        ok = all(r[1] == "active" and r[2] == 0 for r in rows)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
