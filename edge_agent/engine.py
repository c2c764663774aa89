"""One loaded model on one accelerator, shared by every pipeline that runs it, with batching.

A model file used by several pipelines is loaded once (per accelerator) and run by one `Engine`.
Pipelines call `Engine.run` from their own threads, and invoke there: the engine has no thread of its
own, so a frame costs no hand-off to a worker and back (on a two-core board each wake-up of another
thread, and each wait for the GIL it brings, cost more than the Python work they moved). The engine
hands out lanes: one interpreter each (an accelerator is one lane; on the CPU, once a second pipeline
uses the model, `runtime.replicas` single-threaded interpreters, by default one per core to start with
and one more each time a frame finds every lane busy, up to one per pipeline that uses the model and
twice the cores). A frame takes a free lane at once unless an earlier frame waits for one; otherwise
its thread sleeps on its own request's event until a finishing invoke hands it the lane. A lane per
pipeline spares that sleep: with four pipelines on two cores each pipeline's thread had waited for a
lane 15% of its time (the lane idle meanwhile, while the thread handed it woke up and won back the
interpreter lock). Four lanes against two there: capture to publish p50 2.2-2.5 ms against 2.8-3.1,
frames a second 1.04x in the median of paired rounds (0.85-1.23x, within this machine's noise), for
about 3-4 MB each with BlazeFace (`edge-agent bench --replicas 4`, docs/benchmarks.md). Lanes are
added only where frames wait for one, so pipelines that seldom overlap (cameras at a few frames a
second) keep the memory. Frames are served strictly in the order they arrive (first come, first
served: with one outstanding frame per pipeline that is round robin), a busy pipeline cannot starve a
quiet one, and a finished invoke wakes only the pipeline whose turn it is.

Batching: where the model's batch dimension can be resized, the thread holding a lane waits at most
`batch_wait_ms` for the other pipelines that are active to queue a frame, then runs them all in one
invoke and wakes each with its result. A batch size is used only after its outputs, on real frames,
match the same frames run one by one; otherwise batching is switched off for the model and health
says why. A pipeline that stops sending (its camera died) stops counting as active within a second (or
twice its own interval between frames, where that is longer), so it never holds the others up for
longer than one `batch_wait_ms`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.runtime.base import Backend, BackendError, BackendGone
from edge_agent.runtime.registry import open_backend
from edge_agent.runtime.select import Fallback, Runtime, Selection
from edge_agent.runtime.worker import ProcessBackend

log = logging.getLogger(__name__)

#: A pipeline that has not sent a frame for this long, nor for twice its own interval between two
#: frames, is not waited for when a batch is formed: a source that stalls or dies holds no batch up,
#: while a pipeline whose frames come further apart (a low `fps`, a slow board) still counts.
ACTIVE_S = 1.0
#: A pipeline's next frame may come this fraction of its interval early (a camera's jitter, a round of
#: work shorter than the last) and still be waited for.
_EARLY = 0.5


class EngineClosed(RuntimeError):
    """The engine was closed (its model replaced or the agent stopping) while a frame waited."""


def split_axis(spec_shape: Sequence[int], batched_shape: Sequence[int], n: int) -> int | None:
    """The axis along which a batch of n stacks its outputs: the batch axis, or (for models that fold
    the batch into another dimension, as BlazeFace's anchors do) the one axis that grew n-fold."""
    if len(spec_shape) != len(batched_shape):
        return None
    grown = [i for i, (a, b) in enumerate(zip(spec_shape, batched_shape, strict=True)) if a != b]
    if len(grown) == 1 and batched_shape[grown[0]] == n * spec_shape[grown[0]]:
        return grown[0]
    if not grown and n == 1:
        return 0
    return None


#: Per output: the batch axis, and for each frame of the batch the indices along it that are its own.
Layout = list[tuple[int, list[np.ndarray]]]


def segment_indices(segments: Sequence[int], n: int) -> list[np.ndarray]:
    """Where each of n frames' rows lie when an output is made of segments, each holding the n frames'
    blocks one after another (BlazeFace concatenates its two heads after folding the batch into each)."""
    per: list[list[np.ndarray]] = [[] for _ in range(n)]
    base = 0
    for size in segments:
        for k in range(n):
            per[k].append(np.arange(base + k * size, base + (k + 1) * size))
        base += n * size
    return [np.concatenate(p) for p in per]


def learn_segments(singles: Sequence[np.ndarray], batched: np.ndarray, axis: int, tol: float) -> list[int] | None:
    """The segment sizes of a batched output, found by following frame 0's rows through it; None when
    they do not line up (the batch then is not used)."""
    n, size = len(singles), singles[0].shape[axis]
    rows = np.moveaxis(batched, axis, 0).reshape(batched.shape[axis], -1).astype(np.float64)
    first = np.moveaxis(singles[0], axis, 0).reshape(size, -1).astype(np.float64)
    segments: list[int] = []
    r = p = 0
    while r < size:
        start = r
        while r < size and p < len(rows) and float(np.max(np.abs(rows[p] - first[r]))) <= tol:
            r += 1
            p += 1
        if r == start:
            return None
        segments.append(r - start)
        p += (n - 1) * (r - start)
    return segments if p == len(rows) else None


def batch_layout(outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec], n: int) -> Layout:
    """The plain layout: each frame's block after the previous one along the axis that grew."""
    out: Layout = []
    for o, spec in zip(outputs, specs, strict=True):
        axis = split_axis(spec.shape, o.shape, n)
        if axis is None:
            raise BackendError(f"output {spec.name} {list(o.shape)} is not {n} stacked {list(spec.shape)}")
        out.append((axis, segment_indices([spec.shape[axis]], n)))
    return out


