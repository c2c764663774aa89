#!/usr/bin/env python3
"""What an outage costs the storage: the bytes the process writes (the kernel's `write_bytes`, which
`process.written_mb` reports) to keep the results of a broker outage in the outbox and to remove them
as the broker acknowledges them after it, for the outbox as it is and for one that removes each group
of acknowledgements in a transaction of its own (the outbox before it batched its removals), side by
side in one run, alternated.

The outage: `--seconds` of results at `--fps`, each `--bytes` long, committed once a second (the default
`outbox.flush_interval_s`); the replay: read in batches of 20 at the default `outbox.replay_rate` (200 a
second) and acknowledged `--acks` at a time, as PUBACKs come, with the publisher's periodic
`maybe_commit` between them (no broker: the acknowledgements are what a broker would send).

    python benchmarks/bench_outbox.py
    python benchmarks/bench_outbox.py --seconds 60 --fps 15 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.outbox import Outbox  # noqa: E402
from edge_agent.sinks.base import Message  # noqa: E402


class PerAckOutbox(Outbox):
    """The outbox before it batched its removals: each group of acknowledgements removed at once."""

    def ack(self, ids: list[int]) -> None:
        super().ack(ids)
        self._remove_acked()


def written() -> int:
    return int(psutil.Process().io_counters().write_bytes)


_REPLAY_RATE = 200.0


def outage(kind: type[Outbox], seconds: int, fps: int, size: int, acks: int) -> tuple[int, int]:
    """(bytes written while storing, bytes written while replaying) for one outage."""
    with tempfile.TemporaryDirectory() as tmp:
        ob = kind(Path(tmp) / "outbox.sqlite", 100_000, "drop_oldest", 1.0)
        payload = b"x" * size
        w0 = written()
        for second in range(seconds):
            ob.put_many(Message("edge/d/predictions", payload, 1) for _ in range(fps))
            ob.commit()  # the flush interval's batch
            del second
        w1 = written()
        after = 0
        while rows := ob.peek(20, after):
            time.sleep(len(rows) / _REPLAY_RATE)
            ids = [i for i, _ in rows]
            after = ids[-1]
            for k in range(0, len(ids), acks):
                ob.ack(ids[k:k + acks])
                ob.maybe_commit()
        deadline = time.monotonic() + 1.1  # the last acknowledgements' flush interval
        while time.monotonic() < deadline:
            time.sleep(0.05)
            ob.maybe_commit()
        assert ob.depth() == 0
        ob.close()
        return w1 - w0, written() - w1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=30, help="length of the outage")
    ap.add_argument("--fps", type=int, default=30, help="results a second")
    ap.add_argument("--bytes", type=int, default=400, help="size of one result")
    ap.add_argument("--acks", type=int, default=3, help="acknowledgements taken in at a time")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.seconds * args.fps
    results: dict[str, list[tuple[int, int]]] = {"batched removals (this tree)": [], "a transaction per group": []}
    for _ in range(args.rounds):
        results["batched removals (this tree)"].append(outage(Outbox, args.seconds, args.fps, args.bytes, args.acks))
        results["a transaction per group"].append(outage(PerAckOutbox, args.seconds, args.fps, args.bytes, args.acks))
    print(f"an outage of {args.seconds} s at {args.fps} results/s ({n} results of {args.bytes} B), acknowledged "
          f"{args.acks} at a time; medians of {args.rounds} alternated rounds\n")
    print("| outbox | storing: MB written (B per result) | replay: MB written (B per result) | total MB |")
    print("| --- | --- | --- | --- |")
    totals = {}
    for name, runs in results.items():
        store = statistics.median(r[0] for r in runs)
        replay = statistics.median(r[1] for r in runs)
        totals[name] = store + replay
        print(f"| {name} | {store / 1e6:.2f} ({store / n:.0f}) | {replay / 1e6:.2f} ({replay / n:.0f}) | "
              f"{(store + replay) / 1e6:.2f} |")
    base, new = totals["a transaction per group"], totals["batched removals (this tree)"]
    print(f"\nratio: {base / max(new, 1):.1f}x fewer bytes written with batched removals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
