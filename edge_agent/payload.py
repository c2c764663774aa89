"""The MQTT payload contract, built in one place so `predict` and the daemon print the same JSON."""

from __future__ import annotations

from typing import Any

import orjson

from edge_agent.results import Result

#: Bumped when a field changes meaning or disappears; new fields do not bump it.
SCHEMA = 1


def prediction(
    *,
    device_id: str,
    boot_id: str,
    seq: int,
    ts: float,
    model: dict[str, Any],
    accelerator: str,
    latency_ms: dict[str, float],
    frame_size: tuple[int, int],
    result: Result,
    source: str | None = None,
    pipeline: str | None = None,
    position: tuple[int, float | None] | None = None,
) -> dict[str, Any]:
    """One frame's result. pipeline: set for named pipelines (the single-pipeline form has none); position:
    a video file's frame (its number from 1, and its time in the file where the file has a frame rate)."""
    frame: dict[str, Any] = {"width": frame_size[0], "height": frame_size[1]}
    if position is not None:
        frame["index"] = position[0]
        if position[1] is not None:
            frame["offset_s"] = round(position[1], 3)
    doc: dict[str, Any] = {
        **_head(device_id, boot_id, seq, ts, pipeline),
        "model": model,
        "accelerator": accelerator,
        "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()},
        "frame": frame,
        "task": result.task,
    }
    if source is not None:
        doc["source"] = source
    doc.update(result.as_dict())
    return doc


def _head(device_id: str, boot_id: str, seq: int, ts: float, pipeline: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema": SCHEMA, "device_id": device_id, "boot_id": boot_id, "seq": seq}
    if pipeline is not None:
        doc["pipeline"] = pipeline
    doc["ts"] = round(ts, 6)
    return doc


def window_prediction(
    *,
    device_id: str,
    boot_id: str,
    seq: int,
    ts: float,
    model: dict[str, Any],
    accelerator: str,
    latency_ms: dict[str, float],
    offset_s: float,
    result: Result,
    scores: dict[str, float],
    pipeline: str | None = None,
) -> dict[str, Any]:
    """One audio or sensor window's result, with every label's score (events need the quiet ones too)."""
    return {
        **_head(device_id, boot_id, seq, ts, pipeline),
        "model": model,
        "accelerator": accelerator,
        "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()},
        "window": {"offset_s": round(offset_s, 4)},
        "task": result.task,
        "scores": {k: round(v, 5) for k, v in scores.items()},
        **result.as_dict(),
    }


def event(
    *,
    device_id: str,
    boot_id: str,
    seq: int,
    ts: float,
    model: dict[str, Any] | None,
    body: dict[str, Any],
    pipeline: str | None = None,
) -> dict[str, Any]:
    """An event (new, update, end) on the events topic; body: the event's own fields."""
    return {**_head(device_id, boot_id, seq, ts, pipeline), "model": model, **body}


def escalation(*, escalation_id: str, local: dict[str, Any], reason: str, content: dict[str, Any]) -> dict[str, Any]:
    """A result sent to the cloud workers for a second opinion: the local prediction's head (its pipeline
    too, so that a worker can tell a device's cameras apart), why it was sent, the local result, and the
    content (the frame, crops, or features) from `Escalator`."""
    doc: dict[str, Any] = {"schema": SCHEMA, "id": escalation_id}
    doc.update({k: local.get(k) for k in ("device_id", "boot_id", "seq")})
    if "pipeline" in local:
        doc["pipeline"] = local["pipeline"]
    doc.update(ts=local.get("ts"), reason=reason, model=local.get("model"))
    doc["local"] = {k: local[k] for k in ("task", "detections", "classes", "scores") if k in local}
    return {**doc, **content}


def refined(
    *, local: dict[str, Any], seq: int, escalation_id: str, rtt_ms: float, answer: dict[str, Any]
) -> dict[str, Any]:
    """A cloud worker's answer to an escalated result, published beside the local one it refines."""
    result = answer["result"]
    keep = ("schema", "device_id", "boot_id", "pipeline", "ts", "frame")
    return {
        **{k: local[k] for k in keep if k in local},
        "seq": seq,
        "source": "cloud",
        "refines_seq": local.get("seq"),
        "escalation_id": escalation_id,
        "rtt_ms": round(rtt_ms, 3),
        "model": answer.get("model"),
        "worker": answer.get("worker"),
        "accelerator": answer.get("accelerator"),
        "task": result.get("task"),
        **{k: result[k] for k in ("detections", "classes", "outputs") if k in result},
    }


def health(*, device_id: str, boot_id: str, ts: float, body: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "device_id": device_id, "boot_id": boot_id, "ts": round(ts, 3), **body}


def info(
    *,
    device_id: str,
    boot_id: str,
    agent_version: str,
    started: float,
    model: dict[str, Any] | None,
    task: str | None,
    labels: list[str] | None,
    accelerator: str | None,
    topics: dict[str, str],
    pipelines: dict[str, dict[str, Any]] | None = None,
    groups: list[str] | None = None,
    last_run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The retained device description: what a newcomer on the broker needs to know (a staged rollout
    finds a group's members from their `groups`; `last_run`, how the run before this one ended)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "device_id": device_id,
        "boot_id": boot_id,
        "agent_version": agent_version,
        "started": round(started, 3),
        "model": model,
        "task": task,
        "labels": labels,
        "accelerator": accelerator,
        "topics": topics,
    }
    if pipelines is not None:
        doc["pipelines"] = pipelines
    if groups:
        doc["groups"] = list(groups)
    if last_run is not None:
        doc["last_run"] = last_run
    return doc


def refused_info(*, device_id: str, boot_id: str, agent_version: str, started: float, error: str) -> dict[str, Any]:
    """The retained device description of an agent whose configuration was refused: it is not running
    (its `availability` is `offline`), and `config_error` says why, the same text `run` printed and
    exited 2 with. The next start that takes its configuration republishes `info` without it."""
    return {
        **info(device_id=device_id, boot_id=boot_id, agent_version=agent_version, started=started, model=None,
               task=None, labels=None, accelerator=None, topics={}),
        "config_error": error,
    }


def dumps(doc: dict[str, Any]) -> bytes:
    """JSON that never fails to serialise: text that is not valid Unicode (a lone surrogate echoed from a
    malformed command, say) is written with backslash escapes instead of raising."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return orjson.dumps(_clean(doc), option=orjson.OPT_SERIALIZE_NUMPY)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k) if isinstance(k, str) else str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
