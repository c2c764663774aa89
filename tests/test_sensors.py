"""Numeric sensors end to end with the project's own activity model: a CSV replay, a real pseudo-terminal
for the serial port, directories laid out like IIO sysfs (polled, and buffered through a FIFO standing in
for /dev/iio:deviceN), and an MQTT topic fed by another client."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import ModelConfig, RuntimeConfig, Settings, SignalConfig, SourceConfig
from edge_agent.model import Model
from edge_agent.signal_pipeline import ChunkQueue, SignalCapture, SignalPipeline, run_offline
from edge_agent.signals import make_signal_source
from edge_agent.signals.base import Chunk, EndOfStream, SignalSource, SourceError
from edge_agent.signals.iio import IIOSource
from edge_agent.sinks.memory import MemorySink
from edge_agent.sinks.mqtt import Subscriber
from edge_agent.stats import StageStats

from .conftest import MODELS, ROOT, Broker, TopicRecorder, peak_rss_mb, wait_until

DATA = ROOT / ".cache" / "basicmotions"
MOTION = {"float": MODELS / "motion_float.tflite", "int8": MODELS / "motion_int8.tflite"}
#: the recordings strung together, in this order: each activity must come out as one event
ORDER = ["Running", "Standing", "Walking", "Badminton"]
IIO_NAMES = ["accel_x", "accel_y", "accel_z", "anglvel_x", "anglvel_y", "anglvel_z"]


def _train_module() -> Any:
    spec = importlib.util.spec_from_file_location("train_motion_model", ROOT / "scripts" / "train_motion_model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def stream() -> np.ndarray:
    """Held-out BasicMotions recordings (never trained on), one per activity, end to end: [400, 6]."""
    tm = _train_module()
    x, y = tm.load_ts(DATA / "BasicMotions_TEST.ts")
    return np.concatenate([x[int(np.flatnonzero(y == tm.LABELS.index(lab))[0])] for lab in ORDER])


def _signal(**kw: Any) -> SignalConfig:
    return SignalConfig(**{"events": {"smoothing": 2}, "predictions_hz": 0, **kw})


def _labels_in_order(events: list[dict[str, Any]]) -> list[str]:
    return [e["label"] for e in events if e["type"] == "new"]


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_csv_replay_gives_one_event_per_activity(kind: str, stream: np.ndarray, tmp_path: Path) -> None:
    csv = tmp_path / "watch.csv"
    csv.write_text(
        "t,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z\n"
        + "".join(f"{i / 10:.1f}," + ",".join(f"{v:.6f}" for v in row) + "\n" for i, row in enumerate(stream))
    )
    s = Settings(
        source=SourceConfig(uri=f"csv:{csv}", loop=False, realtime=False),
        model=ModelConfig(path=MOTION[kind]),
        signal=_signal(predictions_hz=100),
    )
    model = Model(s.model, RuntimeConfig(accelerator="cpu"), None, signal=True)
    try:
        run = run_offline(s, model)
    finally:
        model.close()
    assert run.samples == 400 and run.windows == (400 - 30) // 15 + 1  # window 30, hop 15: nothing lost
    assert _labels_in_order(run.events) == ORDER
    # predictions: one per window (10 Hz data, at most 100/s), each window fully inside a recording right
    right = sum(
        p["classes"][0]["label"] == ORDER[int(p["window"]["offset_s"] * 10 - 1) // 100]
        for p in run.predictions
        if p["classes"] and int(p["window"]["offset_s"] * 10) % 100 in range(30, 100)
    )
    inside = sum(1 for p in run.predictions if int(p["window"]["offset_s"] * 10) % 100 in range(30, 100))
    assert len(run.predictions) == run.windows and right / inside >= 0.9


def _spreadsheet(fmt: str, stream: np.ndarray) -> tuple[str, bytes]:
    """The recording as spreadsheets and loggers save it (file name, bytes)."""
    names = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
    rows = [[f"{v:.6f}" for v in row] for row in stream]
    if fmt == "excel-utf8":  # Excel's "CSV UTF-8": a byte-order mark, CRLF, a time column
        lines = [["timestamp", *names]] + [[f"{i / 10:.1f}", *r] for i, r in enumerate(rows)]
        return "watch.csv", b"\xef\xbb\xbf" + "".join(",".join(r) + "\r\n" for r in lines).encode()
    if fmt == "decimal-comma":  # Excel where a comma is the decimal mark: semicolons, unit in brackets
        lines = [["Time (s)", *names]] + [[f"{i / 10:.1f}", *r] for i, r in enumerate(rows)]
        return "watch.csv", "".join(";".join(c.replace(".", ",") for c in r) + "\n" for r in lines).encode()
    if fmt == "tab-iso-dates":  # a logger's tab-separated file with ISO dates
        lines = [["datetime", *names]] + [[f"2026-12-04T10:{i // 600:02d}:{i / 10 % 60:04.1f}", *r]
                                          for i, r in enumerate(rows)]
        return "watch.tsv", "".join("\t".join(r) + "\n" for r in lines).encode()
    assert fmt == "trailing-separators"  # an empty column after the last, on every line
    lines = [names, *rows]
    return "watch.csv", "".join(",".join(r) + ",\n" for r in lines).encode()


def _predict_peak_mb(path: Path, tmp_path: Path) -> tuple[dict[str, Any], float]:
    """`predict` on one recording: its summary, and the peak RSS of that process alone (wait4)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(tmp_path / "state")
    with open(tmp_path / "stderr", "w+") as err:
        p = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "predict", "--json", str(MOTION["float"]), str(path)],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=str(ROOT),
        )
        assert p.stdout is not None
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        assert p.returncode == 0, err.read()[-2000:]
    summary = next(json.loads(line)["summary"] for line in out.splitlines() if '"summary"' in line)
    return summary, usage.ru_maxrss / 1024