def split_batch(outputs: Sequence[np.ndarray], layout: Layout) -> list[list[np.ndarray]]:
    """Per-frame outputs (each in the model's single-frame shape) from a batch."""
    n = len(layout[0][1]) if layout else 0
    per: list[list[np.ndarray]] = [[] for _ in range(n)]
    for out, (axis, idx) in zip(outputs, layout, strict=True):
        for k in range(n):
            per[k].append(np.take(out, idx[k], axis=axis))
    return per


def finite(outputs: Sequence[np.ndarray], unchecked: Container[int] = ()) -> bool:
    """Whether no float output holds NaN or infinity, run on every frame: first one sum each in the
    output's own type (NaN and infinity carry through a sum), and only where that is not finite, which
    finite values large enough to overflow it also give, each value looked at. The sum in 64-bit floats
    this replaced cast every value first: 33 us a frame for BlazeFace's outputs against 9, 6% of the
    time four pipelines held Python's interpreter lock. Quantized outputs cannot hold NaN.
    `unchecked`: the positions of outputs whose every value need not be a number, as a detection
    post-processing op's: only its first `count` rows are written, the rest is whatever the memory held
    (on a fresh interpreter, at times NaN)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, the answer, not a warning
        for i, o in enumerate(outputs):
            if o.dtype.kind != "f" or i in unchecked or np.isfinite(np.add.reduce(o, axis=None)):
                continue
            if not np.isfinite(o).all():
                return False
    return True


def outputs_match(a: Sequence[np.ndarray], b: Sequence[np.ndarray], specs: Sequence[TensorSpec]) -> str:
    """'' when two runs' outputs agree (to kernel rounding), else where they differ."""
    for x, y, s in zip(a, b, specs, strict=True):
        fx, fy = s.dequantize(x).astype(np.float64), s.dequantize(y).astype(np.float64)
        tol = _tolerance(s, fx)
        err = float(np.max(np.abs(fx - fy))) if fx.size else 0.0
        if not np.isfinite(err) or err > tol:
            return f"output {s.name} differs by {err:.4g} (tolerance {tol:.3g})"
    return ""


def _tolerance(spec: TensorSpec, values: np.ndarray) -> float:
    """Kernel rounding: a thousandth of the output's range, and two quantization steps."""
    span = float(np.ptp(values)) if values.size else 0.0
    return 1e-3 * max(span, 1.0) + 2 * (spec.scale or 0.0)


@dataclass
class EngineResult:
    outputs: list[np.ndarray]
    inference_ms: float  # the invoke this frame was part of
    wait_ms: float  # queued behind other pipelines or for its batch
    batch: int
    accelerator: str


