"""The local HTTP endpoint against real clients: Prometheus's own text parser, plain HTTP, and a real
headless Chromium (Debian's) loading the status page."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.metrics import metric_name

from .conftest import DEMO_VIDEO, SHORT, Broker, collect, free_port, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


def test_metrics_parse_with_prometheus_and_carry_every_health_figure(
    web_agent: tuple[str, Any],
    broker: Broker,
    subscriber_factory,  # type: ignore[no-untyped-def]
) -> None:
    base, _ = web_agent
    sub = subscriber_factory(["edge/webdev/health"])
    _, health, _ = collect(sub, lambda t, d, r: d["frames"]["inferred"] > 10, 20)
    m = _metrics(base)
    info = m["edge_agent_build_info"][0].labels
    assert info["device_id"] == "webdev" and info["model"] == "face_detection_short_range"
    assert info["model_sha256"] == health["model"]["sha256"] and info["accelerator"] == "cpu"
    assert _value(m, "edge_agent_latency_ms", series="inference", quantile="0.5") > 0
    assert _value(m, "edge_agent_fps", stage="inferred") > 5
    assert _value(m, "edge_agent_frames_inferred_total") >= health["frames"]["inferred"]
    assert _value(m, "edge_agent_broker_sent_total") > 0
    assert _value(m, "edge_agent_stage_stalled", stage="inference") == 0
    # every number in the health document is somewhere in /metrics, under its name or as a label
    labelled = {"fps", "latency_ms", "commands"}
    names = set(m)
    missing = []
    for path in _leaves(health, []):
        if path[0] == "pipelines":  # each pipeline's figures carry its name as a label
            if path[2] in labelled or path[2:4] == ["frames", "dropped"]:
                continue
            name = "edge_agent_pipeline_" + metric_name(path[2:])
            found = [s for n in (name, name + "_total") for s in m.get(n, []) if s.labels.get("pipeline") == path[1]]
            if not found:
                missing.append(".".join(path))
            continue
        if path[0] in labelled or path[:2] in (["frames", "dropped"], ["broker", "drops"]):
            continue
        base_name = "edge_agent_" + metric_name(path)
        if not ({base_name, base_name + "_total"} & names):
            missing.append(".".join(path))
    assert not missing, missing


def test_healthz_is_200_only_while_every_stage_makes_progress(broker: Broker, agent_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    agent_factory(
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


def test_unknown_paths_and_the_live_frame(web_agent: tuple[str, Any]) -> None:
    base, _ = web_agent
    assert _get(base + "/nope")[0] == 404
    _, body, ctype = wait_until(lambda: (r := _get(base + "/frame.jpg")) and r[0] == 200 and r, 10, what="a live frame")
    assert ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert _get(base + "/healthz")[0] == 200


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
            page.on("request", lambda r: None if r.url.startswith(base) else outside.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.wait_for_function("window.framesLoaded >= 3", timeout=15_000)  # the image keeps updating
            size = page.evaluate(
                "[document.getElementById('frame').naturalWidth, document.getElementById('frame').naturalHeight]"
            )
            assert size == [640, 480]
            page.wait_for_function("window.lastStatus && window.lastStatus.predictions.length > 0", timeout=10_000)
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
            assert shown["source.state"] == info["source_state"] == "running"
            assert before < float(shown["frames.inferred"] or 0) <= _value(after, "edge_agent_frames_inferred_total")
            assert page.text_content("#status") == "ok"
            assert "face" in (page.text_content("#preds") or "")
            assert not errors and not outside
        finally:
            browser.close()


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