def test_a_long_csv_log_is_held_as_its_values_not_as_rows_of_text(tmp_path: Path) -> None:
    """A day of 100 Hz readings is 8.6 million rows. Held as Python rows of strings (about 130 bytes a
    cell), a 62 MB log of 2 million rows took `predict` to 1.1 GB of RSS, which a board has not got.
    The values are kept as 32-bit floats as each row is read: 600,000 rows of three columns peak
    within 60 MB of 1,000 rows (298 MB above them before), and every row is read."""
    rng = np.random.default_rng(3)
    peaks = {}
    for rows in (1_000, 600_000):
        path = tmp_path / f"log{rows}.csv"
        with open(path, "w") as f:
            f.write("time,ax,ay,az\n")
            table = np.column_stack([np.arange(rows) / 100, rng.normal(0, 1, (rows, 3))])
            np.savetxt(f, table, fmt="%.2f,%.4f,%.4f,%.4f")
        summary, peaks[rows] = _predict_peak_mb(path, tmp_path)
        assert summary["seconds"] == rows / 10, summary  # at the sensors' default 10 Hz: every row read
    assert peaks[600_000] - peaks[1_000] < 60, peaks


@pytest.mark.parametrize("fmt", ["excel-utf8", "decimal-comma", "tab-iso-dates", "trailing-separators"])
def test_csv_as_spreadsheets_save_it_gives_the_same_events(fmt: str, stream: np.ndarray, tmp_path: Path) -> None:
    name, data = _spreadsheet(fmt, stream)
    path = tmp_path / name
    path.write_bytes(data)
    s = Settings(
        source=SourceConfig(uri=str(path), loop=False, realtime=False),
        model=ModelConfig(path=MOTION["float"]),
        signal=_signal(),
    )
    model = Model(s.model, RuntimeConfig(accelerator="cpu"), None, signal=True)
    try:
        run = run_offline(s, model)
    finally:
        model.close()
    assert run.samples == 400 and _labels_in_order(run.events) == ORDER


def test_predict_names_the_cell_that_is_not_a_reading_and_a_model_that_does_not_fit(
    stream: np.ndarray, tmp_path: Path
) -> None:
    from .conftest import run_cli

    head = "ax,ay,az,gx,gy,gz\n" + "".join(",".join(f"{v:.5f}" for v in r) + "\n" for r in stream[:40])
    (tmp_path / "gap.csv").write_text(head + "0.1,0.2,,0.4,0.5,0.6\n")
    (tmp_path / "nan.csv").write_text(head + "0.1,0.2,0.3,nan,0.5,0.6\n")
    (tmp_path / "wide.csv").write_text(
        "ax,ay,az,gx,gy,gz,hr\n" + "".join(",".join(f"{v:.5f}" for v in r) + ",72\n" for r in stream[:40])
    )
    (tmp_path / "good.csv").write_text(head)
    r = run_cli("predict", "--json", str(MOTION["float"]),
                *(str(tmp_path / f) for f in ("gap.csv", "nan.csv", "wide.csv", "good.csv")))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "gap.csv: line 42, column 'az': '' is not a number" in r.stderr
    assert "nan.csv: line 42, column 'gx': 'nan' is not a number" in r.stderr
    assert "wide.csv: " in r.stderr and "does not hold whole frames of 7 values" in r.stderr
    summaries = [json.loads(line) for line in r.stdout.splitlines() if '"summary"' in line]
    assert [Path(d["file"]).name for d in summaries] == ["good.csv"] and summaries[0]["summary"]["windows"] == 1
    # the extra column left out by name: the same recording fits
    ok = run_cli("predict", "--json", str(MOTION["float"]), str(tmp_path / "wide.csv"),
                 "--set", 'signal.channels=["ax","ay","az","gx","gy","gz"]')
    assert ok.returncode == 0, ok.stderr


