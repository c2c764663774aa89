"""The local HTTP endpoint against real clients: Prometheus's own text parser, plain HTTP, and a real
headless Chromium (Debian's) loading the status page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.metrics import BROKER_DROPS, FRAME_DROPS, lookup
from edge_agent.snapshots import contrast

from .conftest import DEMO_VIDEO, SHORT, SLOWDOWN, Broker, collect, free_port, scaled, streamed_get, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")
    except (urllib.error.URLError, OSError):
        return 0, b"", ""  # not listening (yet)


def _metrics(base: str) -> dict[str, list[Any]]:
    status, body, ctype = _get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(m: dict[str, list[Any]], name: str, **labels: str) -> float:
    for s in m[name]:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError(f"{name}{labels}")


@pytest.fixture
def web_agent(broker: Broker, agent_factory) -> Iterator[tuple[str, Any]]:  # type: ignore[no-untyped-def]
    port = free_port()
    agent = agent_factory(
        [
            "run",
            "--device-id",
            "webdev",
            "--source",
            "demo",
            "--fps",
            "20",
            "--model",
            str(SHORT),
            "--set",
            "http.enabled=true",
            "--set",
            f"http.port={port}",
        ],
        env={**broker.env(), "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5"},
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _get(base + "/healthz")[0] == 200, 30, what="the status page to come up")
    yield base, agent


def _leaves(node: Any, path: list[str]) -> Iterator[list[str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, [*path, str(k)])
    elif isinstance(node, int | float) and not (not path or path[0] in ("schema", "ts")):
        yield path


def test_metrics_follow_prometheus_rules_and_carry_every_health_figure(
    web_agent: tuple[str, Any],
    broker: Broker,
    subscriber_factory,  # type: ignore[no-untyped-def]
) -> None:
    base, _ = web_agent
    # the labelled counters exist from the first scrape, at 0 where nothing happened yet
    first = _metrics(base)
    for reason in FRAME_DROPS:
        assert _value(first, "edge_agent_frames_dropped_total", reason=reason) >= 0
    for reason in BROKER_DROPS:
        assert _value(first, "edge_agent_broker_drops_total", reason=reason) >= 0
    sub = subscriber_factory(["edge/webdev/health"])
    _, health, _ = collect(sub, lambda t, d, r: d["frames"]["inferred"] > 10, 20)
    _, body, _ = _get(base + "/metrics")
    # Prometheus's own linter: base units, counters' _total, HELP on everything, no quantile gauges
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr
    text = body.decode()
    assert "not described" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, fam in families.items():
        assert fam.documentation, name
        assert not re.search(r"_(ms|mb|percent|s|ts|c)$", name), name  # base units only
    assert families["edge_agent_latency_seconds"].type == "histogram"
    assert families["edge_agent_broker_replayed"].type == "counter"  # exposed as ..._total
    assert "process_cpu_seconds" in families and "python_info" in families  # the standard collectors
    m = _metrics(base)
    info = m["edge_agent_build_info"][0].labels
    assert set(info) == {"version", "device_id", "model", "model_sha256", "accelerator"}  # nothing per boot
    assert info["device_id"] == "webdev" and info["model"] == "face_detection_short_range"
    assert info["model_sha256"] == health["model"]["sha256"] and info["accelerator"] == "cpu"
    assert _value(m, "edge_agent_broker_state", edge_agent_broker_state="connected") == 1
    assert _value(m, "edge_agent_broker_state", edge_agent_broker_state="disconnected") == 0
    inferred = _value(m, "edge_agent_latency_seconds_count", series="inference")
    assert inferred >= health["frames"]["inferred"]
    assert _value(m, "edge_agent_latency_seconds_bucket", series="inference", le="+Inf") == inferred
    assert _value(m, "edge_agent_process_rss_bytes") == pytest.approx(health["process"]["rss_mb"] * 1e6, rel=0.5)
    assert _value(m, "edge_agent_process_anon_bytes") == pytest.approx(health["process"]["anon_mb"] * 1e6, rel=0.5)
    assert _value(m, "edge_agent_fps", stage="inferred") > 5 / SLOWDOWN  # a slower board infers fewer
    # published counts frames: at 20 fps it is the inferred rate, not the (higher) message rate
    assert _value(m, "edge_agent_fps", stage="published") <= _value(m, "edge_agent_fps", stage="inferred") + 2
    assert _value(m, "edge_agent_frames_inferred_total") >= health["frames"]["inferred"]
    assert _value(m, "edge_agent_broker_sent_total") > 0
    assert _value(m, "edge_agent_stage_stalled", stage="inference") == 0
    # every number in the health document is exported, under the name its table gives
    undescribed = []
    for path in _leaves(health, []):
        if path[0] in ("models", "engines") or path == ["broker", "port"] or "latency_ms" in path:
            continue
        rel = path[2:] if path[0] == "pipelines" else path
        if lookup(rel) is None:
            undescribed.append(".".join(path))
            continue
        fig, _ = lookup(rel)  # type: ignore[misc]
        name = f"edge_agent_{'pipeline_' if path[0] == 'pipelines' else ''}{fig.name}"
        assert name in families, (path, name)
    assert not undescribed, undescribed


def test_a_real_prometheus_scrapes_the_agent_and_adds_up_its_histograms(
    web_agent: tuple[str, Any], tmp_path: Path
) -> None:
    base, _ = web_agent
    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: edge, static_configs: [{{targets: ['{base.removeprefix('http://')}']}}]}}]\n"
    )
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1/query?query="

    def query(q: str) -> list[Any]:
        code, body, _ = _get(api + urllib.parse.quote(q))
        return json.loads(body)["data"]["result"] if code == 200 else []

    try:
        up = wait_until(lambda: (r := query('up{job="edge"}')) and r[0]["value"][1] == "1" and r, 30,
                        what="Prometheus to scrape the agent")
        assert up
        # a fleet-wide p50 from the buckets: what quantile gauges could never give
        q = 'histogram_quantile(0.5, sum by (le) (rate(edge_agent_latency_seconds_bucket{series="inference"}[5s])))'
        p50 = wait_until(lambda: (r := query(q)) and r[0]["value"][1] not in ("NaN", "+Inf")
                         and float(r[0]["value"][1]), 30, what="a p50 from the histogram")
        assert 0 < p50 < scaled(1.0)  # seconds per inference, more on a slower board
        rate = wait_until(lambda: (r := query("rate(edge_agent_frames_inferred_total[5s])"))
                          and float(r[0]["value"][1]), 30, what="a frame rate")
        assert rate > 1 / SLOWDOWN  # frames flow (the exact rate depends on how busy and fast this machine is)
    finally:
        proc.terminate()
        proc.wait(10)


def test_healthz_agrees_with_health_and_livez_only_with_stalls(web_agent: tuple[str, Any], broker: Broker) -> None:
    base, _ = web_agent
    code, body, _ = _get(base + "/healthz")
    assert code == 200 and json.loads(body) == {"ok": True, "status": "ok", "problems": []}
    broker.stop()
    try:
        code, body, _ = wait_until(lambda: (r := _get(base + "/healthz")) and r[0] == 503 and r, 30,
                                   what="/healthz to report the broker's absence")
        doc = json.loads(body)
        assert doc["ok"] is False and doc["status"] == "degraded" and "broker disconnected" in doc["problems"]
        assert _get(base + "/livez")[0] == 200  # a restart would not bring the broker back
        m = _metrics(base)
        assert _value(m, "edge_agent_broker_state", edge_agent_broker_state="connected") == 0
    finally:
        broker.start()
    wait_until(lambda: _get(base + "/healthz")[0] == 200, 30, what="/healthz back to 200")


def test_healthz_is_200_only_while_every_stage_makes_progress(broker: Broker, agent_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    stall_s = max(2.0, scaled(2.0))  # short, yet no stage of a playing video waits that long
    agent = agent_factory(
        [
            "run",
            "--device-id",
            "hz",
            "--source",
            str(DEMO_VIDEO),
            "--model",
            str(SHORT),
            "--set",
            "source.loop=false",
            "--set",
            "http.enabled=true",
            "--set",
            f"http.port={port}",
            "--set",
            f"health.stall_s={stall_s:g}",
        ],
        env=broker.env(),
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _get(base + "/healthz")[0] == 200, 30, what="healthy while the video plays")
    _, body, _ = wait_until(
        lambda: (r := _get(base + "/healthz")) and r[0] == 503 and r, 30, what="unhealthy once the video has ended"
    )
    doc = json.loads(body)
    assert doc["ok"] is False and doc["problems"] == ["source finished"]
    # a finished capture loop is not a stalled one: well past stall_s (and the watchdog's once-a-second
    # look), the agent still runs, saying the source finished, instead of exiting to be restarted and
    # playing the file again
    until = time.monotonic() + stall_s + 3.0
    looked = threading.Event()  # never set: a look four times a second, not a request loop at full speed
    while time.monotonic() < until:
        code, body, _ = _get(base + "/healthz")
        assert code == 503 and json.loads(body)["problems"] == ["source finished"], body
        assert _get(base + "/livez")[0] == 200
        assert agent.proc.poll() is None
        looked.wait(0.25)


def test_a_port_taken_at_start_is_listened_on_once_it_is_free(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port another process holds at start (or an address the network gives the device later) left the
    status page, /metrics and /healthz away for as long as the agent ran, and health said nothing. Now
    health says so, and listening is tried again until it works."""
    import os
    import socket

    import edge_agent.agent as agent_mod
    from edge_agent.agent import Agent
    from edge_agent.config import load_settings

    for k in list(os.environ):
        if k.startswith("EDGE_AGENT_"):
            monkeypatch.delenv(k)
    monkeypatch.setattr(agent_mod, "_WEB_RETRY_MIN_S", 0.2)  # (5 s, doubling, in the field)
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    settings = load_settings(None, {"mqtt.host": broker.host, "mqtt.port": broker.port, "device_id": "webretry",
                                    "source.uri": "synthetic", "model.path": str(SHORT), "state_dir": str(tmp_path),
                                    "health.interval_s": 3600, "http.enabled": True, "http.port": port})
    agent = Agent(settings)
    try:
        agent.start()
        problems = agent.health.document()["problems"]
        said = f"status page not served: cannot listen on 127.0.0.1:{port}"
        assert any(p.startswith(said) for p in problems), problems
        assert agent.web is None
        holder.close()
        wait_until(lambda: agent.web is not None, 10, what="the port listened on once free")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as r:
            assert r.status == 200
        assert not [p for p in agent.health.document()["problems"] if "status page" in p]
    finally:
        holder.close()
        agent.shutdown(3)