@dataclass
class _Request:
    user: str
    inputs: list[np.ndarray]
    t: float = field(default_factory=time.monotonic)
    result: EngineResult | None = None
    error: BaseException | None = None
    #: the lane handed to this frame's own thread to invoke on
    lane: _Lane | None = None
    #: set once a lane is handed to it, and once result or error is in: the caller sleeps on its own event,
    #: so a finished invoke wakes the one pipeline whose turn it is, not every waiting one
    done: threading.Event = field(default_factory=threading.Event)


class _Lane:
    """One interpreter the engine invokes on, with its batched twins. Lane 0 is the runtime's backend
    (which an accelerator failure swaps for the CPU); CPU replicas are lanes of their own."""

    def __init__(self, backend: Backend | None, runtime: Runtime | None):
        self.own = backend  # a replica's interpreter (None: the runtime's)
        self.runtime = runtime
        self.batched: dict[tuple[str, int], Backend] = {}

    @property
    def backend(self) -> Backend:
        if self.own is not None:
            return self.own
        assert self.runtime is not None
        return self.runtime.backend

    def close_batched(self) -> None:
        # swapped out first: a batch size being opened beside the pipelines may be added meanwhile
        batched, self.batched = self.batched, {}
        for be in batched.values():
            be.close()

    def close(self) -> None:
        self.close_batched()
        if self.own is not None:
            self.own.close()


