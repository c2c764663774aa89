"""The local HTTP endpoint: /metrics (Prometheus), /healthz, and a status page with the live frame.

Off by default. Runs on its own threads and only reads what the pipeline already has (the last
frame and result are references handed over by the post stage); drawing and JPEG encoding
happen here, on request, never on a pipeline thread. The page uses no outside assets, so it
works on a device with no internet.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge_agent.config import HTTPConfig
from edge_agent.liveview import LiveView
from edge_agent.metrics import HealthCollector, Latencies

log = logging.getLogger(__name__)

#: The only media paths served: a kind, a pipeline name, a file name without a leading dot or a separator.
_MEDIA = re.compile(r"^/(snapshots|clips)/([A-Za-z0-9_.\-]{1,64})/([A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}\.(?:jpg|avi))$")

#: Colours of boxes on the live frame (BGR), by label index.
_COLOURS = [(0, 200, 255), (80, 220, 80), (255, 120, 40), (200, 80, 255), (60, 60, 240), (240, 240, 60)]


def draw(image: np.ndarray, doc: dict[str, Any], max_width: int) -> np.ndarray:
    """The frame with its detections (boxes, labels, scores) or top classes drawn on a scaled copy."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, max_width / w)
    out = (
        cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        if scale < 1
        else image.copy()
    )
    for d in doc.get("detections") or []:
        x1, y1, x2, y2 = (round(v * scale) for v in d["box"])
        c = _COLOURS[int(d.get("index", 0)) % len(_COLOURS)]
        cv2.rectangle(out, (x1, y1), (x2, y2), c, 2)
        cv2.putText(out, f"{d['label']} {d['score']:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, c, 1)
    for i, c in enumerate(doc.get("classes") or []):
        cv2.putText(
            out, f"{c['label']} {c['score']:.2f}", (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 255, 0), 1
        )
    return out


class WebServer:
    def __init__(
        self,
        cfg: HTTPConfig,
        health: Callable[[], dict[str, Any]],
        stalled: Callable[[], list[str]],
        live: dict[str, LiveView],
        history: Callable[[], list[dict[str, Any]]],
        media_root: Path | None = None,
        latencies: Latencies | None = None,
    ):
        """live: each pipeline's live view, by name (one tile each on the page); media_root: the state
        directory, whose `snapshots/{pipeline}/` and `clips/{pipeline}/` are listed and served."""
        self.cfg, self.health, self.stalled, self.live, self.history = cfg, health, stalled, live, history
        self.media_root = media_root
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HealthCollector(health, stalled, latencies))
        # the standard process_* and python_* series, so the usual dashboards and alerts work as they are
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"web": self})
        self._server = ThreadingHTTPServer((self.cfg.bind, self.cfg.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info("status page on http://%s:%d/", self.cfg.bind, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- content -------------------------------------------------------------------------
    def healthz(self) -> tuple[int, dict[str, Any]]:
        """The health document's verdict: 200 while its status is "ok", 503 with its problems while it is
        "degraded" (a stalled stage, a source not delivering or finished, a failed pipeline, the broker
        away, a CPU fallback, media not saved). Readiness, in Kubernetes' terms: "serving as configured"."""
        h = self.health()
        problems = list(h.get("problems") or [])
        ok = h.get("status") == "ok"
        return (200 if ok else 503), {"ok": ok, "status": h.get("status"), "problems": problems}

    def livez(self) -> tuple[int, dict[str, Any]]:
        """Liveness: 503 only while a stage is stalled, the one state a restart cures (a missing camera or
        broker is not fixed by restarting the agent)."""
        stalled = [f"{s} stalled" for s in self.stalled()]
        return (503 if stalled else 200), {"ok": not stalled, "problems": stalled}

    def _view(self, pipeline: str | None) -> LiveView | None:
        if pipeline is None:
            return next(iter(self.live.values()), None)
        return self.live.get(pipeline)

    def status(self) -> dict[str, Any]:
        h = self.health()
        tiles = {
            name: {
                "predictions": list(v.predictions),
                "events": list(v.events),
                "has_frame": v.frame is not None,
                "frames_served": v.frames_served,
            }
            for name, v in list(self.live.items())
        }
        first = next(iter(tiles.values()), {"predictions": [], "events": [], "has_frame": False, "frames_served": 0})
        return {
            "health": h,
            **first,
            "pipelines": tiles,
            "update_history": self.history()[-20:],
            "media": self.media(),
        }

    def media(self, limit: int = 50) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Per pipeline, the newest snapshots and clips on disk: name, URL, bytes, time."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        if self.media_root is None:
            return out
        for kind, suffix in (("snapshots", ".jpg"), ("clips", ".avi")):
            base = self.media_root / kind
            try:
                pipes = sorted(d for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
                for d in pipes:
                    files = sorted(
                        (f for f in d.iterdir() if f.suffix == suffix and not f.name.startswith(".")),
                        key=lambda f: f.stat().st_mtime,
                        reverse=True,
                    )[:limit]
                    out.setdefault(d.name, {"snapshots": [], "clips": []})[kind] = [
                        {"name": f.name, "url": f"/{kind}/{d.name}/{f.name}", "bytes": f.stat().st_size,
                         "mtime": round(f.stat().st_mtime, 3)}
                        for f in files
                    ]
            except OSError:  # a file removed while listing, or an unreadable disk: list what was read
                continue
        return out

    def media_file(self, path: str) -> tuple[bytes, str] | None:
        """`/snapshots/{pipeline}/{name}.jpg` or `/clips/{pipeline}/{name}.avi`, or None; names are checked
        against a strict pattern, so nothing outside those directories can be named."""
        m = _MEDIA.match(path)
        if m is None or self.media_root is None or m.group(2) in (".", ".."):
            return None
        f = self.media_root / m.group(1) / m.group(2) / m.group(3)
        try:
            return f.read_bytes(), ("image/jpeg" if m.group(1) == "snapshots" else "video/x-msvideo")
        except OSError:
            return None

    def frame_jpeg(self, pipeline: str | None = None) -> bytes | None:
        import cv2

        view = self._view(pipeline)
        cur = view.frame if view is not None else None
        if view is None or cur is None:
            return None
        ok, buf = cv2.imencode(
            ".jpg", draw(cur[0], cur[1], self.cfg.max_width), [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality]
        )
        if not ok:
            return None
        view.frames_served += 1
        return bytes(buf)


class _Handler(BaseHTTPRequestHandler):
    web: WebServer
    server_version = "edge-agent"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: %s", format % args)

    def _send(self, code: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if not cache:
            self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        web = self.web
        web.requests += 1
        path, _, query = self.path.partition("?")
        params = parse_qs(query)
        try:
            if path == "/metrics":
                self._send(200, generate_latest(web.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                code, doc = web.healthz() if path == "/healthz" else web.livez()
                self._send(code, json.dumps(doc).encode(), "application/json")
            elif path == "/api/status":
                self._send(200, json.dumps(web.status(), default=str).encode(), "application/json")
            elif path == "/frame.jpg":
                jpeg = web.frame_jpeg(params["pipeline"][0] if params.get("pipeline") else None)
                if jpeg is None:
                    self._send(404, b"no frame yet", "text/plain")
                else:
                    self._send(200, jpeg, "image/jpeg")
            elif path.startswith(("/snapshots/", "/clips/")):
                media = web.media_file(path)
                if media is None:
                    self._send(404, b"not found", "text/plain")
                else:
                    self._send(200, media[0], media[1], cache=True)
            elif path in ("/", "/index.html"):
                self._send(200, PAGE, "text/html; charset=utf-8", cache=True)
            else:
                self._send(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-response
        except Exception:  # loop boundary of one request: the server goes on
            log.exception("http error on %s", path)
            try:
                self._send(500, b"internal error", "text/plain")
            except OSError:
                pass


def _page() -> bytes:
    """The status page: one file, no outside assets."""
    from importlib.resources import files

    return files("edge_agent").joinpath("status_page.html").read_bytes()


PAGE = _page()