def test_unknown_paths_and_the_live_frame(web_agent: tuple[str, Any]) -> None:
    base, _ = web_agent
    assert _get(base + "/nope")[0] == 404
    _, body, ctype = wait_until(lambda: (r := _get(base + "/frame.jpg")) and r[0] == 200 and r, 10, what="a live frame")
    assert ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert _get(base + "/healthz")[0] == 200
    # a crafted frame number is taken as none: the newest frame, never a 500 with a traceback logged
    for after in ("--5", "%D9%A1%D9%A2", "9" * 5000, "12abc"):
        status, body, _ = _get(f"{base}/frame.jpg?after={after}")
        assert status == 200 and body[:2] == b"\xff\xd8", (after[:10], status)


@pytest.mark.emulation_slow(
    "Chromium under qemu user-mode takes minutes to render a page; the page is the same on any board"
)
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test.sh installs it)")
def test_status_page_in_headless_chromium(web_agent: tuple[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    base, _ = web_agent
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith((base, "blob:" + base)) else outside.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_viewport_size({"width": 1600, "height": 1000})
            page.goto(base + "/")
            page.wait_for_function("window.framesLoaded >= 3", timeout=15_000)  # the image keeps updating
            # read once the picture shown is decoded: between two frames the image can be mid-load, with no
            # size yet (0 x 0 was read once that way); a picture that never decodes times this out
            size = page.wait_for_function(
                "(() => { const i = document.getElementById('frame');"
                " return i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]; })()",
                timeout=15_000,
            ).json_value()
            assert size == [640, 480]
            # the picture fills its panel (here wider than the frame), keeping its shape
            shown_w, shown_h, panel_w = page.evaluate(
                "(() => { const i = document.getElementById('frame'); const r = i.getBoundingClientRect();"
                " const s = getComputedStyle(i.parentElement);"
                " return [r.width, r.height, i.parentElement.clientWidth - parseFloat(s.paddingLeft)"
                " - parseFloat(s.paddingRight)]; })()"
            )
            assert shown_w > 640 and abs(shown_w - panel_w) <= 2 and abs(shown_h / shown_w - 0.75) < 0.01
            # it follows the camera's rate (20 fps here), not a fixed refresh
            n0, t0 = page.evaluate("[window.framesLoaded, performance.now()]")
            page.wait_for_function(f"performance.now() - {t0} > 3000", timeout=10_000)
            n1, t1 = page.evaluate("[window.framesLoaded, performance.now()]")
            shown_fps = (n1 - n0) / ((t1 - t0) / 1000)
            agent_fps = _value(_metrics(base), "edge_agent_fps", stage="published")
            assert shown_fps > 5 and shown_fps > 0.4 * agent_fps, (shown_fps, agent_fps)  # the old page: 3 fps
            page.wait_for_function("window.lastStatus && window.lastStatus.predictions.length > 0", timeout=10_000)
            first_pred = page.text_content("#preds li") or ""
            assert re.match(r"^#\d+ \d\d:\d\d:\d\d\.\d{3}", first_pred), first_pred  # frame number and time
            visible = page.evaluate(  # the start of each line (the frame number) is not clipped
                "(() => { const ol = document.getElementById('preds'); const li = ol.querySelector('li');"
                " return li.getBoundingClientRect().left >= ol.getBoundingClientRect().left; })()"
            )
            assert visible
            assert page.text_content("#history li") == "no model updates yet"  # empty sections say so
            assert page.text_content("#events li") == "no events yet"
            # labels: legible on the rendered pixels (WCAG contrast between the text and its box)
            page.wait_for_function("window.frameLabels && window.frameLabels.length > 0", timeout=15_000)
            page.click("#frame")  # pause the picture: the labels below belong to the frame on screen
            page.wait_for_function("window.frameHeld === true", timeout=10_000)
            labels = page.evaluate("window.frameLabels")
            shot = cv2.imdecode(np.frombuffer(page.locator("#frame").screenshot(), np.uint8), cv2.IMREAD_COLOR)
            f = shot.shape[1] / 640
            for x1, y1, x2, y2 in labels:
                crop = shot[round(y1 * f) + 1 : round(y2 * f) - 1, round(x1 * f) + 1 : round(x2 * f) - 1]
                assert contrast(crop) >= 4.5, (labels, contrast(crop))
            page.click("#frame")  # and on again
            before = _value(_metrics(base), "edge_agent_frames_inferred_total")
            page.wait_for_function(
                f"Number(document.querySelector('[data-metric=\"frames.inferred\"]').textContent) > {before}",
                timeout=10_000,
            )
            shown = {
                k: page.text_content(f'[data-metric="{k}"]')
                for k in ("frames.inferred", "model.sha256", "accelerator.active", "source.state", "model.name")
            }
            after = _metrics(base)
            info = after["edge_agent_build_info"][0].labels
            assert shown["model.sha256"] == info["model_sha256"][:16]
            assert shown["accelerator.active"] == info["accelerator"] and shown["model.name"] == info["model"]
            assert shown["source.state"] == "running"
            assert _value(after, "edge_agent_pipeline_source_state", pipeline="default",
                          edge_agent_pipeline_source_state="running") == 1
            assert before < float(shown["frames.inferred"] or 0) <= _value(after, "edge_agent_frames_inferred_total")
            assert page.text_content("#status") == "ok"
            assert "face" in (page.text_content("#preds") or "")
            assert not errors and not outside
        finally:
            browser.close()


def _clip_of_grays(path: Path, grays: list[int], fps: float, writer: str) -> None:
    """A clip whose frame k is one flat gray, `grays[k]`: written by the agent's own clip recorder, or
    by OpenCV's built-in Motion JPEG writer (the other layout of AVI file a clip may have)."""
    from edge_agent.clips import ClipRecorder
    from edge_agent.config import ClipConfig

    frames = [np.full((120, 160, 3), g, np.uint8) for g in grays]
    if writer == "opencv":
        w = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter.fourcc(*"MJPG"), fps, (160, 120))
        assert w.isOpened()
        for f in frames:
            w.write(f)
        w.release()
        return
    rec = ClipRecorder(ClipConfig(enabled=True, pre_s=0, post_s=0, fps=fps), path.parent)
    rec.begin(path.stem, 0.0)
    for k, f in enumerate(frames):
        rec.offer(f, k / fps)
    rec.end(path.stem, (len(frames) - 1) / fps)
    rec.close()
    assert path.is_file()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("writer", ["agent", "opencv"])
def test_a_clip_plays_on_the_status_page_at_its_own_frame_rate(writer: str, tmp_path: Path) -> None:
    """A clip is Motion JPEG in AVI, which no browser's video element plays (a click on its link saves
    the file): its play button shows its frames in turn, at the clip's frame rate, read out of the
    file in the page. Twelve frames at 10 fps take 1.1 s from the first to the last, and the last one
    stays on screen."""
    from playwright.sync_api import sync_playwright

    from edge_agent.config import HTTPConfig
    from edge_agent.web import WebServer

    grays = [20 + 18 * k for k in range(12)]
    (tmp_path / "clips" / "door").mkdir(parents=True)
    _clip_of_grays(tmp_path / "clips" / "door" / "1700000000.000-abc123.avi", grays, 10.0, writer)
    web = WebServer(HTTPConfig(enabled=True, bind="127.0.0.1", port=free_port()), lambda: {}, list, {}, list, tmp_path)
    web.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                         "--disable-dev-shm-usage"])
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"http://127.0.0.1:{web.port}/")
                page.wait_for_selector("#media button.play", timeout=15_000)
                assert page.is_hidden("#player")
                page.click("#media button.play")
                page.wait_for_function("window.clipFrames === 12", timeout=10_000)
                t0 = page.evaluate("performance.now()")
                page.wait_for_function("window.clipFramesShown === 12", timeout=scaled(10) * 1000)
                took = (page.evaluate("performance.now()") - t0) / 1000
                assert 0.9 <= took <= scaled(5), took  # the frame rate kept, not all at once
                assert page.evaluate("window.clipMs") == pytest.approx(100, abs=1)
                assert page.text_content("#playing") == "door clip 1700000000.000-abc123.avi: 12 frames at 10.0 fps"
                size = page.evaluate("[document.getElementById('clip').naturalWidth,"
                                     " document.getElementById('clip').naturalHeight]")
                assert size == [160, 120]
                shot = cv2.imdecode(np.frombuffer(page.locator("#clip").screenshot(), np.uint8), cv2.IMREAD_GRAYSCALE)
                assert abs(float(np.median(shot)) - grays[-1]) < 6, np.median(shot)  # the last frame, not the first
                assert not errors, errors
            finally:
                browser.close()
    finally:
        web.close()