class Engine:
    def __init__(
        self,
        runtime: Runtime,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        path: Path,
        threads: int,
        max_batch: int = 1,
        batch_wait_ms: float = 0.0,
        options: dict[str, str] | None = None,
        replicas: int = 1,
        grow_to: int = 0,
        batching: Callable[[str], tuple[int, float]] | None = None,
    ):
        """replicas: on the CPU, interpreters (one thread each) that serve the pipelines side by side once
        two or more pipelines share the model; an accelerator is always opened once. grow_to: more such
        interpreters, one each time a frame finds every one busy, up to this many and one per pipeline
        that uses the model (0 or at most `replicas`: never more). batching: the batch size and wait for
        an accelerator, taken when the engine goes back to one (`try_accelerator`)."""
        self._runtime = runtime
        self._batching = batching
        #: positions of the outputs not checked for NaN (`finite`): a detection post-processing op's
        self.unchecked: frozenset[int] = frozenset()
        #: an accelerator back, put in place of the CPU once no lane is busy (`try_accelerator`)
        self._restore: Selection | None = None
        self.inputs, self.outputs = inputs, outputs
        self.path = path
        self.threads = threads
        self.options = options or {}
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1e3
        self.replicas = max(1, replicas)
        self.grow_to = grow_to
        self._growing = 0  # lanes being opened for frames that found every lane busy
        self._cpu_lanes = False  # the lanes are CPU replicas, to which more may be added
        #: why batching is off ('' while it may be used)
        self.batching_off = "" if max_batch > 1 else "runtime.max_batch is 1"
        self.batches: Counter[int] = Counter()
        self.invokes = 0
        self.frames = 0
        self._layouts: dict[tuple[str, int], Layout] = {}
        self._lanes: list[_Lane] = [_Lane(None, runtime)]
        self._pending: deque[_Request] = deque()
        self._free: list[_Lane] = list(self._lanes)  # the lanes not handed out
        self._cond = threading.Condition()
        self._last_seen: dict[str, float] = {}
        self._interval: dict[str, float] = {}  # per pipeline: time between its last two requests
        self._closed = False
        self._replicated = False
        self._gathering = 0  # lane holders waiting for their batch to fill
        #: open batched backends on a thread of their own, serving frames one by one meanwhile: an
        #: accelerator compiles each input size anew, which took 0.5-2 s on a GPU, a stall for every pipeline
        self.compile_ahead = runtime.accelerator != "cpu"
        self._opening: threading.Thread | None = None

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @runtime.setter
    def runtime(self, rt: Runtime) -> None:
        """Another runtime in place (tests put a failing accelerator there): lane 0 invokes through it."""
        self._runtime = rt
        if self._lanes[0].own is None:
            self._lanes[0].runtime = rt

    # --- what pipelines call -----------------------------------------------------------
    def run(self, user: str, inputs: list[np.ndarray]) -> EngineResult:
        """Invoke on `inputs` (single-frame shapes) in turn with the other pipelines; blocks until done.
        The caller's own thread invokes, on a free lane once no earlier frame waits for one; otherwise it
        sleeps on its request's event until a lane is handed to it, or until another pipeline's batch
        carried its frame."""
        req = _Request(user, inputs)
        with self._cond:
            if self._closed:
                raise EngineClosed(f"{self.path.name}: engine closed")
            if self._restore is not None:  # an accelerator is back: in place once the frames in flight are done
                self._cond.wait_for(lambda: self._restore is None or self._idle() or self._closed)
                if self._restore is not None and not self._closed:
                    self._swap_in()
            if user in self._last_seen:
                self._interval[user] = req.t - self._last_seen[user]
            self._last_seen[user] = req.t
            if not self._replicated and len(self._last_seen) > 1:
                # a lone pipeline's invoke in flight finishes on the interpreter before replicas take over;
                # once one thread has switched, the others go on (waiting for idle lanes again could starve
                # them behind a pipeline that takes the lane straight back)
                self._cond.wait_for(lambda: self._replicated or self._idle() or self._closed)
                if not self._replicated and not self._closed:
                    self._replicate()
                if self._closed:
                    raise EngineClosed(f"{self.path.name}: engine closed")
            ahead = any(r.lane is None for r in self._pending)
            self._pending.append(req)
            self._cond.notify_all()  # a batch being formed may take this frame (nobody else waits here)
            grow = False
            if self._free and not ahead and not self._gathering:  # (a batch being formed takes it instead)
                self._hand(self._free.pop(), req)
            elif not self._free and self._may_grow():
                self._growing += 1
                grow = True
        if grow:
            self._grow()
        while not req.done.wait(0.5):
            if self._closed and req.lane is None:
                raise EngineClosed(f"{self.path.name}: engine closed")
        lane = req.lane
        if lane is None:  # carried by another pipeline's batch, or failed by close()
            return self._outcome(req)
        try:
            with self._cond:
                batch = self._gather(req)
            self._execute(lane, batch)
        finally:
            self._release(lane)
        return self._outcome(req)

    def _hand(self, lane: _Lane, req: _Request) -> None:
        """Under the lock: `req`'s own thread invokes on `lane` (woken, unless it is the caller)."""
        req.lane = lane
        req.done.set()

    def _idle(self) -> bool:
        """Under the lock: no lane is handed out."""
        return len(self._free) == len(self._lanes)

    def _release(self, lane: _Lane) -> None:
        """A lane is free again: straight to the earliest frame that waits for one, so pipelines are served
        in the order their frames came, or back to the free list."""
        with self._cond:
            nxt = next((r for r in self._pending if r.lane is None), None)
            if nxt is not None and not self._closed:
                self._hand(lane, nxt)
            else:
                self._free.append(lane)
            self._cond.notify_all()  # close() and a replica switch wait for idle lanes

    def _may_grow(self) -> bool:
        """Under the lock: whether a frame that found every lane busy may have one more opened."""
        want = min(self.grow_to, len(self._last_seen))
        return self._cpu_lanes and not self._closed and len(self._lanes) + self._growing < want

    def _grow(self) -> None:
        """Outside the lock (an interpreter takes milliseconds to open): one more CPU replica, handed to the
        earliest frame still waiting for a lane, which may be another's if a lane came free meanwhile."""
        lane: _Lane | None = None
        try:
            lane = _Lane(open_backend("cpu", self.path, 1, own_process=self.runtime.backend.own_process), None)
        except BackendError as err:
            log.warning("%s: no more CPU replicas opened (%s)", self.path.name, err)
        with self._cond:
            self._growing -= 1
            if lane is None:
                self.grow_to = len(self._lanes)
                return
            if self._closed or not self._cpu_lanes:  # (an accelerator came back meanwhile)
                lane.close()
                return
            self._lanes.append(lane)
        self._release(lane)

    def _replicate(self) -> None:
        """Under the lock, with no lane busy, once a second pipeline shows up. On the CPU each lane is its own
        single-threaded interpreter: side by side on the pipelines' threads they keep every core busy,
        where one interpreter's threads would wait on each other between frames."""
        self._replicated = True
        if self.runtime.accelerator != "cpu" or max(self.replicas, self.grow_to) <= 1:
            return
        lanes: list[_Lane] = []
        own = self.runtime.backend.own_process
        try:
            for _ in range(self.replicas):
                lanes.append(_Lane(open_backend("cpu", self.path, 1, own_process=own), None))
        except BackendError as err:
            log.warning("%s: CPU replicas not opened (%s); one interpreter serves", self.path.name, err)
            for lane in lanes:
                lane.close()
            return
        # the first replica takes the place of the runtime's own (multi-threaded) interpreter
        old, self.runtime.backend = self.runtime.backend, lanes[0].backend
        lanes[0].own = None
        lanes[0].runtime = self.runtime
        old.close()
        self._lanes[0].close_batched()
        self._lanes = lanes
        self._free = list(lanes)
        self._cpu_lanes = True

    def try_accelerator(self) -> bool:
        """On the recovery thread (`edge_agent.recovery`): where the CPU stands in for an accelerator that
        failed at run time or could not be opened at start, select again as at start (in a child process
        first, and against the CPU's outputs, where the probe cache holds no verdict); if an accelerator
        comes out, it serves from the next frame of every pipeline, once the frames in flight are done.
        True when it was put in place (or will be, at the next frame)."""
        rt = self.runtime
        why = rt.standing_in()
        if why is None or rt.reselect is None:
            return False
        sel = rt.reselect()
        if sel.backend.kind == "cpu":
            sel.backend.close()
            rt.probes = sel.probes  # the reasons as they are now
            return False
        log.info("%s: %s is back (the CPU stood in: %s); it serves from the next frame", self.path.name,
                 sel.backend.kind, why)
        with self._cond:
            if self._closed or self._restore is not None:
                sel.backend.close()
                return False
            self._restore = sel
            if self._idle():  # no frame in flight (the sources stalled, say): at once
                self._swap_in()
            self._cond.notify_all()
        return True

    def _apply_batching(self, accelerator: str) -> None:
        """Under the lock: the batch size and wait for what now serves, where the engine was told them
        (an accelerator back, or the CPU after a fallback; on the CPU a batch gains nothing here)."""
        if self._batching is not None:
            self.max_batch, wait_ms = self._batching(accelerator)
            self.batch_wait_s = wait_ms / 1e3
            self.batching_off = "" if self.max_batch > 1 else "runtime.max_batch is 1"

    def _swap_in(self) -> None:
        """Under the lock, with no lane busy: the accelerator in `_restore` becomes lane 0's backend and
        the only lane (an accelerator is opened once); the CPU interpreters and their batch sizes close."""
        sel, self._restore = self._restore, None
        assert sel is not None
        rt = self.runtime
        old, old_lanes = rt.backend, self._lanes
        rt.backend, rt.probes = sel.backend, sel.probes
        rt.fallbacks.append(Fallback(time.time(), old.kind, sel.backend.kind, "the accelerator is back"))
        self._lanes = [_Lane(None, rt)]
        self._free = list(self._lanes)
        self._cpu_lanes, self._replicated, self.compile_ahead = False, True, True
        self._apply_batching(sel.backend.kind)
        for lane in old_lanes:
            lane.close()
        old.close()
        nxt = next((r for r in self._pending if r.lane is None), None)
        if nxt is not None:  # (a frame waiting for a lane while none was busy: never left without one)
            self._hand(self._free.pop(), nxt)
        self._cond.notify_all()

    @staticmethod
    def _outcome(req: _Request) -> EngineResult:
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _gather(self, head: _Request) -> list[_Request]:
        """Under the lock: the frames `head`'s thread runs now, head first, then the earliest that wait for
        a lane. With a batch wait, the head waits for the pipelines whose next frame is due before its wait
        runs out (`_due_before`), and for no other."""
        limit = self.max_batch if not self.batching_off else 1

        def others() -> list[_Request]:
            return [r for r in self._pending if r.lane is None]

        if limit > 1 and self.batch_wait_s > 0:
            deadline = head.t + self.batch_wait_s
            want = min(limit, 1 + len(others()) + self._due_before(deadline))
            self._gathering += 1
            try:
                while 1 + len(others()) < want and (left := deadline - time.monotonic()) > 0 and not self._closed:
                    self._cond.wait(left)
            finally:
                self._gathering -= 1
        batch = [head, *others()[: limit - 1]]
        for r in batch:
            self._pending.remove(r)
        while self._free and not self._closed and (left_out := others()):  # frames the batch had no room for
            self._hand(self._free.pop(), left_out[0])
        return batch

    def _due_before(self, deadline: float) -> int:
        """Under the lock: how many pipelines with no frame waiting should send one by `deadline`. Each is
        expected one interval (the time between its last two frames) after its last, or up to half an
        interval sooner (`_EARLY`); one seen only once is expected while it was seen within `ACTIVE_S`.
        One silent for twice its interval (and `ACTIVE_S`) has stalled or gone, and is not expected:
        waiting for a frame due after the deadline, or from a source that stalled, only delays the
        frames that are here."""
        now = time.monotonic()
        waiting = {r.user for r in self._pending}
        due = 0
        for user, last in self._last_seen.items():
            if user in waiting:
                continue
            interval = self._interval.get(user)
            if interval is None:
                due += now - last < ACTIVE_S
            elif now - last < max(ACTIVE_S, 2.0 * interval) and last + _EARLY * interval <= deadline:
                due += 1
        return due

    # --- invoking --------------------------------------------------------------------------
    def _execute(self, lane: _Lane, batch: list[_Request]) -> None:
        start = time.monotonic()
        accel = lane.backend.kind
        try:
            if len(batch) > 1:
                try:
                    outs, ms = self._invoke_batch(lane, batch)
                except BackendError as err:
                    self._disable_batching(str(err))
                    outs, ms = None, 0.0
                if outs is not None:
                    for req, o in zip(batch, outs, strict=True):
                        req.result = EngineResult(o, ms, (start - req.t) * 1e3, len(batch), accel)
                    self._count(len(batch))
                    return
            for req in batch:  # one at a time (also what a batch that cannot be run falls back to)
                t0 = time.monotonic()
                o, ms = self._invoke_one(lane, req.inputs)
                req.result = EngineResult(o, ms, (t0 - req.t) * 1e3, 1, lane.backend.kind)
                self._count(1)
        except BaseException as err:  # the waiting pipelines get the error, each on its own thread
            for req in batch:
                if req.result is None:
                    req.error = err
        finally:
            for req in batch:
                req.done.set()

    def _count(self, n: int) -> None:
        with self._cond:
            self.batches[n] += 1
            self.invokes += 1
            self.frames += n

    def _invoke_one(self, lane: _Lane, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        def fill_all() -> None:
            for i, x in enumerate(inputs):

                def put(v: np.ndarray, x: np.ndarray = x) -> None:
                    np.copyto(v, x.reshape(v.shape))

                lane.backend.write_input(i, put)

        fill_all()
        t0 = time.perf_counter()
        if lane.runtime is None:
            try:
                lane.backend.invoke()
            except BackendGone as err:  # a replica's own process died: another takes its place, the frame is redone
                log.error("%s: an interpreter's process died (%s); starting another", self.path.name, err)
                old = lane.own
                assert isinstance(old, ProcessBackend)  # the only backend whose process can die apart
                lane.own = old.again()
                lane.close_batched()
                old.close()
                fill_all()
                lane.backend.invoke()
        elif lane.runtime.invoke():  # fell back to the CPU: the new backend has empty inputs
            lane.close_batched()
            with self._cond:
                self._apply_batching(lane.backend.kind)
            fill_all()
            lane.runtime.invoke()
        ms = (time.perf_counter() - t0) * 1e3
        be = lane.backend
        outs = [be.output(i) for i in range(len(self.outputs))]
        rt = lane.runtime
        if rt is not None and be.kind != "cpu" and rt.cpu_fallback and not finite(outs, self.unchecked):
            # an accelerator's 16-bit floats that overflow on this frame: the CPU serves it, and judges
            self._suspect(lane, rt, be.kind)
            fill_all()
            t0 = time.perf_counter()
            rt.invoke()
            ms = (time.perf_counter() - t0) * 1e3
            be = lane.backend
            outs = [be.output(i) for i in range(len(self.outputs))]
        if rt is not None and rt.suspected is not None and be.kind == "cpu":
            rt.judge(finite(outs, self.unchecked))
        return outs, ms

    def _suspect(self, lane: _Lane, rt: Runtime, kind: str) -> None:
        """The accelerator's outputs on a frame held NaN or infinity: the CPU takes over from it (`Runtime.suspect`)."""
        rt.suspect(f"outputs not finite (NaN or infinity) on {kind}")
        lane.close_batched()
        with self._cond:
            self._apply_batching(lane.backend.kind)

    def _invoke_batch(self, lane: _Lane, batch: list[_Request]) -> tuple[list[list[np.ndarray]] | None, float]:
        """One invoke for the whole batch. On the CPU the input is resized to the batch; an accelerator
        compiles each input size anew (a second or more on a GPU), so there a short batch is padded up to
        runtime.max_batch with copies of its last frame, whose results are dropped, and the size is compiled
        on a thread of its own (`_open_ahead`): (None, 0) until it is there, and the batch goes one by one.
        A batch is never padded beyond the pipelines that have used the model: two cameras on a GPU run
        batches of 2, not 4 with half of each thrown away."""
        n = len(batch)
        kind = lane.backend.kind
        size = n if kind == "cpu" and not self.compile_ahead else max(n, min(self.max_batch, len(self._last_seen)))
        reqs = batch + [batch[-1]] * (size - n)
        key = (kind, size)
        threads = self.threads if lane.own is None else 1
        with self._cond:
            be = lane.batched.get(key)
        if be is None and self.compile_ahead:
            self._open_ahead(lane, key, threads)
            return None, 0.0
        if be is None:
            be = lane.batched[key] = open_batched(
                kind, self.path, threads, self.options, size, lane.backend.own_process
            )
        for i in range(len(self.inputs)):

            def fill(v: np.ndarray, i: int = i) -> None:
                for k, req in enumerate(reqs):
                    v[k : k + 1] = req.inputs[i].reshape((1, *v.shape[1:]))

            be.write_input(i, fill)
        t0 = time.perf_counter()
        try:
            be.invoke()
        except Exception as err:  # native backends raise bare RuntimeError with driver text
            raise BackendError(f"batch of {size}: {str(err).strip()[:200]}") from None
        ms = (time.perf_counter() - t0) * 1e3
        raw = [be.output(i) for i in range(len(self.outputs))]
        rt = lane.runtime
        if rt is not None and kind != "cpu" and rt.cpu_fallback and not finite(raw, self.unchecked):  # as `_invoke_one`
            self._suspect(lane, rt, kind)
            return None, 0.0  # the frames go one by one, on the CPU, the first of them judging
        with self._cond:
            layout = self._layouts.get(key)
        if layout is None:  # once per size and accelerator, learnt and checked on these real frames
            layout = self._learn(lane, reqs, raw)
            with self._cond:
                self._layouts[key] = layout
            log.info("%s: batches of %d verified on %s", self.path.name, size, kind)
        return split_batch(raw, layout)[:n], ms

    def _open_ahead(self, lane: _Lane, key: tuple[str, int], threads: int) -> None:
        """The batched backend `key` opened on a thread of its own (once), for `lane`: until it is there,
        the frames go one by one instead of all pipelines stalling behind a compile."""
        with self._cond:
            if self._opening is not None or self._closed:
                return
            own = lane.backend.own_process

            def work() -> None:
                be: Backend | None = None
                why = ""
                try:
                    be = open_batched(key[0], self.path, threads, self.options, key[1], own)
                except BackendError as err:
                    why = str(err)
                except Exception as err:  # this thread's one catch-all: batching off, the frames go on
                    log.exception("%s: opening a batch of %d failed", self.path.name, key[1])
                    why = f"batch of {key[1]}: {type(err).__name__}: {err}"
                with self._cond:
                    self._opening = None
                    kept = be is not None and not self._closed and lane in self._lanes
                    if be is not None and kept:
                        lane.batched[key] = be
                if why:
                    self._disable_batching(why)
                elif be is not None and not kept:
                    be.close()  # the engine closed, or the lane was replaced, meanwhile

            self._opening = threading.Thread(target=work, name=f"batch-open-{self.path.stem}", daemon=True)
            self._opening.start()
        log.info("%s: opening batches of %d on %s beside the pipelines", self.path.name, key[1], key[0])

    def _learn(self, lane: _Lane, batch: list[_Request], raw: list[np.ndarray]) -> Layout:
        """How this model stacks a batch in each output, from the same frames run one by one; BackendError
        unless every frame's part of the batch then matches its single run."""
        n = len(batch)
        singles = [self._invoke_one(lane, req.inputs)[0] for req in batch]
        layout = batch_layout(raw, self.outputs, n)
        for j, (axis, _) in enumerate(layout):
            spec = self.outputs[j]
            tol = _tolerance(spec, spec.dequantize(singles[0][j]))
            segs = learn_segments([spec.dequantize(s[j]) for s in singles], spec.dequantize(raw[j]), axis, tol)
            if segs is not None:
                layout[j] = (axis, segment_indices(segs, n))
        for single, got in zip(singles, split_batch(raw, layout), strict=True):
            why = outputs_match(single, got, self.outputs)
            if why:
                raise BackendError(f"a batch of {n} does not give the single-frame results: {why}")
        return layout

    def _disable_batching(self, why: str) -> None:
        if not self.batching_off:
            self.batching_off = why
            log.warning("%s: batching off: %s", self.path.name, why)

    # --- lifecycle and health -----------------------------------------------------------
    def close(self) -> None:
        with self._cond:
            self._closed = True
            while self._pending:  # frames no lane will take: their pipelines learn at once
                req = self._pending.popleft()
                if req.lane is not None:  # handed a lane its thread has not taken up yet
                    self._free.append(req.lane)
                    req.lane = None
                req.error = EngineClosed(f"{self.path.name}: engine closed")
                req.done.set()
            self._cond.notify_all()
            self._cond.wait_for(self._idle, 5.0)  # let the invokes in flight finish
            opening = self._opening
        if opening is not None:  # a compile in flight: it closes what it opened, once done
            opening.join(10.0)
        for lane in self._lanes:
            lane.close()
        self.runtime.backend.close()  # (lane 0's, whichever interpreter that is now)
        restore, self._restore = self._restore, None
        if restore is not None:  # an accelerator back, never put in place
            restore.backend.close()

    def _backends(self) -> list[Backend]:
        with self._cond:
            return [b for lane in self._lanes for b in (lane.backend, *lane.batched.values())]

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def users(self) -> list[str]:
        return sorted(self._last_seen)

    def info(self) -> dict[str, Any]:
        return {
            "model": self.path.name,
            "accelerator": self.runtime.accelerator,
            "pipelines": self.users(),
            "interpreters": len(self._lanes),
            # the processes the model runs in, where runtime.own_process puts it apart from the agent
            "processes": [be.pid for be in self._backends() if isinstance(be, ProcessBackend)],
            "invokes": self.invokes,
            "frames": self.frames,
            "batches": {str(k): v for k, v in sorted(self.batches.items())},
            "max_batch": self.max_batch,
            "batching": "off: " + self.batching_off if self.batching_off else "on",
            "queue": self.queue_depth,
        }


def open_batched(
    kind: str, path: Path, threads: int, options: dict[str, str], n: int, own_process: bool = False
) -> Backend:
    """A second backend of the same family whose inputs hold n frames; BackendError where it cannot.
    `own_process`: in a child process of its own, as the backend it batches for."""
    be = open_backend(kind, path, threads, options, own_process=own_process)
    try:
        be.resize_batch(n)
    except BackendError:
        be.close()
        raise
    return be


EngineFactory = Callable[[], Engine]


class ModelPool:
    """The agent's loaded models: one engine per (model file, accelerator settings), shared by every
    pipeline and model slot that uses the same file; closed when its last user lets go."""

    def __init__(self) -> None:
        self._engines: dict[str, tuple[Engine, int]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, make: EngineFactory) -> Engine:
        with self._lock:
            have = self._engines.get(key)
            if have is not None:
                self._engines[key] = (have[0], have[1] + 1)
                return have[0]
        engine = make()  # outside the lock: loading and probing take a while
        with self._lock:
            have = self._engines.get(key)
            if have is not None:  # loaded meanwhile by another slot: keep one
                self._engines[key] = (have[0], have[1] + 1)
                engine.close()
                return have[0]
            self._engines[key] = (engine, 1)
            return engine

    def release(self, engine: Engine) -> None:
        with self._lock:
            for key, (e, refs) in list(self._engines.items()):
                if e is engine:
                    if refs > 1:
                        self._engines[key] = (e, refs - 1)
                        return
                    del self._engines[key]
                    break
        engine.close()

    def engines(self) -> list[Engine]:
        with self._lock:
            return [e for e, _ in self._engines.values()]
