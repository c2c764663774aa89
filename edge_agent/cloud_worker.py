"""`edge-agent cloud-worker`: the server side of hybrid mode.

Subscribes to every device's escalations with an MQTT shared subscription
(`$share/<group>/<prefix>/+/escalations`), so any number of workers split the load on one broker or
a cluster (EMQX, HiveMQ, VerneMQ, mosquitto), runs a bigger model on the best accelerator of the
machine it is on, and answers on `<prefix>/<device>/escalations/result`.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import time
from typing import Any

import numpy as np
import orjson

from edge_agent.config import Settings
from edge_agent.imageheader import decode_image, jpeg_size
from edge_agent.model import Model
from edge_agent.modelfile import ModelError
from edge_agent.payload import dumps

log = logging.getLogger(__name__)

#: Escalations above this are not read.
MAX_BYTES = 16 << 20
#: Escalation bytes held unread; what arrives beyond it is dropped and counted (`overflow` in the log).
MAX_HELD_BYTES = 256 << 20


def _image(item: dict[str, Any]) -> np.ndarray:
    """A device's picture (the agent sends JPEG), refused before decoding when it is not a JPEG or
    declares more than imageheader.MAX_PIXELS: any device, or anything else allowed to publish, reaches this."""
    raw = base64.b64decode(item["data"], validate=True)
    if jpeg_size(raw) is None:
        raise ValueError("image is not a JPEG with a frame header")
    return decode_image(raw, "image")


def _frame_size(frame: dict[str, Any]) -> tuple[int, int]:
    """The device frame's width and height, which boxes are placed in and divided by: a device (or
    anything allowed to publish escalations) that sends 0 would end the answer in a ZeroDivisionError,
    outside the errors an escalation is answered with."""
    fw, fh = int(frame["width"]), int(frame["height"])
    if fw <= 0 or fh <= 0:
        raise ValueError(f"the frame's width and height must be positive, not {fw} x {fh}")
    return fw, fh


def _place(det: dict[str, Any], dx: float, dy: float, scale: float, fw: int, fh: int) -> dict[str, Any]:
    """A detection on a scaled or cropped picture, in the device's frame coordinates."""
    x1, y1, x2, y2 = det["box"]
    box = [x1 / scale + dx, y1 / scale + dy, x2 / scale + dx, y2 / scale + dy]
    out = {**det, "box": [round(v, 1) for v in box], "box_norm": [round(box[i] / (fw, fh)[i % 2], 5) for i in range(4)]}
    if "keypoints" in det:
        out["keypoints"] = [[round(x / scale + dx, 1), round(y / scale + dy, 1)] for x, y in det["keypoints"]]
    return out


class CloudWorker:
    def __init__(self, settings: Settings, model: Model, group: str, worker_id: str | None = None):
        self.settings, self.model, self.group = settings, model, group
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        prefix = settings.mqtt.topic_prefix
        self.topic = f"$share/{group}/{prefix}/+/escalations"
        self.handled = 0
        self.errors = 0
        self.stop = threading.Event()

    def answer(self, payload: bytes) -> dict[str, Any]:
        """The answer to one escalation (an `error` field when it cannot be run)."""
        if len(payload) > MAX_BYTES:
            raise ValueError("escalation too large")
        doc = orjson.loads(payload)
        eid = str(doc["id"])
        t0 = time.perf_counter()
        try:
            result = self._run(doc)
            out: dict[str, Any] = {"id": eid, "result": result}
        except (ValueError, KeyError, TypeError, ModelError) as err:  # ModelError: a window of another
            # shape than the model's, or a picture for a model of windows; unanswered, the device waited
            # out its deadline for each
            out = {"id": eid, "error": f"{type(err).__name__}: {err}", "result": {}}
        out.update(
            worker=self.worker_id,
            model=self.model.info(),
            accelerator=self.model.runtime.accelerator,
            inference_ms=round((time.perf_counter() - t0) * 1e3, 3),
        )
        return out

    def _run(self, doc: dict[str, Any]) -> dict[str, Any]:
        content = doc.get("content")
        m = self.model
        if content == "frame":
            frame = doc["frame"]
            res = m.infer(_image(doc["image"])).result.as_dict()
            (fw, fh), scale = _frame_size(frame), float(frame.get("scale", 1.0))
            if not scale > 0 or scale == float("inf"):
                raise ValueError(f"the frame's scale must be a positive number, not {scale!r}")
            if "detections" in res:
                res["detections"] = [_place(d, 0, 0, scale, fw, fh) for d in res["detections"]]
            return {"task": m.decoder.task, **res}
        if content == "crops":
            fw, fh = _frame_size(doc["frame"])
            dets: list[dict[str, Any]] = []
            classes: list[dict[str, Any]] = []
            for crop in doc["crops"]:
                res = m.infer(_image(crop)).result.as_dict()
                x1, y1 = crop["box"][:2]
                dets += [_place(d, x1, y1, 1.0, fw, fh) for d in res.get("detections", [])]
                classes += [{**c, "box": crop["box"]} for c in res.get("classes", [])]
            return (
                {"task": m.decoder.task, "detections": dets}
                if m.decoder.task == "detection"
                else {"task": m.decoder.task, "classes": classes}
            )
        if content == "features" and "window" in doc and m.pre is None:
            w = doc["window"]
            x = np.asarray(w["values"], np.float32).reshape(w["shape"])
            inf = m.decode(m.run_window(x))
            return {"task": m.decoder.task, **inf.result.as_dict()}
        raise ValueError(f"nothing this worker's model can run on (content {content!r})")

    def run(self, seconds: float | None = None) -> int:
        from edge_agent.sinks.mqtt import Subscriber

        # escalations held unread are bounded: devices (or anything allowed to publish there) decide how many come
        sub = Subscriber(self.settings.mqtt, [self.topic], client_id=f"edge-agent-worker-{self.worker_id}",
                         max_bytes=MAX_HELD_BYTES)
        if not sub.start(10.0):
            log.error("cannot subscribe to %s: %s", self.topic, sub.why_not())
            sub.stop()
            return 1
        log.info(
            "worker %s serving %s with %s on %s",
            self.worker_id,
            self.topic,
            self.model.name,
            self.model.runtime.backend.description,
        )
        deadline = None if seconds is None else time.monotonic() + seconds
        prefix = self.settings.mqtt.topic_prefix
        said_overflow, said_at = 0, float("-inf")
        try:
            while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if sub.overflow != said_overflow and time.monotonic() - said_at >= 60:
                    said_overflow, said_at = sub.overflow, time.monotonic()
                    log.warning("escalations arrive faster than this worker answers them: %d dropped unread so "
                                "far (%d MiB held); run more workers in the group", said_overflow, MAX_HELD_BYTES >> 20)
                msg = sub.get(0.25)
                if msg is None:
                    continue
                topic, payload, _ = msg
                parts = topic.split("/")
                try:
                    ans = self.answer(payload)
                except (ValueError, KeyError, TypeError) as err:  # not even an id to answer to
                    self.errors += 1
                    log.warning("unreadable escalation on %s: %s", topic, err)
                    continue
                except Exception:  # loop boundary: one escalation must not end the worker
                    self.errors += 1
                    log.exception("escalation on %s failed", topic)
                    continue
                device = parts[-2]
                sub.publish(f"{prefix}/{device}/escalations/result", dumps(ans), qos=1)
                self.handled += 1
        finally:
            sub.stop()
        log.info("worker %s stopped after %d escalations", self.worker_id, self.handled)
        return 0
