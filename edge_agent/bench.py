"""`edge-agent bench`: the agent against the bare runtime, side by side, each variant in its own process.

Variants, on the same model, threads and accelerator:
  bare    a loop doing nothing but `invoke()` (the limit)
  decode  decoding and resizing the MJPG video alone (what a decoded source costs the CPU)
  naive   read, decode, resize, normalise, invoke, serialise, publish (blocking), one after another
  memory  the agent end to end to a real mosquitto on frames already decoded in memory
  local   the same with results kept in memory instead of published (what MQTT costs, by difference)
  video   the agent end to end on the MJPG video (decoding included)

Each runs in a child process, so its peak RSS is its own, and the parent only collects the JSON the
child prints. The CPU-budget limit for a decoded source is cores / (CPU s per invoke + CPU s per
decode and resize), both measured in the same run, and never more than the bare loop.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.progress import Progress

VARIANTS = ("bare", "decode", "naive", "memory", "local", "video")
#: The demo-video frame the bare loop invokes on (one with a face in it).
REFERENCE_FRAME = 40


def _peak_rss_mb() -> float:
    """This process's own peak: VmHWM starts afresh at exec, while getrusage's ru_maxrss keeps the
    peak of the parent that forked it (so a small child would report the parent's size)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _video() -> Path:
    from edge_agent.sources import demo_video_path

    return demo_video_path()


def demo_frames(n: int) -> list[Any]:
    """The first n frames of the demo video, decoded (BGR)."""
    import cv2

    cap = cv2.VideoCapture(str(_video()))
    frames: list[Any] = []
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def agreement(a: Any, b: Any, frames: list[Any], names: tuple[str, str] = ("a", "b")) -> dict[str, Any]:
    """How two models' (or backends') decoded results compare on the same frames.

    Detections are matched greedily by IoU (>= 0.5, same label); classifications by top-1 class.
    Raw tensors are not compared: a GPU in half precision moves raw box regressors noticeably
    while the boxes it decodes to stay put.
    """
    import numpy as np

    from edge_agent.postprocess.geometry import iou_one_to_many

    ious, dscore, missing, extra, top1 = [], [], 0, 0, []
    for f in frames:
        ra, rb = a.infer(f).result, b.infer(f).result
        if ra.task == "classification":
            top1.append(bool(ra.classes and rb.classes and ra.classes[0].index == rb.classes[0].index))
            continue
        left = list(rb.detections)
        for d in ra.detections:
            same = [e for e in left if e.index == d.index]
            if not same:
                missing += 1
                continue
            o = iou_one_to_many(np.array(d.box), np.array([e.box for e in same]))
            j = int(np.argmax(o))
            if o[j] < 0.5:
                missing += 1
                continue
            ious.append(float(o[j]))
            dscore.append(abs(d.score - same[j].score))
            left.remove(same[j])
        extra += len(left)
    if top1:
        return {"frames": len(frames), "top1_agreement": round(float(np.mean(top1)), 4)}
    return {
        "frames": len(frames),
        "matched": len(ious),
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "min_iou": round(float(np.min(ious)), 4) if ious else None,
        "mean_score_diff": round(float(np.mean(dscore)), 4) if dscore else None,
        f"only_{names[0]}": missing,
        f"only_{names[1]}": extra,
    }


def reference_input(model: Path, out: Path) -> Any:
    """A demo-video frame preprocessed as the agent does it, saved for the bare loop.

    The bare loop must invoke on real data: int8 kernels outside XNNPACK run much faster on an
    all-zero input (the int8 BlazeFace took 2.1 ms on zeros and 3.7 ms on a real frame here), so
    a zero-filled input would set a limit no pipeline on a camera can reach.
    """
    import cv2
    import numpy as np

    from edge_agent.config import load_settings
    from edge_agent.model import Model

    s = load_settings(None, {"model.path": str(model), "runtime.accelerator": "cpu", "runtime.threads": 1})
    m = Model(s.model, s.runtime, None)
    try:
        cap = cv2.VideoCapture(str(_video()))
        for _ in range(REFERENCE_FRAME):
            cap.grab()
        ok, frame = cap.read()
        cap.release()
        if not ok or m.pre is None:
            raise RuntimeError(f"no reference frame for {model.name}")
        x = np.zeros(m.inputs[0].shape, m.inputs[0].dtype)
        m.pre(frame, x)
        np.save(out, x)
        return x
    finally:
        m.close()


def bare(
    model: Path, threads: int, seconds: float, reference: Path | None = None, accelerator: str = "cpu"
) -> dict[str, float]:
    import numpy as np

    from edge_agent.runtime.registry import open_backend

    be = open_backend(accelerator, model, threads)
    if reference is not None:
        x = np.load(reference)
        be.write_input(0, lambda v: np.copyto(v, x.reshape(v.shape)))
    be.invoke()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        be.invoke()
        n += 1
    out = {"fps": n / (time.perf_counter() - t0), "cpu_s": (time.process_time() - c0) / n}
    # what the loop above leaves out: taking the outputs back after each invoke, which every real use does
    # (on a GPU, a copy back to the host that waits for the run to finish)
    reads = []
    for _ in range(max(5, min(200, n // 10))):
        be.invoke()
        t = time.perf_counter()
        for i in range(len(be.outputs)):
            be.output(i)
        reads.append(time.perf_counter() - t)
    out["read_ms"] = statistics.median(reads) * 1e3
    be.close()
    return out


def decode(model: Path, seconds: float) -> dict[str, float]:
    """CPU seconds per frame to decode the MJPG video and resize it to the model's input."""
    import cv2

    from edge_agent.runtime.cpu import InterpreterBackend

    be = InterpreterBackend(model, 1)
    h, w = be.inputs[0].shape[1], be.inputs[0].shape[2]
    be.close()
    cap = cv2.VideoCapture(str(_video()))
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        ok, frame = cap.read()
        if not ok:
            cap = cv2.VideoCapture(str(_video()))
            continue
        cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        n += 1
    return {"fps": n / (time.perf_counter() - t0), "cpu_s": (time.process_time() - c0) / max(1, n)}


def naive(model: Path, threads: int, seconds: float, port: int) -> dict[str, float]:
    import cv2
    import numpy as np
    import orjson

    from edge_agent.config import MQTTConfig
    from edge_agent.runtime.cpu import InterpreterBackend
    from edge_agent.sinks.mqtt import Subscriber

    pub = Subscriber(MQTTConfig(host="127.0.0.1", port=port), [], client_id=f"naive-{os.getpid()}")
    if not pub.start(10):
        raise RuntimeError("no broker")
    be = InterpreterBackend(model, threads)
    spec = be.inputs[0]
    h, w = spec.shape[1], spec.shape[2]
    cap = cv2.VideoCapture(str(_video()))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ok, frame = cap.read()
        if not ok:
            cap = cv2.VideoCapture(str(_video()))
            continue
        rgb = cv2.cvtColor(cv2.resize(frame, (w, h)), cv2.COLOR_BGR2RGB)
        # raw pixels for a uint8 model, [-1, 1] otherwise (quantized for an int8 one), as a user would write it
        x = rgb if spec.dtype == np.uint8 else spec.quantize((rgb.astype(np.float32) - 127.5) / 127.5)
        outs = be.run([x[None]])
        doc = {"ts": time.time(), "outputs": [float(o.max()) for o in outs]}
        pub.publish("bench/naive/predictions", orjson.dumps(doc), qos=0)
        n += 1
    fps = n / (time.perf_counter() - t0)
    pub.stop()
    be.close()
    return {"fps": fps}


def agent(
    model: Path,
    threads: int,
    seconds: float,
    port: int,
    state: Path,
    source: str,
    sink: str = "mqtt",
    accelerator: str = "cpu",
) -> dict[str, Any]:
    from edge_agent.agent import Agent
    from edge_agent.config import load_settings

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
            "runtime.accelerator": accelerator,
            "runtime.threads": threads,
            "state_dir": str(state),
            "health.interval_s": 3600,
        },
    )
    t_start = time.monotonic()
    a = Agent(settings, sink=sink)
    a.start()
    a.first_published.wait(30)
    first = time.monotonic() - t_start
    a.stop.wait(0.5)  # warm-up
    st = next(iter(a.pipelines.values())).infer_stats
    n0, t0, c0, th0 = st.count, time.perf_counter(), time.process_time(), _thread_cpu_s()
    a.stop.wait(seconds)
    n1, t1, c1, th1 = st.count, time.perf_counter(), time.process_time(), _thread_cpu_s()
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    selected = a.model.runtime.backend.description if a.model is not None else ""
    lat = {k: v or {} for k, v in st.percentiles().items()}
    a.shutdown(5)
    c2p, inf = lat.get("capture_to_publish", {}), lat.get("inference", {})
    return {
        "fps": (n1 - n0) / (t1 - t0),
        "c2p_ms": c2p,
        "preprocess_ms": (lat.get("preprocess") or {}).get("p50", 0.0),
        "added_p50": c2p.get("p50", 0) - inf.get("p50", 0),
        "added_p99": c2p.get("p99", 0) - inf.get("p99", 0),
        "first_s": first,
        "cpu_s": (c1 - c0) / max(1, n1 - n0),
        "cpu_ms_by_thread": _per_frame_by_thread(th0, th1, max(1, n1 - n0), names),
        "backend": selected,
    }


def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds per thread of this process (native id -> user + system)."""
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}


def _per_frame_by_thread(
    before: dict[int, float], after: dict[int, float], frames: int, names: dict[int, str]
) -> dict[str, float]:
    """CPU ms per frame by thread name; threads not started from Python (XNNPACK's workers) are `native`."""
    out: dict[str, float] = {}
    for tid, cpu in after.items():
        name = names.get(tid, "native")
        name = "main" if name == "MainThread" else "paho" if name.startswith("paho") else name
        out[name] = out.get(name, 0.0) + (cpu - before.get(tid, 0.0)) * 1e3 / frames
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def run_variant(
    variant: str,
    model: Path,
    threads: int,
    seconds: float,
    port: int,
    state: Path,
    reference: Path | None = None,
    accelerator: str = "cpu",
) -> dict[str, Any]:
    """One variant in a child process: its figures plus its own peak RSS."""
    args = json.dumps(
        {
            "variant": variant,
            "model": str(model),
            "threads": threads,
            "seconds": seconds,
            "port": port,
            "state": str(state),
            "reference": str(reference) if reference else None,
            "accelerator": accelerator,
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.bench", args],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds * 4 + 120,
        check=False,
    )
    if proc.returncode < 0:  # killed by a signal: on a Pi 4, LiteRT's GPU plugin's SIGILL at load
        from edge_agent.runtime.select import death_reason

        raise RuntimeError(f"{variant} on {model.name} failed: {death_reason(accelerator, proc.returncode)}")
    if proc.returncode != 0:
        # the exception line, not the runtime's log lines that follow it
        exc = [ln for ln in proc.stderr.splitlines() if re.match(r"^[\w.]+(Error|Exception): ", ln)]
        raise RuntimeError(f"{variant} on {model.name} failed: {exc[-1] if exc else proc.stderr.strip()[-800:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    model, threads, seconds = Path(spec["model"]), int(spec["threads"]), float(spec["seconds"])
    v = spec["variant"]
    if v == "bare":
        ref = Path(spec["reference"]) if spec.get("reference") else None
        out = bare(model, threads, seconds, ref, spec.get("accelerator", "cpu"))
    elif v == "decode":
        out = decode(model, seconds)
    elif v == "naive":
        out = naive(model, threads, seconds, int(spec["port"]))
    else:
        source = str(_video()) if v == "video" else "replay:demo"
        sink = "memory" if v == "local" else "mqtt"
        accel = spec.get("accelerator", "cpu")
        out = agent(model, threads, seconds, int(spec["port"]), Path(spec["state"]), source, sink, accel)
    return {**out, "peak_rss_mb": round(_peak_rss_mb(), 1)}


def free_port() -> int:
    """A free port below the kernel's ephemeral range, for a broker that will be stopped and restarted.

    While nothing listens on a port inside that range, a client reconnecting to it can be given the
    same port as its own local end and connect to itself (TCP simultaneous open), and the broker
    then cannot bind it again ("Address already in use").
    """
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range below is crowded: any free port will do
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """mosquitto in `work`, restartable on the same port (persistence on when asked)."""

    def __init__(self, work: Path, persistence: bool = False):
        self.work, self.port = work, free_port()
        user = "user root\n" if os.geteuid() == 0 else ""  # as root it would drop to a user that cannot read `work`
        store = f"persistence true\npersistence_location {work}/\nautosave_interval 1\n" if persistence else ""
        (work / "mosquitto.conf").write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n{store}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def compare_accelerator(
    model: Path, seconds: float, runs: int, frames: int = 60, accelerator: str = "gpu"
) -> dict[str, Any]:
    """`accelerator` (the GPU by default) against the CPU on one model, with `auto` choosing as the agent does.

    Reports what `auto` selected, how its detections agree with the CPU's on demo-video frames, and,
    side by side in alternating runs: the bare loop on the accelerator and on the CPU, the agent (on
    frames in memory, to a real mosquitto) with `auto` and with the CPU, and their ratios.
    """
    from edge_agent.config import load_settings
    from edge_agent.model import Model
    from edge_agent.runtime.cpu import default_threads

    def load(accel: str) -> Model:
        s = load_settings(None, {"model.path": str(model), "runtime.accelerator": accel})
        return Model(s.model, s.runtime, None)

    t0 = time.monotonic()
    auto = load("auto")
    auto_load_s = time.monotonic() - t0
    cpu = load("cpu")
    selected = auto.runtime.backend.kind
    doc: dict[str, Any] = {
        "model": model.name,
        "selected": selected,
        "selected_description": auto.runtime.backend.description,
        "probes": [p.as_dict() for p in auto.runtime.probes],
        "auto_load_s": round(auto_load_s, 3),
        "cpu_threads": getattr(cpu.runtime.backend, "threads", None),
        "agreement": agreement(auto, cpu, demo_frames(frames), ("auto", "cpu")),
    }
    threads = int(doc["cpu_threads"] or default_threads())
    auto.close()
    cpu.close()
    plan = [("bare", accelerator), ("bare", "cpu"), ("memory", "auto"), ("memory", "cpu")]
    res: dict[str, list[dict[str, Any]]] = {f"{v}_{a}": [] for v, a in plan}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "ref.npy"
        reference_input(model, reference)
        broker = Broker(Path(tmp)).start()
        try:
            with Progress(f"{model.name} {accelerator} vs cpu", runs * len(plan), "runs") as bar:
                for _ in range(runs):
                    for v, a in plan:
                        key = f"{v}_{a}"
                        if key not in errors:
                            try:
                                res[key].append(
                                    run_variant(v, model, threads, seconds, broker.port, Path(tmp) / "s", reference, a)
                                )
                            except RuntimeError as err:  # e.g. no such accelerator on this machine
                                errors[key] = str(err)[:500]  # who failed and why come first
                        bar.update()
        finally:
            broker.stop()
    fps = {k: float(statistics.median(r["fps"] for r in v)) for k, v in res.items() if v}
    doc["fps"] = {k: round(v, 1) for k, v in fps.items()}
    doc["agent_backend"] = {k: v[0].get("backend") for k, v in res.items() if v and k.startswith("memory")}
    doc["added_p50_ms"] = {
        k: round(float(statistics.median(r["added_p50"] for r in v)), 3) for k, v in res.items() if v and "memory" in k
    }
    doc["peak_rss_mb"] = {k: float(statistics.median(r["peak_rss_mb"] for r in v)) for k, v in res.items() if v}
    doc["bare_read_ms"] = {
        k: round(float(statistics.median(r["read_ms"] for r in v)), 3) for k, v in res.items() if v and "bare" in k
    }
    doc["errors"] = errors
    ratios = {}
    if "memory_auto" in fps and f"bare_{accelerator}" in fps:
        ratios["agent_vs_bare_accelerator"] = fps["memory_auto"] / fps[f"bare_{accelerator}"]
    if "memory_auto" in fps and "memory_cpu" in fps:
        ratios["agent_accelerator_vs_agent_cpu"] = fps["memory_auto"] / fps["memory_cpu"]
    if "bare_cpu" in fps and "memory_cpu" in fps:
        ratios["agent_cpu_vs_bare_cpu"] = fps["memory_cpu"] / fps["bare_cpu"]
    doc["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    return doc


def compare(models: list[Path], threads: int, seconds: float, runs: int, out: Any) -> list[dict[str, Any]]:
    """Every variant on every model, alternating runs so drift hits all alike; medians per variant."""
    from edge_agent.modelfile import read_model_file
    from edge_agent.runtime.cpu import default_threads
    from edge_agent.runtime.select import ProbeCache, tune_threads

    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp)).start()
        port = broker.port
        try:
            for m in models:
                reference = Path(tmp) / f"{m.stem}.npy"
                x = reference_input(m, reference)
                # --threads 0: the count the agent itself would choose for this model (timed, as it does)
                t_m = threads or (
                    tune_threads(m, read_model_file(m).sha256, [x], cores, ProbeCache(None)).threads or cores
                    if cores > 1
                    else default_threads()
                )
                res: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
                with Progress(m.name, runs * len(VARIANTS), "runs") as bar:
                    for _ in range(runs):
                        for v in VARIANTS:
                            res[v].append(run_variant(v, m, t_m, seconds, port, Path(tmp) / "state", reference))
                            bar.update()

                def med(v: str, key: str, res: dict[str, list[dict[str, Any]]] = res) -> float:
                    return float(statistics.median(r[key] for r in res[v]))

                # decoding and inference share the cores, and nothing beats the bare loop (a model on one
                # thread cannot use the second core however the CPU time adds up)
                limit = min(cores / (med("bare", "cpu_s") + med("decode", "cpu_s")), med("bare", "fps"))
                mem_c2p = {
                    q: statistics.median(r["c2p_ms"].get(q, 0) for r in res["memory"]) for q in ("p50", "p95", "p99")
                }
                row = {
                    "model": m.name,
                    "threads": t_m,
                    "bare_fps": med("bare", "fps"),
                    "naive_fps": med("naive", "fps"),
                    "memory_fps": med("memory", "fps"),
                    "video_fps": med("video", "fps"),
                    "cpu_limit_fps": limit,
                    "memory_vs_bare": med("memory", "fps") / med("bare", "fps"),
                    "video_vs_limit": med("video", "fps") / limit,
                    "video_vs_naive": med("video", "fps") / med("naive", "fps"),
                    "c2p_ms": mem_c2p,
                    "added_p50_ms": med("memory", "added_p50"),
                    "added_p99_ms": med("memory", "added_p99"),
                    "host_cpu_ms": (med("memory", "cpu_s") - med("bare", "cpu_s")) * 1e3,
                    "mqtt_cpu_ms": (med("memory", "cpu_s") - med("local", "cpu_s")) * 1e3,
                    "local_fps": med("local", "fps"),
                    "preprocess_ms": med("memory", "preprocess_ms"),
                    "peak_rss_mb": {v: med(v, "peak_rss_mb") for v in VARIANTS},
                    "first_s": med("memory", "first_s"),
                    "cpu_ms_by_thread": {
                        v: _median_by_key([r["cpu_ms_by_thread"] for r in res[v]]) for v in ("memory", "video")
                    },
                }
                rows.append(row)
                print(table_row(row), file=out, flush=True)
        finally:
            broker.stop()
    return rows


HEADER = (
    "| model | threads | bare fps | naive fps (video) | agent fps (memory) | agent / bare "
    "| CPU-budget limit fps (video) | agent fps (video) | video agent / limit | video agent / naive "
    "| capture-to-publish p50 / p95 / p99 ms | added p50 / p99 ms | host CPU ms/frame | of which MQTT "
    "| preprocess p50 ms | peak RSS MB bare / agent (video) | first prediction s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _median_by_key(docs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in docs for k in d}
    return {k: round(statistics.median(d.get(k, 0.0) for d in docs), 3) for k in sorted(keys)}


def table_row(r: dict[str, Any]) -> str:
    c = r["c2p_ms"]
    return (
        f"| {r['model']} | {r['threads']} | {r['bare_fps']:.1f} | {r['naive_fps']:.1f} | {r['memory_fps']:.1f} | "
        f"{r['memory_vs_bare']:.3f} | {r['cpu_limit_fps']:.1f} | {r['video_fps']:.1f} | {r['video_vs_limit']:.3f} | "
        f"{r['video_vs_naive']:.2f} | {c['p50']:.2f} / {c['p95']:.2f} / {c['p99']:.2f} | "
        f"{r['added_p50_ms']:.2f} / {r['added_p99_ms']:.2f} | {r['host_cpu_ms']:.2f} | {r['mqtt_cpu_ms']:.2f} | "
        f"{r['preprocess_ms']:.2f} | "
        f"{r['peak_rss_mb']['bare']:.0f} / {r['peak_rss_mb']['video']:.0f} | {r['first_s']:.2f} |"
    )


if __name__ == "__main__":  # a child of run_variant
    print(json.dumps(_child(json.loads(sys.argv[1]))))
