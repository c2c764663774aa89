"""What the commands print for a person at a terminal; the JSON forms (`--json`, or any pipe) are for
programs. Each function takes the document the JSON form prints, so the two never say different things."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from edge_agent.untrusted import plain


def emit(doc: Any, human: Callable[[Any], str], as_json: bool, indent: int | None = 2) -> None:
    """JSON when asked for or when stdout is not a terminal (a pipe, a file, a test), else `human(doc)`
    with its control characters written out: it holds words from elsewhere (a device's reason, a
    model's labels and metadata), and an escape sequence among them would work the terminal."""
    if as_json or not sys.stdout.isatty():
        if indent is None:  # one document per line, exactly as the agent publishes it
            from edge_agent.payload import dumps

            print(dumps(doc).decode(), flush=True)
        else:
            print(json.dumps(doc, indent=indent, default=str), flush=True)
    else:
        print(plain(human(doc), None, lines=True), flush=True)


def _rows(rows: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def printable(payload: bytes) -> str:
    """A payload as one line: text as it is (every document is one line of JSON, a zone count a
    number), but a line break or another control character in it escaped as JSON would write it (it
    comes from anything that publishes to the broker: an escape sequence would work the terminal); a
    binary one (a snapshot's JPEG) as a line of JSON saying what it is and its size, since its bytes
    would break the lines apart and mean nothing on a terminal."""
    try:
        return plain(payload.decode("utf-8"), None)
    except UnicodeDecodeError:
        kind = "image/jpeg" if payload[:3] == b"\xff\xd8\xff" else "application/octet-stream"
        return json.dumps({"binary": kind, "bytes": len(payload)})


def check(doc: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = [("config", str(doc.get("config", "?")))]
    rows += _checked(doc, "")
    for name, part in (doc.get("pipelines") or {}).items():
        rows += _checked(part, f"{name}: ")
    board = doc.get("board")
    if board:
        clock = board.get("clock") or {}
        synced = {True: "NTP synchronized", False: "not synchronized by NTP", None: "synchronization unknown"}
        temp = f", CPU {board['cpu_temp_c']:.0f} °C" if board.get("cpu_temp_c") is not None else ""
        thermal = board.get("thermal")
        if thermal:  # the zone nearest the point where it is slowed (or the board powered off)
            temp += f", {thermal['zone']} {thermal['headroom_c']:.0f} °C under its {thermal['limit']} point"
        rail = next(iter((board.get("power") or {}).items()), None)  # a Jetson's first is VDD_IN: the module's
        if rail is not None:
            temp += f", {rail[0]} {rail[1]['watts']:.1f} W"
        memory = f"memory {board.get('memory_available_mb', 0):.0f} of {board.get('memory_total_mb', 0):.0f} MB"
        rows.append(("board", f"{memory} available, clock {'set' if clock.get('set') else 'NOT set'} "
                     f"({synced[clock.get('synchronized')]}){temp}"))
        disk = board.get("storage")
        if disk:  # the disk the state directory is on, and its wear where it says
            pct = disk.get("life_used_pct")
            wear = ("past its rated writes" if disk.get("past_rated_life") else
                    f"{pct - 10}-{pct}% of its rated writes used" if pct is not None else "no wear figure")
            if disk.get("pre_eol") in ("warning", "urgent"):
                wear += f", spare blocks {disk['pre_eol']}"
            if disk.get("fs_errors"):
                wear += f", {disk['fs_errors']} file system errors"
            free = board.get("disk_free_mb")
            rows.append(("storage", f"{disk['device']} ({disk['kind']}), {wear}"
                         + (f", {free:.0f} MB free" if free is not None else "")))
    b = doc.get("broker")
    if b:
        rows.append(("broker", f"{b['address']}: {'ok' if b['ok'] else b.get('error')}"))
    net = doc.get("network")
    if net:  # the link the broker connection went over
        said = [net["kind"], "up" if net.get("up") else "DOWN"]
        if net.get("signal_dbm") is not None:
            said.append(f"signal {net['signal_dbm']:.0f} dBm")
        if net.get("speed_mbps"):
            said.append(f"{net['speed_mbps']} Mb/s")
        if net.get("carrier_changes"):
            said.append(f"its link lost {net['carrier_changes'] // 2} times since boot")
        rows.append(("network", f"{net['interface']}: {', '.join(said)}"))
    problems = doc.get("problems") or []
    rows.append(("problems", "none" if not problems else problems[0]))
    rows += [("", p) for p in problems[1:]]
    return _rows(rows)


def _checked(doc: dict[str, Any], who: str) -> list[tuple[str, str]]:
    """One pipeline's rows: its model, accelerator, source and first inference (who: its name, or none)."""
    rows: list[tuple[str, str]] = []
    m = doc.get("model")
    if m:
        version = f"v{m['version']}" if m.get("version") else "unversioned"
        rows.append(("model", f"{who}{m.get('name')} {version} ({m.get('layout')}, {m.get('task')}), "
                     f"sha256 {str(m.get('sha256'))[:12]}"))
    a = doc.get("accelerator")
    if a:
        full = {True: "fully accelerated", False: "partly on the CPU", None: "coverage unknown"}
        rows.append(("accelerator", f"{who}{a.get('description')}, {full.get(a.get('fully_accelerated'), '')}"))
    src = doc.get("source")
    if src:
        if "frame" in src:
            w, h = src["frame"]
            rows.append(("source", f"{who}{src.get('uri')}: {w}x{h}, opened and read in {src.get('open_read_ms')} ms"))
        else:
            rows.append(("source", who + ", ".join(f"{k} {v}" for k, v in src.items())))
    inf = doc.get("first_inference")
    if inf:
        found = inf.get("detections") or inf.get("classes") or []
        rows.append(("inference", f"{who}{inf.get('inference_ms')} ms, {len(found)} "
                     f"{'detection(s)' if 'detections' in inf else 'class(es)'}"))
    return rows


def _tensor(t: dict[str, Any]) -> str:
    q = t.get("quantization")
    quant = f" scale {q['scale']:.6g} zero point {q['zero_point']}" if q else ""
    return f"{t.get('name')}: {t.get('dtype')} {t.get('shape')}{quant}"


def inspect(doc: dict[str, Any]) -> str:
    rows = [("model", f"{doc['path']} ({doc['size']} bytes, sha256 {doc['sha256'][:12]})")]
    rows += [("input" if i == 0 else "", _tensor(t)) for i, t in enumerate(doc["inputs"])]
    rows += [("output" if i == 0 else "", _tensor(t)) for i, t in enumerate(doc["outputs"])]
    rows.append(("layout", str(doc["detected_layout"])))
    if doc.get("keypoints"):
        rows.append(("keypoints", "{} of {} values".format(*doc["keypoints"])))
    feeds = doc.get("feeds")
    if feeds:
        bars = f", bars grey {feeds['letterbox_fill']}" if feeds["resize"] == "letterbox" else ""
        rows.append(("fed", f"black as {feeds['black']}, white as {feeds['white']}; {feeds['resize']}{bars}"))
    if doc.get("input_size_open"):
        rows.append(("size", "left open by the file: run at {}x{} (model.input_size)".format(
            *doc["input_size_open"]["runs_at"])))
    if doc.get("labels_problem"):
        rows.append(("labels!", str(doc["labels_problem"])))
    labels = doc.get("labels") or []
    shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
    rows.append(("labels", shown or "none"))
    rows.append(("ops", f"{len(doc['ops'])} kinds" + (f"; custom: {', '.join(doc['custom_ops'])}"
                                                      if doc["custom_ops"] else "")))
    if doc.get("requires_delegates"):
        rows.append(("needs", ", ".join(doc["requires_delegates"])))
    meta = doc.get("metadata") or {}
    if meta:
        rows.append(("metadata", ", ".join(f"{k} {v}" for k, v in meta.items())))
    return _rows(rows)


def prediction(doc: dict[str, Any]) -> str:
    """One line per image: what was found, and how long inference took."""
    if "summary" in doc:
        s = doc["summary"]
        if "frames" in s:  # a video file's
            bad = f", {s['undecodable']} not decodable (skipped)" if s["undecodable"] else ""
            return f"{doc.get('file')}: {s['frames']} frame(s){bad}"
        return f"{doc.get('file')}: {s['events']} event(s) in {s['seconds']} s of signal ({s['windows']} windows)"
    found = []
    for d in doc.get("detections") or []:
        x1, y1, x2, y2 = (round(v) for v in d["box"])
        found.append(f"{d['label']} {d['score']:.2f} at ({x1},{y1})-({x2},{y2})")
    for c in doc.get("classes") or []:
        found.append(f"{c['label']} {c['score']:.2f}")
    if doc.get("type"):  # a recording's event
        found.append(f"{doc['type']} {doc.get('label')} at {doc.get('offset_s')} s")
    where = doc.get("source") or doc.get("file") or ""
    frame = doc.get("frame") or {}
    if "index" in frame:  # a video file's frame
        where += f" #{frame['index']}"
    ms = (doc.get("latency_ms") or {}).get("inference")
    took = f" ({ms:.1f} ms)" if isinstance(ms, int | float) else ""
    return f"{where}: {'; '.join(found) or 'nothing found'}{took}"


def settings(doc: dict[str, Any], prefix: str = "") -> str:
    """Every setting as `key = value`, one per line (TOML-like)."""
    lines = []
    for k, v in doc.items():
        if isinstance(v, dict):
            inner = settings(v, f"{prefix}{k}.")
            if inner:
                lines.append(inner)
        else:
            lines.append(f"{prefix}{k} = {json.dumps(v, default=str)}")
    return "\n".join(lines)


def push_outcome(status: dict[str, dict[str, Any]]) -> str:
    """Where each device ended: `d1  active  face_detection v3`, or the reason it did not."""
    if not status:
        return "no device answered"
    rows = []
    for device, st in sorted(status.items()):
        what = f"{st.get('name') or ''} v{st['version']}" if st.get("version") is not None else ""
        why = f"  ({st['reason']})" if st.get("reason") else ""
        rows.append((device, f"{st.get('state')}  {what}".rstrip() + why))
    return _rows(rows)


def rollout_outcome(doc: dict[str, Any]) -> str:
    """Each wave and where each of its devices ended, then the rollout's own status."""
    lines = []
    for w in doc["waves"]:
        lines.append(f"{w['name']}: {w['state']}")
        lines += [f"  {d}  {st}" for d, st in sorted(w["devices"].items())]
    why = f" ({doc['reason']})" if doc.get("reason") else ""
    lines.append(f"rollout {doc['id']} of version {doc.get('version')}: {doc['status']}{why}")
    return "\n".join(lines)


def command_answer(answer: dict[str, Any] | None) -> str:
    if answer is None:
        return "no answer"
    text = f"{answer.get('command', 'command')}: {answer.get('status')}"
    if answer.get("reason"):
        text += f" ({answer['reason']})"
    if answer.get("result") is not None:
        text += "\n" + json.dumps(answer["result"], indent=2, default=str)
    return text