def test_snapshots_and_clips_are_listed_and_served_and_nothing_else(tmp_path: Path) -> None:
    from edge_agent.config import HTTPConfig
    from edge_agent.web import WebServer

    (tmp_path / "snapshots" / "door").mkdir(parents=True)
    (tmp_path / "clips" / "door").mkdir(parents=True)
    (tmp_path / "snapshots" / "door" / "1700000000.000-abc123.jpg").write_bytes(b"\xff\xd8jpeg")
    (tmp_path / "clips" / "door" / "1700000000.000-abc123.avi").write_bytes(b"RIFFavi")
    (tmp_path / "clips" / "door" / ".partial.part.avi").write_bytes(b"half")
    (tmp_path / "secret.avi").write_bytes(b"not for the web")
    web = WebServer(HTTPConfig(enabled=True, bind="127.0.0.1", port=free_port()), lambda: {}, list, {}, list, tmp_path)
    web.start()
    try:
        base = f"http://127.0.0.1:{web.port}"
        status = json.loads(_get(base + "/api/status")[1])
        media = status["media"]["door"]
        assert [f["name"] for f in media["snapshots"]] == ["1700000000.000-abc123.jpg"]
        assert [f["name"] for f in media["clips"]] == ["1700000000.000-abc123.avi"]  # not the one being written
        code, body, ctype = _get(base + media["snapshots"][0]["url"])
        assert (code, body, ctype) == (200, b"\xff\xd8jpeg", "image/jpeg")
        code, body, ctype = _get(base + media["clips"][0]["url"])
        assert (code, body, ctype) == (200, b"RIFFavi", "video/x-msvideo")
        for bad in ("/clips/../secret.avi", "/clips/%2e%2e/secret.avi", "/clips/door/../../secret.avi",
                    "/clips/door/.partial.part.avi", "/snapshots/door/x.txt", "/clips/door/missing.avi"):
            assert _get(base + bad)[0] == 404, bad
    finally:
        web.close()


