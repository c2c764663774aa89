"""`edge-agent bench` runs every variant in its own process and reports figures that hang together."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import MQTTConfig

from .conftest import ROOT, SHORT, run_cli, scaled


@pytest.mark.emulation_slow(
    "times every variant for seconds each: under qemu it times the emulator; the report's shape is "
    "checked by the smaller bench tests"
)
@pytest.mark.alone("the bare loop must beat the naive one: a test beside it would slow either at random")
def test_bench_reports_every_variant_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--model", str(SHORT), "--seconds", "0.5", "--runs", "1", "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    header, _, row = r.stdout.splitlines()[:3]
    assert header.startswith("| model | threads | bare fps") and row.startswith(f"| {SHORT.name} |")
    [doc] = json.loads(out.read_text())
    assert doc["bare_fps"] > doc["naive_fps"] > 0 and doc["memory_fps"] > 0 and doc["video_fps"] > 0
    assert doc["memory_vs_bare"] == doc["memory_fps"] / doc["bare_fps"]
    assert 0 < doc["cpu_limit_fps"] <= doc["bare_fps"]
    assert doc["video_vs_limit"] == doc["video_fps"] / doc["cpu_limit_fps"]
    c = doc["c2p_ms"]
    assert 0 < c["p50"] <= c["p95"] <= c["p99"]
    rss = doc["peak_rss_mb"]
    assert set(rss) == {"bare", "decode", "naive", "memory", "local", "video"} and all(v > 10 for v in rss.values())
    assert doc["local_fps"] > 0 and 0 < doc["preprocess_ms"] < 50
    assert rss["video"] > rss["bare"]  # the agent process holds more than a bare interpreter
    assert 0 < doc["first_s"] < 10
    by_thread = doc["cpu_ms_by_thread"]["memory"]
    # the MQTT side (paho's network thread, the publisher) shows; psutil counts 10 ms ticks: one may read 0
    assert by_thread["inference"] > 0 and by_thread["postprocess"] > 0 and {"paho", "mqtt-publisher"} & set(by_thread)


def test_the_streaming_agent_leaves_optional_heavy_imports_unloaded() -> None:
    """cryptography (~8 MB) and the HTTP side (prometheus-client, http.server) load only when used."""
    import subprocess
    import sys

    code = (
        "import sys, edge_agent.agent, edge_agent.signal_pipeline\n"
        "print(sorted(m for m in ('cryptography', 'prometheus_client', 'http.server', 'edge_agent.web') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "[]"


def test_the_bare_loop_invokes_on_a_real_preprocessed_frame(tmp_path: Path) -> None:
    """int8 kernels run faster on zeros than on a picture: the limit must be set on real data."""
    import numpy as np

    from edge_agent.bench import bare, reference_input
    from edge_agent.runtime.cpu import InterpreterBackend

    ref = tmp_path / "ref.npy"
    reference_input(SHORT, ref)
    x = np.load(ref)
    spec = InterpreterBackend(SHORT, 1).inputs[0]
    assert x.shape == tuple(spec.shape) and x.dtype == spec.dtype
    assert len(np.unique(x)) > 100  # a picture, not a constant fill
    assert bare(SHORT, 1, 0.2, ref)["fps"] > 0


def test_a_variants_peak_rss_is_its_own_not_its_parents(tmp_path: Path) -> None:
    """getrusage keeps the forking parent's peak across exec; the figure must be the child's."""
    import numpy as np

    from edge_agent.bench import run_variant

    ballast = np.ones(300 * 2**20 // 8)  # this process now holds 300 MB more than any bare loop needs
    out = run_variant("bare", SHORT, 1, 0.2, 1, tmp_path / "state")
    assert ballast[-1] == 1.0
    assert 10 < out["peak_rss_mb"] < 150


def test_broker_ports_lie_below_the_ephemeral_range() -> None:
    """A reconnecting client could otherwise take a stopped broker's port as its own local port."""
    from edge_agent.bench import free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert all(1024 < p < low for p in ports)


def test_accelerator_comparison_reports_selection_agreement_and_ratios() -> None:
    """The GPU script's harness, here where `auto` can only pick the CPU: the GPU loop's failure is reported."""
    from edge_agent.bench import compare_accelerator

    doc = compare_accelerator(SHORT, scaled(0.3), 1, frames=5)  # a window of many frames on any machine
    a = doc["agreement"]
    assert a["frames"] == 5 and a["matched"] >= 5
    assert doc["probes"][-1]["backend"] == "cpu" and doc["ratios"]["agent_cpu_vs_bare_cpu"] > 0
    assert doc["fps"]["memory_auto"] > 0 and doc["fps"]["memory_cpu"] > 0 and doc["fps"]["bare_cpu"] > 0
    assert list(doc["bare_read_ms"]) == ["bare_cpu"] and doc["bare_read_ms"]["bare_cpu"] >= 0  # outputs taken back
    if doc["selected"] == "cpu":  # no GPU here: same backend both ways, and the bare GPU loop could not start
        assert a["min_iou"] == 1.0 and a["only_auto"] == a["only_cpu"] == 0
        assert "GPU" in doc["errors"]["bare_gpu"] and "agent_vs_bare_accelerator" not in doc["ratios"]


