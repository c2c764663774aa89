"""`edge-agent bench --pipelines 1,2,4`: one agent with N pipelines against N separate agents, side by side.

Every pipeline reads its own copy of the 640x480 MJPG demo video as fast as it goes and publishes to a
real mosquitto. Each variant runs in its own process(es), so peak RSS is its own:
  one       one agent, N pipelines sharing the model (one engine, batched where the model allows)
  separate  N single-pipeline agents at once on the same cores
  stalled   one agent, N pipelines plus one whose camera accepts the connection and never sends a frame
Reported: aggregate and per-pipeline fps, capture-to-publish p50/p99, host CPU per frame, total peak RSS,
and for the one-agent variant its RSS broken down into shared libraries, heap, malloc arenas, the
rest of anonymous memory and thread stacks (from /proc/self/smaps).

`--batch 1,2,4` measures batching instead: one agent, N pipelines on frames already in memory, with
runtime.max_batch at each value: aggregate fps and capture-to-publish latency per model.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from edge_agent.bench import Broker, _peak_rss_mb, _video
from edge_agent.progress import Progress

#: glibc's arena heaps are reserved in blocks of this size (64-bit), aligned to it.
_ARENA_BYTES = 64 * 2**20


# --- in the child ------------------------------------------------------------------------------
def rss_breakdown(smaps: str = "/proc/self/smaps") -> dict[str, float]:
    """Resident MB by kind of mapping: what the agent's own memory is, and what is shared libraries."""
    out = {"shared_libs": 0.0, "other_files": 0.0, "heap": 0.0, "malloc_arenas": 0.0, "anon": 0.0, "stacks": 0.0}
    arenas = 0
    maps: list[tuple[int, int, str, str, float]] = []
    cur: list[Any] | None = None
    with open(smaps) as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = [lo, hi, parts[1], parts[5] if len(parts) > 5 else "", 0.0]
                maps.append(cur)  # type: ignore[arg-type]
            elif parts[0] == "Rss:" and cur is not None:
                cur[4] = int(parts[1]) / 1024.0
    for i, (lo, hi, perms, name, rss) in enumerate(maps):
        if name.endswith(".so") or ".so." in name:
            out["shared_libs"] += rss
        elif name == "[heap]":
            out["heap"] += rss
        elif name.startswith("[stack"):
            out["stacks"] += rss
        elif name.startswith("/"):
            out["other_files"] += rss
        elif name == "":
            nxt = maps[i + 1] if i + 1 < len(maps) else None
            arena = (
                lo % _ARENA_BYTES == 0
                and nxt is not None
                and nxt[0] == hi
                and nxt[2].startswith("---")
                and nxt[1] - lo == _ARENA_BYTES
            )
            if arena:
                arenas += 1
                out["malloc_arenas"] += rss
            elif perms.startswith("---"):
                continue
            elif hi - lo in (8 * 2**20 + 4096, 8 * 2**20):  # a thread's stack (8 MiB and its guard)
                out["stacks"] += rss
            else:
                out["anon"] += rss
    res = {k: round(v, 1) for k, v in out.items()}
    res["arena_count"] = arenas
    res["total"] = round(sum(v for k, v in out.items()), 1)
    # what no other process can share, and what no kernel's way of mapping files changes
    res["own"] = round(out["heap"] + out["malloc_arenas"] + out["anon"] + out["stacks"], 1)
    return res


