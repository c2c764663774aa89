"""Backends are one file plus one registry entry: every backend file is registered, and a new one,
added to a copy of the package as one new file and an edit of its registry module alone, works
end to end through the real commands (`check`, `run`)."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import edge_agent
from edge_agent.postprocess.decoders import DECODERS, Decoder
from edge_agent.runtime import registry
from edge_agent.runtime.base import Accelerator
from edge_agent.signals import SIGNALS, SignalSource
from edge_agent.sinks import SINKS, Sink
from edge_agent.sources import SOURCES, Source

from .conftest import ROOT

PKG = Path(edge_agent.__file__).parent


def _modules(pkg: ModuleType) -> list[ModuleType]:
    return [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]


def _concrete(mod: ModuleType, base: type) -> list[type]:
    return [
        c
        for _, c in inspect.getmembers(mod, inspect.isclass)
        if issubclass(c, base) and c.__module__ == mod.__name__ and not inspect.isabstract(c)
    ]


@pytest.mark.parametrize(
    ("package", "base", "registered"),
    [
        ("edge_agent.sources", Source, SOURCES),
        ("edge_agent.signals", SignalSource, SIGNALS),
        ("edge_agent.sinks", Sink, list(SINKS.values())),
        ("edge_agent.postprocess.decoders", Decoder, DECODERS),
    ],
)
def test_every_backend_class_is_in_its_registry(package: str, base: type, registered: list[type]) -> None:
    found = [c for m in _modules(importlib.import_module(package)) for c in _concrete(m, base)]
    assert found, package
    assert sorted(c.__name__ for c in found) == sorted(c.__name__ for c in registered)
    assert len({getattr(c, "kind", getattr(c, "name", c.__name__)) for c in registered}) == len(registered)


@pytest.mark.parametrize(("registered", "common"), [(SOURCES, "FRAME_SETTINGS"), (SIGNALS, "SIGNAL_SETTINGS")])
def test_every_source_kind_declares_the_settings_it_reads(registered: list[type], common: str) -> None:
    """A `source.*` setting a kind does not declare is refused for it (set, it would never be read): so
    each kind's file reads only what it declares (`options`) and what every kind of its sort reads."""
    import re

    from edge_agent.config import SourceConfig
    from edge_agent.signals import base as signal_base
    from edge_agent.sources import base as frame_base

    every = getattr(frame_base if registered is SOURCES else signal_base, common)
    assert every <= set(SourceConfig.model_fields)
    for cls in registered:
        # its file, and those of the classes it is built on (a serial port's readings)
        code = "".join(inspect.getsource(m) for m in {inspect.getmodule(c) for c in cls.__mro__}
                       if m is not None and m.__name__.startswith("edge_agent."))
        read = set(re.findall(r"\b(?:cfg|source)\.(\w+)", code)) & set(SourceConfig.model_fields)
        assert cls.options <= set(SourceConfig.model_fields), cls
        assert read <= every | cls.options, (cls.__name__, sorted(read - every - cls.options))
        if registered is SIGNALS:  # and the settings of `signal` only some kinds read
            own = set(re.findall(r"\bsignal\.(\w+)", code)) & signal_base.SIGNAL_KIND_SETTINGS
            assert cls.signal_options <= signal_base.SIGNAL_KIND_SETTINGS, cls
            assert own <= cls.signal_options, (cls.__name__, sorted(own - cls.signal_options))
            if cls.steady:  # its capture reopens it after read_timeout_s without samples (signal_pipeline)
                assert "read_timeout_s" in cls.options, cls
    assert {k for cls in registered for k in cls.options} - every, "no kind reads a setting of its own"


def test_every_accelerator_file_is_in_the_registry() -> None:
    import edge_agent.runtime as rt

    declared = [m.ACCELERATOR for m in _modules(rt) if isinstance(getattr(m, "ACCELERATOR", None), Accelerator)]
    assert {a.name for a in declared} == set(registry.BACKENDS) and registry.ACCELERATORS[-1].name == "cpu"
    assert registry.accelerator_names() == ("auto", *(a.name for a in registry.ACCELERATORS))


# --- a new backend in a copy of the package --------------------------------------------------------
@dataclass(frozen=True)
class NewBackend:
    file: str  # path inside the package
    code: str
    registry: str  # the registry module, inside the package
    imports: tuple[str, str]  # (anchor, replacement) for the import
    entry: tuple[str, str]  # (anchor, replacement) for the registry entry


