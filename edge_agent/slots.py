"""Model slots: the unit an update replaces.

A slot is a shared model (`[models.NAME]`, used by every frame pipeline that names it) or a pipeline's
own model. Each slot has its installed versions (a model store), its updater, and a retained state
topic. Pipelines read their model from the slot at every frame, so a swap reaches every pipeline of
the slot between two of its frames, and probation judges the new model on all of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.config import LEGACY_PIPELINE, PipelineView, Settings
from edge_agent.engine import ModelPool
from edge_agent.model import Model
from edge_agent.ota.store import ModelStore
from edge_agent.ota.updater import Updater, model_for_start
from edge_agent.payload import dumps
from edge_agent.signals import signal_kind
from edge_agent.sinks.base import Message, Sink

log = logging.getLogger(__name__)


def slot_store_dir(state_dir: Path, slot: str, legacy: bool) -> Path:
    """Where a slot's installed versions live; the single-pipeline form keeps today's `models/`."""
    return state_dir / "models" if legacy else state_dir / "slots" / slot


class ModelSlot:
    def __init__(
        self,
        name: str,
        view: PipelineView,
        pool: ModelPool,
        state_topic: str,
        sink: Callable[[], Sink | None],
        state_dir: Path | None,
    ):
        self.name = name
        self.settings: Settings = view.settings
        self.legacy = view.legacy
        self.ref = view.slot  # what a deploy names: the shared model's name, or the pipeline's
        self.signal = signal_kind(view.settings.source.uri) is not None
        self.pool = pool
        self.state_topic = state_topic
        self.get_sink = sink
        self.state_dir = state_dir
        self.pipelines: list[str] = []
        self.model: Model | None = None
        self.store: ModelStore | None = None
        #: why the store cannot be written (a read-only state directory), or None
        self.read_only: str | None = None
        self.updater: Updater | None = None
        self.state: dict[str, Any] | None = None
        self.on_swap: Callable[[ModelSlot], None] | None = None
        #: told of every OTA state the slot publishes (Home Assistant's update entity follows it)
        self.on_state: Callable[[ModelSlot, dict[str, Any]], None] | None = None

    def load(self) -> Model:
        """The model to serve: an installed update if there is one, else the configured model."""
        cfg = self.settings.model
        if self.state_dir is not None:
            where = slot_store_dir(self.state_dir, self.name, self.legacy)
            if where.is_dir() and not os.access(where, os.W_OK):  # EROFS, even for root
                # a remounted card, a locked disk: what is installed still serves, nothing is written
                self.read_only = "state directory read-only (Read-only file system)"
                log.error("model store of %s: %s; serving the installed model, updates are off",
                          self.name, self.read_only)
            try:
                self.store = ModelStore(where, self.settings.ota.keep_versions, read_only=bool(self.read_only))
                cfg, self.state = model_for_start(self.settings, self.store)
            except OSError as err:
                log.warning("model store of %s unusable (%s): over-the-air updates are off", self.name, err)
                self.store, self.read_only = None, None
        self.model = Model(cfg, self.settings.runtime, self.state_dir, signal=self.signal, pool=self.pool)
        return self.model

    def start_updates(self, stop: threading.Event) -> Updater | None:
        if self.store is None or self.read_only:
            return None
        self.updater = Updater(self.settings, self.store, self.publish_state, self.swap, lambda: self.model, stop)
        self.updater.pool = self.pool
        self.updater.start()
        # the retained state describes what is served from the first moment, whatever it said before
        # (an update cut short by a restart leaves `downloading` or `validating` behind)
        model = self.model
        serving = Updater.serving(model) if model is not None else {}
        if self.state is not None:
            self.publish_state({**self.state, "serving": serving})
        else:
            self.publish_state({"state": "active", "ts": round(time.time(), 3), **serving, "serving": serving})
        return self.updater

    def swap(self, new: Model) -> Model | None:
        """Serve `new` from the next frame of every pipeline of the slot; returns the model it replaces."""
        old, self.model = self.model, new
        log.info("%s: now serving %s (%s)", self.name, new.name, new.file.sha256[:12])
        if self.on_swap is not None:
            self.on_swap(self)
        return old

    def publish_state(self, doc: dict[str, Any]) -> None:
        self.state = doc
        sink = self.get_sink()
        if sink is not None:
            sink.submit(Message(self.state_topic, dumps(doc), qos=1, retain=True))
        if self.on_state is not None:
            self.on_state(self, doc)

    def end_updates(self, wait_s: float, why: str | None, say: bool = True) -> None:
        """Ends the updater's thread, waited for up to `wait_s`: a pipeline added and removed again on
        reload would otherwise leave one behind for good, still judging and swapping a model no pipeline
        serves. why: the agent stops cleanly, or a reload takes the slot away. A model still on probation
        then goes back, and is not counted as a crash, as after a reboot: the next start would count one
        against it (twice, and it is refused for good), though nothing it did ended its probation. say:
        publish that on the state topic (not where the topic is about to be cleared)."""
        updater, self.updater = self.updater, None
        if updater is None or not updater.close(wait_s) or why is None or self.store is None:
            return
        probation = self.store.state.get("probation")
        if not probation:
            return
        current = self.store.state.get("current") or {}
        self.store.rollback(why)
        log.warning("%s: model %s back from probation: %s", self.name, probation["sha256"][:12], why)
        doc = {"state": "rolled_back", "ts": round(time.time(), 3), "sha256": probation["sha256"],
               "version": current.get("version"), "reason": why}
        if self.model is not None:
            doc["serving"] = Updater.serving(self.model)
        if say:
            self.publish_state(doc)

    def close(self, wait_s: float = 5.0, why: str | None = None, say: bool = True) -> None:
        """Ends its updates (see `end_updates`), then lets go of its model."""
        self.end_updates(wait_s, why, say)
        if self.model is not None:
            self.model.close()
            self.model = None

    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            **(m.health() if m else {}),
            "slot": self.name,
            "pipelines": list(self.pipelines),
            "path": str(m.path) if m else None,
            "layout": m.decoder.layout if m else None,
            "update": self.state,
        }


def slot_name(view: PipelineView) -> str:
    """A frame pipeline shares its named model's slot; a signal pipeline's streaming state is its own."""
    if view.legacy:
        return LEGACY_PIPELINE
    return view.slot if signal_kind(view.settings.source.uri) is None else view.name