def mapped_per_fault_kb(path: str | None = None) -> float:
    """KB of a library's pages one read fault maps into a process, as the page cache holds them now. A
    kernel that maps a large folio of the page cache whole at a fault (this VM's Linux 6.18) maps 64 KB
    (fault-around) where the library's pages sit in small folios (the dynamic loader's faults brought
    them in, or a copy wrote them) and 448-840 KB where it was read whole or in order (a backup, `cat`,
    readahead): the same agent's RSS then differs by about 35 MB of libraries' pages, its own memory
    not at all. An average over one fault in each MiB of `path`, in order, OpenCV's library by default
    (the largest the agent maps, 74 MB), not read beforehand: the cache's state as the agent met it
    (where the library is not cached at all, these faults' own readahead brings it in, in large folios)."""
    import ctypes
    import mmap

    import cv2

    target = path or str(Path(cv2.__file__).with_name("cv2.abi3.so"))
    if not Path(target).is_file():
        target = next(str(p) for p in sorted(Path(cv2.__file__).parent.glob("cv2*.so")))
    with open(target, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # private: the address can be taken
    try:
        view = ctypes.c_char.from_buffer(m)
        lo = ctypes.addressof(view)
        del view
        step = 1 << 20
        n = max(1, size // step)
        for k in range(n):
            m[k * step]  # one read fault each, a MiB apart: no fault maps what another did
        with open("/proc/self/smaps") as sm:
            here = False
            for line in sm:
                parts = line.split()
                if "-" in parts[0] and ":" not in parts[0]:
                    here = int(parts[0].split("-")[0], 16) == lo
                elif here and parts[0] == "Rss:":
                    return int(parts[1]) / n
        return 0.0
    finally:
        m.close()


def run_agent(spec: dict[str, Any]) -> dict[str, Any]:
    """One agent with the spec's pipelines, measured for spec['seconds'] after it is warm."""
    from edge_agent.agent import Agent
    from edge_agent.config import load_settings
    from edge_agent.sources import source_class

    sources: list[str] = spec["sources"]
    pipelines: list[dict[str, Any]] = [
        {
            "name": f"p{i}",
            # files as fast as they go (a live camera, such as the stalled one, is never paced by it)
            "source": {"uri": uri, "read_timeout_s": 2.0, "reopen_max_s": 2.0}
            | ({} if source_class(uri).live else {"realtime": False}),
            "model": "m",
        }
        for i, uri in enumerate(sources)
    ]
    over: dict[str, Any] = {
        "mqtt.host": "127.0.0.1",
        "mqtt.port": spec["port"],
        "mqtt.qos": 0,
        "mqtt.queue_size": 10000,
        "runtime.accelerator": spec.get("accelerator", "cpu"),
        "runtime.threads": spec["threads"],
        "runtime.max_batch": spec.get("max_batch", 0),
        "state_dir": spec["state"],
        "health.interval_s": 3600,
        "health.exit_on_stall": False,
        "device_id": spec.get("device_id", "bench"),
    }
    if spec.get("batch_wait_ms") is not None:  # else the setting's default for the accelerator
        over["runtime.batch_wait_ms"] = spec["batch_wait_ms"]
    if "arenas" in spec:
        over["runtime.malloc_arenas"] = spec["arenas"]
    if spec.get("scaled_decode") is not None:  # else the setting's default
        for pipe in pipelines:
            pipe["source"]["scaled_decode"] = spec["scaled_decode"]
    if spec.get("replicas") is not None:  # else the setting's default
        over["runtime.replicas"] = spec["replicas"]
    if spec.get("linger_ms") is not None:  # else the setting's default
        over["mqtt.linger_ms"] = spec["linger_ms"]
    if spec.get("own_process") is not None:  # else the setting's default
        over["runtime.own_process"] = spec["own_process"]
    if spec.get("single"):  # the single-pipeline form, as a separate agent runs it
        over |= {"source": pipelines[0]["source"], "model.path": spec["model"]}
    else:
        over |= {"models": {"m": {"path": spec["model"]}}, "pipelines": pipelines}
    settings = load_settings(None, over)
    a = Agent(settings, sink="mqtt")
    a.start()
    a.first_published.wait(60)
    healthy = [p for p in a.pipelines.values() if p.name not in spec.get("stalled_names", [])]
    deadline = time.monotonic() + 30  # every healthy pipeline has published before the clock starts
    while time.monotonic() < deadline and not all(p.post_stats.count for p in healthy):
        a.stop.wait(0.05)
    a.stop.wait(spec.get("warmup", 1.0))
    _meet(spec.get("meet"), spec.get("parties", 1), a.stop)
    for p in healthy:
        p.infer_stats.latency = {}
    n0 = {p.name: p.post_stats.count for p in healthy}
    stalled = tuple(f"{name}-" for name in spec.get("stalled_names", []))
    own = _ThreadCpu(stalled)
    t0, c0, w0 = time.perf_counter(), time.process_time(), _worker_cpu_s()
    end = time.monotonic() + spec["seconds"]
    while not a.stop.wait(max(0.0, min(0.1, end - time.monotonic()))) and time.monotonic() < end:
        own.sample()
    own.sample()
    n1 = {p.name: p.post_stats.count for p in healthy}
    t1, c1, w1 = time.perf_counter(), time.process_time(), _worker_cpu_s()
    lat = {p.name: (p.infer_stats.latency.get("capture_to_publish") or _Empty()).percentiles() or {} for p in healthy}
    engines = [e.info() for e in a.pool.engines()]
    sink: Any = a.sink
    sent, rounds = getattr(sink, "sent", 0), getattr(sink, "rounds", 0)  # the MQTT sink's, from its start
    scales = {p.name: getattr(getattr(p, "capture", None), "decode_scale", 1) for p in healthy}
    breakdown = rss_breakdown()
    workers = psutil.Process().children(recursive=True)  # backends in processes of their own
    worker_mem = [_mem_mb(w) for w in workers]
    a.shutdown(5)
    frames = sum(n1[k] - n0[k] for k in n1)
    wall = t1 - t0
    return {
        "fps": {k: (n1[k] - n0[k]) / wall for k in n1},
        "frames": frames,
        "cpu_s": c1 - c0 + sum(s - w0.get(pid, 0.0) for pid, s in w1.items()),
        "stalled_cpu_s": own.total,
        "wall_s": wall,
        "c2p": lat,
        "engines": engines,
        "decode_scales": scales,
        "linger_ms": settings.mqtt.linger_ms,
        "messages_per_round": sent / rounds if rounds else 0.0,
        "rss_breakdown": breakdown,
        "workers": len(workers),
        "worker_rss_mb": round(sum(m[0] for m in worker_mem), 1),
        "worker_uss_mb": round(sum(m[1] for m in worker_mem), 1),
    }


class _ThreadCpu:
    """CPU seconds of this process's threads whose names start with one of `prefixes` (a pipeline's
    threads: its name, then the stage), from /proc, sampled so that a thread that ends meanwhile (a
    camera's reader after a failed open) is counted up to its last sample: a stalled camera's own cost,
    which the others' frame rates show only through this machine's noise."""

    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes
        self.total = 0.0
        self._last: dict[int, float] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self.sample(count=False)

    def sample(self, count: bool = True) -> None:
        if not self.prefixes:
            return
        for t in threading.enumerate():
            if not t.name.startswith(self.prefixes) or t.native_id is None:
                continue
            try:
                with open(f"/proc/self/task/{t.native_id}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime (fields 14 and 15 of stat)
            prev = self._last.get(t.native_id, 0.0)  # a thread started since the last sample: all of it
            if count:
                self.total += cpu - prev if cpu >= prev else cpu  # (less: a new thread with an ended one's id)
            self._last[t.native_id] = cpu


def _meet(where: str | None, parties: int, stop: threading.Event) -> None:
    """Separate agents start their measured windows together: each, once warm, leaves a file in `where`
    and waits for the others'. Started apart, one agent's window took in another's start-up (loading,
    timing its threads) or its end, so the sum of their rates was no one moment's: four agents measured
    that way summed to 2.05 cores of CPU a second on a machine of two."""
    if not where or parties <= 1:
        return
    meet = Path(where)
    (meet / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while sum(1 for _ in meet.iterdir()) < parties and time.monotonic() < deadline and not stop.wait(0.002):
        pass


def _worker_cpu_s() -> dict[int, float]:
    """CPU seconds of each backend run in a process of its own: counted in the agent's CPU per frame."""
    out = {}
    for w in psutil.Process().children(recursive=True):
        try:
            t = w.cpu_times()
            out[w.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def _mem_mb(p: psutil.Process) -> tuple[float, float]:
    """A child's resident memory and the part of it that is its own alone (USS: a GPU driver's code is
    resident in every process that maps it, but held once)."""
    try:
        m = p.memory_full_info()
        return float(m.rss) / 2**20, float(m.uss) / 2**20
    except psutil.Error:  # gone meanwhile
        return 0.0, 0.0


class _Empty:
    def percentiles(self) -> None:
        return None


# --- in the parent -----------------------------------------------------------------------------
def chosen_threads(model: Path) -> int:
    """The thread count the agent would choose for the model (timed once, here), so that every variant
    runs it the same: separate agents with fresh state directories would each time it on their own."""
    import tempfile as _tf

    from edge_agent.bench import reference_input
    from edge_agent.modelfile import read_model_file
    from edge_agent.runtime.cpu import default_threads
    from edge_agent.runtime.select import ProbeCache, tune_threads

    cores = default_threads()
    if cores == 1:
        return 1
    with _tf.TemporaryDirectory() as tmp:
        x = reference_input(model, Path(tmp) / "x.npy")
    res = tune_threads(model, read_model_file(model).sha256, [x], cores, ProbeCache(None))
    return res.threads or cores


def _spawn(spec: dict[str, Any]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent.bench_pipelines", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _collect(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"benchmark child failed: {stderr.strip()[-600:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


class SilentCamera:
    """A TCP server that takes a camera's connection and never sends a byte: a stalled network camera."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def close(self) -> None:
        self._stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


def _summary(results: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    fps = {f"{i}.{k}" if len(results) > 1 else k: v for i, r in enumerate(results) for k, v in r["fps"].items()}
    frames = sum(r["frames"] for r in results)
    cpu_s = sum(r["cpu_s"] for r in results)
    p50s = [c.get("p50", 0.0) for r in results for c in r["c2p"].values() if c]
    p99s = [c.get("p99", 0.0) for r in results for c in r["c2p"].values() if c]
    per = list(fps.values())
    return {
        "aggregate_fps": sum(per),
        "per_pipeline_fps": per,
        "spread": (max(per) - min(per)) / max(per) if per and max(per) > 0 else 0.0,
        "c2p_p50_ms": statistics.median(p50s) if p50s else 0.0,
        "c2p_p99_ms": max(p99s) if p99s else 0.0,
        "cpu_ms_per_frame": cpu_s / max(1, frames) * 1e3,
        # a stalled camera's threads' own CPU, of all the agent's (none but in the stalled variant)
        "stalled_cpu_share": sum(r.get("stalled_cpu_s", 0.0) for r in results) / max(1e-9, cpu_s),
        "peak_rss_mb": peak,
        "engines": [e for r in results for e in r["engines"]],
        "rss_breakdown": results[0]["rss_breakdown"] if len(results) == 1 else None,
        "worker_rss_mb": sum(r.get("worker_rss_mb", 0.0) for r in results),
        "worker_uss_mb": sum(r.get("worker_uss_mb", 0.0) for r in results),
    }


def compare_pipelines(
    model: Path,
    counts: list[int],
    seconds: float,
    runs: int,
    threads: int,
    out: Any,
    max_batch: int = 0,
    batch_wait_ms: float | None = None,
    arenas: int | None = None,
    own_process: bool | None = None,
    accelerator: str = "cpu",
) -> list[dict[str, Any]]:
    """For each N: one agent with N pipelines, N separate agents, and one agent with N pipelines and a
    stalled camera beside them; runs alternate so drift hits every variant alike; medians per figure.
    `batch_wait_ms` None: the setting's default for the accelerator. On a GPU each separate agent opens
    the accelerator itself, as separate processes would."""
    rows: list[dict[str, Any]] = []
    threads = threads or (chosen_threads(model) if accelerator == "cpu" else 0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work).start()
        cam = SilentCamera()
        copies = []
        for i in range(max(counts)):
            dst = work / f"demo-{i}.avi"
            shutil.copyfile(_video(), dst)
            copies.append(str(dst))
        try:
            base = {"model": str(model), "threads": threads, "seconds": seconds, "port": broker.port,
                    "max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "own_process": own_process,
                    "accelerator": accelerator, **({"arenas": arenas} if arenas is not None else {})}
            variants = ("one", "separate", "stalled")
            with Progress("pipelines", len(counts) * runs * len(variants), "runs") as bar:
                res: dict[tuple[int, str], list[dict[str, Any]]] = {}
                for k in range(runs):
                    for n in counts:
                        # the order turns each round, so that no variant always runs right after another
                        for v in variants[k % 3 :] + variants[: k % 3]:
                            res.setdefault((n, v), []).append(_variant(v, n, base, copies, cam, work))
                            bar.update()
            for n in counts:
                row: dict[str, Any] = {"model": model.name, "pipelines": n, "accelerator": accelerator}
                for v in variants:
                    row[v] = _median_summary(res[(n, v)])
                # what each variant's engines ran on: a GPU that fell back to the CPU shows here
                row["ran_on"] = sorted({e["accelerator"] for d in res[(n, "one")] + res[(n, "separate")]
                                        for e in d["engines"]})
                one, sep, stalled = row["one"], row["separate"], row["stalled"]
                row["one_vs_separate_fps"] = one["aggregate_fps"] / sep["aggregate_fps"]
                row["stalled_cost"] = 1 - stalled["aggregate_fps"] / one["aggregate_fps"]
                # the same two figures within each round (runs a minute apart at most), then their median:
                # drift of the machine over the whole comparison cancels out
                fps = {v: [d["aggregate_fps"] for d in res[(n, v)]] for v in variants}
                row["one_vs_separate_by_round"] = [o / s for o, s in zip(fps["one"], fps["separate"], strict=True)]
                row["stalled_cost_by_round"] = [1 - s / o for o, s in zip(fps["one"], fps["stalled"], strict=True)]
                # what the stalled camera costs in the agent's own CPU, free of the machine's noise
                row["stalled_cpu_share_by_round"] = [d["stalled_cpu_share"] for d in res[(n, "stalled")]]
                rows.append(row)
                print(pipelines_row(row), file=out, flush=True)
        finally:
            cam.close()
            broker.stop()
    if rows:
        alone = next((r for r in rows if r["pipelines"] == 1), rows[0])["one"]
        single, own = alone["peak_rss_mb"], alone["rss_breakdown"]["own"]
        per_fault = round(mapped_per_fault_kb(), 1)
        for r in rows:
            r["rss_vs_single"] = r["one"]["peak_rss_mb"] / single
            r["own_vs_single"] = r["one"]["rss_breakdown"]["own"] / own
            r["mapped_per_fault_kb"] = per_fault
    return rows


def _variant(v: str, n: int, base: dict[str, Any], copies: list[str], cam: SilentCamera, work: Path) -> dict[str, Any]:
    timeout = base["seconds"] * 4 + 120
    if v == "separate":
        meet = Path(tempfile.mkdtemp(prefix="meet-", dir=work))
        specs = [
            {**base, "sources": [copies[i]], "single": True, "state": str(work / f"state-sep-{i}"),
             "device_id": f"sep{i}", "meet": str(meet), "parties": n}
            for i in range(n)
        ]
        results = _collect([_spawn(s) for s in specs], timeout)
        return _summary(results, sum(r["peak_rss_mb"] for r in results))
    sources = copies[:n] + ([cam.uri] if v == "stalled" else [])
    spec = {**base, "sources": sources, "state": str(work / f"state-{v}"), "stalled_names": [f"p{n}"],
            "single": n == 1 and v == "one"}
    r = _collect([_spawn(spec)], timeout)[0]
    return _summary([r], r["peak_rss_mb"])


def _median_summary(docs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(docs[len(docs) // 2])
    for k in ("aggregate_fps", "spread", "c2p_p50_ms", "c2p_p99_ms", "cpu_ms_per_frame", "peak_rss_mb",
              "stalled_cpu_share"):
        out[k] = statistics.median(d[k] for d in docs)
    out["peak_rss_runs"] = [d["peak_rss_mb"] for d in docs]
    return out


PIPELINES_HEADER = (
    "| model | N | one agent fps (per pipeline) | N agents fps | one / N agents | spread | c2p p50 / p99 ms one | "
    "c2p p50 / p99 ms N agents | CPU ms/frame one / N agents | peak RSS MB one / N agents | stalled costs |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def pipelines_row(r: dict[str, Any]) -> str:
    o, s = r["one"], r["separate"]
    per = ", ".join(f"{x:.1f}" for x in o["per_pipeline_fps"])
    apart = o.get("worker_uss_mb") or 0.0  # runtime.own_process: the model's processes, their own memory
    rss = f"{o['peak_rss_mb']:.0f}" + (f" + {apart:.0f} in model processes" if apart else "")
    return (
        f"| {r['model']} | {r['pipelines']} | {o['aggregate_fps']:.1f} ({per}) | {s['aggregate_fps']:.1f} | "
        f"{r['one_vs_separate_fps']:.2f} | {o['spread']:.1%} | {o['c2p_p50_ms']:.1f} / {o['c2p_p99_ms']:.1f} | "
        f"{s['c2p_p50_ms']:.1f} / {s['c2p_p99_ms']:.1f} | {o['cpu_ms_per_frame']:.2f} / {s['cpu_ms_per_frame']:.2f} | "
        f"{rss} / {s['peak_rss_mb']:.0f} | {r['stalled_cost']:.1%} |"
    )


def compare_batches(
    models: list[Path], n: int, batches: list[int], seconds: float, runs: int, threads: int, out: Any,
    accelerator: str = "cpu",
    batch_wait_ms: float | None = None,
    own_process: bool | None = None,
    warmup: float = 1.0,
) -> list[dict[str, Any]]:
    """One agent, n pipelines on in-memory frames, runtime.max_batch at each value (`own_process`:
    runtime.own_process, None for its default), measured `warmup` seconds after every pipeline has
    published (an accelerator's batch size is opened meanwhile)."""
    wait = batch_wait_ms  # None: the setting's default for the accelerator
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work).start()
        try:
            with Progress("batching", len(models) * runs * len(batches), "runs") as bar:
                for m in models:
                    res: dict[int, list[dict[str, Any]]] = {b: [] for b in batches}
                    t_m = threads or (chosen_threads(m) if accelerator == "cpu" else 0)
                    for _ in range(runs):
                        for b in batches:
                            spec = {"model": str(m), "threads": t_m, "seconds": seconds, "port": broker.port,
                                    "sources": ["replay:demo"] * n, "max_batch": b, "batch_wait_ms": wait,
                                    "state": str(work / "state"), "accelerator": accelerator,
                                    "own_process": own_process, "warmup": warmup}
                            timeout = seconds * 4 + 120
                            r = _collect([_spawn(spec)], timeout)[0]
                            res[b].append(_summary([r], r["peak_rss_mb"]))
                            bar.update()
                    for b in batches:
                        s = _median_summary(res[b])
                        eng = s["engines"][0] if s["engines"] else {}
                        row = {"model": m.name, "pipelines": n, "max_batch": b, "batch_wait_ms": wait,
                               "accelerator": accelerator, "own_process": own_process,
                               "peak_rss_mb": s["peak_rss_mb"], "worker_rss_mb": s.get("worker_rss_mb"),
                               "worker_uss_mb": s.get("worker_uss_mb"),
                               "aggregate_fps": s["aggregate_fps"], "c2p_p50_ms": s["c2p_p50_ms"],
                               "c2p_p99_ms": s["c2p_p99_ms"], "cpu_ms_per_frame": s["cpu_ms_per_frame"],
                               "batches": eng.get("batches"), "batching": eng.get("batching")}
                        row["vs_batch_1"] = row["aggregate_fps"] / statistics.median(
                            x["aggregate_fps"] for x in res[batches[0]]
                        )
                        rows.append(row)
                        print(batch_row(row), file=out, flush=True)
        finally:
            broker.stop()
    return rows


def _alternate(
    models: list[Path], n: int, seconds: float, runs: int, threads: int, what: str, variants: dict[Any, dict[str, Any]]
) -> Iterator[tuple[Path, dict[Any, list[dict[str, Any]]]]]:
    """One agent, n pipelines each on its own copy of the demo video (Motion JPEG, 640x480, read as fast
    as it goes), in each of `variants` (settings added to the spec); the variants alternate, their order
    turning each round, so that drift hits each alike. Yields each model's runs per variant."""
    keys = list(variants)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work).start()
        copies = []
        for i in range(n):
            dst = work / f"demo-{i}.avi"
            shutil.copyfile(_video(), dst)
            copies.append(str(dst))
        try:
            with Progress(what, len(models) * runs * len(keys), "runs") as bar:
                for m in models:
                    res: dict[Any, list[dict[str, Any]]] = {v: [] for v in keys}
                    t_m = threads or chosen_threads(m)
                    for k in range(runs):
                        for v in keys[k % len(keys) :] + keys[: k % len(keys)]:
                            spec = {"model": str(m), "threads": t_m, "seconds": seconds, "port": broker.port,
                                    "sources": copies, "state": str(work / "state"), **variants[v]}
                            res[v].append(_collect([_spawn(spec)], seconds * 4 + 120)[0])
                            bar.update()
                    yield m, res
        finally:
            broker.stop()


def _versus(m: Path, n: int, runs: list[dict[str, Any]], first: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's medians, and its aggregate rate against the first variant's, median and round by round."""
    mine = [_summary([r], r["peak_rss_mb"]) for r in runs]
    base = [_summary([r], r["peak_rss_mb"])["aggregate_fps"] for r in first]
    s = _median_summary(mine)
    return {"model": m.name, "pipelines": n, "aggregate_fps": s["aggregate_fps"], "c2p_p50_ms": s["c2p_p50_ms"],
            "c2p_p99_ms": s["c2p_p99_ms"], "cpu_ms_per_frame": s["cpu_ms_per_frame"],
            "peak_rss_mb": s["peak_rss_mb"], "vs_first": s["aggregate_fps"] / statistics.median(base),
            "vs_first_by_round": [x["aggregate_fps"] / b for x, b in zip(mine, base, strict=True)]}


def _compare(
    models: list[Path], n: int, seconds: float, runs: int, threads: int, out: Any, what: str,
    variants: dict[Any, dict[str, Any]], extra: Callable[[Any, list[dict[str, Any]]], dict[str, Any]],
    row: Callable[[dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """Each model in each of `variants`, alternated (`_alternate`): a row per variant with its medians
    against the first variant's (`_versus`) and what `extra` makes of its runs, printed by `row` as each
    model is done."""
    rows = []
    first = next(iter(variants))
    for m, res in _alternate(models, n, seconds, runs, threads, what, variants):
        for v in variants:
            r = {**_versus(m, n, res[v], res[first]), **extra(v, res[v])}
            rows.append(r)
            print(row(r), file=out, flush=True)
    return rows


def compare_decode(
    models: list[Path], n: int, seconds: float, runs: int, threads: int, out: Any
) -> list[dict[str, Any]]:
    """One agent with n pipelines, every frame decoded whole against decoded at the scale the model needs
    (`source.scaled_decode`); medians per figure."""
    return _compare(
        models, n, seconds, runs, threads, out, "decoding",
        {False: {"scaled_decode": False}, True: {"scaled_decode": True}},
        lambda v, rs: {"scaled_decode": v,
                       "decode_scale": max((s for r in rs for s in r["decode_scales"].values()), default=1)},
        decode_row,
    )


def compare_replicas(
    models: list[Path], n: int, seconds: float, runs: int, threads: int, out: Any
) -> list[dict[str, Any]]:
    """One agent with n pipelines sharing one model on the CPU: one interpreter per core, fixed
    (`runtime.replicas` set to the cores), against the default, which opens one more each time a frame
    finds every one busy (up to one per pipeline and twice the cores); medians per figure."""
    from edge_agent.runtime.cpu import default_threads

    return _compare(
        models, n, seconds, runs, threads, out, "replicas",
        {"per core": {"replicas": default_threads()}, "grown": {"replicas": 0}},
        lambda v, rs: {"replicas": v,
                       "interpreters": max((e["interpreters"] for r in rs for e in r["engines"]), default=0)},
        replicas_row,
    )


def compare_linger(
    models: list[Path], n: int, seconds: float, runs: int, threads: int, out: Any
) -> list[dict[str, Any]]:
    """One agent with n pipelines publishing every result to a real mosquitto: the MQTT publisher woken for
    each message (`mqtt.linger_ms` 0) against gathering them for the setting's default; medians per
    figure, and how many messages each of the publisher's rounds took."""
    from edge_agent.config import MQTTConfig

    default = MQTTConfig().linger_ms
    return _compare(
        models, n, seconds, runs, threads, out, "linger", {0.0: {"linger_ms": 0.0}, default: {"linger_ms": default}},
        lambda v, rs: {"linger_ms": statistics.median(r["linger_ms"] for r in rs),
                       "messages_per_round": statistics.median(r["messages_per_round"] for r in rs)},
        linger_row,
    )


LINGER_HEADER = (
    "| model | pipelines | mqtt.linger_ms | aggregate fps | vs 0 (round by round) | messages per publisher round "
    "| c2p p50 / p99 ms | CPU ms/frame |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _fps_vs_first(r: dict[str, Any]) -> str:
    """The cells every `_compare` table has: aggregate fps | against the first variant (round by round)."""
    rounds = ", ".join(f"{x:.2f}" for x in r["vs_first_by_round"])
    return f"{r['aggregate_fps']:.1f} | {r['vs_first']:.2f} ({rounds})"


def _latency_cpu(r: dict[str, Any]) -> str:
    return f"{r['c2p_p50_ms']:.1f} / {r['c2p_p99_ms']:.1f} | {r['cpu_ms_per_frame']:.2f}"


def linger_row(r: dict[str, Any]) -> str:
    return (f"| {r['model']} | {r['pipelines']} | {r['linger_ms']:g} | {_fps_vs_first(r)} | "
            f"{r['messages_per_round']:.2f} | {_latency_cpu(r)} |")


DECODE_HEADER = (
    "| model | pipelines | decoded at | aggregate fps | vs whole (round by round) | c2p p50 / p99 ms | CPU ms/frame |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def decode_row(r: dict[str, Any]) -> str:
    at = f"1/{r['decode_scale']} (scaled_decode on)" if r["scaled_decode"] else "whole (scaled_decode off)"
    return f"| {r['model']} | {r['pipelines']} | {at} | {_fps_vs_first(r)} | {_latency_cpu(r)} |"


REPLICAS_HEADER = (
    "| model | pipelines | CPU interpreters | aggregate fps | vs one per core (round by round) | c2p p50 / p99 ms "
    "| CPU ms/frame | peak RSS MB |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def replicas_row(r: dict[str, Any]) -> str:
    return (f"| {r['model']} | {r['pipelines']} | {r['interpreters']} ({r['replicas']}) | {_fps_vs_first(r)} | "
            f"{_latency_cpu(r)} | {r['peak_rss_mb']:.1f} |")


BATCH_HEADER = (
    "| model | pipelines | max_batch | aggregate fps | vs first | c2p p50 / p99 ms | CPU ms/frame | batches used "
    "| batching |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def batch_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['model']} | {r['pipelines']} | {r['max_batch']} | {r['aggregate_fps']:.1f} | {r['vs_batch_1']:.2f} | "
        f"{r['c2p_p50_ms']:.1f} / {r['c2p_p99_ms']:.1f} | {r['cpu_ms_per_frame']:.2f} | {r['batches']} | "
        f"{r['batching']} |"
    )


if __name__ == "__main__":  # a child of compare_pipelines / compare_batches
    result = run_agent(json.loads(sys.argv[1]))
    print(json.dumps({**result, "peak_rss_mb": round(_peak_rss_mb(), 1)}), flush=True)
    # the stalled camera's reader may still be inside FFmpeg's open: leave without running C++ destructors
    os._exit(0)
