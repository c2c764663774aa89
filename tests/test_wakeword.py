"""The microWakeWord models from pymicro-wakeword, through this project's runtime and signal pipeline,
on real recordings: each fires exactly once on its own word and never on the others."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import ModelConfig, RuntimeConfig, Settings, SignalConfig, SourceConfig
from edge_agent.features import speech_end_s
from edge_agent.model import Model
from edge_agent.signal_pipeline import run_offline
from edge_agent.signals.wav import read_wav
from edge_agent.sinks.mqtt import Subscriber

from .conftest import MODELS, SHARED, Broker, TopicRecorder, run_cli, wait_until

WAVS = SHARED / "data" / "wakeword"
WAKEWORD = MODELS / "wakeword"
#: model -> the recordings holding its word
OWN = {
    "okay_nabu": ["okay_nabu_1.wav", "okay_nabu_2.wav"],
    "hey_jarvis": ["hey_jarvis_1.wav"],
    "alexa": ["alexa_1.wav"],
    "hey_mycroft": [],
}
RECORDINGS = ["okay_nabu_1.wav", "okay_nabu_2.wav", "hey_jarvis_1.wav", "alexa_1.wav", "computer_hey_peppa_pig.wav"]

pytestmark = pytest.mark.skipif(
    not WAVS.is_dir(), reason="../shared/data/wakeword is absent (a plain clone has no shared recordings)"
)


def _model(name: str) -> Model:
    return Model(
        ModelConfig(path=WAKEWORD / f"{name}.tflite"), RuntimeConfig(accelerator="cpu", threads=1), None, signal=True
    )


def _settings(name: str, wav: str) -> Settings:
    return Settings(
        source=SourceConfig(uri=f"wav:{WAVS / wav}", loop=False, realtime=False),
        model=ModelConfig(path=WAKEWORD / f"{name}.tflite"),
        signal=SignalConfig(predictions_hz=0),
    )


def _speech_end(wav: str) -> float:
    end = speech_end_s(*read_wav(str(WAVS / wav)))
    assert end is not None
    return end


@pytest.mark.parametrize("name", list(OWN))
def test_each_model_fires_once_on_its_own_word_and_never_on_the_others(name: str) -> None:
    model = _model(name)
    assert model.file.stateful and model.hints.frontend == "micro"
    try:
        for wav in RECORDINGS:
            run = run_offline(_settings(name, wav), model)
            new = [e for e in run.events if e["type"] == "new"]
            want = 1 if wav in OWN[name] else 0
            assert len(new) == want, f"{name} on {wav}: {len(new)} events, {run.events}"
            assert run.windows > 25  # the whole recording went through
            for e in new:
                assert e["label"] == model.labels[0]  # type: ignore[index]
                assert e["score"] >= model.hints.threshold  # type: ignore[operator]
                assert e["model"]["sha256"] == model.file.sha256 and e["seq"] >= 1 and e["boot_id"]
                # the event comes after the word is (nearly) complete, and soon after it
                latency = e["offset_s"] - _speech_end(wav)
                assert -0.2 < latency < 0.6, f"{name} on {wav}: {latency:.3f} s after the end of the word"
    finally:
        model.close()


def test_model_state_is_reset_between_recordings() -> None:
    """The same recording twice gives the same scores: nothing of the first run leaks into the second."""
    model = _model("okay_nabu")
    try:
        s = _settings("okay_nabu", "okay_nabu_2.wav")
        s.signal.predictions_hz = 10_000  # every window
        a = run_offline(s, model)
        b = run_offline(s, model)
        sa = [p["scores"]["Okay Nabu"] for p in a.predictions]
        sb = [p["scores"]["Okay Nabu"] for p in b.predictions]
        assert len(sa) == a.windows and sa == sb and max(sa) > 0.9
    finally:
        model.close()


def test_predict_cli_reports_events_and_latency_after_the_word() -> None:
    r = run_cli(
        "predict", str(WAKEWORD / "hey_jarvis.tflite"), str(WAVS / "hey_jarvis_1.wav"), str(WAVS / "alexa_1.wav")
    )
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    news = [d for d in docs if d.get("type") == "new"]
    assert len(news) == 1 and news[0]["file"].endswith("hey_jarvis_1.wav")
    assert 0 <= news[0]["after_speech_s"] < 0.6
    summaries = {Path(d["file"]).name: d["summary"] for d in docs if "summary" in d}
    assert summaries["hey_jarvis_1.wav"]["events"] == 1 and summaries["alexa_1.wav"]["events"] == 0


class Events(TopicRecorder):
    def __init__(self, broker: Broker, device: str):
        self.events: list[dict[str, Any]] = []
        self.health: list[dict[str, Any]] = []
        super().__init__(
            Subscriber(
                broker.mqtt(keepalive_s=5, reconnect_max_s=1),
                [f"edge/{device}/events", f"edge/{device}/health"],
                client_id=f"events-{device}",
                persistent=True,
            )
        )

    def on_message(self, topic: str, doc: Any, arrived: float) -> None:
        (self.events if topic.endswith("/events") else self.health).append(doc)

    def new(self) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["type"] == "new"]


def test_spoken_words_become_events_on_the_broker_even_through_an_outage(tmp_path: Path, agent_factory) -> None:  # type: ignore[no-untyped-def]
    """A looping recording played in real time: one event per repetition; events raised while the
    broker is down wait in the outbox and arrive afterwards, every seq once."""
    broker = Broker(tmp_path, persistence=True).start()
    rec = Events(broker, "ww")
    try:
        env = {
            **broker.env(),
            "EDGE_AGENT_MQTT__KEEPALIVE_S": "5",
            "EDGE_AGENT_MQTT__RECONNECT_MAX_S": "1",
            "EDGE_AGENT_OUTBOX__FLUSH_INTERVAL_S": "0.2",
            "EDGE_AGENT_HEALTH__INTERVAL_S": "1",
        }
        agent = agent_factory(
            [
                "run",
                "--device-id",
                "ww",
                "--source",
                f"wav:{WAVS / 'okay_nabu_2.wav'}",
                "--model",
                str(WAKEWORD / "okay_nabu.tflite"),
                "--set",
                "signal.predictions_hz=0",
            ],
            env=env,
        )
        wait_until(lambda: len(rec.new()) >= 2, 30, what="two spoken words as two events")
        first = rec.new()[0]
        assert first["label"] == "Okay Nabu" and first["model"]["name"] == "okay_nabu"
        # health reports the audio source: its rate, and nothing dropped
        h = wait_until(lambda: next((d for d in rec.health if d["source"].get("samples", 0) > 16000), None), 10)
        assert h["source"]["rate_nominal"] == 16000 and h["source"]["dropped_samples"] == 0
        assert 12000 < h["source"]["rate_achieved"] < 20000
        before = len(rec.new())
        broker.stop()
        threading.Event().wait(5)  # about two repetitions of the word while the broker is away
        broker.start()
        wait_until(lambda: len(rec.new()) >= before + 3, 30, what="the outage's events and live ones")
        seqs = sorted({e["seq"] for e in rec.events if e["boot_id"] == first["boot_id"]})
        assert seqs == list(range(1, seqs[-1] + 1))  # none lost
        # one event per word: an id comes again only as a re-delivery of the same message (QoS 1 is at least
        # once; a consumer drops it by (boot_id, seq)), never as a second event for one word
        by_id: dict[str, set[tuple[str, int]]] = {}
        for e in rec.new():
            by_id.setdefault(e["id"], set()).add((e["boot_id"], e["seq"]))
        assert all(len(v) == 1 for v in by_id.values()), by_id
        agent.signal(signal.SIGTERM)
        assert agent.wait(15) == 0
    finally:
        rec.close()
        broker.stop()


def test_end_of_word_to_event_on_the_wall_clock(tmp_path: Path, agent_factory) -> None:  # type: ignore[no-untyped-def]
    """Played in real time, an event is published within a second of the end of the word (wall clock)."""
    broker = Broker(tmp_path).start()
    rec = Events(broker, "wwlat")
    try:
        t0 = time.time()
        agent_factory(
            [
                "run",
                "--device-id",
                "wwlat",
                "--source",
                f"wav:{WAVS / 'alexa_1.wav'}",
                "--set",
                "source.loop=false",
                "--model",
                str(WAKEWORD / "alexa.tflite"),
            ],
            env=broker.env(),
        )
        e = wait_until(lambda: next(iter(rec.new()), None), 30, what="the event")
        # start_ts is the capture time of the window that crossed; the word ended speech_end after the stream began
        stream_start = e["start_ts"] - e["offset_s"]
        assert stream_start >= t0
        word_end_wall = stream_start + _speech_end("alexa_1.wav")
        assert 0 <= e["ts"] - word_end_wall < 1.0, e
    finally:
        rec.close()
        broker.stop()


def test_a_streaming_model_in_its_own_process_scores_as_in_the_agent_and_resets() -> None:
    """runtime.own_process: a model whose state lives in its variables, in a child process, gives the same
    scores window by window, and starts afresh for a new recording (the reset goes to the child)."""
    here = _model("okay_nabu")
    apart = Model(
        ModelConfig(path=WAKEWORD / "okay_nabu.tflite"),
        RuntimeConfig(accelerator="cpu", threads=1, own_process=True),
        None,
        signal=True,
    )
    try:
        assert apart.runtime.backend.own_process
        s = _settings("okay_nabu", "okay_nabu_2.wav")
        s.signal.predictions_hz = 10_000  # every window
        want = [p["scores"]["Okay Nabu"] for p in run_offline(s, here).predictions]
        for _ in range(2):
            got = [p["scores"]["Okay Nabu"] for p in run_offline(s, apart).predictions]
            assert got == pytest.approx(want, abs=1e-6) and max(got) > 0.9
    finally:
        here.close()
        apart.close()