def test_a_clip_is_sent_a_chunk_at_a_time_whole_or_by_range(tmp_path: Path) -> None:
    """A clip is up to tens of megabytes and the server takes `max_connections` clients at once: read
    whole for each, a few clients (or one that reads slowly, many times over) would hold that many
    copies in the agent's memory. It is sent a chunk at a time, whole or by one byte range (a player
    seeking, a download resumed), and HEAD sends its headers alone. Before, each request read the
    whole file and no range was honoured."""
    import hashlib

    from edge_agent.config import HTTPConfig
    from edge_agent.web import WebServer

    (tmp_path / "clips" / "door").mkdir(parents=True)
    data = np.random.default_rng(7).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "clips" / "door" / "1700000000.000-abc123.avi").write_bytes(data)
    n = len(data)
    web = WebServer(HTTPConfig(enabled=True, bind="127.0.0.1", port=free_port()), lambda: {}, list, {}, list, tmp_path)
    web.start()
    url = f"http://127.0.0.1:{web.port}/clips/door/1700000000.000-abc123.avi"

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    try:
        status, headers, digest, peak = streamed_get(url)
        assert (status, digest) == (200, sha(data))
        assert peak < n // 4, f"{peak} bytes held while sending {n}"
        assert headers["Content-Length"] == str(n) and headers["Accept-Ranges"] == "bytes"
        status, headers, digest, peak = streamed_get(url, "bytes=100-")
        assert (status, digest, headers["Content-Range"]) == (206, sha(data[100:]), f"bytes 100-{n - 1}/{n}")
        assert peak < n // 4, f"{peak} bytes held while sending a range of {n - 100}"
        assert streamed_get(url, "bytes=100-199")[::2] == (206, sha(data[100:200]))
        assert streamed_get(url, "bytes=-500")[::2] == (206, sha(data[-500:]))
        status, headers, _, _ = streamed_get(url, f"bytes={n}-")
        assert (status, headers["Content-Range"]) == (416, f"bytes */{n}")
        for ignored in ("bytes=0-9,20-29", "bytes=abc-", "items=0-9", "bytes=" + "9" * 5000 + "-"):
            assert streamed_get(url, ignored)[::2] == (200, sha(data)), ignored[:30]
        head = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as r:
            assert (r.status, r.headers["Content-Length"], r.read()) == (200, str(n), b"")
    finally:
        web.close()


