"""Faults injected into a running agent: broker outages, kills, hangs, a vanishing source, signals."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.sinks.mqtt import Subscriber

from .conftest import DEMO_VIDEO, SHORT, SLOWDOWN, AgentProcess, Broker, TopicRecorder, collect, scaled, wait_until

STREAM = ["run", "--source", "synthetic", "--fps", "30", "--model", str(SHORT)]


def fast_env(broker: Broker, **extra: str) -> dict[str, str]:
    return {**broker.env(), "EDGE_AGENT_MQTT__KEEPALIVE_S": "5", "EDGE_AGENT_MQTT__RECONNECT_MAX_S": "1",
            "EDGE_AGENT_OUTBOX__FLUSH_INTERVAL_S": "0.2", "EDGE_AGENT_OUTBOX__REPLAY_RATE": "1000",
            "EDGE_AGENT_HEALTH__INTERVAL_S": "1", **extra}


class Recorder(TopicRecorder):
    """Collects every prediction (with its arrival time) and health, through broker restarts."""

    def __init__(self, broker: Broker, device: str):
        self.preds: list[tuple[float, dict[str, Any]]] = []
        self.health: list[dict[str, Any]] = []
        super().__init__(Subscriber(broker.mqtt(keepalive_s=5, reconnect_max_s=1),
                                    [f"edge/{device}/predictions", f"edge/{device}/health"],
                                    client_id=f"recorder-{device}", persistent=True))

    def on_message(self, topic: str, doc: Any, arrived: float) -> None:
        if topic.endswith("/predictions"):
            self.preds.append((arrived, doc))
        else:
            self.health.append(doc)

    def seqs(self, boot: str | None = None) -> list[int]:
        return [d["seq"] for _, d in list(self.preds) if boot is None or d["boot_id"] == boot]


def stored(state: Path, topic: str) -> int:
    """How many messages for `topic` the agent's outbox holds committed on disk (read beside the running
    agent: SQLite in WAL mode lets a reader in). A count, not a number of seconds, so that the tests
    below wait for the same work on a machine of any speed."""
    path = state / "outbox.sqlite"
    if not path.is_file():
        return 0
    try:
        db = sqlite3.connect(str(path), timeout=1)
        try:
            return int(db.execute("SELECT COUNT(*) FROM outbox WHERE topic = ?", (topic,)).fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:  # the table not made yet
        return 0


@pytest.fixture
def pbroker(tmp_path: Path) -> Any:
    b = Broker(tmp_path, persistence=True).start()
    yield b
    b.stop()


def test_30s_broker_outage_loses_nothing(pbroker: Broker, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder(pbroker, "out30")
    try:
        agent_factory([*STREAM, "--device-id", "out30"], env=fast_env(pbroker))
        wait_until(lambda: len(rec.preds) >= 60, 30, what="the stream to start")
        boot = rec.preds[0][1]["boot_id"]
        wall_down = time.time()
        pbroker.stop()
        threading.Event().wait(30)  # the outage itself: 30 s at 30 results/s
        pbroker.start()
        wall_up = time.time()
        live = wait_until(lambda: next((t for t, d in list(rec.preds) if d["ts"] > wall_up), None), 15,
                          what="live predictions after the outage")
        assert live - wall_up < 5.0
        produced_by = wall_up + 2

        def complete() -> bool:
            got = set(rec.seqs(boot))
            top = max(d["seq"] for _, d in list(rec.preds) if d["ts"] < produced_by)
            return got >= set(range(1, top + 1))

        wait_until(complete, 30, what="the backlog to be delivered")
        seqs = rec.seqs(boot)
        unique = sorted(set(seqs))
        assert unique == list(range(1, unique[-1] + 1))  # every seq exactly once after dedupe
        assert len(unique) > 30 * 30 * 0.9 / SLOWDOWN  # the outage's results are there
        # results captured well inside the outage can only have come from the outbox: the oldest
        # came first. (Classed by capture time, not by lateness: a live result can arrive late too.)
        replayed = [d["seq"] for _, d in rec.preds if wall_down + 1 < d["ts"] < wall_up - 1]
        deduped = list(dict.fromkeys(replayed))
        assert len(deduped) > 700 / SLOWDOWN and deduped == sorted(deduped)
    finally:
        rec.close()


def test_sigkill_while_broker_down_then_restart_delivers_the_buffer(pbroker: Broker, agent_factory,  # type: ignore[no-untyped-def]
                                                                     tmp_path: Path) -> None:
    rec = Recorder(pbroker, "kill9")
    try:
        a = agent_factory([*STREAM, "--device-id", "kill9"], env=fast_env(pbroker), name="a")
        wait_until(lambda: len(rec.preds) >= 30, 30, what="the stream to start")
        boot_a = rec.preds[0][1]["boot_id"]
        last_seen = max(rec.seqs(boot_a))
        pbroker.stop()
        # results go to the outbox: kill the agent once 45 of them are committed there
        wait_until(lambda: stored(tmp_path / "state", "edge/kill9/predictions") >= 45, 10,
                   what="45 results in the outbox")
        a.signal(signal.SIGKILL)
        a.wait(5)
        agent_factory([*STREAM, "--device-id", "kill9"], env=fast_env(pbroker), name="b")
        threading.Event().wait(2)  # the new agent starts before the broker is back
        pbroker.start()

        def delivered() -> bool:
            s = set(rec.seqs(boot_a))
            return bool(s) and max(s) >= last_seen + 45 and s == set(range(1, max(s) + 1))

        wait_until(delivered, 30, what="the killed agent's buffered results")
        # the new agent replays the old buffer before (or while) its own results flow: wait for those too
        wait_until(lambda: len({d["boot_id"] for _, d in list(rec.preds)}) == 2, 30,
                   what="the new agent's own results")
        assert len({d["boot_id"] for _, d in rec.preds}) == 2
    finally:
        rec.close()


def test_paused_broker_is_an_outage_and_memory_stays_bounded(pbroker: Broker, agent_factory) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder(pbroker, "stop")
    try:
        agent_factory([*STREAM, "--device-id", "stop"], env=fast_env(pbroker, EDGE_AGENT_MQTT__QUEUE_SIZE="200"))
        wait_until(lambda: any(h["frames"]["inferred"] > 30 for h in rec.health), 30, what="health")
        rss_before = rec.health[-1]["process"]["rss_mb"]
        assert pbroker.proc is not None
        pbroker.proc.send_signal(signal.SIGSTOP)  # the TCP connection stays open; nothing answers
        threading.Event().wait(15)  # keepalive 5 s: the agent must call it an outage by now
        pbroker.proc.send_signal(signal.SIGCONT)
        h = wait_until(lambda: next((h for h in reversed(rec.health) if h["broker"]["connects"] >= 2), None), 30,
                       what="a health message after the reconnect")
        assert h["broker"]["outbox"]["mode"] == "disk"
        assert h["process"]["rss_mb"] - rss_before < 30
        boot = rec.preds[0][1]["boot_id"]
        wait_until(lambda: (s := set(rec.seqs(boot))) and s == set(range(1, max(s) + 1))
                   and max(s) > 30 * 15 / SLOWDOWN, 30, what="everything produced during the hang")
    finally:
        rec.close()


def test_source_file_removed_and_restored(broker: Broker, subscriber_factory, agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clip = tmp_path / "clip.avi"
    shutil.copy(DEMO_VIDEO, clip)
    sub = subscriber_factory(["edge/vanish/health"])
    agent_factory(["run", "--device-id", "vanish", "--source", str(clip), "--model", str(SHORT)],
                  env={**broker.env(), "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5",
                       "EDGE_AGENT_SOURCE__REOPEN_MAX_S": "1"})
    collect(sub, lambda t, p, r: p["status"] == "ok" and p["frames"]["captured"] > 5, 20)
    hidden = tmp_path / "elsewhere.avi"
    clip.rename(hidden)
    t0 = time.monotonic()
    h = collect(sub, lambda t, p, r: p["status"] == "degraded", 10)[1]
    assert time.monotonic() - t0 < 5
    assert "source reconnecting" in h["problems"] and "removed" in (h["last_error"] or "")
    hidden.rename(clip)
    h2 = collect(sub, lambda t, p, r: p["source"]["state"] == "running" and p["status"] == "ok", 10)[1]
    assert h2["source"]["reopens"] < 15  # backoff, no storm


def test_sigterm_during_outage_exits_0_and_keeps_results(pbroker: Broker, agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder(pbroker, "term")
    try:
        a = agent_factory([*STREAM, "--device-id", "term"], env=fast_env(pbroker), name="a")
        wait_until(lambda: len(rec.preds) >= 30, 30, what="the stream to start")
        boot_a = rec.preds[0][1]["boot_id"]
        last_seen = max(rec.seqs(boot_a))
        pbroker.stop()
        wait_until(lambda: stored(tmp_path / "state", "edge/term/predictions") >= 20, 10,
                   what="20 results in the outbox")
        t0 = time.monotonic()
        a.signal(signal.SIGTERM)
        assert a.wait(scaled(15)) == 0 and time.monotonic() - t0 < scaled(10)
        assert "first prediction" in a.log()
        pbroker.start()
        agent_factory([*STREAM, "--device-id", "term"], env=fast_env(pbroker), name="b")

        def delivered() -> bool:
            s = set(rec.seqs(boot_a))
            return bool(s) and max(s) >= last_seen + 20 and s == set(range(1, max(s) + 1))

        wait_until(delivered, 30, what="the results held at shutdown")
    finally:
        rec.close()


def test_sighup_applies_thresholds_without_reconnecting(broker: Broker, subscriber_factory, agent_factory,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    body = ('device_id = "hup"\n[mqtt]\nhost = "{h}"\nport = {p}\n[source]\nuri = "{v}"\n[model]\npath = "{m}"\n'
            'score_threshold = {t}\n[health]\ninterval_s = {i}\n')
    cfg.write_text(body.format(h=broker.host, p=broker.port, v=DEMO_VIDEO, m=SHORT, t=0.5, i=1))
    sub = subscriber_factory(["edge/hup/predictions", "edge/hup/health"])
    a = agent_factory(["run", "--config", str(cfg)])
    collect(sub, lambda t, p, r: t.endswith("/predictions") and p["detections"], 20)
    cfg.write_text(body.format(h=broker.host, p=broker.port, v=DEMO_VIDEO, m=SHORT, t=0.999, i=0.5)
                   + "[mqtt.tls]\ninsecure = true\n")
    a.signal(signal.SIGHUP)
    h = collect(sub, lambda t, p, r: t.endswith("/health") and p["config"]["reloads"] == 1, 10)[1]
    assert h["config"]["restart_needed"] == ["mqtt.tls.insecure"]
    assert h["broker"]["connects"] == 1  # the connection was never dropped
    after = [collect(sub, lambda t, p, r: t.endswith("/predictions"), 5)[1] for _ in range(30)]
    assert all(not d["detections"] for d in after[5:])  # nothing reaches 0.999
    assert len({d["boot_id"] for d in after}) == 1
    cfg.write_text("[mqtt\n")  # a broken file is refused; the agent keeps running
    a.signal(signal.SIGHUP)
    collect(sub, lambda t, p, r: t.endswith("/health") and "reload rejected" in (p["last_error"] or ""), 10)
    assert a.proc.poll() is None


def test_unwritable_state_directory_degrades_without_crashing(broker: Broker, subscriber_factory, agent_factory,  # type: ignore[no-untyped-def]
                                                              tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    sub = subscriber_factory(["edge/rostate/#"])
    agent = agent_factory([*STREAM, "--device-id", "rostate", "--state-dir", str(blocker / "state")],
                          env={**broker.env(), "EDGE_AGENT_HEALTH__INTERVAL_S": "1"})
    collect(sub, lambda t, p, r: t.endswith("/predictions"), 30)
    h = collect(sub, lambda t, p, r: t.endswith("/health"), 10)[1]
    assert h["broker"]["outbox"]["mode"] == "memory" and "unusable" in h["broker"]["outbox"]["last_error"]
    assert agent.proc.poll() is None


def test_an_outbox_file_the_sd_card_damaged_is_set_aside_and_a_new_one_used(broker: Broker, subscriber_factory,  # type: ignore[no-untyped-def]
                                                                               agent_factory, tmp_path: Path) -> None:
    """An SD card that lost the sectors of the outbox's file leaves something SQLite calls "not a
    database". The agent sets it aside and stores results on disk in a new file, rather than holding
    them in memory for good (and losing them at the next restart)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(b"\0" * 4096 + bytes(range(256)) * 16)
    sub = subscriber_factory(["edge/damaged/#"])
    agent_factory([*STREAM, "--device-id", "damaged", "--state-dir", str(state)],
                  env={**broker.env(), "EDGE_AGENT_HEALTH__INTERVAL_S": "1"})
    collect(sub, lambda t, p, r: t.endswith("/predictions"), 30)
    h = collect(sub, lambda t, p, r: t.endswith("/health"), 10)[1]
    ob = h["broker"]["outbox"]
    assert ob["mode"] == "disk" and ob["repairs"] == 1 and "not a database" in ob["last_repair"], ob
    assert not [p for p in h["problems"] if "outbox" in p], h["problems"]
    assert (state / "outbox.sqlite.corrupt").read_bytes()[:4096] == b"\0" * 4096
    with sqlite3.connect(str(state / "outbox.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# Python, run as a child: the agent's own `run` command, with a signal sent to itself as `start()` begins
# (the models loading, the pipelines not yet started). No real event lands a signal in that window every
# time; a service manager's reload or stop can land there at any time.
_SIGNAL_IN_START = """
import os, signal, sys
from edge_agent import agent, cli
real_start = agent.Agent.start
def start(self):
    os.kill(os.getpid(), signal.{sig})
    real_start(self)
agent.Agent.start = start
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("sig", "said"),
                         [("SIGHUP", "configuration reloaded"), ("SIGTERM", "signal SIGTERM: stopping")])
def test_a_signal_while_the_agent_starts_is_taken_not_fatal(sig: str, said: str, broker: Broker,
                                                             agent_factory: Callable[..., AgentProcess]) -> None:
    """A reload or stop sent while the agent starts is handled once it runs: it neither kills the process
    (SIGHUP's default action) nor is lost."""
    # --seconds bounds a run that never says it (the reload lost); once said, a stop ends it at once
    agent = agent_factory(["run", "--source", "synthetic", "--model", str(SHORT), "--seconds", str(scaled(30))],
                          broker.env(), entry=["-c", _SIGNAL_IN_START.format(sig=sig)])
    wait_until(lambda: said in agent.log() or agent.proc.poll() is not None, scaled(60), what=said)
    if sig == "SIGHUP" and agent.proc.poll() is None:  # reloaded and running on (the SIGTERM case is stopping)
        agent.signal(signal.SIGTERM)
    rc = agent.wait(scaled(60))
    assert rc == 0, agent.log()[-2000:]
    assert said in agent.log()


class InfoRecorder(TopicRecorder):
    """Every `info` and `health` document of one device, in the order they came."""

    def __init__(self, broker: Broker, device: str):
        self.docs: list[tuple[str, dict[str, Any]]] = []
        super().__init__(Subscriber(broker.mqtt(), [f"edge/{device}/info", f"edge/{device}/health"]))

    def on_message(self, topic: str, doc: Any, arrived: float) -> None:
        self.docs.append((topic.rsplit("/", 1)[1], doc))

    def of(self, leaf: str, boot: str) -> list[dict[str, Any]]:
        return [d for k, d in list(self.docs) if k == leaf and d["boot_id"] == boot]


def test_the_next_start_says_how_the_last_run_ended(broker: Broker, agent_factory,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    """Real agents ended in each way a box in the field sees, each told by the next start in its retained
    `info` (`last_run`) and in health (`process.last_run`, and `process.runs` counted over the device's
    life): SIGKILL (the OOM killer's), a fatal signal caught with each thread's stack (SIGSEGV; SIGABRT is
    systemd's watchdog's), a stop asked for, and a system that restarted under the agent (its boot id in
    the record changed by hand: a test cannot restart the kernel it runs on)."""
    import json
    import os

    rec = InfoRecorder(broker, "runs")
    state = tmp_path / "state"
    args = [*STREAM, "--device-id", "runs", "--fps", "5"]
    runs: list[str] = []

    def start() -> tuple[AgentProcess, dict[str, Any], dict[str, Any]]:
        """A new agent, its `info` and its first health."""
        agent = agent_factory(args, env=fast_env(broker), name=f"run{len(runs)}")
        info = wait_until(lambda: next((d for k, d in list(rec.docs) if k == "info" and d["boot_id"] not in runs
                                        and d.get("started")), None), scaled(30), what="the new run's info")
        runs.append(info["boot_id"])
        health = wait_until(lambda: rec.of("health", info["boot_id"]), scaled(30), what="its health")[-1]
        return agent, info, health

    try:
        a, info, health = start()
        assert "last_run" not in info and health["process"]["last_run"] is None  # the device's first run
        assert health["process"]["runs"] == dict.fromkeys(("stopped", "exited", "crashed", "killed",
                                                            "system_restarted"), 0)
        assert json.loads((state / "run.json").read_text())["faults_caught"] is True
        a.signal(signal.SIGKILL)
        assert a.wait(scaled(10)) == -signal.SIGKILL

        b, info, health = start()
        last = info["last_run"]
        assert last["ended"] == "killed" and last["started"] <= last["last_seen"] < info["started"]
        assert health["process"]["last_run"] == "killed" and health["process"]["runs"]["killed"] == 1
        assert "was killed (SIGKILL" in b.log()
        b.signal(signal.SIGSEGV)  # as native code's bad read would: faulthandler writes, then the signal kills
        assert b.wait(scaled(10)) == -signal.SIGSEGV
        assert "Fatal Python error: Segmentation fault" in (state / "crash.txt").read_text()

        c, info, health = start()
        last = info["last_run"]
        assert last["ended"] == "crashed" and last["fault"] == "Segmentation fault" and "SIGSEGV" in last["hint"]
        assert last["stack"] and all(line.startswith("File ") for line in last["stack"])
        assert health["process"]["runs"] == {"stopped": 0, "exited": 0, "crashed": 1, "killed": 1,
                                             "system_restarted": 0}
        assert "what the last run's threads were doing as it crashed" in c.log() and "Thread 0x" in c.log()
        assert (state / "crash.txt").read_text() == ""  # told once; this run's file waits for a fault
        c.signal(signal.SIGTERM)
        assert c.wait(scaled(20)) == 0
        assert not (state / "crash.txt").exists()

        d, info, health = start()
        assert info["last_run"]["ended"] == "stopped" and info["last_run"]["exit_code"] == 0
        assert health["process"]["runs"]["stopped"] == 1 and "stopped cleanly" in d.log()
        d.signal(signal.SIGKILL)
        assert d.wait(scaled(10)) == -signal.SIGKILL
        record = json.loads((state / "run.json").read_text())
        assert record["kernel_boot"] == open("/proc/sys/kernel/random/boot_id").read().strip()
        record["kernel_boot"] = "an-earlier-boot"
        (state / "run.json").write_text(json.dumps(record))

        e, info, health = start()
        assert info["last_run"]["ended"] == "system_restarted"
        assert health["process"]["runs"] == {"stopped": 1, "exited": 0, "crashed": 1, "killed": 1,
                                             "system_restarted": 1}
        assert os.getpid() != json.loads((state / "run.json").read_text())["pid"]
        e.stop()
        broken = tmp_path / "broken.tflite"
        broken.write_bytes(os.urandom(5000))  # no model: the agent exits 1 as it starts
        f = agent_factory(["run", "--source", "synthetic", "--model", str(broken), "--device-id", "runs"],
                          env=fast_env(broker), name="broken")
        assert f.wait(scaled(30)) == 1

        g, info, health = start()
        assert info["last_run"]["ended"] == "exited" and info["last_run"]["exit_code"] == 1
        assert health["process"]["runs"] == {"stopped": 2, "exited": 1, "crashed": 1, "killed": 1,
                                             "system_restarted": 1}
        g.stop()
    finally:
        rec.close()


def test_what_a_run_left_is_read_in_order_of_what_it_proves() -> None:
    """A run that wrote its stop stopped, whatever else it left; a crash report proves a crash even where
    the system restarted since; a changed boot id without either is the system's restart; with the same
    boot and no trace, a kill, said less surely where no fault handler of the agent's was installed."""
    from edge_agent.lastrun import ended, parse_crash

    report = ("Fatal Python error: Aborted\n\nThread 0x00007f1 (most recent call first):\n  File \"/a/x.py\", "
              "line 3 in wait\n\nCurrent thread 0x00007f2 (most recent call first):\n  File \"/a/engine.py\", "
              "line 40 in invoke\n  File \"/a/model.py\", line 9 in run\n\nExtension modules: numpy (total: 1)\n")
    assert parse_crash(report) == ("Aborted", ['File "/a/engine.py", line 40 in invoke',
                                               'File "/a/model.py", line 9 in run'])
    run = {"started": 1.0, "seen": 2.0, "kernel_boot": "k1", "faults_caught": True}
    assert ended({**run, "stopped": 3.0, "exit_code": 0}, report, "k2")["ended"] == "stopped"
    assert ended({**run, "stopped": 3.0, "exit_code": 70}, "", "k1")["ended"] == "exited"
    crashed = ended(run, report, "k2")
    assert crashed["ended"] == "crashed" and "watchdog" in crashed["hint"]
    assert ended(run, "", "k2")["ended"] == "system_restarted"
    assert ended(run, "\n", "k1") == {"started": 1.0, "last_seen": 2.0, "agent_version": None, "ended": "killed"}
    assert "may have crashed" in ended({**run, "faults_caught": False}, "", "k1")["hint"]


def test_a_damaged_run_record_starts_the_count_afresh(tmp_path: Path) -> None:
    """A record that is not JSON, not an object, or holds what this agent never writes (an SD card's lost
    sectors, a hand edit): the run starts all the same, says nothing of the last run, and writes its own."""
    import json

    from edge_agent.lastrun import RunRecord

    for text in ("\x00\x00garbage", "[1, 2]", '{"counts": [1], "started": 1}', '{"counts": {"killed": "x"}}',
                 '{"stopped": 5, "exit_code": "zero", "counts": {}}'):
        (tmp_path / "run.json").write_text(text)
        rec = RunRecord(tmp_path, boot_id="k1")
        assert rec.begin("1.0", catch_faults=False) is None, text
        assert rec.counts() == dict.fromkeys(("stopped", "exited", "crashed", "killed", "system_restarted"), 0)
        rec.end(0)
        assert json.loads((tmp_path / "run.json").read_text())["stopped"] is not None