# --- serial ------------------------------------------------------------------------------------
class Pty:
    """A real pseudo-terminal pair; `link` is the stable name the agent opens (like /dev/serial/by-id/...)."""

    def __init__(self, link: Path):
        import tty

        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.slave_name = os.ttyname(slave)
        os.close(slave)
        self.link = link
        tmp = link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.slave_name)
        tmp.replace(link)

    def write_lines(self, lines: list[str], rate: float) -> None:
        for i, line in enumerate(lines):
            os.write(self.master, (line + "\n").encode())
            if i % 10 == 9:
                threading.Event().wait(10 / rate)

    def close(self) -> None:
        """The device goes away, and its name first (udev removes a /dev/serial/by-id link at unplug). Left
        pointing at the closed terminal's number, the name could lead a reopen to that number given to
        another test's terminal meanwhile (pytest-xdist runs two at once): it read that test's bytes."""
        if self.master < 0:
            return
        if self.link.is_symlink() and os.readlink(self.link) == self.slave_name:
            self.link.unlink()
        os.close(self.master)
        self.master = -1


class Recorder(TopicRecorder):
    def __init__(self, broker: Broker, device: str):
        self.events: list[dict[str, Any]] = []
        self.health: list[dict[str, Any]] = []
        super().__init__(Subscriber(broker.mqtt(), [f"edge/{device}/events", f"edge/{device}/health"]))

    def on_message(self, topic: str, doc: Any, arrived: float) -> None:
        (self.events if topic.endswith("/events") else self.health).append(doc)

    def labels(self) -> list[str]:
        return _labels_in_order(list(self.events))

    def source(self) -> dict[str, Any]:
        return self.health[-1]["source"] if self.health else {}


def _agent_env(broker: Broker) -> dict[str, str]:
    return {
        **broker.env(),
        "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5",
        "EDGE_AGENT_SOURCE__REOPEN_MAX_S": "1",
        "EDGE_AGENT_SIGNAL__EVENTS__SMOOTHING": "2",
        "EDGE_AGENT_SIGNAL__PREDICTIONS_HZ": "0",
    }


def _start_agent(  # type: ignore[no-untyped-def]
    agent_factory, broker: Broker, rec: Recorder, device: str, source: str, model: Path, *sets: str
) -> Any:
    args = ["run", "--device-id", device, "--source", source, "--model", str(model)]
    for item in sets:
        args += ["--set", item]
    agent = agent_factory(args, env=_agent_env(broker))
    wait_until(lambda: rec.source().get("state") == "running", 30, what=f"{source} open")
    return agent


def test_serial_port_through_the_agent_with_device_loss_and_return(  # type: ignore[no-untyped-def]
    stream: np.ndarray, tmp_path: Path, broker: Broker, agent_factory
) -> None:
    link = tmp_path / "ttyWATCH"
    pty = Pty(link)
    rec = Recorder(broker, "watch")
    try:
        _start_agent(agent_factory, broker, rec, "watch", f"serial:{link}", MOTION["int8"], "signal.rate=100")
        # a boot message and a header with a time column, as a microcontroller's sketch prints them
        csv_lines = ["Calibrating...", "ms,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z"] + [
            f"{10 * i}," + ",".join(f"{v:.6f}" for v in r) for i, r in enumerate(stream)
        ]
        pty.write_lines(csv_lines, rate=100)
        wait_until(lambda: rec.labels() == ORDER, 20, what=f"{ORDER} as events, got {rec.labels()}")
        wait_until(lambda: rec.source().get("samples", 0) == 400, 5, what="every reading counted")
        # the header names the channels (the time column left out) and is no lost reading; the boot message is
        assert rec.source()["dropped_samples"] == 1
        assert rec.source()["channels"] == ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]

        pty.close()  # the device goes away, and its name with it
        wait_until(lambda: rec.source().get("state") in ("reconnecting", "opening"), 10, what="the loss noticed")
        threading.Event().wait(1.5)  # a reopen attempt or two finds nothing
        pty = Pty(link)  # ... and comes back under the same name
        wait_until(
            lambda: rec.source().get("state") == "running" and rec.source().get("reopens") == 1,
            15,
            what="the port reopened",
        )
        before = len(rec.events)
        keys = ["ax", "ay", "az", "gx", "gy", "gz"]
        pty.write_lines([json.dumps(dict(zip(keys, map(float, r), strict=True))) for r in stream], rate=100)
        wait_until(lambda: _labels_in_order(rec.events[before:]) == ORDER, 20, what="events after the return")
        src = rec.source()
        assert src["gaps"] >= 1 and src["reopens"] == 1
    finally:
        rec.close()
        pty.close()


