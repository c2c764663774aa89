"""The device side of an update: verify, download, validate, activate, probation, roll back.

Runs on its own thread; the serving pipeline only ever sees a finished Model swapped in
between two frames. Progress is published as retained JSON on `{prefix}/{device_id}/model/state`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import ModelConfig, Settings
from edge_agent.engine import ModelPool
from edge_agent.model import Model, RawInference
from edge_agent.modelfile import ModelError
from edge_agent.ota.download import DISK_MARGIN, DownloadError, download
from edge_agent.ota.manifest import (
    MAX_CHUNK,
    AcceptanceTest,
    Manifest,
    ManifestError,
    check_expiry,
    load_public_keys,
    verify_signature,
)
from edge_agent.ota.shadow import Probation, agreement, input_signature
from edge_agent.ota.store import ModelStore, atomic_write
from edge_agent.system import kernel_boot_id
from edge_agent.untrusted import number

log = logging.getLogger(__name__)

TERMINAL = ("active", "rolled_back", "rejected", "failed", "superseded")
_CHUNK_QUEUE = 256
#: Chunk bytes held before the update collecting them reads them: 256 chunks of the default 64 KiB, or 64 of
#: the largest, 1 MiB. Anyone who may publish on the device's `ota/` topics decides what arrives there, and
#: when: without a bound in bytes, 256 messages of the broker's largest size would be held, update or not.
_CHUNK_BYTES = 64 << 20
#: ... of which chunks of a model no accepted update awaits may take this much.
_EARLY_CHUNK_BYTES = 16 << 20


class Updater:
    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        publish_state: Callable[[dict[str, Any]], None],
        swap: Callable[[Model], Model | None],
        current: Callable[[], Model | None],
        stop: threading.Event,
    ):
        self.settings = settings
        self.store = store
        self.publish_state = publish_state
        self.swap = swap
        #: the model serving now: a candidate on probation runs beside it and is compared with it
        self.current = current
        self.stop = stop
        #: set once the slot is gone (its last pipeline removed, or restarted on another model): the thread
        #: ends, and an update under way gives way at its next check, saying so only in the log, for the
        #: slot's state topic is cleared by then, or another updater's
        self.closed = threading.Event()
        self._thread: threading.Thread | None = None
        from edge_agent.signals import signal_kind

        self._signal = signal_kind(settings.source.uri) is not None
        #: accepted updates, in order; None wakes the thread to see that it is closed
        self.jobs: queue.Queue[Manifest | None] = queue.Queue(maxsize=4)
        #: (sha256, index, bytes) from `{prefix}/{device}/ota/{sha256}/{index}` (MQTT delivery)
        self.chunks: queue.Queue[tuple[str, int, bytes]] = queue.Queue(maxsize=_CHUNK_QUEUE)
        self.chunks_dropped = 0
        #: payload bytes in `chunks` (_CHUNK_BYTES at most), and the models whose chunks are taken: those
        #: of updates accepted and not finished (the fleet sends chunks once the device has accepted)
        self.chunk_bytes = 0
        self.awaited: set[str] = set()
        self._chunk_lock = threading.Lock()
        self.probation: Probation | None = None
        #: (serving model, its raw result, the frame or window) for the candidate to run on too. Frames:
        #: latest-wins (two at most, a busy candidate skips some); windows: in order, for streaming models
        self.shadow: queue.Queue[tuple[Model, RawInference, np.ndarray]] = queue.Queue(
            maxsize=64 if self._signal else 2
        )
        self._offered = 0
        #: the agent's loaded models, so a new version of a shared file is not loaded twice
        self.pool: ModelPool | None = None
        #: why the configuration would refuse a candidate (a label it names that the candidate never
        #: produces), or None: such an update is rejected, as the next start would exit on it
        self.refusal: Callable[[Model], str | None] | None = None
        #: sha256 of the model whose MQTT chunks this updater is collecting now
        self.receiving: str | None = None
        self.last_outcome: dict[str, Any] | None = None
        #: versions accepted and not yet finished (queued or running): an older job gives way to a newer
        self.pending: set[int] = set()
        #: versions a rollback stopped before they took over, and why: each gives way at its next check
        self.cancelled: dict[int, str] = {}
        self._lock = threading.Lock()
        #: held while what serves and what the store says change together (activation, applying a
        #: verdict, a rollback): a rollback arriving as a verdict is applied waits for it, then undoes it,
        #: instead of both writing at once and leaving the store naming one model while another serves
        self._switch = threading.Lock()

    # --- called by the command handler ---------------------------------------------------
    @property
    def wanted(self) -> int:
        """The newest version accepted and not finished; 0 when none is."""
        return max(self.pending, default=0)

    def check(self, m: Manifest) -> None:
        """Everything decidable before a byte is downloaded; raises ManifestError."""
        if self.closed.is_set():  # queued, it would wait for a thread that has ended
            raise ManifestError("the model's pipelines were removed")
        o = self.settings.ota
        note = check_expiry(m, dt.datetime.now(dt.timezone.utc))
        if note:
            log.warning("%s", note)
        if m.signature is None and o.allow_unsigned:
            log.warning("accepting unsigned manifest for %s v%d (ota.allow_unsigned)", m.name, m.version)
        else:
            verify_signature(m, load_public_keys(o.trusted_keys))
        highest = int(self.store.state.get("highest_version", 0))
        if m.version <= highest:
            raise ManifestError(f"version {m.version} is not above the highest accepted ({highest})")
        if m.version <= self.wanted:
            raise ManifestError(f"version {m.version} is not above version {self.wanted}, accepted and in progress")
        if m.size > o.max_bytes:
            raise ManifestError(f"size {m.size} exceeds ota.max_bytes {o.max_bytes}")
        if self.store.is_blocked(m.sha256):
            raise ManifestError("this model crashed the agent twice and is blocked")
        if m.min_agreement is not None and m.min_agreement < o.min_agreement and not m.tests:
            raise ManifestError(
                f"min_agreement {m.min_agreement:g} is below this device's {o.min_agreement:g}: "
                "a model meant to differ needs acceptance tests"
            )
        if m.delivery == "http" and not m.urls:
            raise ManifestError("HTTP delivery needs at least one URL")

    def submit(self, m: Manifest) -> None:
        with self._lock:  # two deploys at once: the check and the claim go together
            self.check(m)
            try:
                self.jobs.put_nowait(m)
            except queue.Full:
                raise ManifestError("too many updates queued") from None
            self.pending.add(m.version)
            self.cancelled.pop(m.version, None)  # sent again after a rollback stopped it: this one goes on
            if m.delivery == "mqtt":
                self.awaited.add(m.sha256)
        self._state("received", m)

    def superseded(self, m: Manifest) -> str | None:
        """Why `m` must give way (a newer version was accepted, or is already installed), or None."""
        if self.closed.is_set():  # the slot ended its updates (ModelSlot.end_updates)
            return "the agent is stopping" if self.stop.is_set() else "its pipelines were removed"
        highest = int(self.store.state.get("highest_version", 0))
        cancelled = self.cancelled.get(m.version)
        if cancelled is not None:
            return f"cancelled by a rollback ({cancelled})"
        if self.wanted > m.version:
            return f"superseded by version {self.wanted}"
        if highest >= m.version:
            return f"version {highest} is installed already"
        return None

    # --- the update thread -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ota", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float) -> bool:
        """Ends the update thread, waiting up to `timeout_s` for it: an update under way gives way at its
        next check (a download's next block, the judging's next frame), and a slot built again on the same
        store (a pipeline restarted on a changed model) never has two updaters writing it at once. True
        once the thread has ended (or never ran)."""
        self.closed.set()
        if self._thread is None:
            return True
        try:
            self.jobs.put_nowait(None)  # an idle thread ends now, not at its next look at the queue
        except queue.Full:  # busy with updates: it looks at `closed` between them
            pass
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the update thread is still busy after %.1f s; it ends on its next check", timeout_s)
            return False
        return True

    def _stopping(self) -> bool:
        return self.stop.is_set() or self.closed.is_set()

    def _run(self) -> None:
        while not self._stopping():
            try:
                m = self.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            if m is None:
                continue
            try:
                why = self.superseded(m)
                if why is not None:  # queued behind a newer one: never started
                    self._state("superseded", m, reason=why)
                    continue
                self._update(m)
            except Exception as err:  # loop boundary: an update failing must not take the agent with it
                log.exception("update of %s v%d failed", m.name, m.version)
                self._state("failed", m, reason=f"{type(err).__name__}: {err}")
            finally:  # however it ended, it is not in progress: the same version may be sent again
                with self._lock:
                    self.pending.discard(m.version)
                    if not any(j is not None and j.sha256 == m.sha256 for j in list(self.jobs.queue)):
                        self.awaited.discard(m.sha256)

    def _state(self, state: str, m: Manifest | None = None, **extra: Any) -> None:
        doc: dict[str, Any] = {"state": state, "ts": round(time.time(), 3), **extra}
        if m is not None:
            doc.update(name=m.name, version=m.version, sha256=m.sha256)
        if state in TERMINAL:
            self.last_outcome = doc
        log.info("model update: %s %s", state, {k: v for k, v in doc.items() if k != "ts"})
        if not self.closed.is_set():
            self.publish_state(doc)

    def _update(self, m: Manifest) -> None:
        o = self.settings.ota
        blob = self.store.blob(m.sha256)
        if not blob.exists():
            self._state("downloading", m, percent=0)
            last = [-1]

            def progress(got: int, size: int) -> None:
                pct = int(100 * got / size)
                if pct // 10 != last[0] // 10:
                    last[0] = pct
                    self._state("downloading", m, percent=pct)

            part = self.store.incoming / f"{m.sha256}.part"
            try:
                if m.delivery == "mqtt":
                    self.receiving = m.sha256
                    try:
                        self._receive_chunks(m, part, progress)
                    finally:
                        self.receiving = None
                else:
                    download(
                        m.urls, part, m.size, m.sha256, o.stall_s, o.deadline_s, progress,
                        functools.partial(self.superseded, m),  # checked while it downloads
                    )
            except DownloadError as err:
                why = self.superseded(m)
                self._state("superseded" if why else "failed", m, reason=why or str(err))
                return
            self._state("verifying", m)
            self.store.install(part, m.sha256, m.model_dump(mode="json"))
        self._state("validating", m)
        try:
            new_model = self._build(m, blob)
        except ModelError as err:
            self.store.discard(m.sha256)  # a rejected model leaves nothing on disk
            self._state("rejected", m, reason=str(err))
            return
        with self._switch:
            why = self.superseded(m)  # the check again, at the moment it would take over
            if why is not None:
                new_model.close()
                self._state("superseded", m, reason=why)
                return
            self._state("activating", m)
            self.store.activate(m.sha256, m.version, kernel_boot_id())
            need = o.min_agreement if m.min_agreement is None else m.min_agreement
            with self._lock:
                p = self.probation = Probation(
                    m.sha256, o.probation_inferences, time.monotonic() + o.probation_s, need
                )
        self._drain_shadow()
        served = self.current()
        serving = self.serving(served) if served is not None else None
        self._state("probation", m, serving=serving, **p.figures())
        verdict = self._judge(p, new_model, m, serving)
        with self._switch:
            with self._lock:
                if verdict is not None and self.probation is p:
                    self.probation = None
                    self.pending.discard(m.version)  # applied here: a rollback from now on undoes it
                else:  # rolled back meanwhile (the command said what serves), or stopping
                    verdict = None
            if verdict is None:
                new_model.close()
                # stopping: store.probation is still set. Where the agent stops cleanly, or a reload takes
                # the slot away, the slot rolls it back once this thread has ended (ModelSlot.end_updates);
                # where it stops on a fault, the next start counts a crash of the model
                return
            if verdict == "":
                old = self.swap(new_model)
                self.store.pass_probation()
                self._state("active", m, serving=self.serving(new_model), **p.figures())
                if old is not None:  # a pipeline that took it just before the swap finishes its invoke first
                    old.close()
            else:
                new_model.close()
                prev = self.store.rollback(verdict)
                self.store.discard(m.sha256)  # it failed: it will never serve, nothing of it stays on disk
                self._state("rolled_back", m, reason=verdict, now=prev, serving=serving, **p.figures())

    def _judge(self, p: Probation, candidate: Model, m: Manifest, serving: dict[str, Any] | None) -> str | None:
        """Run the candidate on the frames the serving model ran on until there is a verdict; publish the
        agreement so far every few seconds. None when probation ended some other way."""
        o = self.settings.ota
        shown = time.monotonic()
        while not self._stopping():
            with self._lock:
                if self.probation is not p:  # rolled back meanwhile
                    return None
            verdict = p.verdict(o.max_inference_ms)
            if verdict is not None:
                return verdict  # applied by the caller, unless a rollback takes the probation first
            try:
                ref, raw, sample = self.shadow.get(timeout=0.1)
            except queue.Empty:
                continue
            self._compare(p, candidate, ref, raw, sample)
            if time.monotonic() - shown >= 2.0:
                shown = time.monotonic()
                self._state("probation", m, serving=serving, **p.figures())
        return None

    def _compare(self, p: Probation, candidate: Model, ref: Model, raw: RawInference, sample: np.ndarray) -> None:
        """The candidate on one frame (or window) the serving model ran on, and how far they agree."""
        try:
            mine = candidate.run(sample, "shadow") if candidate.pre is not None else candidate.run_window(
                sample, "shadow"
            )
            theirs, ours = ref.decode(raw).result, candidate.decode(mine).result
        except Exception as err:  # whatever the candidate raises is held against it, not the agent
            log.warning("candidate %s failed on a frame: %s", candidate.name, err)
            p.error(f"{type(err).__name__}: {err}")
            return
        agreed = agreement(theirs, ours, self.settings.ota.agreement_iou)
        p.observe(mine.outputs, mine.inference_ms, input_signature(sample), agreed)

    def _drain_shadow(self) -> None:
        while True:
            try:
                self.shadow.get_nowait()
            except queue.Empty:
                return

    def accept_chunk(self, topic: str, payload: bytes) -> None:
        """From the MQTT client's callback: enqueue only (parsing is cheap and cannot raise out)."""
        parts = topic.rsplit("/", 2)
        index = number(parts[2], 9) if len(parts) == 3 else None  # int() on the client's thread: see untrusted
        if index is None or len(payload) > MAX_CHUNK:
            self.chunks_dropped += 1
            return
        # chunks of a model no update awaits yet (a group's deploy is still being read) are kept too,
        # within a smaller share: what anyone may send there while no update runs stays small
        cap = _CHUNK_BYTES if parts[1] in self.awaited else _EARLY_CHUNK_BYTES
        with self._chunk_lock:
            if self.chunk_bytes + len(payload) > cap:
                self.chunks_dropped += 1
                return
            try:
                self.chunks.put_nowait((parts[1], index, payload))
            except queue.Full:
                self.chunks_dropped += 1
                return
            self.chunk_bytes += len(payload)

    def _receive_chunks(self, m: Manifest, part: Path, progress: Callable[[int, int], None]) -> None:
        """Chunks in any order into their place in the file; same checks as an HTTP download."""
        import hashlib
        import shutil

        o = self.settings.ota
        n = -(-m.size // m.chunk_size)
        free = shutil.disk_usage(part.parent).free
        if free - m.size < DISK_MARGIN:
            raise DownloadError(
                f"not enough disk: {free // 2**20} MiB free, {m.size // 2**20} MiB needed "
                f"plus a margin of {DISK_MARGIN // 2**20} MiB"
            )
        have: set[int] = set()
        deadline = time.monotonic() + o.deadline_s
        last = time.monotonic()
        with open(part, "wb") as f:
            f.truncate(m.size)
            while len(have) < n:
                now = time.monotonic()
                if now > deadline or now - last > o.stall_s:
                    raise DownloadError(
                        f"{n - len(have)} of {n} chunks missing after {'deadline' if now > deadline else 'a stall'}"
                    )
                why = self.superseded(m)
                if why is not None:
                    raise DownloadError(why)
                try:
                    sha, idx, data = self.chunks.get(timeout=0.2)
                except queue.Empty:
                    continue
                with self._chunk_lock:
                    self.chunk_bytes -= len(data)
                if sha != m.sha256 or idx >= n or idx in have:
                    continue
                expected = m.chunk_size if idx < n - 1 else m.size - m.chunk_size * (n - 1)
                if len(data) != expected:
                    # not the fleet's chunk (anyone who may publish on the topic can send one): the
                    # fleet's own, before or after it, still fills the place; the digest checks the rest
                    self.chunks_dropped += 1
                    log.warning("model %s v%d: chunk %d has %d bytes, %d expected; ignored", m.name, m.version,
                                idx, len(data), expected)
                    continue
                f.seek(idx * m.chunk_size)
                f.write(data)
                have.add(idx)
                last = time.monotonic()
                progress(min(m.size, len(have) * m.chunk_size), m.size)
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(1 << 16):
                h.update(block)
        if h.hexdigest() != m.sha256:
            part.unlink(missing_ok=True)
            raise DownloadError("sha256 mismatch after MQTT delivery")

    def rollback(self, reason: str, m: Manifest | None = None, version: int | None = None) -> bool:
        """Undo the latest update, at whatever stage it is. A candidate on probation never served: it
        stops being judged, the serving model stays, and the retained state says `rolled_back`, never
        `active`, for it. An update still on its way (queued, downloading, validating) is cancelled: it
        gives way at its next check (`superseded`, with the reason) and the serving model stays; going
        back past the model that served before it was sent would undo more than was asked. Otherwise
        back to the previous model (in memory when we still hold it).

        With `version`, only that release is undone, and only while it is on its way, on probation or
        serving. A fleet's rollback names the release it undoes: a device whose own probation refused
        it as the command arrived has nothing of it left, and undoing "the latest" there would take
        away the release that served before it. Whether there is anything to undo is decided under the
        same lock as a verdict is applied with, so the answer and the retained state agree, and the
        state of a verdict applied first is published before the answer. False: nothing was undone."""
        with self._switch:
            cur = self.store.state.get("current") or {}
            with self._lock:
                coming = set(self.pending)
            if version is None and not cur and not coming:
                return False
            if version is not None and version not in coming and cur.get("version") != version:
                return False
            if version is not None and cur.get("version") != version:  # on its way, behind what serves
                with self._lock:
                    self.cancelled[version] = reason
                log.info("rollback (%s): cancelling the update to version %d before it serves", reason, version)
                return True
            # the release named serves or is judged: it goes, and any newer one on its way still comes
            return self._rollback(reason, m, cancel=version is None)

    def _rollback(self, reason: str, m: Manifest | None, cancel: bool = True) -> bool:
        with self._lock:
            judged, self.probation = self.probation, None
            coming = set(self.pending) if judged is None and cancel else set()
            self.cancelled.update(dict.fromkeys(coming, reason))
        if coming:
            log.info("rollback (%s): cancelling the update to version(s) %s before it serves", reason,
                     sorted(coming))
            return True
        if judged is not None:
            man = self.store.manifest(judged.sha256)
            m = m or (Manifest.model_validate(man) if man else None)
            prev = self.store.rollback(reason)
            served = self.current()
            self._state("rolled_back", m, reason=reason, now=prev,
                        serving=self.serving(served) if served is not None else None, **judged.figures())
            return True
        undone = self.store.state.get("current")
        if m is None and undone:  # the state names the release it undoes, as a probation's does
            man = self.store.manifest(undone["sha256"])
            try:
                m = Manifest.model_validate(man) if man else None
            except ValueError:  # a manifest kept by an older version: the rollback goes on without its name
                m = None
        prev = self.store.rollback(reason)
        old = None
        if prev is not None:
            man = self.store.manifest(prev["sha256"])
            try:
                old = self._build(Manifest.model_validate(man), self.store.blob(prev["sha256"])) if man else None
            except (ModelError, ValueError) as err:
                log.error("previous model unusable: %s", err)
                old = None
        if old is None:
            old = Model(
                self.settings.model, self.settings.runtime, self.settings.state_dir, signal=self._signal, pool=self.pool
            )
        replaced = self.swap(old)
        if replaced is not None:
            replaced.close()
        self._state("rolled_back", m, reason=reason, now=prev, serving=self.serving(old))
        return True

    @staticmethod
    def serving(model: Model) -> dict[str, Any]:
        return {"name": model.name, "version": model.version, "sha256": model.file.sha256}

    def observe(self, model: Model, raw: RawInference, sample: np.ndarray | None) -> None:
        """From a post-processing thread, for every inference: while a candidate is on probation, the
        serving model's frames (every `ota.shadow_every`-th) are offered to it. Never blocks."""
        p = self.probation
        if p is None or sample is None or model is not self.current():
            return
        self._offered += 1
        if self._offered % self.settings.ota.shadow_every:
            return
        try:
            self.shadow.put_nowait((model, raw, sample))
        except queue.Full:  # the candidate is still busy with earlier frames: this one is not compared
            p.skipped += 1

    @property
    def judging(self) -> bool:
        """A candidate is on probation: the pipelines keep each frame for it."""
        return self.probation is not None

    def _build(self, m: Manifest, blob: Path) -> Model:
        cfg = self.settings.model.model_copy(
            update={
                "path": blob,
                "labels": self._labels_file(m),
                "name": m.name,
                "version": str(m.version),
                **_settings_of(m.model_dump()),
            }
        )
        model = Model(
            ModelConfig.model_validate(cfg.model_dump()),
            self.settings.runtime,
            self.settings.state_dir,
            signal=self._signal,
            pool=self.pool,
        )
        try:
            for i, test in enumerate(m.tests, start=1):
                why = run_acceptance(model, test)
                if why:
                    raise ModelError(f"acceptance test {i} failed: {why}")
            why = self.refusal(model) if self.refusal is not None else None
            if why:
                raise ModelError(f"the configuration would refuse it at the next start: {why}")
        except ModelError:
            model.close()
            raise
        return model

    def _labels_file(self, m: Manifest) -> Path | None:
        if m.labels is None:
            return None
        p = self.store.labels(m.sha256)
        if not p.exists():
            atomic_write(p, ("\n".join(m.labels) + "\n").encode())
        return p


def run_acceptance(model: Model, test: AcceptanceTest) -> str | None:
    """None when the model gets the test image right, else what it got wrong."""
    import base64

    import cv2

    from edge_agent.postprocess.geometry import iou_one_to_many

    try:
        raw = np.frombuffer(base64.b64decode(test.image, validate=True), np.uint8)
    except ValueError:
        return "image is not base64"
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if img is None:
        return "image could not be decoded"
    if model.pre is None:
        return "an acceptance image cannot test a model that takes audio or sensor windows"
    result = model.infer(img).result
    if test.nothing and (result.detections or result.classes):
        return f"expected nothing, got {[d.label for d in result.detections] or [c.label for c in result.classes]}"
    for exp in test.detections:
        found = [d for d in result.detections if d.label == exp.label and d.score >= exp.min_score]
        if exp.box_norm is not None and found:
            ious = iou_one_to_many(np.array(exp.box_norm), np.array([d.box_norm for d in found]))
            found = [d for d, o in zip(found, ious, strict=True) if o >= test.iou]
        if not found:
            return (
                f"no {exp.label} (score >= {exp.min_score}) where expected; got {[d.label for d in result.detections]}"
            )
    for exp_c in test.classes:
        if not any(c.label == exp_c.label and c.score >= exp_c.min_score for c in result.classes):
            return f"class {exp_c.label} not found with score >= {exp_c.min_score}"
    return None


_MODEL_SETTINGS = ("task", "score_threshold", "resize", "mean", "std")


def _settings_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The model settings a manifest carries (those it leaves out keep the device's configuration)."""
    return {k: manifest[k] for k in _MODEL_SETTINGS if manifest.get(k) is not None}


def model_for_start(settings: Settings, store: ModelStore) -> tuple[ModelConfig, dict[str, Any] | None]:
    """The model to start with, after deciding what an interrupted update means.

    A model still on probation at start did not survive it (the agent was killed or crashed
    during probation): count the crash, go back to the previous version, and say so.
    """
    report = None
    prob = store.state.get("probation")
    if prob:
        if prob.get("kernel_boot") not in (None, kernel_boot_id()):
            # the system itself restarted (a power cut, a reboot): no fault of the model, not counted
            why = "the system restarted during probation (not counted as a crash of the model)"
        else:
            crashes = store.note_crash(prob["sha256"])
            why = f"agent restarted during probation (crash {crashes} of this model)"
        store.rollback(why)
        report = {
            "state": "rolled_back",
            "sha256": prob["sha256"],
            "ts": round(time.time(), 3),
            "reason": why,
            "blocked": store.is_blocked(prob["sha256"]),
        }
    cur = store.state.get("current")
    if cur and not store.intact(cur["sha256"]):
        # its file is missing or not what was installed (a disk that lost writes): never serve it
        why = f"installed version {cur.get('version')} is damaged (its file does not match its digest)"
        log.error("%s; going back", why)
        prev = store.rollback(why)
        if prev and not store.intact(prev["sha256"]):
            store.rollback(f"previous version {prev.get('version')} is damaged too")
        report = {"state": "rolled_back", "sha256": cur["sha256"], "version": cur.get("version"),
                  "ts": round(time.time(), 3), "reason": why}
        cur = store.state.get("current")
    if cur and store.blob(cur["sha256"]).exists():
        man = store.manifest(cur["sha256"]) or {}
        labels = store.labels(cur["sha256"])
        upd: dict[str, Any] = {
            "path": store.blob(cur["sha256"]),
            "name": man.get("name"),
            "version": str(cur["version"]),
            "labels": labels if labels.exists() else None,
        }
        upd.update(_settings_of(man))
        return ModelConfig.model_validate({**settings.model.model_dump(), **upd}), report
    return settings.model, report
