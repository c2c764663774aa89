"""Power cuts at random points, on the LazyFS file system (tests/lazyfs.py), for the outbox and the
model store: what each reported durable must be there after the cut.

Two workers run as child processes on the mount, each printing to its stdout (off the mount, so it
survives) what the code under test has reported done:

- `outbox`: batches of results into `Outbox` (commit), some of them delivered and removed (ack);
  prints `stored ID` after a commit that returned on disk, and `acked ID...` once they are
  delivered, before they are removed (delivered results may come back: at least once).
- `store`: what an agent's start decides (`model_for_start`: a probation cut short is rolled back
  and counted), then model versions through `ModelStore` as an update does it (download file,
  install, activate with probation, then pass or roll back); prints each step once it returned.

`run_cuts` arms a cut at a random operation, starts a worker, waits for the cut, kills the worker
(SIGKILL: the process dies with the power), restores power and checks the survivors:
every stored and not acknowledged result is in the outbox, and the model store starts on a
consistent model (state that parses, a current version whose file has its digest, no version below
one that passed probation, never below the highest accepted).

    python -m tests.powercut --cuts 300          # the benchmark count; the suite runs a few dozen
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: operation and kind of file a targeted cut is placed at, per worker
TARGETS = {
    "outbox": ["fsync outbox-wal", "write outbox-db", "fsync outbox-db", "truncate outbox-wal", "write outbox-shm",
               "fsyncdir dir", "create outbox-wal"],
    "store": ["fsync download", "rename download", "fsyncdir dir", "rename model-state", "fsync model-state",
              "write model-state", "rename manifest", "unlink model-blob", "write download"],
}


# --- the mount --------------------------------------------------------------------------------
class LazyMount:
    def __init__(self, mountpoint: Path):
        self.path = mountpoint
        self.control = mountpoint / ".power"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LazyMount:
        self.path.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "lazyfs.py"), str(self.path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"LazyFS did not mount on {self.path}: {err[-500:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False, capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tell(self, cmd: str) -> None:
        with open(self.control, "w") as f:
            f.write(cmd)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.control.read_bytes().strip()))


# --- the workers (child processes) -------------------------------------------------------------
def _say(*words: object) -> None:
    print(*words, flush=True)


def outbox_worker(state: Path, first: int) -> None:
    from edge_agent.outbox import Outbox
    from edge_agent.sinks.base import Message

    ob = Outbox(state / "outbox.db", 1_000_000, "drop_oldest", 0.0)
    rng = random.Random(first)
    n = first
    while True:
        for _ in range(rng.randint(1, 20)):
            # the size of a detection document: the write-ahead log fills and is checkpointed into the database
            ob.put(Message("edge/pc/predictions", str(n).encode().ljust(1500), 1))
            n += 1
        ob.commit()
        if ob.mode != "disk":
            time.sleep(0.01)  # the power is off: the cut is reported; nothing more is durable
            continue
        _say("stored", n - 1)
        if rng.random() < 0.7:  # some delivered (the broker's PUBACK came), then removed: about as many as come in
            rows = ob.peek(rng.randint(1, 30))
            _say("acked", *[int(m.payload) for _, m in rows])
            ob.ack([i for i, _ in rows])


def store_worker(state: Path, first: int) -> None:
    from edge_agent.config import Settings
    from edge_agent.ota.store import ModelStore
    from edge_agent.ota.updater import model_for_start

    store = ModelStore(state / "models", keep=3)
    model_for_start(Settings(), store)  # the start's own bookkeeping (a probation cut short) is cut at too
    rng = random.Random(first)
    v = first
    while True:
        blob = rng.randbytes(rng.randint(1000, 200_000))
        sha = hashlib.sha256(blob).hexdigest()
        part = store.incoming / f"{sha}.part"
        with open(part, "wb") as f:  # as the download writes it: the store must make it durable
            f.write(blob)
        store.install(part, sha, {"name": "m", "version": v, "sha256": sha})
        _say("installed", v)
        store.activate(sha, v, "boot")
        _say("activated", v, sha)
        if rng.random() < 0.3:
            store.rollback("probation failed")
            store.discard(sha)
            _say("rolled_back", v)
        else:
            store.pass_probation()
            _say("passed", v, sha)
        v += 1


# --- checks after a cut ------------------------------------------------------------------------
def check_outbox(state: Path, stored: set[int], acked: set[int]) -> list[str]:
    """Every result stored and not acknowledged is there; the database is intact."""
    path = state / "outbox.db"
    if not path.exists():
        return [f"outbox.db is gone with {len(stored - acked)} stored results"] if stored - acked else []
    db = sqlite3.connect(str(path))
    try:
        ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # cut before its schema was committed: an empty database, as after a first start
        present = {int(p) for (p,) in db.execute("SELECT payload FROM outbox")} if "outbox" in tables else set()
    finally:
        db.close()
    problems = [] if ok == "ok" else [f"integrity_check: {ok}"]
    missing = (stored - acked) - present
    if missing:
        problems.append(f"{len(missing)} stored results lost (e.g. {sorted(missing)[:5]})")
    return problems


def check_store(state: Path, passed: int, activated: int) -> list[str]:
    """The model the agent would start on is whole, and never older than one that passed probation."""
    from edge_agent.config import Settings
    from edge_agent.ota.store import ModelStore
    from edge_agent.ota.updater import model_for_start

    root = state / "models"
    if not root.exists():
        return ["the model store is gone"] if passed else []
    try:
        json.loads((root / "state.json").read_text())
    except FileNotFoundError:
        if passed:
            return [f"state.json is gone although version {passed} passed probation"]
    except ValueError as err:
        return [f"state.json does not parse: {err}"]
    store = ModelStore(root, keep=3)
    cfg, _ = model_for_start(Settings(), store)
    problems = []
    cur = store.state.get("current")
    if cur is None:
        if passed:
            problems.append(f"no current model although version {passed} passed probation")
        return problems
    if cfg.path != store.blob(cur["sha256"]):
        problems.append(f"starts on {cfg.path}, not the current version {cur['version']}")
    elif hashlib.sha256(store.blob(cur["sha256"]).read_bytes()).hexdigest() != cur["sha256"]:
        problems.append(f"the current version {cur['version']}'s file does not have its digest")
    if int(cur["version"]) < passed:
        problems.append(f"current version {cur['version']} is below version {passed}, which passed probation")
    if int(store.state.get("highest_version", 0)) < activated:
        problems.append(f"highest_version {store.state.get('highest_version')} is below {activated}, activated")
    return problems


# --- the harness -------------------------------------------------------------------------------
@contextmanager
def _worker(kind: str, state: Path, first: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.powercut", "--worker", kind, str(state), str(first)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def run_cuts(mount: LazyMount, kind: str, cuts: int, seed: int, max_ops: int) -> dict[str, Any]:
    """`cuts` power cuts at random points of one worker's stream of file operations; after each the
    survivors are checked. Returns the counts, the points covered and the problems found."""
    rng = random.Random(seed)
    state = mount.path / kind
    stored: set[int] = set()
    acked: set[int] = set()
    passed = activated = 0
    first = 1
    problems: list[str] = []
    points: Counter[str] = Counter()
    for i in range(cuts):
        # half the cuts at any operation, half at the n-th of one kind on one kind of file, so that rare
        # ones (an fsync of the directory, a checkpoint into the database) are cut at too
        target = rng.choice(TARGETS[kind]) if rng.random() < 0.5 else ""
        mount.tell(f"arm {rng.randint(1, max_ops if not target else 4)} {target}".strip())
        ops_before = mount.status()["ops"]
        with _worker(kind, state, first) as proc:
            # the clock starts at the worker's first change, not at its spawn: a loaded machine may take
            # longer than the whole window to start Python, and a cut then falls before any operation
            since: float | None = None
            while (st := mount.status())["powered"]:
                if proc.poll() is not None and mount.status()["powered"]:
                    raise RuntimeError(f"{kind} worker ended before the cut (exit {proc.returncode})")
                if since is None and st["ops"] > ops_before:
                    since = time.monotonic()
                if since is not None and time.monotonic() - since > 1.2:  # that operation did not come: cut now
                    mount.tell("cut")
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)  # dies with the power
            out, _ = proc.communicate(timeout=10)
        st = mount.status()
        point = st["point"]
        points[f"{point['op']} {_where(point['path'])}"] += 1
        for line in out.splitlines():
            words = line.split()
            if not words:
                continue
            if words[0] == "stored":
                stored.update(range(first, int(words[1]) + 1))
            elif words[0] == "acked":
                acked.update(int(w) for w in words[1:])
            elif words[0] == "activated":
                activated = max(activated, int(words[1]))
            elif words[0] == "passed":
                passed = max(passed, int(words[1]))
        mount.tell("on")
        found = check_outbox(state, stored, acked) if kind == "outbox" else check_store(state, passed, activated)
        problems += [f"cut {i + 1} at {point['op']} {point['path']}: {p}" for p in found]
        # the next worker numbers on from everything this one may have written
        first = max([first, *stored, *acked, activated]) + 1000
    return {"kind": kind, "cuts": cuts, "points": dict(sorted(points.items())), "problems": problems,
            "stored": len(stored), "acked": len(acked), "passed": passed, "activated": activated}


def _where(path: str | None) -> str:
    from tests.lazyfs import path_class

    return path_class(path)


def main() -> int:
    ap = argparse.ArgumentParser(description="power cuts on LazyFS for the outbox and the model store")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "STATE", "FIRST"), help=argparse.SUPPRESS)
    ap.add_argument("--cuts", type=int, default=300, help="cuts per worker kind")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mount", type=Path, default=Path("/tmp/edge-agent-lazyfs"))
    args = ap.parse_args()
    if args.worker:
        kind, state, first = args.worker
        (outbox_worker if kind == "outbox" else store_worker)(Path(state), int(first))
        return 0
    with LazyMount(args.mount) as mount:
        results = [run_cuts(mount, k, args.cuts, args.seed, ops) for k, ops in (("outbox", 400), ("store", 120))]
    print(json.dumps(results, indent=1))
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