@pytest.mark.emulation_slow(
    "runs several agents side by side for a throughput ratio: under qemu, minutes of the emulator's own "
    "cost"
)
def test_bench_pipelines_compares_one_agent_with_separate_agents(tmp_path: Path) -> None:
    out = tmp_path / "pipes.json"
    r = run_cli("bench", "--pipelines", "1,2", "--model", str(SHORT), "--seconds", "1", "--runs", "1",
                "--json", str(out), timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| model | N | one agent fps") and len(lines) == 4
    rows = json.loads(out.read_text())
    assert [row["pipelines"] for row in rows] == [1, 2]
    two = rows[1]
    assert len(two["one"]["per_pipeline_fps"]) == 2 and all(f > 0 for f in two["one"]["per_pipeline_fps"])
    assert len(two["separate"]["per_pipeline_fps"]) == 2 and two["separate"]["aggregate_fps"] > 0
    assert two["one_vs_separate_fps"] == two["one"]["aggregate_fps"] / two["separate"]["aggregate_fps"]
    # one round: the round's own ratio is the whole comparison's
    assert two["one_vs_separate_by_round"] == [pytest.approx(two["one_vs_separate_fps"])]
    assert two["stalled_cost_by_round"] == [pytest.approx(two["stalled_cost"])]
    # the stalled camera's own threads, counted apart: well under the 5% it may cost the others at most
    assert len(two["stalled_cpu_share_by_round"]) == 1 and two["stalled_cpu_share_by_round"][0] < 0.05
    assert two["one"]["stalled_cpu_share"] == 0.0 and "of the agent's CPU" in r.stdout
    assert "2 pipelines, round by round: one / N agents" in r.stdout
    assert len(two["stalled"]["per_pipeline_fps"]) == 2  # the stalled camera's pipeline is not counted
    eng = two["one"]["engines"]
    assert len(eng) == 1 and eng[0]["pipelines"] == ["p0", "p1"]  # one engine for both
    b = two["one"]["rss_breakdown"]
    assert b["shared_libs"] > 20 and b["total"] > b["shared_libs"] and b["arena_count"] <= 3
    assert rows[0]["rss_vs_single"] == 1.0 and rows[1]["rss_vs_single"] > 0.9
    # the agent's own memory apart from the libraries' pages, and how many of those a fault maps
    assert 10 < b["own"] < b["total"] - b["shared_libs"] + 0.2 and rows[1]["own_vs_single"] > 0.9
    assert rows[0]["mapped_per_fault_kb"] >= 4 and "of OpenCV's library as the page cache holds it" in r.stdout
    assert "RSS of one agent with 2 pipeline(s)" in r.stdout
    # what the engines ran on, from the agents themselves: a GPU row that fell back would say cpu here
    assert [(row["accelerator"], row["ran_on"]) for row in rows] == [("cpu", ["cpu"])] * 2
    assert "models ran on: 1: cpu, 2: cpu" in r.stdout


def test_thread_cpu_counts_the_named_threads_alone_even_those_that_end() -> None:
    """What the stalled-camera row reports as the stalled pipeline's own CPU: its threads by name, one that
    ended between two samples counted up to its last."""
    import threading
    import time

    from edge_agent.bench_pipelines import _ThreadCpu

    def spin(seconds: float, spun: threading.Event, leave: threading.Event) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        spun.set()
        leave.wait(30)

    cpu = _ThreadCpu(("cam-",))
    threads = {name: (threading.Event(), threading.Event()) for name in ("cam-capture-1", "cam-capture-2",
                                                                         "door-capture-1")}
    started = [threading.Thread(target=spin, args=(0.2, *ev), name=name) for name, ev in threads.items()]
    for t in started:
        t.start()
    for spun, _ in threads.values():
        spun.wait(30)
    cpu.sample()
    threads["cam-capture-2"][1].set()  # it ends: what it used up to the last sample stays counted
    started[1].join()
    cpu.sample()
    for _, leave in threads.values():
        leave.set()
    # 0.2 s each of the two cam- threads, none of door's (clock ticks of 10 ms)
    assert 0.38 <= cpu.total <= 0.45, cpu.total


def _two_variants(
    tmp_path: Path, flag: str, n: int, runs: int, header: str
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """`bench FLAG N`: its table (a header, a rule and a row per variant) and its two rows from --json."""
    out = tmp_path / "bench.json"
    r = run_cli("bench", flag, str(n), "--model", str(SHORT), "--seconds", "1", "--runs", str(runs),
                "--json", str(out), timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
    assert lines[0].startswith(header) and len(lines) == 4, lines
    first, second = json.loads(out.read_text())
    assert first["vs_first"] == pytest.approx(1.0) and len(second["vs_first_by_round"]) == runs
    return first, second, r.stdout


@pytest.mark.emulation_slow("a throughput comparison of decoders: measures qemu's translation, not the board")
def test_bench_decode_compares_whole_and_scaled_decoding_side_by_side(tmp_path: Path) -> None:
    whole, scaled, stdout = _two_variants(tmp_path, "--decode", 2, 2, "| model | pipelines | decoded at")
    # BlazeFace letterboxes the 640x480 video to 128x96: a quarter of each frame is enough, and the
    # agents say that is what they decoded
    assert (whole["scaled_decode"], whole["decode_scale"]) == (False, 1)
    assert (scaled["scaled_decode"], scaled["decode_scale"]) == (True, 4)
    assert all(row["aggregate_fps"] > 0 and row["cpu_ms_per_frame"] > 0 for row in (whole, scaled))
    assert "| 1/4 (scaled_decode on) |" in stdout


@pytest.mark.emulation_slow("a throughput comparison of interpreters: measures qemu's translation, not the board")
def test_bench_replicas_compares_one_interpreter_per_core_with_those_grown(tmp_path: Path) -> None:
    from edge_agent.runtime.cpu import default_threads

    n = default_threads() + 1  # a pipeline more than the cores: frames as fast as they go find every one busy
    fixed, grown, _ = _two_variants(tmp_path, "--replicas", n, 2, "| model | pipelines | CPU interpreters")
    assert (fixed["replicas"], fixed["interpreters"]) == ("per core", default_threads())
    assert grown["replicas"] == "grown" and default_threads() < grown["interpreters"] <= n
    assert all(row["aggregate_fps"] > 0 and row["peak_rss_mb"] > 0 for row in (fixed, grown))
    assert run_cli("bench", "--replicas", "1").returncode == 2


@pytest.mark.emulation_slow("a throughput comparison of publishing: measures qemu's translation, not the board")
def test_bench_linger_compares_a_publisher_woken_per_message_with_one_that_gathers_them(tmp_path: Path) -> None:
    each, gathered, _ = _two_variants(tmp_path, "--linger", 2, 1, "| model | pipelines | mqtt.linger_ms")
    # each agent says the setting it ran with: 0, and the default
    assert (each["linger_ms"], gathered["linger_ms"]) == (0.0, MQTTConfig().linger_ms) and gathered["linger_ms"] > 0
    assert all(row["aggregate_fps"] > 0 and row["messages_per_round"] >= 1 for row in (each, gathered))
    assert run_cli("bench", "--linger", "0").returncode == 2


@pytest.mark.emulation_slow("a throughput comparison of batch sizes: measures qemu's translation, not the board")
def test_bench_batch_sizes_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    r = run_cli("bench", "--batch", "1,2", "--batch-pipelines", "2", "--model", str(SHORT), "--seconds", "1",
                "--runs", "1", "--json", str(out), timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [row for row in json.loads(out.read_text()) if "max_batch" in row]
    assert [row["max_batch"] for row in rows] == [1, 2]
    assert rows[0]["batching"] == "off: runtime.max_batch is 1" and set(rows[0]["batches"]) == {"1"}
    assert rows[1]["batching"] == "on" and all(row["aggregate_fps"] > 0 for row in rows)


def test_gil_wait_reports_calls_alone_and_beside_python_and_batch_costs() -> None:
    import re
    import subprocess

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gil_wait.py"), "--seconds", "0.3"],
                       capture_output=True, text=True, timeout=120, check=True)
    rows = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(r"^\| (invoke|read|resize) \| (\d+) \| (\d+) \|",
                                                                   r.stdout, re.M)}
    assert set(rows) == {"invoke", "read", "resize"} and all(alone > 0 and busy > 0 for alone, busy in rows.values())
    batches = dict(re.findall(r"^\| (\d) \| ([\d.]+) \|$", r.stdout, re.M))
    assert set(batches) == {"1", "2", "4", "8"} and all(float(v) > 0 for v in batches.values())


def test_bench_clips_writes_a_clip_each_way_and_reports_both() -> None:
    import re
    import subprocess

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_clips.py"), "--frames", "12", "--runs", "1"],
                       capture_output=True, text=True, timeout=120, check=True)
    row = r"^\| (as they are|re-encoded) \| ([\d.]+) \| ([\d.]+) \| ([\d,]+) \|$"
    rows = {m[0]: [float(x.replace(",", "")) for x in m[1:]] for m in re.findall(row, r.stdout, re.M)}
    assert set(rows) == {"as they are", "re-encoded"}, r.stdout
    # a frame of the demo video is tens of kB of JPEG either way (not an empty clip)
    assert all(v[0] > 0 and v[2] > 10_000 for v in rows.values()), rows