NOISE = NewBackend(
    "sources/noise.py",
    '''"""Seeded noise frames: `noise:SEED`."""

from __future__ import annotations

import numpy as np

from edge_agent.config import SourceConfig
from edge_agent.sources.base import Source


class NoiseSource(Source):
    kind = "noise"
    live = False

    @classmethod
    def claims(cls, uri: str) -> bool:
        return uri.startswith("noise:")

    @classmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        return cls(uri)

    def open(self) -> None:
        self.rng = np.random.default_rng(int(self.uri.split(":")[1]))

    def grab(self) -> None:
        pass

    def retrieve(self) -> np.ndarray:
        return self.rng.integers(0, 255, (200, 300, 3), np.uint8)
''',
    "sources/__init__.py",
    (
        "from edge_agent.sources.images import",
        "from edge_agent.sources.noise import NoiseSource\nfrom edge_agent.sources.images import",
    ),
    ("    SyntheticSource,\n", "    SyntheticSource,\n    NoiseSource,\n"),
)
SAW = NewBackend(
    "signals/saw.py",
    '''"""A sawtooth on every channel: `saw:CHANNELS`."""

from __future__ import annotations

import time

import numpy as np

from edge_agent.config import Settings
from edge_agent.signals.base import Chunk, SignalSource


class SawSource(SignalSource):
    kind = "saw"

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, cls.default_rate(s), int(arg))

    def open(self) -> None:
        self.n = 0

    def read(self, timeout: float) -> Chunk | None:
        self.n += 1
        return Chunk(np.full((1, self.channels), self.n % 7, np.float32), time.time(), time.monotonic())
''',
    "signals/__init__.py",
    (
        "from edge_agent.signals.wav import",
        "from edge_agent.signals.saw import SawSource\nfrom edge_agent.signals.wav import",
    ),
    ("    CsvSource,\n]", "    CsvSource,\n    SawSource,\n]"),
)
TALLY = NewBackend(
    "postprocess/decoders/tally.py",
    '''"""Any two-output anchor model, as the number of anchors above the threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.postprocess.decoders.base import Decoder, ModelIO
from edge_agent.preprocess import Resize
from edge_agent.results import RawOutput, Result


class TallyDecoder(Decoder):
    task, layout = "raw", "tally"

    @classmethod
    def matches(cls, io: ModelIO) -> bool:
        return len(io.outputs) == 2

    def __call__(self, outs: Sequence[np.ndarray], rs: Resize) -> Result:
        n = float((np.asarray(outs[1]) > 0).sum())
        return Result(task="raw", outputs=(RawOutput("tally", (1,), [n]),))
''',
    "postprocess/decoders/__init__.py",
    (
        "from edge_agent.postprocess.decoders.yolo import",
        "from edge_agent.postprocess.decoders.tally import TallyDecoder\n"
        "from edge_agent.postprocess.decoders.yolo import",
    ),
    ("DECODERS: list[type[Decoder]] = [\n", "DECODERS: list[type[Decoder]] = [\n    TallyDecoder,\n"),
)
TWIN = NewBackend(
    "runtime/twin.py",
    '''"""The CPU interpreter under another name, with one thread: stands in for a new accelerator."""

from __future__ import annotations

from pathlib import Path

from edge_agent.runtime.base import Accelerator, Backend
from edge_agent.runtime.cpu import InterpreterBackend


class TwinBackend(InterpreterBackend):
    kind = "twin"


def open_twin(path: Path, threads: int, options: dict[str, str]) -> Backend:
    return TwinBackend(path, 1)


ACCELERATOR = Accelerator("twin", open_twin, lambda: None)
''',
    "runtime/registry.py",
    (
        "from edge_agent.runtime import armnn,",
        "from edge_agent.runtime import twin\nfrom edge_agent.runtime import armnn,",
    ),
    ("ACCELERATORS: list[Accelerator] = [\n", "ACCELERATORS: list[Accelerator] = [\n    twin.ACCELERATOR,\n"),
)
JSONL = NewBackend(
    "sinks/jsonl.py",
    '''"""Every message as one JSON line in a file beside the state directory."""

from __future__ import annotations

import json

from edge_agent.sinks.base import LocalSink, Message, Sink, SinkContext


class JsonlSink(LocalSink):
    name = "jsonl"

    @classmethod
    def create(cls, ctx: SinkContext) -> Sink:
        sink = cls()
        sink.path = ctx.settings.state_dir / "messages.jsonl"
        return sink

    def deliver(self, msg: Message) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"topic": msg.topic, "payload": msg.payload.decode()}) + "\\n")
''',
    "sinks/__init__.py",
    (
        "from edge_agent.sinks.memory import",
        "from edge_agent.sinks.jsonl import JsonlSink\nfrom edge_agent.sinks.memory import",
    ),
    ("(MqttSink, StdoutSink, MemorySink)", "(MqttSink, StdoutSink, MemorySink, JsonlSink)"),
)