def test_latency_percentiles_read_while_a_stage_adds_a_series(monkeypatch: pytest.MonkeyPatch) -> None:
    """/healthz once answered 500 on a loaded machine: the health thread went through a stage's latency
    series while the stage added one at its first sample ("dictionary changed size during iteration").
    Here the read itself makes the stage add a series, so the interleaving happens every time."""
    from edge_agent.stats import LatencyWindow, StageStats

    st = StageStats("inference")
    st.observe("preprocess", 1.0)
    real = LatencyWindow.percentiles

    def racing(self: LatencyWindow) -> dict[str, float] | None:
        st.observe(f"series{len(st.latency)}", 2.0)  # the stage thread, between two reads
        return real(self)

    monkeypatch.setattr(LatencyWindow, "percentiles", racing)
    got = st.percentiles()
    assert got == {"preprocess": {"p50": 1.0, "p95": 1.0, "p99": 1.0}}
    assert len(st.latency) == 2


@given(st.lists(st.floats(0.0, 1e5, allow_nan=False), min_size=1, max_size=300), st.integers(0, 2500))
@settings(max_examples=200, deadline=None)
def test_latency_percentiles_are_numpy_s_whatever_the_samples(samples: list[float], before: int) -> None:
    """The percentiles health publishes, taken from one sort, are those of `np.percentile` (its default,
    linear method) over the samples the window holds, however many came before and wrapped round it."""
    from edge_agent.stats import LatencyWindow

    w = LatencyWindow(size=256)
    for i in range(before):
        w.add(float(i % 97))
    for v in samples:
        w.add(v)
    held = np.asarray(([float(i % 97) for i in range(before)] + samples)[-256:])
    got = w.percentiles()
    assert got is not None
    want = np.percentile(held, (50, 95, 99))
    for k, v in zip(("p50", "p95", "p99"), want, strict=True):
        # both rounded to 3 places: one ulp apart, they may round either side of a half
        assert abs(got[k] - float(v)) <= 5e-4 + 1e-9 * abs(float(v)), (k, got, want)
    assert LatencyWindow().percentiles() is None


