"""Hybrid mode: hard cases go to a bigger model elsewhere; the local result is published first and stands
unless a refined one comes back in time.

The post stage only decides (a few comparisons) and hands over; picking pixels, blurring faces, JPEG
encoding, budgets, publishing and matching answers happen on the escalation thread. Answers arrive
through the MQTT client's callback, which only enqueues them.
"""

from __future__ import annotations

import base64
import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edge_agent.config import EscalationConfig
from edge_agent.payload import dumps, escalation
from edge_agent.results import Result
from edge_agent.sinks.base import Message, Sink
from edge_agent.stats import LatencyWindow

log = logging.getLogger(__name__)

#: Work waiting for the escalation thread; beyond it, escalations are dropped and counted.
_QUEUE = 8
_TICK_S = 0.05
#: Boxes are widened by this fraction on each side before cropping or blurring.
_MARGIN = 0.1
#: Answers larger than this are not read.
MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class _Job:
    image: np.ndarray | None
    window: np.ndarray | None
    result: Result
    doc: dict[str, Any]
    reason: str


@dataclass
class _Pending:
    sent: float
    doc: dict[str, Any]


class TokenBucket:
    """`rate` per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.t = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


def escalation_reason(result: Result, cfg: EscalationConfig) -> str | None:
    """Why this result should be escalated, or None: an always-escalate label, or a top score in the band."""
    found = [(d.label, d.score) for d in result.detections] + [(c.label, c.score) for c in result.classes]
    for label, _ in found:
        if label in cfg.labels:
            return f"label:{label}"
    if found:
        top = max(s for _, s in found)
        if cfg.low <= top < cfg.high:
            return "band"
    return None


def _b64jpeg(img: np.ndarray, quality: int) -> str:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return base64.b64encode(bytes(buf)).decode("ascii")


def _widen(box: list[float] | tuple[float, ...], w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * _MARGIN, (y2 - y1) * _MARGIN
    return max(0, int(x1 - mx)), max(0, int(y1 - my)), min(w, int(x2 + mx + 1)), min(h, int(y2 + my + 1))


class FaceBlur:
    """Blurs faces found by the bundled BlazeFace detector; loaded on first use."""

    def __init__(self) -> None:
        self._model: Any = None

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, int]:
        import cv2

        from edge_agent.config import ModelConfig, RuntimeConfig
        from edge_agent.model import Model

        if self._model is None:
            self._model = Model(
                ModelConfig(score_threshold=0.4, isolated_check=False),
                RuntimeConfig(accelerator="cpu", threads=1),
                None,
            )
        out = img.copy()
        h, w = img.shape[:2]
        faces = self._model.infer(img).result.detections
        for d in faces:
            x1, y1, x2, y2 = _widen(d.box, w, h)
            if x2 > x1 and y2 > y1:  # 3 blocks across, smeared: no features left for a person or a detector
                roi = out[y1:y2, x1:x2]
                small = cv2.resize(roi, (3, max(1, round(3 * (y2 - y1) / (x2 - x1)))), interpolation=cv2.INTER_AREA)
                blocks = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
                out[y1:y2, x1:x2] = cv2.GaussianBlur(blocks, (0, 0), max(1.0, (x2 - x1) / 6))
        return out, len(faces)

    def close(self) -> None:
        if self._model is not None:
            self._model.close()


class Escalator:
    def __init__(
        self,
        cfg: EscalationConfig,
        topic: str,
        refined: Callable[[dict[str, Any], str, float, dict[str, Any]], str | None],
        sink: Callable[[], Sink | None],
        stop: threading.Event,
        id_prefix: str,
    ):
        """refined(local doc, escalation id, rtt ms, answer): publishes a worker's answer beside the
        local result it refines (on that result's pipeline); None once it is, else why not (a key of
        `dropped`)."""
        self.cfg, self.topic, self.refined = cfg, topic, refined
        self.get_sink, self.stop = sink, stop
        self.id_prefix = id_prefix
        self.jobs: queue.Queue[_Job] = queue.Queue(_QUEUE)
        self.answers: queue.Queue[bytes] = queue.Queue(256)
        self.pending: dict[str, _Pending] = {}
        self.rate = TokenBucket(cfg.max_per_minute / 60.0, max(1.0, cfg.max_per_minute / 60.0 * 5))
        self.bandwidth = TokenBucket(cfg.max_kbytes_per_s * 1000, cfg.max_kbytes_per_s * 1000 * 60)
        self.blur = FaceBlur() if cfg.blur_faces else None
        self.rtt = LatencyWindow()
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.bytes_sent = 0
        self.faces_blurred = 0
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # work or an answer arrived: the round trip must not wait for a tick

    # --- the post stage's side: decide and hand over --------------------------------------------
    def consider(
        self, result: Result, doc: dict[str, Any], image: np.ndarray | None = None, window: np.ndarray | None = None
    ) -> bool:
        self.counts["considered"] += 1
        reason = escalation_reason(result, self.cfg)
        if reason is None:
            return False
        if not self.rate.take():
            self.dropped["rate_budget"] += 1
            return False
        try:
            self.jobs.put_nowait(_Job(image, window, result, doc, reason))
        except queue.Full:
            self.dropped["queue_full"] += 1
            return False
        self._wake.set()
        return True

    def accept_answer(self, payload: bytes) -> None:
        """From the MQTT callback: enqueue only."""
        try:
            self.answers.put_nowait(payload)
        except queue.Full:
            self.dropped["answers_queue_full"] += 1
        self._wake.set()

    # --- the escalation thread ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="escalation", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.blur is not None:
            self.blur.close()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._wake.wait(_TICK_S)
                self._wake.clear()
                while True:
                    try:
                        self._answer(self.answers.get_nowait())
                        continue
                    except queue.Empty:
                        pass
                    try:
                        self._send(self.jobs.get_nowait())
                    except queue.Empty:
                        break
                self._expire()
            except Exception as err:  # loop boundary: one bad escalation must not end escalations
                self.counts["errors"] += 1
                log.exception("escalation error: %s", err)

    def _content(self, job: _Job) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.content == "features" or job.image is None:
            if job.window is not None:
                return {
                    "content": "features",
                    "window": {"shape": list(job.window.shape), "values": np.round(job.window, 6).ravel().tolist()},
                }
            return {"content": "features"}
        import cv2

        img = job.image
        h, w = img.shape[:2]
        if cfg.content == "frame":
            scale = min(1.0, cfg.max_width / w)
            if scale < 1:
                img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            if self.blur is not None:
                img, n = self.blur(img)
                self.faces_blurred += n
            return {
                "content": "frame",
                "frame": {"width": w, "height": h, "scale": scale},
                "image": {"format": "jpeg", "data": _b64jpeg(img, cfg.jpeg_quality)},
            }
        crops = []
        if self.blur is not None and job.result.detections:  # faces are found in context, before cutting
            img, n = self.blur(img)
            self.faces_blurred += n
        for d in job.result.detections:
            x1, y1, x2, y2 = _widen(d.box, w, h)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            crop = img[y1:y2, x1:x2]
            crops.append(
                {
                    "box": [x1, y1, x2, y2],
                    "label": d.label,
                    "score": round(d.score, 5),
                    "format": "jpeg",
                    "data": _b64jpeg(crop, cfg.jpeg_quality),
                }
            )
        return {"content": "crops", "frame": {"width": w, "height": h}, "crops": crops}

    def _send(self, job: _Job) -> None:
        sink = self.get_sink()
        if sink is None:
            return
        eid = f"{self.id_prefix}{next(self._ids)}"
        payload = dumps(escalation(escalation_id=eid, local=job.doc, reason=job.reason, content=self._content(job)))
        if not self.bandwidth.take(len(payload)):
            self.dropped["bandwidth_budget"] += 1
            return
        if not sink.submit(Message(self.topic, payload, qos=1)):
            self.dropped["sink_full"] += 1
            return
        self.pending[eid] = _Pending(time.monotonic(), job.doc)
        self.counts["sent"] += 1
        self.bytes_sent += len(payload)

    def _answer(self, payload: bytes) -> None:
        if len(payload) > MAX_ANSWER_BYTES:
            self.dropped["answer_too_large"] += 1
            return
        try:
            ans = orjson.loads(payload)
            eid = str(ans["id"])
            result = ans["result"]
            if not isinstance(result, dict):
                raise TypeError("result is not an object")
        except (ValueError, KeyError, TypeError):
            self.counts["bad_answers"] += 1
            return
        p = self.pending.pop(eid, None)
        if p is None:  # late (after the deadline), a duplicate, or not ours
            self.counts["late_or_unknown_answers"] += 1
            return
        rtt = (time.monotonic() - p.sent) * 1e3
        self.rtt.add(rtt)
        self.counts["answered"] += 1
        if "error" in ans:
            self.counts["worker_errors"] += 1
            return
        why = self.refined(p.doc, eid, rtt, ans)
        if why is not None:
            self.dropped[why] += 1

    def _expire(self) -> None:
        now = time.monotonic()
        late = [eid for eid, p in self.pending.items() if now - p.sent > self.cfg.deadline_s]
        for eid in late:
            del self.pending[eid]
            self.counts["timeouts"] += 1  # the local result, published already, stands

    def info(self) -> dict[str, Any]:
        """Read from the health thread while the escalation thread counts. `dropped` is copied first:
        an answer is counted answered before it can be dropped, so every drop in the copy is matched by
        an answer in the figures read after it. Read the other way round, a document could show three
        answers dropped out of two answered."""
        dropped = dict(self.dropped)
        considered = self.counts["considered"]
        sent = self.counts["sent"]
        return {
            "considered": considered,
            "sent": sent,
            "answered": self.counts["answered"],
            "timeouts": self.counts["timeouts"],
            "pending": len(self.pending),
            "share": round(sent / considered, 4) if considered else 0.0,
            "bytes_sent": self.bytes_sent,
            "bytes_per_escalation": round(self.bytes_sent / sent, 1) if sent else None,
            "faces_blurred": self.faces_blurred,
            "rtt_ms": self.rtt.percentiles(),
            "dropped": dropped,
            "errors": self.counts["errors"] + self.counts["bad_answers"] + self.counts["worker_errors"],
        }
