#!/usr/bin/env python3
"""Soak: the agent for a long while with the broker restarted every few minutes.

Prints RSS growth and the agent's own memory's (`process.anon_mb`: heap, malloc arenas, stacks, which a
leak moves and the kernel's mapping of the libraries' pages does not), open file descriptors, outbox depth,
produced / delivered counts, and what the agent wrote to storage after warm-up (`process.written_mb`: the
outbox through the outages, its run record, snapshots and clips), per hour: an SD card's wear.
Targets: RSS and own memory growth under 5 MB after warm-up, no descriptor growth, delivered == produced.

With `--scene`, the agent runs BlazeFace on the demo video (faces come and go as it loops) with
tracking, a zone, snapshots and clips on, so objects start and end, events go out, snapshots and
clips are written and the oldest removed, all through the outages; it also prints the object events
delivered. Warm-up then lasts until the clip ring could be full (the longest clip it may hold).

    python benchmarks/soak.py                       # 10 minutes, broker down 10 s every 2 minutes
    python benchmarks/soak.py --minutes 2 --restart-every 40 --outage 5
    python benchmarks/soak.py --scene --minutes 5
"""

from __future__ import annotations

import argparse
import os
import signal
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
from edge_agent.sinks.mqtt import Subscriber  # noqa: E402


def fds(pid: int) -> int:
    """Open descriptors, the fewest of five looks 0.2 s apart: a snapshot or clip being written holds one
    for a moment, which is no leak."""
    counts = []
    for _ in range(5):
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.2)
    return min(counts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--restart-every", type=float, default=120.0, help="seconds between broker outages")
    ap.add_argument("--outage", type=float, default=10.0, help="seconds the broker stays down")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--scene", action="store_true",
                    help="the demo video through BlazeFace with tracking, a zone, snapshots and clips")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work, persistence=True).start()
        port = broker.port
        seqs: list[int] = []
        health: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        stop = threading.Event()
        sub = Subscriber(
            MQTTConfig(host="127.0.0.1", port=port, keepalive_s=5, reconnect_max_s=1),
            ["edge/soak/predictions", "edge/soak/health", "edge/soak/events"],
            client_id="soak-recorder",
            persistent=True,
        )
        assert sub.start(10)

        def record() -> None:
            while not stop.is_set():
                m = sub.get(0.2)
                if m is None:
                    continue
                doc = orjson.loads(m[1])
                if m[0].endswith("/predictions"):
                    seqs.append(doc["seq"])
                elif m[0].endswith("/events"):
                    events.append(doc)
                else:
                    health.append(doc)

        threading.Thread(target=record, daemon=True).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        env.update(
            {
                "EDGE_AGENT_MQTT__HOST": "127.0.0.1",
                "EDGE_AGENT_MQTT__PORT": str(port),
                "EDGE_AGENT_MQTT__KEEPALIVE_S": "5",
                "EDGE_AGENT_MQTT__RECONNECT_MAX_S": "2",
                "EDGE_AGENT_STATE_DIR": str(work / "state"),
                "EDGE_AGENT_HEALTH__INTERVAL_S": "5",
                "EDGE_AGENT_DEVICE_ID": "soak",
                "EDGE_AGENT_LOG_LEVEL": "WARNING",
            }
        )
        command = [sys.executable, "-m", "edge_agent", "run", "--source", "synthetic", "--fps", str(args.fps)]
        warmup = 20.0  # caches, allocator pools
        if args.scene:
            env.update(
                {
                    "EDGE_AGENT_SCENE__ENABLED": "true",
                    "EDGE_AGENT_SCENE__ZONES": '[{"name": "left", "points": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}]',
                    "EDGE_AGENT_SCENE__SNAPSHOTS__KEEP": "20",
                    "EDGE_AGENT_SCENE__CLIPS__ENABLED": "true",
                    "EDGE_AGENT_SCENE__CLIPS__MAX_CLIPS": "5",
                    "EDGE_AGENT_SCENE__CLIPS__MAX_EVENT_S": "30",
                }
            )
            command = [sys.executable, "-m", "edge_agent", "run", "--source", "demo", "--fps", str(args.fps),
                       "--model", str(ROOT / "models" / "face_detection_short_range.tflite")]
            warmup = 30.0 + 2 * 3.0 + 10.0  # the longest clip the ring may hold, its margins, and some
        agent = subprocess.Popen(
            command,
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=(work / "agent.log").open("wb"),
        )
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        while not health and time.monotonic() < t0 + 60:
            stop.wait(0.5)
        stop.wait(warmup)
        base_rss, base_fds = health[-1]["process"]["rss_mb"], fds(agent.pid)
        base_own = health[-1]["process"]["anon_mb"]
        base_written, base_ts = health[-1]["process"]["written_mb"], health[-1]["ts"]
        outages = 0
        next_outage = time.monotonic() + args.restart_every
        while time.monotonic() < end:
            if time.monotonic() >= next_outage:
                broker.stop()
                stop.wait(args.outage)
                broker.start()
                outages += 1
                next_outage = time.monotonic() + args.restart_every
            stop.wait(1)
        stop.wait(15)  # let the last backlog drain
        last = health[-1]
        end_rss, end_fds = last["process"]["rss_mb"], fds(agent.pid)
        end_own = last["process"]["anon_mb"]
        written = last["process"]["written_mb"] - base_written
        per_hour = written / max(1e-9, last["ts"] - base_ts) * 3600
        produced = last["frames"]["inferred"]
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        stop.wait(3)
        stop.set()
        sub.stop()
        broker.stop()
        delivered = len(set(seqs))
        top = max(seqs) if seqs else 0
        outbox = (last["broker"].get("outbox") or {}).get("depth")
        rows = [
            ("duration", f"{args.minutes:g} min, {outages} broker outages of {args.outage:g} s"),
            ("RSS after warm-up -> end", f"{base_rss} -> {end_rss} MB (growth {end_rss - base_rss:+.1f} MB)"),
            ("own memory after warm-up -> end", f"{base_own} -> {end_own} MB (growth {end_own - base_own:+.1f} MB)"),
            ("open descriptors", f"{base_fds} -> {end_fds}"),
            ("outbox depth at end", str(outbox)),
            ("produced (last health) / delivered unique / highest seq", f"{produced} / {delivered} / {top}"),
            ("duplicates", str(len(seqs) - delivered)),
            ("missing seqs below the highest", str(top - delivered)),
            ("written to storage after warm-up", f"{written:.1f} MB ({per_hour:.0f} MB an hour)"),
        ]
        if args.scene:
            unique = {(e.get("boot_id"), e.get("seq")): e for e in events}.values()  # a QoS 1 resend once
            kinds = {k: sum(e.get("type") == k for e in unique) for k in ("new", "update", "end")}
            scene = (last.get("pipelines") or {}).get("default", {}).get("scene") or {}
            clips = scene.get("clips") or {}
            rows += [
                ("object events delivered (new / update / end)",
                 f"{kinds['new']} / {kinds['update']} / {kinds['end']}"),
                ("tracks created / active (last health report)",
                 f"{scene.get('tracks_created')} / {scene.get('active_tracks')}"),
                ("snapshots saved; clips written / dropped", f"{(scene.get('snapshots') or {}).get('saved')}; "
                 f"{clips.get('written')} / {clips.get('dropped')}"),
            ]
        print("| figure | value |\n| --- | --- |")
        for k, v in rows:
            print(f"| {k} | {v} |")
        grown = max(end_rss - base_rss, end_own - base_own)
        ok = grown < 5 and end_fds <= base_fds and top == delivered and delivered >= produced
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