def test_idle_connections_are_let_go_and_never_take_more_threads_than_the_cap(tmp_path: Path) -> None:
    """Clients that connect and send nothing: those over `max_connections` are closed at once, the others
    after `client_timeout_s`; then the server answers again."""
    import socket

    from edge_agent.config import HTTPConfig
    from edge_agent.web import WebServer

    cfg = HTTPConfig(enabled=True, bind="127.0.0.1", port=free_port(), client_timeout_s=2.0, max_connections=4)
    web = WebServer(cfg, lambda: {}, list, {}, list, tmp_path)
    web.start()
    idle: list[socket.socket] = []
    try:
        server = web._server
        assert server is not None
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(12)]
        # the first four take the slots; the next ones the server accepts while those are idle are refused
        # (how many it accepts within those two seconds hangs on the kernel's listen backlog)
        wait_until(lambda: server.refused >= 1, 5, what="a connection over the cap refused")
        assert threading.active_count() <= threads + 4
        for s in idle:
            s.settimeout(10)
            assert s.recv(1) == b""  # closed by the server, having sent nothing
        with urllib.request.urlopen(f"http://127.0.0.1:{web.port}/livez", timeout=5) as r:
            assert r.status == 200
    finally:
        for s in idle:
            s.close()
        web.close()


def test_the_live_view_wants_pictures_only_while_watched_and_never_shows_an_old_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pipeline hands its pictures over only while a page asked for one within WATCH_S (else its frames
    are decoded smaller). A page that comes after a while is not shown the picture kept from when the
    last one looked: it waits for the next."""
    import edge_agent.liveview as liveview

    now = [1000.0]
    monkeypatch.setattr(liveview, "_clock", lambda: now[0])
    view = liveview.LiveView()
    old = np.zeros((4, 4, 3), np.uint8)
    assert not view.watched()
    view.watch()
    assert view.watched()
    view.set_frame(old, {"seq": 5})
    now[0] += liveview.WATCH_S - 1
    view.watch()  # still watched: the page follows on from the frame it has
    assert view.frame is not None and view.frame[1]["seq"] == 5
    now[0] += liveview.WATCH_S + 1
    assert not view.watched()
    view.watch()
    assert view.watched() and view.wait_newer(-1, 0.01) is None  # the old picture is not shown
    view.set_frame(old + 1, {"seq": 9})
    shown = view.wait_newer(-1, 0.01)
    assert shown is not None and shown[1]["seq"] == 9
