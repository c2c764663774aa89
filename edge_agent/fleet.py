"""The fleet side of updates: keys, signed manifests, pushing a model and following its progress."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import http.server
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from edge_agent.config import MQTTConfig
from edge_agent.httpserver import BoundedServer, RangeNotSatisfiable, byte_range, copy_bytes
from edge_agent.ota.manifest import Manifest
from edge_agent.ota.updater import TERMINAL
from edge_agent.progress import Progress
from edge_agent.sinks.mqtt import Subscriber
from edge_agent.topics import device_base, device_pattern, group_base, ota_chunk
from edge_agent.untrusted import document, plain, real

#: After a group push, how long to wait for more devices to answer once all that did are done.
_GROUP_GRACE_S = 3.0
#: A named device with no retained availability within this long has never been seen on this broker.
_UNKNOWN_AFTER_S = 2.0
#: Outcomes of a push that the device itself never reported: it could not be reached.
UNREACHED = ("unknown", "offline", "no_answer")


class BrokerUnreachable(RuntimeError):
    """The fleet command could not connect to the broker."""


def _connect(sub: Subscriber, cfg: MQTTConfig) -> None:
    if not sub.start(10):
        sub.stop()
        raise BrokerUnreachable(f"{sub.why_not()}; check --mqtt-host, --mqtt-port and mqtt.username/password")


def build_manifest(
    model: Path,
    version: int,
    name: str | None,
    urls: list[str],
    labels: list[str] | None,
    valid_hours: float,
    delivery: str = "http",
) -> Manifest:
    data = model.read_bytes()
    return Manifest(
        name=name or model.stem,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        urls=urls,
        labels=labels,
        delivery=delivery,
        expires=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=valid_hours),
    )


class FileServer:
    """Serves one directory over HTTP (Range supported by the handler below) for `push --serve` and
    rollouts. A fleet's devices are many and their links poor: a connection idle for `client_timeout_s`
    is let go, and at most `max_connections` are served at once (more are closed unread; a device
    retries its download), so devices that vanish mid-download never pile up threads on the host."""

    def __init__(
        self, directory: Path, host: str, port: int, client_timeout_s: float = 60.0, max_connections: int = 256
    ):
        handler = type("Handler", (_RangeHandler,), {"timeout": client_timeout_s})
        self.httpd = BoundedServer((host, port), functools.partial(handler, directory=str(directory)),
                                   max_connections)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, name="fleet-http", daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus a single byte range (resumable downloads). A Range header this does
    not parse (several ranges, garbage) is ignored, as RFC 9110 allows: the whole file, 200."""

    _length: int | None = None  # of the range being sent; None: the whole file

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self):
        self._length = None
        header = self.headers.get("Range")
        if not header:
            return super().send_head()
        path = Path(self.translate_path(self.path))
        try:
            f = path.open("rb")
        except OSError:
            self.send_error(404)
            return None
        size = os.fstat(f.fileno()).st_size
        try:
            span = byte_range(header, size)
        except RangeNotSatisfiable as err:
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", str(err))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if span is None:
            f.close()
            return super().send_head()
        first, last = span
        f.seek(first)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        self._length = last - first + 1
        return f

    def copyfile(self, source: Any, outputfile: Any) -> None:
        """The range's bytes only (the whole file where no range was asked for), a chunk at a time."""
        if self._length is None:
            super().copyfile(source, outputfile)
        else:
            copy_bytes(source, outputfile, self._length)


def push(
    cfg: MQTTConfig,
    manifest: Manifest,
    devices: list[str],
    group: str | None,
    timeout_s: float,
    out: Any,
    model_bytes: bytes | None = None,
    target: dict[str, Any] | None = None,
    answer_s: float = 10.0,
) -> dict[str, dict[str, Any]]:
    """Send the deploy command and follow model/state until each device reaches a terminal state.

    With MQTT delivery, `model_bytes` go out in chunks once the devices have accepted. target: on devices
    with several models, {"model": NAME} or {"pipelines": [...]} names the one to replace. A named device
    that the broker has never seen (no retained availability), one whose availability says offline, and
    one that does not answer the command within `answer_s` are given up on at once, with the reason."""
    prefix = cfg.topic_prefix
    cid = f"push-{uuid.uuid4().hex[:12]}"
    sub = Subscriber(
        cfg,
        [
            device_pattern(prefix, None, "model/state"),
            device_pattern(prefix, None, "models/+/state"),
            device_pattern(prefix, None, "cmd/result"),
            *[device_pattern(prefix, d, "availability") for d in devices],
        ],
    )
    _connect(sub, cfg)
    args = {"manifest": manifest.model_dump(mode="json"), **(target or {})}
    cmd = json.dumps({"id": cid, "command": "deploy", "args": args})
    targets = [device_pattern(prefix, d, "cmd") for d in devices]
    targets += [f"{group_base(prefix, group)}/cmd"] if group else []
    for t in targets:
        sub.publish(t, cmd.encode())
    status: dict[str, dict[str, Any]] = {d: {"state": "sent"} for d in devices}
    availability: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    last_new = sent_at = time.monotonic()
    chunks_due = manifest.delivery == "mqtt" and model_bytes is not None
    bars: dict[str, Progress] = {}  # one per device: download percent, then state
    try:
        while time.monotonic() < deadline:
            answered = all(s["state"] != "sent" for s in status.values()) and bool(status)
            if chunks_due and (answered if devices else time.monotonic() - sent_at > _GROUP_GRACE_S):
                chunks_due = False
                roots = [device_base(prefix, d) for d, s in status.items() if s["state"] != "rejected"]
                roots += [group_base(prefix, group)] if group else []
                _send_chunks(sub, roots, manifest, model_bytes or b"", out)
            _give_up_on_silent(status, availability, time.monotonic() - sent_at, answer_s, out)
            m = sub.get(0.2)
            if m is None:
                settled = devices or time.monotonic() - last_new > _GROUP_GRACE_S  # a group: wait for stragglers
                if status and settled and all(s["state"] in (*TERMINAL, *UNREACHED) for s in status.values()):
                    break
                continue
            topic, payload, _ = m
            device = topic[len(prefix) + 1 :].split("/", 1)[0]
            if topic.endswith("/availability"):
                availability[device] = payload.decode("utf-8", "replace")
                continue
            # anything may publish under the prefix: only what reads as an agent's document counts, and
            # what is printed of it is made plain (a device's reason is text from elsewhere)
            doc = document(payload)
            if doc is None:
                continue
            if topic.endswith("/cmd/result") and doc.get("id") == cid:
                if doc.get("status") == "rejected":
                    status[device] = {"state": "rejected", "reason": doc.get("reason")}
                elif device not in status:
                    status[device] = {"state": "accepted"}
                    last_new = time.monotonic()
            elif (topic.endswith("/state") and doc.get("sha256") == manifest.sha256 and device in status
                  and isinstance(doc.get("state"), str)):
                status[device] = doc
                bar = bars.get(device)
                if bar is None:
                    bar = bars[device] = Progress(plain(device), 100, "%", out, position=len(bars))
                said = plain(doc["state"]) + (f" ({plain(doc['reason'])})" if doc.get("reason") else "")
                percent = real(doc.get("percent"))
                if percent is not None:
                    bar.set(min(max(percent, 0.0), 100.0), said)
                elif doc["state"] in ("verifying", "validating", "activating", "probation", "active"):
                    bar.set(100.0, said)  # the download is done: the bar is full
                else:
                    bar.set(bar.n, said)
    finally:
        sub.stop()
        for bar in bars.values():
            bar.close()
    return status


