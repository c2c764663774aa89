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
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "device_id": device_id,
        "boot_id": boot_id,
        "seq": seq,
        "ts": round(ts, 6),
        "model": model,
        "accelerator": accelerator,
        "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()},
        "frame": {"width": frame_size[0], "height": frame_size[1]},
        "task": result.task,
    }
    if source is not None:
        doc["source"] = source
    doc.update(result.as_dict())
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
