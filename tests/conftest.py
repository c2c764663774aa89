"""Shared fixtures: a real mosquitto per test, the agent as a real process, real models."""

from __future__ import annotations

import atexit
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bench import free_port
from edge_agent.config import MQTTConfig
from edge_agent.sinks.mqtt import Subscriber

# each process of the suite (each pytest worker) its own default state directory: commands run without one
# (`run` refused for its settings, `check`, `predict`) took ~/.local/state/edge-agent, and two of them at once
# on two workers were refused "another edge-agent is using the state directory". Set in every process, not
# inherited: the workers start with the environment of the process that started them
if os.environ.get("EDGE_TEST_STATE_PID") != str(os.getpid()):
    os.environ["EDGE_TEST_STATE_PID"] = str(os.getpid())
    os.environ["STATE_DIRECTORY"] = tempfile.mkdtemp(prefix="edge-agent-tests-")
    atexit.register(shutil.rmtree, os.environ["STATE_DIRECTORY"], True)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SHARED = ROOT.parent / "shared"
SSD_MODEL = SHARED / "models" / "ssd_mobilenet_v1_coco_uint8.tflite"
COCO_LABELS = SHARED / "models" / "coco_labels.txt"
FRUIT = SHARED / "data" / "fruit.jpg"
SHORT = MODELS / "face_detection_short_range.tflite"
FULL = MODELS / "face_detection_full_range.tflite"
SHORT_INT8 = MODELS / "face_detection_short_range_int8.tflite"
DEMO_VIDEO = MODELS / "demo.avi"

#: BlazeFace short range, one thread, median invoke on the machine the suite's time limits were set on
#: (a 2-core x86-64 VM): about 2 ms.
REFERENCE_INVOKE_MS = 2.0


def _slowdown() -> float:
    """How many times slower than the reference machine this one runs the bundled model (at least 1):
    time limits and rates in the tests scale with it, so a board several times slower (or the same
    board under emulation) is not failed for being slow. EDGE_TEST_SLOWDOWN sets it outright."""
    if os.environ.get("EDGE_TEST_SLOWDOWN"):
        return max(1.0, float(os.environ["EDGE_TEST_SLOWDOWN"]))
    if not SHORT.is_file():
        return 1.0
    import numpy as np

    from edge_agent.runtime.cpu import InterpreterBackend

    b = InterpreterBackend(SHORT, threads=1)
    x = np.zeros(b.inputs[0].shape, np.float32)
    times = []
    for i in range(25):
        t0 = time.perf_counter()
        b.run([x])
        if i >= 5:  # after the warm-up
            times.append((time.perf_counter() - t0) * 1e3)
    b.close()
    # a factor under 2 is this machine's own noise: the limits already allow for it
    factor = float(np.median(times)) / REFERENCE_INVOKE_MS
    return factor if factor >= 2 else 1.0


SLOWDOWN = _slowdown()


def scaled(seconds: float) -> float:
    """A time limit (or 1/rate) for this machine: the reference machine's, times SLOWDOWN."""
    return seconds * SLOWDOWN


def pytest_configure(config: pytest.Config) -> None:
    if SLOWDOWN > 1 and getattr(config.option, "timeout", None) is None:
        config.option.timeout = float(config.getini("timeout") or 300) * SLOWDOWN


#: Set by scripts/check-platform.sh when the suite runs under qemu user-mode emulation (what it emulates).
EMULATED = os.environ.get("EDGE_TEST_EMULATED", "")


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"edge-agent: time limits x{SLOWDOWN:.1f} (BlazeFace invoke against the reference machine's)"]
    if EMULATED:
        lines.append(
            f"edge-agent: emulated ({EMULATED}): tests marked emulation_slow are "
            + ("run (EDGE_TEST_EMULATION_SLOW=run)" if _run_emulation_slow() else "deselected")
        )
    return lines


