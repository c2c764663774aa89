"""The local HTTP endpoint: /metrics (Prometheus), /healthz, and a status page with the live frame.

Off by default. Runs on its own threads and only reads what the pipeline already has (the last
frame and result are references handed over by the post stage); drawing and JPEG encoding
happen here, on request, never on a pipeline thread. The page uses no outside assets, so it
works on a device with no internet.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge_agent.config import HTTPConfig
from edge_agent.httpserver import BoundedServer, RangeNotSatisfiable, byte_range, copy_bytes
from edge_agent.liveview import LiveView
from edge_agent.metrics import HealthCollector, Latencies
from edge_agent.snapshots import colour_for, draw_banner, draw_box
from edge_agent.untrusted import number

log = logging.getLogger(__name__)

#: How long a request for the next frame waits for one before it gets the current frame again.
_FRAME_WAIT_S = 2.0
#: The only media paths served: a kind, a pipeline name, a file name without a leading dot or a separator.
_MEDIA = re.compile(r"^/(snapshots|clips)/([A-Za-z0-9_.\-]{1,64})/([A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}\.(?:jpg|avi))$")

def draw(image: np.ndarray, doc: dict[str, Any], max_width: int) -> tuple[np.ndarray, list[list[int]]]:
    """A scaled copy of the frame with its detections (box, filled label with contrasting text) or top
    classes, and its frame number and capture time; with the rectangles of the labels drawn."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, max_width / w)
    out = (
        cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        if scale < 1
        else image.copy()
    )
    labels = []
    for d in doc.get("detections") or []:
        x1, y1, x2, y2 = (v * scale for v in d["box"])
        labels.append(list(draw_box(out, (x1, y1, x2, y2), f"{d['label']} {d['score']:.2f}", colour_for(d["label"]))))
    banner = draw_banner(out, _frame_caption(doc))
    top = banner[3] + 4
    for c in doc.get("classes") or []:
        rect = draw_box(out, (8, top + 24, 8, top + 24), f"{c['label']} {c['score']:.2f}", colour_for(c["label"]))
        labels.append(list(rect))
        top = rect[3] + 2
    return out, labels


def _frame_caption(doc: dict[str, Any]) -> str:
    ts = doc.get("ts")
    when = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}" if ts else ""
    return f"#{doc.get('seq', '?')} {when}".strip()


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
        self._server: BoundedServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def start(self) -> None:
        # `timeout`: the socket's, set up per connection; a stalled read or write ends the connection
        handler = type("Handler", (_Handler,), {"web": self, "timeout": self.cfg.client_timeout_s})
        self._server = BoundedServer((self.cfg.bind, self.cfg.port), handler, self.cfg.max_connections)
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

    def media_file(self, path: str) -> tuple[Path, str] | None:
        """The file of `/snapshots/{pipeline}/{name}.jpg` or `/clips/{pipeline}/{name}.avi`, and its
        content type, or None; names are checked against a strict pattern, so nothing outside those
        directories can be named."""
        m = _MEDIA.match(path)
        if m is None or self.media_root is None or m.group(2) in (".", ".."):
            return None
        f = self.media_root / m.group(1) / m.group(2) / m.group(3)
        return f, ("image/jpeg" if m.group(1) == "snapshots" else "video/x-msvideo")

    def frame_jpeg(self, pipeline: str | None = None, after: int = -1) -> tuple[bytes, dict[str, str]] | None:
        """The newest frame, drawn, as JPEG with its number and label rectangles (headers); with `after`,
        waits (up to `_FRAME_WAIT_S`) for a frame newer than that number, so a page that asks again as
        soon as a frame has loaded follows the camera's rate without polling."""
        import cv2

        view = self._view(pipeline)
        if view is None:
            return None
        view.watch()
        cur = view.wait_newer(after, _FRAME_WAIT_S)
        if cur is None:
            return None
        image, labels = draw(cur[0], cur[1], self.cfg.max_width)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            return None
        view.frames_served += 1
        headers = {"X-Frame-Seq": str(cur[1].get("seq", -1)), "X-Frame-Labels": json.dumps(labels)}
        return bytes(buf), headers


class _Handler(BaseHTTPRequestHandler):
    web: WebServer
    server_version = "edge-agent"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: %s", format % args)

    def _send(
        self, code: int, body: bytes, ctype: str, cache: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if not cache:
            self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send_media(self, path: str) -> None:
        """A snapshot or clip, a chunk at a time (a clip is up to tens of megabytes, and the server takes
        `max_connections` clients at once), whole or one byte range (a player seeking, a download
        resumed)."""
        media = self.web.media_file(path)
        try:
            f = media[0].open("rb") if media is not None else None
        except OSError:  # missing, or removed as the oldest since it was listed
            f = None
        if media is None or f is None:
            self._send(404, b"not found", "text/plain")
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            try:
                span = byte_range(self.headers.get("Range"), size)
            except RangeNotSatisfiable as err:
                self._send(416, b"", "text/plain", headers={"Content-Range": str(err)})
                return
            first, last = span if span is not None else (0, size - 1)
            self.send_response(206 if span is not None else 200)
            self.send_header("Content-Type", media[1])
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            if span is not None:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                f.seek(first)
                copy_bytes(f, self.wfile, last - first + 1)

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
                # a frame number, or anything else as none (a crafted value is no 500 and no traceback
                # in the log per request: `--5`, digits of other scripts, thousands of digits)
                after = number(params.get("after", [""])[0], negative=True)
                after = -1 if after is None else after
                frame = web.frame_jpeg(params["pipeline"][0] if params.get("pipeline") else None, after)
                if frame is None:
                    self._send(404, b"no frame yet", "text/plain")
                else:
                    self._send(200, frame[0], "image/jpeg", headers=frame[1])
            elif path.startswith(("/snapshots/", "/clips/")):
                self._send_media(path)
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
