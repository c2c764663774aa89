"""Every result, from every pipeline, to everything that wants it: one object, one place.

A pipeline's post stage hands each prediction and event here. The fan-out numbers it (one sequence
per pipeline topic, so a consumer can find gaps per topic), submits it to the sink, and gives it to
the live view, Home Assistant, escalation and the probation of a model on trial. Nothing here
blocks on the network: the sink only enqueues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.payload import dumps, event, refined
from edge_agent.results import Result
from edge_agent.retained import RetainedLedger
from edge_agent.sinks.base import Message, Sink
from edge_agent.topics import Topics

if TYPE_CHECKING:
    from edge_agent.escalation import Escalator
    from edge_agent.homeassistant import HomeAssistant
    from edge_agent.liveview import LiveView
    from edge_agent.model import Model, RawInference
    from edge_agent.ota.updater import Updater

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where one pipeline's documents go."""

    pipeline: str
    predictions: str
    events: str
    #: the single-pipeline form: documents carry no `pipeline` field
    legacy: bool = False

    @property
    def label(self) -> str | None:
        """The `pipeline` field of its documents."""
        return None if self.legacy else self.pipeline


class FanOut:
    def __init__(self, sink: Callable[[], Sink | None], qos: int, stop: threading.Event, topics: Topics):
        self.get_sink = sink
        self.topics = topics
        self.qos = qos
        self.stop = stop
        self.live: dict[str, LiveView] = {}
        self.ha: dict[str, HomeAssistant] = {}
        self.escalator: Escalator | None = None
        #: the slots' updaters: a candidate on probation runs on the frames their serving models ran on
        self.probation: list[Updater] = []
        #: called once, with the seconds since start, when the first prediction is out
        self.on_first: Callable[[], None] | None = None
        self.routes: dict[str, Route] = {}
        #: the retained topics published, by pipeline and zone, kept in state_dir (see edge_agent.retained)
        self.ledger: RetainedLedger | None = None
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._first_done = False

    def next_seq(self, pipeline: str) -> int:
        """Local and refined predictions of a pipeline share one sequence per boot."""
        with self._lock:
            n = self._seq.get(pipeline, 0) + 1
            self._seq[pipeline] = n
            return n

    # --- from the post stages ----------------------------------------------------------------
    def prediction(
        self,
        route: Route,
        doc: dict[str, Any],
        result: Result,
        *,
        image: np.ndarray | None = None,
        window: np.ndarray | None = None,
        cached: bool = False,
        ts: float | None = None,
    ) -> bool:
        """Number, publish and hand on one prediction; False when the sink could not hold it."""
        doc["seq"] = self.next_seq(route.pipeline)
        sink = self.get_sink()
        ok = sink.submit(Message(route.predictions, dumps(doc), qos=self.qos)) if sink is not None else False
        live = self.live.get(route.pipeline)
        if live is not None:
            if image is not None:
                live.set_frame(image, doc)
            live.add_prediction(doc)
        ha = self.ha.get(route.pipeline)
        if ha is not None and sink is not None:
            state = ha.observe(result, ts if ts is not None else doc.get("ts", time.time()))
            if state is not None:
                sink.submit(state)
        if self.escalator is not None and not cached:
            self.escalator.consider(result, doc, image=image, window=window)
        self.published()
        return ok

    def observe(self, model: Model, raw: RawInference, sample: np.ndarray | None) -> None:
        """Every inference (not only the published ones), with its frame or window: a candidate on
        probation runs beside the serving model on them."""
        for updater in self.probation:
            updater.observe(model, raw, sample)

    def judging(self, model: Model) -> bool:
        """A candidate is being compared with `model`: its pipelines keep each frame until post."""
        return any(u.judging and u.current() is model for u in self.probation)

    def emit_event(
        self, route: Route, seq: int, body: dict[str, Any], model: Model | None, device_id: str, boot_id: str
    ) -> bool:
        """An event document (object, audio or sensor) from its body, handed to `event`."""
        doc = event(
            device_id=device_id,
            boot_id=boot_id,
            seq=seq,
            ts=time.time(),
            model=model.info() if model is not None else None,
            body=body,
            pipeline=route.label,
        )
        return self.event(route, doc)

    def event(self, route: Route, doc: dict[str, Any]) -> bool:
        """Events go out with QoS 1 through the outbox; a full queue holds the caller, never drops them.
        False only when stopping with the event unsent."""
        live = self.live.get(route.pipeline)
        if live is not None:
            live.add_event(doc)
        sink = self.get_sink()
        if sink is None:
            return False
        ha = self.ha.get(route.pipeline)
        if ha is not None and "label" in doc:
            state = ha.observe_event(doc["label"], doc.get("type") != "end", doc.get("start_ts") or time.time())
            if state is not None:
                sink.submit(state)
        msg = Message(route.events, dumps(doc), qos=1)
        while not sink.submit(msg):
            if self.stop.wait(0.05):
                log.error("stopping with event %s %s unsent", doc.get("type"), doc.get("id"))
                return False
        self.published()
        return True

    def state(self, msg: Message, pipeline: str | None = None, zone: str | None = None) -> None:
        """Retained state that only its newest value matters for (zone counts, snapshots): never queued
        behind a backlog; the owner keeps it for the republish on every reconnect, and the ledger which
        pipeline and zone it belongs to (an empty payload clears it, and it is forgotten)."""
        if self.ledger is not None:
            if msg.payload:
                self.ledger.note(msg.topic, pipeline, zone)
            else:
                self.ledger.forget(msg.topic)
        sink = self.get_sink()
        if sink is not None:
            sink.submit_latest(msg)

    def clear_in_order(self, topic: str) -> None:
        """A retained topic whose messages go through the queue (a model's update state) cleared behind
        them: sent the way of `state`, the empty message could overtake the last state still queued behind
        a backlog of predictions, which then stayed retained for good."""
        if self.ledger is not None:
            self.ledger.forget(topic)
        sink = self.get_sink()
        if sink is not None and not sink.submit(Message(topic, b"", qos=1, retain=True)):
            sink.submit_latest(Message(topic, b"", qos=1, retain=True))  # a full queue: cleared all the same

    def refined(
        self, local: dict[str, Any], escalation_id: str, rtt_ms: float, answer: dict[str, Any]
    ) -> str | None:
        """A cloud worker's answer, on the topic of the pipeline whose result it refines. None once it is
        handed to the sink; else why not: "pipeline_removed" where a reload removed that pipeline while
        the answer was on its way (it is never shown as another camera's), "sink_full"."""
        name = local.get("pipeline")  # none in the single-pipeline form's documents
        route = self.routes.get(str(name)) if name is not None else next(iter(self.routes.values()), None)
        if route is None:
            return "pipeline_removed"
        sink = self.get_sink()
        if sink is None:
            return "sink_full"
        doc = refined(
            local=local, seq=self.next_seq(route.pipeline), escalation_id=escalation_id, rtt_ms=rtt_ms, answer=answer
        )
        return None if sink.submit(Message(route.predictions, dumps(doc), qos=1)) else "sink_full"

    def published(self) -> None:
        if not self._first_done:
            self._first_done = True
            if self.on_first is not None:
                self.on_first()