def _copy_with(new: NewBackend, tmp: Path) -> Path:
    """A copy of the package with the new file and its registry entry, and nothing else changed."""
    work = tmp / "work"
    shutil.copytree(PKG, work / "edge_agent", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "models").symlink_to(ROOT / "models")
    (work / "edge_agent" / new.file).write_text(new.code)
    reg = work / "edge_agent" / new.registry
    text = reg.read_text()
    for anchor, repl in (new.imports, new.entry):
        assert text.count(anchor) == 1, anchor
        text = text.replace(anchor, repl)
    reg.write_text(text)
    changed = [
        str(p.relative_to(work / "edge_agent"))
        for p in (work / "edge_agent").rglob("*.py")
        if not (PKG / p.relative_to(work / "edge_agent")).is_file()
        or (PKG / p.relative_to(work / "edge_agent")).read_bytes() != p.read_bytes()
    ]
    assert sorted(changed) == sorted([new.file, new.registry])
    return work


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["PYTHONPATH"] = str(work)
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=180, env=env, cwd=work
    )


def test_a_new_frame_source_kind(tmp_path: Path) -> None:
    work = _copy_with(NOISE, tmp_path)
    r = _cli(work, "check", "--offline", "--source", "noise:7", "--accelerator", "cpu")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["problems"] == [], r.stdout + r.stderr
    assert doc["source"]["uri"] == "noise:noise:7" and doc["source"]["frame"] == [300, 200]
    assert "detections" in doc["first_inference"], doc["first_inference"]


def test_a_new_signal_source_kind(tmp_path: Path) -> None:
    work = _copy_with(SAW, tmp_path)
    motion = ROOT / "models" / "motion_int8.tflite"
    r = _cli(work, "check", "--offline", "--source", "saw:6", "--model", str(motion), "--set", "signal.rate=10")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["problems"] == [], r.stdout + r.stderr
    assert doc["source"]["uri"] == "saw:6" and doc["source"]["first_reading"] == [1.0] * 6


def test_a_new_decoder(tmp_path: Path) -> None:
    work = _copy_with(TALLY, tmp_path)
    r = _cli(work, "check", "--offline", "--source", "synthetic", "--accelerator", "cpu")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["problems"] == [], r.stdout + r.stderr
    assert doc["model"]["layout"] == "tally" and doc["first_inference"]["outputs"][0]["name"] == "tally"


def test_a_new_accelerator(tmp_path: Path) -> None:
    work = _copy_with(TWIN, tmp_path)
    r = _cli(work, "check", "--offline", "--source", "synthetic", "--accelerator", "twin")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["problems"] == [], r.stdout + r.stderr
    assert doc["accelerator"]["selected"] == "twin", doc["accelerator"]
    assert doc["accelerator"]["candidates"][0]["backend"] == "twin"
    auto = json.loads(_cli(work, "check", "--offline", "--source", "synthetic", "--accelerator", "auto").stdout)
    assert auto["accelerator"]["selected"] == "twin"  # first in the registry, so first in `auto`'s order
    unknown = _cli(work, "check", "--offline", "--accelerator", "twins")
    assert unknown.returncode == 2 and "twin" in unknown.stderr


def test_a_new_sink(tmp_path: Path) -> None:
    work = _copy_with(JSONL, tmp_path)
    state = tmp_path / "state"
    r = _cli(
        work, "run", "--sink", "jsonl", "--seconds", "4", "--source", "synthetic", "--accelerator", "cpu",
        "--set", f"state_dir={state}", "--set", "health.interval_s=1",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (state / "messages.jsonl").read_text().splitlines()
    topics = {json.loads(line)["topic"].rsplit("/", 1)[-1] for line in lines}
    assert {"predictions", "health"} <= topics