def _run_emulation_slow() -> bool:
    return os.environ.get("EDGE_TEST_EMULATION_SLOW") == "run"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under emulation, leave out the tests that only measure how emulation crawls: each carries
    `emulation_slow("why")`, and the deselected ones are counted in pytest's summary line."""
    if not EMULATED or _run_emulation_slow():
        return
    slow = [item for item in items if item.get_closest_marker("emulation_slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("emulation_slow")]


needs_shared = pytest.mark.skipif(
    not SSD_MODEL.is_file(), reason="../shared/models is absent (a plain clone has no shared test models)"
)


def mosquitto_bin() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if found is None:
        pytest.fail("mosquitto is not installed: scripts/test.sh installs it")
    return found


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `pred` until it returns something truthy; fail the test after `timeout` (scaled to this
    machine's speed)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header is made to declare another size: what a hostile sender crafts (a
    few hundred bytes that decode to gigabytes)."""
    raw = bytearray(jpeg)
    i = 2
    while raw[i + 1] not in (0xC0, 0xC1, 0xC2):  # to the frame header
        i += 2 + int.from_bytes(raw[i + 2 : i + 4], "big")
    raw[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(raw)


class Broker:
    """A real mosquitto on a free loopback port; can be stopped, restarted, paused."""

    def __init__(self, workdir: Path, conf_extra: str = "", port: int | None = None, persistence: bool = False):
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.conf_extra = conf_extra
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        body = self.conf_extra or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        # started as root, mosquitto switches to its own user, which cannot read the test's files
        user = "user root\n" if os.geteuid() == 0 else ""
        if self.persistence:  # sessions and queued messages survive a restart, as on a real broker
            store = f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\n"
        else:
            store = "persistence false\n"
        self.conf.write_text(user + body + store + "set_tcp_nodelay true\n")
        self.proc = subprocess.Popen(
            [mosquitto_bin(), "-c", str(self.conf)], stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        wait_until(lambda: self.proc is not None and (self.proc.poll() is not None or _listening(self.port)), 10,
                   what="mosquitto to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log.read_text()}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def mqtt(self, **kw: Any) -> MQTTConfig:
        return MQTTConfig(host=self.host, port=self.port, **kw)

    def env(self) -> dict[str, str]:
        return {"EDGE_AGENT_MQTT__HOST": self.host, "EDGE_AGENT_MQTT__PORT": str(self.port)}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def subscriber_factory(broker: Broker) -> Iterator[Callable[..., Subscriber]]:
    subs: list[Subscriber] = []

    def make(topics: list[str], cfg: MQTTConfig | None = None) -> Subscriber:
        s = Subscriber(cfg or broker.mqtt(), topics)
        assert s.start(10), "subscriber could not subscribe"
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.stop()


def collect(sub: Subscriber, pred: Callable[[str, Any, bool], bool], timeout: float) -> tuple[str, Any, bool]:
    """The first message (topic, decoded payload, retained) that satisfies pred (`timeout` scaled)."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        m = sub.get(max(0.01, deadline - time.monotonic()))
        if m is None:
            continue
        topic, raw, retained = m
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        if pred(topic, payload, retained):
            return topic, payload, retained
    raise AssertionError(f"no matching message within {timeout} s")


class TopicRecorder:
    """Drains a subscriber on its own thread and hands each decoded JSON message to `on_message`."""

    def __init__(self, sub: Subscriber):
        self.sub = sub
        assert self.sub.start(10), "subscriber could not subscribe"
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def on_message(self, topic: str, doc: Any, arrived: float) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self.sub.get(0.1)
            if m is not None:
                try:
                    doc: Any = json.loads(m[1])
                except ValueError:  # plain payloads: availability, Home Assistant's status
                    doc = m[1].decode("utf-8", "replace")
                self.on_message(m[0], doc, time.time())

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sub.stop()


class AgentProcess:
    """`python -m edge_agent ...` as a real child process with its log in a file. entry: what Python runs
    in place of `-m edge_agent` (`["-c", SCRIPT]`: the agent's own CLI with something patched first)."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path, name: str = "agent",
                 entry: list[str] | None = None):
        self.log_path = workdir / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        # one interpreter thread unless a test says otherwise: timing the thread count costs 0.7 s at each
        # fresh start, and is tested on its own (tests/test_runtime.py)
        full_env.update({"EDGE_AGENT_STATE_DIR": str(workdir / "state"), "PYTHONUNBUFFERED": "1",
                         "EDGE_AGENT_RUNTIME__THREADS": "1"})
        full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, *(entry or ["-m", "edge_agent"]), *args],
            env=full_env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=self.log_path.open("wb"),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    procs: list[AgentProcess] = []

    def make(args: list[str], env: dict[str, str] | None = None, name: str = "agent",
             entry: list[str] | None = None) -> AgentProcess:
        p = AgentProcess(args, env or {}, tmp_path, name, entry)
        procs.append(p)
        return p

    yield make
    for p in procs:  # all told at once, then each waited for: twenty agents stop in the time of one
        if p.proc.poll() is None:
            p.signal(signal.SIGTERM)
    for p in procs:
        p.stop()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=str(ROOT))


def run_tty(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run a command with its stdout on a pseudo-terminal, as a person at a shell would."""
    master, slave = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")} | (env or {})
    p = subprocess.Popen([sys.executable, "-m", "edge_agent", *args], stdout=slave, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=full_env, cwd=str(ROOT))
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.stderr is not None
    err = p.stderr.read().decode()
    return p.wait(30), out.decode().replace("\r\n", "\n"), err


def streamed_get(url: str, rng: str | None = None) -> tuple[int, dict[str, str], str, int]:
    """GET `url` (with a `Range` header if given), the body read a chunk at a time and not kept:
    (status, headers, the body's sha256, the most bytes Python held at once in this process meanwhile,
    an in-process server's threads included). What a server reads whole to answer shows in the last."""
    import hashlib
    import tracemalloc
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Range": rng} if rng is not None else {})
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        try:
            r: Any = urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as err:
            r = err
        with r:
            while chunk := r.read(64 * 1024):
                digest.update(chunk)
            status, headers = r.getcode(), dict(r.headers)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return status, headers, digest.hexdigest(), peak
