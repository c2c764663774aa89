"""A microphone or a sensor that stopped measuring (`edge_agent.flatline`): every sample one value for
`signal.flat_after_s`. On real recordings, then a real agent reading a real ALSA capture device that gives
exact digital silence (a muted microphone), to a real broker: health's problem, `source.flat`, the metric."""

from __future__ import annotations

import json
import logging
import urllib.request
import wave
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.flatline import FlatWatch, problem

from .conftest import ROOT, SHARED, Broker, free_port, run_cli, scaled, wait_until
from .test_homeassistant import SCHEMAS, Recorder, _render

WAVS = SHARED / "data" / "wakeword"
WAKEWORD = ROOT / "models" / "wakeword" / "okay_nabu.tflite"


def _recording(name: str) -> np.ndarray:
    with wave.open(str(WAVS / name)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return (x.astype(np.float32) / 32768).reshape(-1, 1)


def _feed(samples: np.ndarray, after_s: float, rate: int = 16000, chunk: int = 320) -> tuple[FlatWatch, list[bool]]:
    """The watch fed `samples` in a microphone's chunks, on the samples' own clock: flat after each second."""
    w = FlatWatch()
    states = []
    for i in range(0, len(samples) - chunk + 1, chunk):
        w.feed(samples[i:i + chunk], (i + chunk) / rate, after_s)
        if (i + chunk) % rate == 0:
            states.append(w.flat)
    return w, states


def test_digital_silence_is_flat_and_a_real_microphones_quietest_moments_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # every recording, looped for 40 s: its quiet stretches still move the lowest bits
    for name in sorted(p.name for p in WAVS.glob("*.wav")):
        x = _recording(name)
        _, states = _feed(np.tile(x, (40 * 16000 // len(x) + 1, 1))[: 40 * 16000], 5)
        assert not any(states), name
    # a muted microphone: exact zeros, flat once they have lasted `after_s`, and said so
    caplog.set_level(logging.INFO, "edge_agent.flatline")
    speech = _recording("okay_nabu_1.wav")[:16000 * 2]
    _, states = _feed(np.concatenate([speech, np.zeros((16000 * 10, 1), np.float32), speech]), 5)
    assert states == [False] * 7 + [True] * 5 + [False] * 2, states
    assert "signal flat: every sample 0 for 5 s" in caplog.text and "signal flat no more" in caplog.text
    # 0: never
    _, states = _feed(np.zeros((16000 * 10, 1), np.float32), 0)
    assert not any(states)


def test_a_sensor_stuck_at_one_reading_is_flat_on_every_channel_and_one_moving_channel_is_not() -> None:
    rng = np.random.default_rng(3)
    stuck = np.tile(np.array([[0.02, -0.01, 9.81]], np.float32), (100, 1))  # an accelerometer's last reading
    w, states = _feed(stuck, 5, rate=10, chunk=1)
    assert states == [False] * 5 + [True] * 5, states
    info = w.info(10.0)
    assert info["value"] == pytest.approx([0.02, -0.01, 9.81]) and 4.5 <= info["for_s"] <= 10
    assert problem(info) is not None and problem(info).startswith("signal flat: every sample 0.02, -0.01, 9.81 for ")
    moving = stuck.copy()
    moving[:, 2] += rng.normal(0, 0.01, 100).astype(np.float32)
    _, states = _feed(moving, 5, rate=10, chunk=1)
    assert not any(states)
    # a reading that steps to another value and holds it starts the stretch again from the step
    step = np.concatenate([stuck[:40], stuck[:60] + 1])
    _, states = _feed(step, 5, rate=10, chunk=1)
    assert states == [False] * 9 + [True], states




def test_a_muted_microphone_degrades_health_with_its_silence(broker: Broker, agent_factory,  # type: ignore[no-untyped-def]
                                                             tmp_path: Path) -> None:
    """ALSA's `file` plugin reading /dev/zero behind the null device: a real capture device, to PortAudio,
    that gives exact digital silence, as a muted microphone does."""
    conf = tmp_path / "asound.conf"
    conf.write_text('pcm.!default { type file slave.pcm "null" file "/dev/null" infile "/dev/zero" format "raw" }\n')
    port = free_port()
    rec = Recorder(broker, ["homeassistant/#", "edge/mute/#"])
    try:
        agent_factory(["run", "--source", "mic:", "--model", str(WAKEWORD), "--set", "signal.flat_after_s=2",
                       "--set", "homeassistant.enabled=true"], env={
            **broker.env(), "EDGE_AGENT_DEVICE_ID": "mute", "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5",
            "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}",
            "EDGE_AGENT_HTTP__ENABLED": "true", "EDGE_AGENT_HTTP__PORT": str(port),
        })
        h = wait_until(lambda: (d := rec.last.get("edge/mute/health")) and (d["source"].get("flat") or {}).get("flat")
                       and d, scaled(60), what="the silence said")
        assert h["status"] == "degraded" and h["source"]["state"] == "running"
        said = [p for p in h["problems"] if p.startswith("signal flat: every sample 0 for ")]
        assert len(said) == 1 and "a microphone muted" in said[0], h["problems"]
        assert h["source"]["flat"]["value"] == [0.0] and h["source"]["flat"]["for_s"] >= 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        assert [s.value for s in fams["edge_agent_source_flat"].samples] == [1.0]
        # and Home Assistant's problem entity for it, rendered against that health
        cfg = next(c for c in rec.configs.values() if c["unique_id"].endswith("_flat"))
        jsonschema.validate(cfg, SCHEMAS["binary_sensor"])
        assert cfg["name"] == "Signal flat" and _render(cfg["value_template"], h) == "ON"
        assert json.loads(_render(cfg["json_attributes_template"], h))["value"] == [0.0]
        moving = {**h, "source": {**h["source"], "flat": {"flat": False, "for_s": None, "value": None}}}
        assert _render(cfg["value_template"], moving) == "OFF"
    finally:
        rec.close()


def test_raw_pcm_from_a_muted_microphone_on_a_pipe_is_flat_too(broker: Broker, agent_factory,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    """`arecord ... | edge-agent run --source pcm:-` is how a microphone reaches the agent through a pipe;
    `cat /dev/zero` into a FIFO stands in for `arecord` on a muted card."""
    import os
    import subprocess

    fifo = tmp_path / "audio.fifo"
    os.mkfifo(fifo)
    rec = Recorder(broker, ["edge/pipe/health"])
    writer = subprocess.Popen(["sh", "-c", f"exec cat /dev/zero > {fifo}"])
    try:
        agent_factory(["run", "--source", f"pcm:{fifo}", "--model", str(WAKEWORD), "--set", "signal.flat_after_s=2"],
                      env={**broker.env(), "EDGE_AGENT_DEVICE_ID": "pipe", "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5"})
        h = wait_until(lambda: (d := rec.last.get("edge/pipe/health")) and (d["source"].get("flat") or {}).get("flat")
                       and d, scaled(60), what="the silence said")
        assert any(p.startswith("signal flat: every sample 0 for ") for p in h["problems"]), h["problems"]
    finally:
        writer.kill()
        writer.wait()
        rec.close()


def test_a_recording_is_not_watched_and_the_setting_is_refused_for_it() -> None:
    r = run_cli("run", "--seconds", "1", "--source", f"wav:{WAVS / 'alexa_1.wav'}", "--set", "signal.flat_after_s=30")
    assert r.returncode == 2, r.stderr
    assert "signal.flat_after_s: source 'wav:" in r.stderr and "is of the wav kind, which never reads it (read by " \
        "the iio, mic, mqtt, pcm and serial kinds)" in r.stderr, r.stderr
