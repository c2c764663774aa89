"""The retained state this device has left on the broker (zone counts, snapshots, model states), kept on disk.

A pipeline or zone taken out of the configuration while the agent runs (SIGHUP, `reload`) takes its
retained topics off the broker as it goes. One taken out while the agent was stopped, the usual way
(edit the file, restart the service), left them there for good: a newcomer subscribing to the
device's topics got the counts and pictures of a camera that no longer exists, and the update state of
a model no pipeline uses. This ledger remembers which topics were published, and for which pipeline
and zone (or model), in `state_dir`; at start the agent clears those that the configuration no longer
has. It is written only when a topic is first published (a new label in a zone, a new snapshot label,
a model slot the agent had not served before), never per message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: The pipeline key of the single form's topics (no pipeline level).
SINGLE = ""
#: The key of a model slot's update state is this and its topic (a pipeline's name has no colon).
MODEL = "model:"


class RetainedLedger:
    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        #: topic -> [pipeline key (SINGLE for the single form), zone name or None]
        self._topics: dict[str, list[str | None]] = {}
        self._warned = False
        if path is not None:
            try:
                doc = json.loads(path.read_text())
                self._topics = {
                    str(t): [str(v[0]), None if v[1] is None else str(v[1])]
                    for t, v in doc.items() if isinstance(v, list) and len(v) == 2
                }
            except FileNotFoundError:
                pass
            except (OSError, ValueError, AttributeError, TypeError) as err:  # damaged: start afresh
                log.warning("retained-state ledger %s unreadable (%s): starting a new one", path, err)

    def note(self, topic: str, pipeline: str | None, zone: str | None = None) -> None:
        """A retained topic published (an empty payload: cleared, and forgotten)."""
        key = [pipeline or SINGLE, zone]
        with self._lock:
            if self._topics.get(topic) == key:
                return
            self._topics[topic] = key
            self._save()

    def forget(self, topic: str) -> None:
        with self._lock:
            if self._topics.pop(topic, None) is not None:
                self._save()

    def stale(self, zones: dict[str, set[str]]) -> list[str]:
        """The topics that the configuration no longer has: `zones` maps each pipeline key that keeps
        retained state to its zone names."""
        with self._lock:
            return sorted(
                t for t, (pipe, zone) in self._topics.items()
                if pipe not in zones or (zone is not None and zone not in zones[pipe])
            )

    def zone_topics(self, pipeline: str | None, zones: set[str]) -> list[tuple[str, str]]:
        """(topic, zone) of the zone counts published for `pipeline` (None: the single form) in `zones`."""
        key = pipeline or SINGLE
        with self._lock:
            return sorted(
                (t, z) for t, (pipe, z) in self._topics.items() if pipe == key and z is not None and z in zones
            )

    def topics(self) -> list[str]:
        with self._lock:
            return sorted(self._topics)

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(self._topics, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as err:  # a full or read-only disk: the topics are still published, only not remembered
            if not self._warned:
                self._warned = True
                log.warning("retained-state ledger %s not written (%s)", self.path, err.strerror or err)
