"""A camera's picture watched (`edge_agent.picture`): frozen, a stream that repeats its last frame, and
blank, one flat tone. On a real photo, then on real RTSP cameras (GStreamer's server) through a real
agent and broker: health's problems and `source.picture`, and the Home Assistant problem entity each
camera gets, its template rendered against the health the agent publishes."""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.picture import PictureWatch, problem

from .conftest import ROOT, SHORT, Broker, free_port, scaled, wait_until
from .test_homeassistant import SCHEMAS, Recorder, _render

FRUIT = ROOT.parent / "shared" / "data" / "fruit.jpg"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    img = cv2.imread(str(FRUIT))
    assert img is not None, FRUIT
    return cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA)


def _noisy(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A sensor's noise: every frame of a real camera differs from the last, however still the scene."""
    return np.clip(img + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8)


def _clock(img: np.ndarray, second: int) -> np.ndarray:
    """A camera's burnt-in clock, which changes every second."""
    out = img.copy()
    cv2.putText(out, f"2026-12-06 20:14:{second % 60:02d}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.75,
                (255, 255, 255), 2)
    return out


def _watch(frames: Callable[[int], np.ndarray], seconds: int, frozen_s: float = 10, blank_s: float = 10,
           fps: int = 2, dark_is_blank: bool = True) -> tuple[PictureWatch, list[str]]:
    """The watch fed `seconds` of frames at `fps`, on a clock of its own: the state after each second."""
    w = PictureWatch()
    states = []
    for i in range(seconds * fps):
        w.look(frames(i // fps), i / fps, frozen_s, blank_s, dark_is_blank)
        if i % fps == fps - 1:
            states.append(w.state)
    return w, states


def test_a_picture_that_stops_changing_is_frozen_and_a_still_scene_with_a_sensors_noise_is_not(
    photo: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(7)
    # the same photo with a camera's noise (down to a standard deviation of one grey level): never frozen
    _, states = _watch(lambda s: _noisy(photo, 1.0, rng), 30)
    assert set(states) == {"ok"}
    # the same frame again and again, with or without a burnt-in clock that goes on ticking: frozen once
    # unchanged for `frozen_after_s`, and said so for how long
    for frames in (lambda s: photo, lambda s: _clock(photo, s)):
        w, states = _watch(frames, 30)
        assert states[:9] == ["ok"] * 9 and set(states[11:]) == {"frozen"}, states
        info = w.info(30.0)
        assert info["state"] == "frozen" and 28 <= info["for_s"] <= 31 and 100 < info["level"] < 120, info
        assert problem(info) is not None and problem(info).startswith("camera picture frozen: unchanged for ")
    # ... and back to ok, logged, once the picture moves again
    caplog.set_level(logging.INFO, "edge_agent.picture")
    w, states = _watch(lambda s: photo if s < 15 else np.roll(photo, s, axis=1), 20)
    assert states[11:15] == ["frozen"] * 4 and set(states[15:]) == {"ok"}, states
    assert w.info(20.0)["for_s"] is None and problem(w.info(20.0)) is None
    assert "camera picture frozen: unchanged for 10 s" in caplog.text and "camera picture frozen no more" in caplog.text
    # 0 turns the check off
    _, states = _watch(lambda s: photo, 30, frozen_s=0)
    assert set(states) == {"ok"}


def test_a_covered_lens_is_blank_and_a_dark_or_foggy_scene_is_not(photo: np.ndarray) -> None:
    rng = np.random.default_rng(8)
    black = np.full_like(photo, 12)
    # a covered lens at a camera's full gain (noisy), and a black picture under a burnt-in clock
    for frames in (lambda s: _noisy(black, 8.0, rng), lambda s: _clock(_noisy(black, 2.0, rng), s)):
        w, states = _watch(frames, 20)
        assert states[:9] == ["ok"] * 9 and set(states[10:]) == {"blank"}, states
        info = w.info(20.0)
        assert 10 <= info["level"] <= 16, info
        assert problem(info) is not None and "grey level 1" in problem(info)
    # a still black frame is blank, not frozen: what it shows says more than that it repeats
    _, states = _watch(lambda s: black, 20)
    assert set(states[10:]) == {"blank"}, states
    # a dim scene (a tenth of the photo's light), fog (a sixth of its contrast over a bright grey): seen
    for scene in ((photo * 0.1).astype(np.uint8), (photo * 0.15 + 180).astype(np.uint8)):
        _, states = _watch(lambda s, scene=scene: _noisy(scene, 2.0, rng), 20)  # type: ignore[misc]
        assert set(states) == {"ok"}, states
    _, states = _watch(lambda s: black, 20, blank_s=0)
    assert set(states[11:]) == {"frozen"}, states  # blank off: a still black picture is still frozen


def test_a_camera_without_infrared_is_dark_at_night_and_that_is_no_problem(photo: np.ndarray) -> None:
    """`source.dark_is_blank = false`: a black picture at a camera's full gain (its night) is `dark`, said
    in health and no problem; the scene lit again is ok; a flat picture that is not dark (a sprayed lens, a
    wall) is still blank, and a dim scene is still seen. With the default, the same night is blank."""
    rng = np.random.default_rng(9)
    night = np.full_like(photo, 12)
    w, states = _watch(lambda s: _noisy(night, 8.0, rng) if s < 20 else _noisy(photo, 2.0, rng), 25,
                       dark_is_blank=False)
    assert states[:9] == ["ok"] * 9 and set(states[10:20]) == {"dark"} and set(states[20:]) == {"ok"}, states
    w, _ = _watch(lambda s: _noisy(night, 8.0, rng), 15, dark_is_blank=False)
    info = w.info(15.0)
    assert info["state"] == "dark" and 14 <= info["for_s"] <= 16 and info["level"] < 40 and problem(info) is None
    wall = np.full_like(photo, 128)
    _, states = _watch(lambda s: _noisy(wall, 2.0, rng), 15, dark_is_blank=False)
    assert set(states[10:]) == {"blank"}, states
    _, states = _watch(lambda s: _noisy((photo * 0.1).astype(np.uint8), 2.0, rng), 15, dark_is_blank=False)
    assert set(states) == {"ok"}, states
    _, states = _watch(lambda s: _noisy(night, 8.0, rng), 15)
    assert set(states[10:]) == {"blank"}, states


@pytest.fixture
def cameras() -> Iterator[dict[str, int]]:
    """Three real RTSP cameras: a still test card (a stream that repeats one picture), a black picture,
    and the test card whose corner of snow changes every frame, as a still scene does with a sensor's noise."""
    probe = ["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"]
    if subprocess.run(probe, capture_output=True).returncode:
        pytest.fail("GStreamer's RTSP server missing: scripts/test.sh installs python3-gi, gir1.2-gst-rtsp-server-1.0")
    servers, ports = [], {}
    try:
        for name, pattern in (("still", "smpte75"), ("dark", "black"), ("live", "smpte")):
            port = free_port()
            p = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), str(port), "320x240",
                                  pattern], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            servers.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "serving"
            ports[name] = port
        yield ports
    finally:
        for p in servers:
            p.kill()
            p.wait()


def test_a_frozen_and_a_blank_camera_degrade_health_and_turn_their_home_assistant_problem_on(
    broker: Broker, agent_factory, cameras: dict[str, int]  # type: ignore[no-untyped-def]
) -> None:
    pipes = [
        {"name": name, "source": {"uri": f"rtsp://127.0.0.1:{port}/live", "fps": 5, "frozen_after_s": 3,
                                  "blank_after_s": 3}, "model": {"path": str(SHORT)}}
        for name, port in cameras.items()
    ]
    # the black camera again, as one without infrared would be read at night: dark, and no problem
    pipes.append({"name": "night", "source": {"uri": f"rtsp://127.0.0.1:{cameras['dark']}/live", "fps": 5,
                                              "blank_after_s": 3, "dark_is_blank": False},
                  "model": {"path": str(SHORT)}})
    rec = Recorder(broker, ["homeassistant/#", "edge/cams/#"])
    port = free_port()
    try:
        agent_factory(["run"], env={
            **broker.env(), "EDGE_AGENT_DEVICE_ID": "cams", "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5",
            "EDGE_AGENT_HOMEASSISTANT__ENABLED": "true", "EDGE_AGENT_PIPELINES": json.dumps(pipes),
            "EDGE_AGENT_HTTP__ENABLED": "true", "EDGE_AGENT_HTTP__PORT": str(port),
        })

        def settled() -> dict[str, Any] | None:
            h = rec.last.get("edge/cams/health")
            if h is None:
                return None
            seen = {n: (p["source"].get("picture") or {}).get("state") for n, p in h["pipelines"].items()}
            return h if seen == {"still": "frozen", "dark": "blank", "live": "ok", "night": "dark"} else None

        h = wait_until(settled, scaled(60), what="the still camera frozen and the dark one blank")
        assert h["status"] == "degraded"
        pictures = [p for p in h["problems"] if "camera picture" in p]
        assert len(pictures) == 2 and pictures[0].startswith("still: camera picture frozen: unchanged for "), pictures
        assert pictures[1].startswith("dark: camera picture blank: one flat tone for ") and "grey level 16 of" in \
            pictures[1], pictures  # videotestsrc's black is video black: 16 of 255
        assert 15 < h["pipelines"]["dark"]["source"]["picture"]["level"] < 17
        assert h["pipelines"]["live"]["source"]["picture"]["for_s"] is None
        assert h["pipelines"]["live"]["fps"]["captured"] > 0
        # one problem entity per camera, rendered against the health the agent published
        entities = {c["name"]: c for t, c in rec.configs.items() if c.get("device_class") == "problem"
                    and "picture" in c["unique_id"]}
        assert sorted(entities) == ["dark camera picture", "live camera picture", "night camera picture",
                                    "still camera picture"]
        states = {"still": "frozen", "dark": "blank", "live": "ok", "night": "dark"}
        for name, cfg in entities.items():
            jsonschema.validate(cfg, SCHEMAS["binary_sensor"])
            assert cfg["state_topic"] == "edge/cams/health"
            on = _render(cfg["value_template"], h)
            assert on == ("OFF" if name.startswith(("live", "night")) else "ON"), (name, on)
            attrs = json.loads(_render(cfg["json_attributes_template"], h))
            assert attrs["state"] == states[name.split()[0]], attrs
        # and the state as a metric, each camera's own
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        on = {(s.labels["pipeline"], s.labels["edge_agent_pipeline_source_picture"]) for s in
              fams["edge_agent_pipeline_source_picture"].samples if s.value == 1}
        assert on == {("still", "frozen"), ("dark", "blank"), ("live", "ok"), ("night", "dark")}, on
    finally:
        rec.close()


def test_a_still_file_is_not_watched_and_the_settings_are_refused_for_it(tmp_path: Path) -> None:
    """A video file or a folder of pictures may show one still picture by design: not watched, and the
    two settings, set for such a source, are refused naming the key (they would be taken and never read)."""
    from .conftest import run_cli

    r = run_cli("run", "--seconds", "1", "--source", "demo", "--set", "source.frozen_after_s=30")
    assert r.returncode == 2, r.stderr
    assert "source.frozen_after_s: source 'demo' is of the file kind, which never reads it (read by the camera, " \
        "command, gstreamer, http, rtsps and stream kinds)" in r.stderr, r.stderr


def test_the_single_form_says_it_at_the_top_of_health_and_its_entity_reads_it_there(
    broker: Broker, agent_factory, cameras: dict[str, int]  # type: ignore[no-untyped-def]
) -> None:
    rec = Recorder(broker, ["homeassistant/#", "edge/cam/#"])
    try:
        agent_factory(["run", "--source", f"rtsp://127.0.0.1:{cameras['still']}/live", "--model", str(SHORT),
                       "--fps", "5", "--set", "source.frozen_after_s=2", "--set", "homeassistant.enabled=true"],
                      env={**broker.env(), "EDGE_AGENT_DEVICE_ID": "cam", "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5"})
        h = wait_until(lambda: (d := rec.last.get("edge/cam/health")) and d["source"].get("picture")
                       and d["source"]["picture"]["state"] == "frozen" and d, scaled(60), what="frozen")
        assert next(p for p in h["problems"] if "picture" in p).startswith("camera picture frozen: unchanged for ")
        cfg = next(c for c in rec.configs.values() if c["unique_id"].endswith("_picture"))
        assert cfg["name"] == "Camera picture"
        assert _render(cfg["value_template"], h) == "ON"
        ok = {**h, "source": {**h["source"], "picture": {"state": "ok", "for_s": None, "level": 110.0}}}
        assert _render(cfg["value_template"], ok) == "OFF"
    finally:
        rec.close()


def test_check_says_a_blank_camera_at_once_and_passes_a_seeing_one(cameras: dict[str, int]) -> None:
    """At install, `check` reads a camera for a second after its first frame (exposure settling) and
    says a picture of one flat tone as the running agent would after `source.blank_after_s`: exit 1,
    naming it. A camera that sees passes, its picture reported."""
    from .conftest import run_cli

    dark = run_cli("check", "--offline", "--source", f"rtsp://127.0.0.1:{cameras['dark']}/live",
                   "--model", str(SHORT))
    assert dark.returncode == 1, dark.stderr
    assert "source: the camera's picture is one flat tone, grey level 16 of 255, after 1 s" in dark.stdout + \
        dark.stderr, dark.stdout
    live = run_cli("check", "--offline", "--json", "--source", f"rtsp://127.0.0.1:{cameras['live']}/live",
                   "--model", str(SHORT))
    assert live.returncode == 0, live.stdout + live.stderr
    doc = json.loads(live.stdout)
    assert doc["source"]["picture"]["flat"] is False and doc["source"]["picture"]["level"] > 50
    off = run_cli("check", "--offline", "--source", f"rtsp://127.0.0.1:{cameras['dark']}/live",
                  "--model", str(SHORT), "--set", "source.blank_after_s=0")
    assert off.returncode == 0 and "flat tone" not in off.stdout, off.stdout  # not watched: not judged
    night = run_cli("check", "--offline", "--json", "--source", f"rtsp://127.0.0.1:{cameras['dark']}/live",
                    "--model", str(SHORT), "--set", "source.dark_is_blank=false")
    assert night.returncode == 0, night.stdout  # dark at night, as this camera is said to be
    assert json.loads(night.stdout)["source"]["picture"] == {"flat": True, "level": 16.0}


def test_a_source_that_decodes_each_frame_into_the_same_buffer_is_not_taken_for_frozen(photo: np.ndarray) -> None:
    """A small picture is compared whole (no striding); kept by reference, a buffer the next frame is
    decoded into would be compared with itself and read as frozen."""
    rng = np.random.default_rng(9)
    small = cv2.resize(photo, (200, 150), interpolation=cv2.INTER_AREA)
    buf = small.copy()

    def frame(s: int) -> np.ndarray:
        buf[...] = _noisy(small, 1.0, rng)  # the next frame, into the same memory
        return buf

    _, states = _watch(frame, 20, frozen_s=5)
    assert set(states) == {"ok"}, states