def _give_up_on_silent(
    status: dict[str, dict[str, Any]], availability: dict[str, str], waited: float, answer_s: float, out: Any
) -> None:
    """Devices that cannot answer: never seen, offline by their Will, or silent past `answer_s`."""
    for device, st in status.items():
        if st["state"] != "sent":
            continue
        seen = availability.get(device)
        if seen is None and waited > _UNKNOWN_AFTER_S:
            why = ("unknown", "this broker has never seen the device (no retained availability): check the id")
        elif seen is not None and seen != "online":
            why = ("offline", f"the device's availability says {seen}: it is not connected to hear the command")
        elif waited > answer_s:
            why = ("no_answer", f"no answer to the deploy command within {answer_s:g} s")
        else:
            continue
        status[device] = {"state": why[0], "reason": why[1]}
        print(f"{plain(device)}: {why[0]}: {why[1]}", file=out, flush=True)


def _send_chunks(sub: Subscriber, roots: list[str], m: Manifest, payload: bytes, out: Any) -> None:
    with Progress("sending model", len(payload) * len(roots) / 1024, "kB", out) as bar:
        for root in roots:
            for i in range(0, len(payload), m.chunk_size):
                chunk = payload[i : i + m.chunk_size]
                sub.publish(ota_chunk(root, m.sha256, i // m.chunk_size), chunk)
                bar.update(len(chunk) / 1024)


def status(cfg: MQTTConfig, wait_s: float = 2.0) -> dict[str, dict[str, Any]]:
    """Devices as their retained availability, info and model state show them; each online device is
    also asked for its status (a `status` command), so fps and health are current, not whatever health
    message happened to pass within `wait_s`."""
    prefix = cfg.topic_prefix
    leaves = ("availability", "info", "model/state", "health", "cmd/result")
    sub = Subscriber(cfg, [device_pattern(prefix, None, leaf) for leaf in leaves])
    _connect(sub, cfg)
    devices: dict[str, dict[str, Any]] = {}
    asked: dict[str, str] = {}  # device -> command id
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            m = sub.get(0.1)
            if m is None:
                continue
            topic, payload, _ = m
            device, _, kind = topic[len(prefix) + 1 :].partition("/")
            if device == "group":
                continue
            d = devices.setdefault(device, {})
            if kind == "availability":
                d["availability"] = payload.decode("utf-8", "replace")
                if d["availability"] == "online" and device not in asked:
                    asked[device] = f"status-{uuid.uuid4().hex[:12]}"
                    cmd = {"id": asked[device], "command": "status"}
                    sub.publish(device_pattern(prefix, device, "cmd"), json.dumps(cmd).encode())
                continue
            doc = document(payload)
            if doc is None:
                continue  # anything may publish under the prefix: only documents as agents write them
            if kind == "cmd/result":
                if doc.get("id") == asked.get(device) and doc.get("status") == "done":
                    d["status"] = doc.get("result") or {}
                continue
            d[kind] = doc
    finally:
        sub.stop()
    return devices


def send_command(
    cfg: MQTTConfig, device: str, command: str, timeout_s: float = 10.0, args: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """One command to one device; its answer (None if none came)."""
    prefix = cfg.topic_prefix
    cid = f"{command}-{uuid.uuid4().hex[:12]}"
    sub = Subscriber(cfg, [device_pattern(prefix, device, "cmd/result")])
    _connect(sub, cfg)
    try:
        sent = {"id": cid, "command": command, **({"args": args} if args else {})}
        sub.publish(device_pattern(prefix, device, "cmd"), json.dumps(sent).encode())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = sub.get(0.2)
            doc = document(m[1]) if m is not None else None
            if doc is not None and doc.get("id") == cid:
                return doc
        return None
    finally:
        sub.stop()