# --- IIO ---------------------------------------------------------------------------------------------
def _iio_dir(base: Path, raw: dict[str, int]) -> Path:
    base.mkdir(parents=True)
    for name, v in raw.items():
        (base / f"in_{name}_raw").write_text(f"{v}\n")
    (base / "in_accel_scale").write_text("0.5\n")
    (base / "in_accel_x_offset").write_text("2\n")
    (base / "in_anglvel_scale").write_text("0.001\n")
    (base / "name").write_text("test-imu\n")
    return base


def _capture(settings: Settings) -> tuple[SignalCapture, ChunkQueue, threading.Event]:
    q = ChunkQueue(100_000)
    stop = threading.Event()
    cap = SignalCapture(lambda: make_signal_source(settings), settings, q, StageStats("capture"), stop)
    cap.start()
    return cap, q, stop


class _SetBack(SignalSource):
    """A live source on a wall clock that is set back an hour after its tenth reading, as a board without
    a real-time clock sets it on reaching a time server (the wall clock itself is out of a test's reach)."""

    kind = "setback"

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, 10.0)

    def open(self) -> None:
        self.n = 0

    def read(self, timeout: float) -> Chunk | None:
        self.n += 1
        wall = 1_800_000_000.0 + self.n / self.rate - (3600.0 if self.n > 10 else 0.0)
        return Chunk(np.full((1, 1), float(self.n), np.float32), wall, time.monotonic())


def test_a_live_stream_follows_its_wall_clock_set_back() -> None:
    """A chunk stamped a little before the previous one ended was read in a burst and keeps its samples'
    spacing; one stamped an hour before it follows the clock, instead of the stream going on an hour
    ahead of it for as long as it runs."""
    s = Settings(source=SourceConfig(uri="csv:setback.csv"), signal=SignalConfig(rate=10))
    q = ChunkQueue(100_000)
    stop = threading.Event()
    cap = SignalCapture(lambda: _SetBack("setback:", 10.0), s, q, StageStats("capture"), stop)
    cap.start()
    try:
        stamps: dict[int, float] = {}
        while len(stamps) < 15:
            c = wait_until(lambda: q.get(0.1), 5, what="a reading")
            if hasattr(c, "samples"):
                stamps[int(c.samples[0, 0])] = c.ts
        assert stamps[10] == pytest.approx(1_800_000_000.0 + 1.0)
        assert stamps[11] == pytest.approx(1_800_000_000.0 + 1.1 - 3600.0)
        assert stamps[15] - stamps[11] == pytest.approx(0.4)
    finally:
        stop.set()


class _Recorded(SignalSource):
    """The held-out readings at 10 Hz, read as fast as they are taken, stamped by a wall clock that is
    set back an hour halfway through."""

    kind = "recorded"
    live = False

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        raise NotImplementedError  # made by the test, not from a URI

    def __init__(self, rows: np.ndarray):
        super().__init__("recorded:", 10.0, rows.shape[1])
        self.rows = rows.astype(np.float32)

    def open(self) -> None:
        self.n = 0

    def read(self, timeout: float) -> Chunk | None:
        if self.n >= len(self.rows):
            raise EndOfStream(self.uri)
        x = self.rows[self.n : self.n + 10]
        wall = 1_800_000_000.0 + self.n / self.rate - (3600.0 if self.n >= len(self.rows) // 2 else 0.0)
        self.n += len(x)
        return Chunk(x, wall, time.monotonic())


def test_window_predictions_go_on_when_the_wall_clock_is_set_back(stream: np.ndarray) -> None:
    """The predictions' rate limit counts from the last one published: with the clock set back an hour,
    it starts over, instead of holding every prediction back until the clock has caught up."""
    s = Settings(source=SourceConfig(uri="csv:recorded.csv", loop=False, realtime=False),
                 model=ModelConfig(path=MOTION["float"]), signal=_signal(predictions_hz=1))
    model = Model(s.model, RuntimeConfig(accelerator="cpu"), None, signal=True)
    pipe, sink = SignalPipeline.standalone(s, lambda: model)
    pipe.capture.factory = lambda: _Recorded(stream)
    try:
        pipe.start()
        wait_until(lambda: pipe.capture_stats.state == "finished" and pipe.post_stats.count == pipe.windows
                   and pipe.queue.empty(), 60, what="the recording through")
    finally:
        pipe.stop.set()
        pipe.join(2.0)
        model.close()
    stamps = [json.loads(m.payload)["ts"] for m in sink.messages if m.topic == "predictions"]
    after = [t for t in stamps if t < 1_800_000_000.0 - 1800.0]
    assert pipe.windows == (400 - 30) // 15 + 1 and len(stamps) == pipe.windows, (len(stamps), pipe.windows)
    assert len(after) >= 10, stamps  # the second half's windows, 1.5 s apart: each published


def test_iio_sysfs_polling_scales_counts_and_survives_removal(tmp_path: Path) -> None:
    dev = _iio_dir(tmp_path / "iio:device0", {"accel_x": 100, "accel_y": -4, "anglvel_z": 3000})
    s = Settings(
        source=SourceConfig(uri=f"iio:{dev}", reopen_min_s=0.1, reopen_max_s=0.2), signal=SignalConfig(rate=50)
    )
    cap, q, stop = _capture(s)
    try:
        c = wait_until(lambda: q.get(0.1), 5, what="a reading")
        while not hasattr(c, "samples"):
            c = wait_until(lambda: q.get(0.1), 5, what="a reading")
        assert cap.channel_names == ("accel_x", "accel_y", "anglvel_z")
        np.testing.assert_allclose(c.samples[0], [(100 + 2) * 0.5, -4 * 0.5, 3000 * 0.001], rtol=1e-6)
        n0, t0 = cap.samples, time.monotonic()
        threading.Event().wait(1.0)
        rate = (cap.samples - n0) / (time.monotonic() - t0)
        assert 40 < rate < 55
        shutil.move(dev, tmp_path / "gone")  # unplugged
        wait_until(lambda: cap.stats.state == "reconnecting", 5, what="the loss noticed")
        shutil.move(tmp_path / "gone", dev)
        wait_until(lambda: cap.stats.state == "running" and cap.reopens == 1, 5, what="the device back")
        assert cap.info()["gaps"] >= 1
    finally:
        stop.set()
        cap.join(2)


def test_one_iio_sensor_under_its_three_names_is_one_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An IIO sensor goes by its driver's name (`iio:mpu6050`), its node's (`iio:iio:device1`) and its
    sysfs path. Two pipelines that named it two ways were both let open it, where two that named it alike are
    refused: each name is now the sensor's sysfs directory where the board has it. (A fake sysfs.)"""
    import pydantic

    import edge_agent.signals.iio as iio
    from edge_agent.config import exclusive_device

    root = tmp_path / "devices"
    monkeypatch.setattr(iio, "_IIO_ROOT", str(root))
    (_iio_dir(root / "iio:device0", {"pressure": 1000}) / "name").write_text("bmp280\n")
    imu = _iio_dir(root / "iio:device1", {"accel_x": 100})
    (imu / "name").write_text("mpu6050\n")
    names = {exclusive_device(u) for u in ("iio:mpu6050", "iio:iio:device1", f"iio:{imu}")}
    assert names == {f"iio:{os.path.realpath(imu)}"}
    assert exclusive_device("iio:bmp280") != exclusive_device("iio:mpu6050")
    assert exclusive_device("iio:lsm6ds3") == "iio:lsm6ds3"  # not on this board now: as written
    with pytest.raises(pydantic.ValidationError, match=r"pipelines\[b\].source.uri: .* already used by pipeline 'a'"):
        Settings(pipelines=[{"name": "a", "source": {"uri": "iio:mpu6050"}},
                            {"name": "b", "source": {"uri": "iio:iio:device1"}}])


def test_an_iio_sensor_named_by_its_driver_is_found_whatever_its_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`iio:mpu6050` is the device whose `name` is mpu6050, looked up at each open: the numbers follow
    the order drivers probed at boot, and two sensors can trade them. A name two devices share, or none
    has, is an error that lists what there is. (A fake sysfs: no IIO device can be made here.)"""
    import edge_agent.signals.iio as iio

    root = tmp_path / "devices"
    monkeypatch.setattr(iio, "_IIO_ROOT", str(root))
    other = _iio_dir(root / "iio:device0", {"pressure": 1000})
    (other / "name").write_text("bmp280\n")
    imu = _iio_dir(root / "iio:device1", {"accel_x": 100})
    (imu / "name").write_text("mpu6050\n")
    s = Settings(source=SourceConfig(uri="iio:mpu6050", reopen_min_s=0.1, reopen_max_s=0.2),
                 signal=SignalConfig(rate=50))
    cap, q, stop = _capture(s)
    try:
        wait_until(lambda: cap.stats.state == "running" and cap.channel_names == ("accel_x",), 5,
                   what="the IMU opened by its name")
        # unplugged, and back after the other sensor took its number: the IMU is now iio:device0
        shutil.move(imu, tmp_path / "imu")
        shutil.move(other, root / "iio:device1")
        wait_until(lambda: cap.stats.state == "reconnecting", 5, what="the loss noticed")
        shutil.move(tmp_path / "imu", root / "iio:device0")
        wait_until(lambda: cap.stats.state == "running" and cap.reopens == 1, 5, what="the IMU found again")
        assert cap.channel_names == ("accel_x",)
        assert cap.source is not None and cap.source.base == root / "iio:device0"  # type: ignore[attr-defined]
        (root / "iio:device0" / "in_accel_x_raw").write_text("40\n")  # the IMU's reading, read from its new place
        wait_until(lambda: (c := q.get(0.1)) is not None and hasattr(c, "samples") and c.samples[-1][0] == 21.0,
                   5, what="the IMU's reading, (40 + 2) x 0.5")
    finally:
        stop.set()
        cap.join(2)
    with pytest.raises(SourceError, match=r"no IIO device named 'bme280' \(there are: iio:device0 \(mpu6050\), "
                                          r"iio:device1 \(bmp280\)\)"):
        IIOSource("iio:bme280", "bme280", 50, None, None).open()
    (root / "iio:device1" / "name").write_text("mpu6050\n")
    with pytest.raises(SourceError, match=r"2 IIO devices are named 'mpu6050' \(iio:device0, iio:device1\)"):
        IIOSource("iio:mpu6050", "mpu6050", 50, None, None).open()


def test_iio_missed_polls_are_counted_not_invented(tmp_path: Path) -> None:
    dev = _iio_dir(tmp_path / "iio:device1", {"accel_x": 1})
    src = IIOSource("iio", str(dev), 100, None, None)
    src.open()
    assert src.read(1.0) is not None
    gaps, dropped = src.gaps, src.dropped  # a loaded machine may have been late for the first read already
    t0 = time.monotonic()
    threading.Event().wait(0.2)  # a stall of ~20 periods
    assert src.read(1.0) is not None
    stalled = time.monotonic() - t0
    # one gap, counting the periods the stall took: not fewer, and never more than the time held
    assert src.gaps - gaps == 1 and 15 <= src.dropped - dropped <= stalled * 100 + 1, (src.dropped - dropped, stalled)


def _scan_elements(dev: Path, names: list[str]) -> None:
    scan = dev / "scan_elements"
    scan.mkdir()
    for i, n in enumerate(names):
        (scan / f"in_{n}_en").write_text("0\n")
        (scan / f"in_{n}_index").write_text(f"{i}\n")
        (scan / f"in_{n}_type").write_text("le:s16/16>>0\n")
    (scan / "in_timestamp_en").write_text("0\n")
    (dev / "buffer").mkdir()
    (dev / "buffer" / "enable").write_text("0\n")
    (dev / "buffer" / "length").write_text("0\n")


def _events(sink: MemorySink) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in list(sink.messages) if m.topic == "events"]


@pytest.fixture
def motion_model() -> Iterator[Model]:
    m = Model(ModelConfig(path=MOTION["int8"]), RuntimeConfig(accelerator="cpu"), None, signal=True)
    yield m
    m.close()


def test_iio_buffered_character_device_feeds_the_model(stream: np.ndarray, tmp_path: Path, motion_model: Model) -> None:
    dev = tmp_path / "iio:device2"
    _iio_dir(dev, dict.fromkeys(IIO_NAMES, 0))
    (dev / "in_accel_x_offset").unlink()
    _scan_elements(dev, IIO_NAMES)
    fifo = tmp_path / "dev-iio-device2"
    os.mkfifo(fifo)
    hold = os.open(fifo, os.O_RDWR)  # the kernel side: always there, like a character device
    s = Settings(
        source=SourceConfig(uri=f"iio:{dev}"), signal=_signal(rate=100, channels=IIO_NAMES, iio_device=str(fifo))
    )
    pipe, sink = SignalPipeline.standalone(s, lambda: motion_model)
    stop = pipe.stop
    pipe.start()
    try:
        wait_until(lambda: (dev / "buffer" / "enable").read_text().strip() == "1", 5, what="the buffer enabled")
        assert all((dev / "scan_elements" / f"in_{n}_en").read_text().strip() == "1" for n in IIO_NAMES)
        assert (dev / "scan_elements" / "in_timestamp_en").read_text().strip() == "0"
        # physical -> raw: acc / 0.5 and gyro / 0.001, as int16 records in scan index order
        raw = np.round(stream / np.array([0.5] * 3 + [0.001] * 3)).astype("<i2")
        assert np.abs(raw).max() < 32767
        for i in range(0, len(raw), 37):  # uneven writes: records split across reads
            os.write(hold, raw[i : i + 37].tobytes())
        wait_until(lambda: pipe.capture.samples == 400, 10, what="every record read")
        wait_until(lambda: _labels_in_order(_events(sink)) == ORDER, 10, what=f"{ORDER}: {_events(sink)}")
        assert pipe.capture.info()["dropped_samples"] == 0
    finally:
        stop.set()
        pipe.join(2)
        os.close(hold)
    assert (dev / "buffer" / "enable").read_text().strip() == "0"  # released on close


# --- MQTT topic -------------------------------------------------------------------------------
def test_readings_from_another_client_on_the_broker(  # type: ignore[no-untyped-def]
    stream: np.ndarray, broker: Broker, agent_factory
) -> None:
    rec = Recorder(broker, "hub")
    pub = Subscriber(broker.mqtt(), [], client_id="watch-publisher")
    pub.start(10)
    try:
        channels = 'signal.channels=["ax","ay","az","gx","gy","gz"]'
        _start_agent(agent_factory, broker, rec, "hub", "mqtt:sensors/watch1/imu", MOTION["float"], channels)
        keys = ["gz", "ay", "ax", "az", "gx", "gy"]  # key order differs from the model's: names decide
        half = 200
        for r in stream[:half]:  # one reading per message ...
            pub.publish(
                "sensors/watch1/imu",
                json.dumps({k: float(r[["ax", "ay", "az", "gx", "gy", "gz"].index(k)]) for k in keys}).encode(),
                qos=1,
            )
        rest = stream[half:]
        for i in range(0, len(rest), 50):  # ... or a batch
            pub.publish("sensors/watch1/imu", json.dumps({"samples": rest[i : i + 50].tolist()}).encode(), qos=1)
        pub.publish("sensors/watch1/imu", b"not a reading", qos=1)
        wait_until(lambda: rec.labels() == ORDER, 20, what=f"{ORDER} as events, got {rec.labels()}")
        wait_until(
            lambda: rec.source().get("samples") == 400 and rec.source().get("dropped_samples") == 1,
            5,
            what="400 samples and one bad message counted",
        )
    finally:
        pub.stop()
        rec.close()


def test_a_device_that_floods_the_topic_costs_readings_not_the_agent(  # type: ignore[no-untyped-def]
    stream: np.ndarray, broker: Broker, agent_factory
) -> None:
    """Another device decides how fast readings come and how many a message holds. One that sent large
    batches faster than the agent parses them grew it by 1.4 GB in 20 s (measured here) and held its
    capture loop until the watchdog restarted it. Now a batch of more than MAX_BATCH readings is not
    read (each counted as dropped), what is held unread is bounded, and what cannot be held is counted:
    the agent's peak memory stays put, and it goes on reading."""
    from edge_agent.signals.mqtt_topic import MAX_BATCH

    rec = Recorder(broker, "hub")
    pub = Subscriber(broker.mqtt(), [], client_id="flooding-device")
    pub.start(10)
    topic = "sensors/watch1/imu"
    try:
        channels = 'signal.channels=["ax","ay","az","gx","gy","gz"]'
        agent = _start_agent(agent_factory, broker, rec, "hub", f"mqtt:{topic}", MOTION["float"], channels)
        pub.publish(topic, json.dumps({"samples": [[0.5] * 6] * (MAX_BATCH + 1)}).encode(), qos=1)
        wait_until(lambda: rec.source().get("dropped_samples") == MAX_BATCH + 1, 10, what="the batch's readings lost")
        before = peak_rss_mb(agent.proc.pid)
        batch = json.dumps({"samples": np.tile(stream[:50], (40, 1)).tolist()}).encode()  # 2,000 readings
        for _ in range(3000):  # 300 MB, as fast as the socket takes it
            pub.publish(topic, batch, qos=0)
        wait_until(lambda: rec.source().get("dropped_samples", 0) > MAX_BATCH + 1, 10, what="the flood's losses")
        read = rec.source()["samples"]
        wait_until(lambda: rec.source()["samples"] > read, 10, what="reading to go on")
        grew = peak_rss_mb(agent.proc.pid) - before
        assert grew < 100, f"peak RSS grew {grew:.0f} MB"
        assert agent.proc.poll() is None and "watchdog" not in agent.log()
    finally:
        pub.stop()
        rec.close()


def test_check_opens_a_signal_source_and_reports_its_channels(stream: np.ndarray, tmp_path: Path) -> None:
    from .conftest import run_cli

    csv = tmp_path / "watch.csv"
    csv.write_text("ax,ay,az,gx,gy,gz\n" + "\n".join(",".join(f"{v:.5f}" for v in r) for r in stream[:40]) + "\n")
    r = run_cli("check", "--offline", "--source", f"csv:{csv}", "--model", str(MOTION["int8"]),
                "--set", "signal.rate=10")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["problems"] == [] and doc["model"]["task"] == "classification"
    assert doc["source"]["channels"] == ["ax", "ay", "az", "gx", "gy", "gz"] and doc["source"]["rate"] == 10
    assert doc["source"]["first_reading"] == pytest.approx(stream[0].tolist(), abs=1e-5)
    bad = run_cli("check", "--offline", "--source", f"iio:{tmp_path / 'none'}", "--model", str(MOTION["int8"]))
    assert bad.returncode == 1 and "IIO device" in json.loads(bad.stdout)["problems"][0]


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_a_serial_device_may_end_its_lines_with_a_carriage_return(tmp_path: Path, ending: str) -> None:
    """Devices end their lines with a line feed, CR LF or (many industrial sensors, a sketch that prints
    '\\r') a carriage return alone. Read by line feeds, each read of the last kind was one line of many
    readings that parsed as nothing: every reading was lost, counted as dropped. A line cut across two
    reads is one reading."""
    from edge_agent.signals.serial_port import SerialSource

    pty = Pty(tmp_path / "ttyCR")
    src = SerialSource(f"serial:{pty.link}", str(pty.link), 115200, 100.0, None)
    src.open()
    try:
        lines = ["booting", "a,b,c"] + [f"{i},{i + 0.5},{-i}" for i in range(200)]
        text = "".join(line + ending for line in lines).encode()
        cut = text.index(b"100,") + 2  # a reading cut in two
        os.write(pty.master, text[:cut])
        rows = []
        while (chunk := src.read(0.5)) is not None:
            rows.extend(chunk.samples.tolist())
        os.write(pty.master, text[cut:])
        while (chunk := src.read(0.5)) is not None:
            rows.extend(chunk.samples.tolist())
        assert rows == [[float(i), i + 0.5, float(-i)] for i in range(200)]
        assert src.dropped == 1 and src.channel_names == ("a", "b", "c")  # the boot message only
    finally:
        src.close()
        pty.close()


def test_a_serial_port_that_is_not_there_says_which_ones_are(tmp_path: Path) -> None:
    """An Arduino is /dev/ttyACM0 or ttyACM1, a USB adapter ttyUSB0 or 1, by the order they were found in:
    one that is not there names the ports that are (and udev's names for them), or that there are none."""
    from edge_agent.signals.base import SourceError
    from edge_agent.signals.serial_port import SerialSource, present_ports

    dev = tmp_path / "dev"
    (dev / "serial" / "by-id").mkdir(parents=True)
    for name in ("ttyACM0", "ttyUSB1", "serial/by-id/usb-Arduino_Uno_75830-if00"):
        (dev / name).touch()
    assert present_ports(str(dev)) == (f"present: {dev}/ttyACM0, {dev}/ttyUSB1; by id: "
                                       "usb-Arduino_Uno_75830-if00")
    assert present_ports(str(tmp_path / "none")).startswith("no /dev/ttyUSB* or /dev/ttyACM* at all")
    gone = tmp_path / "ttyUSB7"
    with pytest.raises(SourceError, match=rf"cannot open serial port {gone}: .*\((present: |no /dev/ttyUSB)"):
        SerialSource(f"serial:{gone}", str(gone), 115200, 100.0, None).open()
