"""A backend run in a process of its own (`runtime.own_process`), behind the same `Backend` interface.

Why: LiteRT's `CompiledModel` holds Python's interpreter lock through a whole run and the copy of
its outputs back (on a GPU, 0.2-0.8 ms a frame), so in the agent every pipeline's Python work waits
on each GPU run, and frames seldom queue up to form a batch. In a child process the run holds only
the child's lock: the agent's pipelines go on preprocessing and decoding meanwhile, and its own
threads only wait in a socket read, which releases the lock. A second gain: an accelerator plugin
that aborts (SIGILL, SIGSEGV in a driver) takes down the child, not the agent, which falls back to
the CPU as for any run-time failure.

The frames and results do not travel through the socket: the child makes one shared memory block
(a `memfd`, handed over with SCM_RIGHTS, so no name is left behind in /dev/shm) with a region per
input and per output, and the socket carries one short message each way per invoke. A resize (a
batch size) makes a new block. One process per backend: a batch size compiled on an accelerator
(a second or more) never holds up the single frames served meanwhile by another.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.runtime.base import Backend, BackendError, BackendGone, T

log = logging.getLogger(__name__)

#: every region starts on a cache line
_ALIGN = 64
#: longest message: a layout or an error text
_MSG = 1 << 16
#: seconds a child gets to finish after being asked to close, before it is killed
_CLOSE_S = 5.0
#: A child that has not answered one invoke for this long is taken as hung (a driver that stopped
#: answering), killed, and handled as one that died: the model falls back or starts again, well before
#: health.stall_s (30 s by default) would have the watchdog restart the whole agent. No model an edge
#: box runs per frame takes this long; opening and resizing (a GPU compile) have no limit.
INVOKE_TIMEOUT_S = 15.0


def _spec_doc(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "index": s.index, "shape": list(s.shape), "dtype": s.dtype.str, "scale": s.scale,
            "zero_point": s.zero_point}


def _spec(d: dict[str, Any]) -> TensorSpec:
    return TensorSpec(str(d["name"]), int(d["index"]), tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]),
                      float(d["scale"]), int(d["zero_point"]))


def layout(input_shapes: list[tuple[int, ...]], inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
           batch: int) -> list[tuple[int, int]]:
    """(offset, bytes) of each input (in its shape as resized), then each output (room for `batch` times
    its single-run size, however the model stacks a batch), in one block."""
    sizes = [
        int(np.prod(shape, dtype=np.int64)) * s.dtype.itemsize for s, shape in zip(inputs, input_shapes, strict=True)
    ]
    sizes += [batch * int(np.prod(s.shape, dtype=np.int64)) * s.dtype.itemsize for s in outputs]
    regions: list[tuple[int, int]] = []
    at = 0
    for size in sizes:
        regions.append((at, size))
        at += (size + _ALIGN - 1) // _ALIGN * _ALIGN
    return regions


def _block(size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("edge-agent-tensors", os.MFD_CLOEXEC)
    os.ftruncate(fd, max(size, 1))
    return fd, mmap.mmap(fd, max(size, 1))


# --- the parent's side ------------------------------------------------------------------


class ProcessBackend(Backend):
    """A backend (`name`, as `open_backend` takes it) opened and run in a child process."""

    own_process = True
    invoke_timeout_s = INVOKE_TIMEOUT_S

    def __init__(self, name: str, model_path: Path, threads: int = 0, options: dict[str, str] | None = None):
        super().__init__(model_path)
        self.name = name
        self._args = (threads, dict(options or {}))
        self._desc = name  # until the child says what it opened (kind and description too)
        self._mm: mmap.mmap | None = None
        self._in: list[np.ndarray] = []
        self._out: list[np.ndarray] = []
        self._shapes: list[tuple[int, ...]] = []
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent.runtime.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as err:
            ours.close()
            raise BackendError(f"{name} in its own process: cannot start it: {err}") from None
        finally:
            theirs.close()
        try:
            self._send({"op": "open", "name": name, "model": str(model_path), "threads": threads,
                        "options": options or {}})
            self._take_layout(self._reply())
        except BackendError:
            self.close()
            raise

    # the child's answers
    def _send(self, doc: dict[str, Any]) -> None:
        try:
            self._sock.sendall(json.dumps(doc).encode())
        except OSError as err:
            raise self._gone(err) from None

    def _reply(self, timeout: float | None = None) -> tuple[bytes, int | None]:
        try:
            self._sock.settimeout(timeout)
            msg, fds, _flags, _addr = socket.recv_fds(self._sock, _MSG, 1)
        except TimeoutError:
            self._proc.kill()  # hung: a stopped driver answers no close either
            raise self._gone(None, f"did not answer an invoke for {timeout:g} s and was killed") from None
        except OSError as err:
            raise self._gone(err) from None
        if not msg:
            raise self._gone(None)
        if msg[:1] == b"e":
            for fd in fds:
                os.close(fd)
            raise BackendError(msg[1:].decode(errors="replace"))
        return msg, (fds[0] if fds else None)

    def _gone(self, err: OSError | None, how: str = "") -> BackendGone:
        """The child is gone (killed, or crashed in a native library): say how."""
        try:
            code = self._proc.wait(_CLOSE_S)
        except subprocess.TimeoutExpired:
            code = None
        how = how or (f"killed by signal {-code}" if code is not None and code < 0 else
                      f"exited with status {code}" if code is not None else f"stopped answering ({err})")
        return BackendGone(f"{self.name} in its own process: the process {how}")

    def _take_layout(self, reply: tuple[bytes, int | None]) -> None:
        msg, fd = reply
        doc = json.loads(msg[1:])
        if fd is None:
            raise BackendError(f"{self.name} in its own process: no shared memory came with its layout")
        self._unmap()
        try:
            self._mm = mmap.mmap(fd, int(doc["size"]))
        finally:
            os.close(fd)
        self.inputs = tuple(_spec(d) for d in doc["inputs"])
        self.outputs = tuple(_spec(d) for d in doc["outputs"])
        self.fully_accelerated = doc["fully_accelerated"]
        self.kind = str(doc["kind"])
        self._desc = str(doc["description"])
        buf = memoryview(self._mm)
        regions = [tuple(r) for r in doc["regions"]]
        shapes = [tuple(s) for s in doc["input_shapes"]]
        self._in = [
            np.frombuffer(buf, s.dtype, count=int(np.prod(shape, dtype=np.int64)), offset=off).reshape(shape)
            for s, shape, (off, _n) in zip(self.inputs, shapes, regions[: len(self.inputs)], strict=True)
        ]
        self._out = [np.frombuffer(buf, np.uint8, count=n, offset=off) for off, n in regions[len(self.inputs):]]
        self._shapes = [s.shape for s in self.outputs]

    def _unmap(self) -> None:
        self._in, self._out = [], []
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view is still held somewhere: the collector unmaps it
                pass
            self._mm = None

    def again(self) -> ProcessBackend:
        """The same backend (name, threads, options) in a new process: for one whose process died."""
        return ProcessBackend(self.name, self.model_path, *self._args)

    @property
    def description(self) -> str:
        return f"{self._desc}, in its own process (pid {self._proc.pid})"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def write_input(self, i: int, fill: Callable[[np.ndarray], T]) -> T:
        return fill(self._in[i])

    def invoke(self) -> None:
        try:
            self._sock.sendall(b"i")
        except OSError as err:
            raise self._gone(err) from None
        msg, _fd = self._reply(self.invoke_timeout_s)
        if len(msg) > 1:  # output shapes, sent when they change
            self._shapes = [tuple(s) for s in json.loads(msg[1:])]

    def output(self, i: int) -> np.ndarray:
        s, shape = self.outputs[i], self._shapes[i]
        n = int(np.prod(shape, dtype=np.int64)) * s.dtype.itemsize
        return self._out[i][:n].view(s.dtype).reshape(shape).copy()

    def reset_state(self) -> None:
        self._send({"op": "reset"})
        self._reply()

    def resize_batch(self, n: int) -> None:
        self._send({"op": "resize", "n": n})
        self._take_layout(self._reply())

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                self._sock.sendall(json.dumps({"op": "close"}).encode())
                proc.wait(_CLOSE_S)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        self._sock.close()
        self._unmap()


# --- the child's side -------------------------------------------------------------------


class _Served:
    """The child's backend and its shared block."""

    def __init__(self, backend: Backend, batch: int):
        self.be = backend
        self.input_shapes = [(batch, *s.shape[1:]) if batch > 1 else s.shape for s in backend.inputs]
        self.regions = layout(self.input_shapes, backend.inputs, backend.outputs, batch)
        size = self.regions[-1][0] + self.regions[-1][1] if self.regions else 1
        self.fd, self.mm = _block(size)
        self.size = size
        buf = memoryview(self.mm)
        k = len(backend.inputs)
        self.ins = [
            np.frombuffer(buf, s.dtype, count=int(np.prod(shape, dtype=np.int64)), offset=off).reshape(shape)
            for s, shape, (off, _n) in zip(backend.inputs, self.input_shapes, self.regions[:k], strict=True)
        ]
        self.outs = [np.frombuffer(buf, np.uint8, count=n, offset=off) for off, n in self.regions[k:]]
        self.sent_shapes: list[list[int]] | None = None

    def layout_doc(self) -> bytes:
        be = self.be
        return b"l" + json.dumps({
            "size": self.size, "regions": self.regions, "input_shapes": [list(s) for s in self.input_shapes],
            "inputs": [_spec_doc(s) for s in be.inputs], "outputs": [_spec_doc(s) for s in be.outputs],
            "kind": be.kind, "description": be.description, "fully_accelerated": be.fully_accelerated,
        }).encode()

    def invoke(self) -> bytes:
        for i, src in enumerate(self.ins):

            def put(v: np.ndarray, a: np.ndarray = src) -> None:
                np.copyto(v, a.reshape(v.shape))

            self.be.write_input(i, put)
        self.be.invoke()
        shapes = []
        for i, dst in enumerate(self.outs):
            o = np.ascontiguousarray(self.be.output(i))
            if o.nbytes > dst.nbytes:
                raise BackendError(f"output {i} {list(o.shape)} is larger than its {dst.nbytes} bytes")
            dst[: o.nbytes] = o.reshape(-1).view(np.uint8)
            shapes.append(list(o.shape))
        if shapes == self.sent_shapes:
            return b"k"
        self.sent_shapes = shapes
        return b"k" + json.dumps(shapes).encode()

    def close(self) -> None:
        self.ins, self.outs = [], []
        os.close(self.fd)
        self.mm.close()


def serve(sock: socket.socket) -> int:
    """The child's loop: one request, one answer, until asked to close or the parent is gone."""
    from edge_agent.runtime.registry import open_backend  # the child's own copy of the registry

    served: _Served | None = None
    while True:
        try:
            msg = sock.recv(_MSG)
        except OSError:
            return 1
        if not msg:  # the parent is gone: nothing to serve
            return 0
        try:
            if msg == b"i":
                if served is None:
                    raise BackendError("no model open")
                sock.sendall(served.invoke())
                continue
            doc = json.loads(msg)
            op = doc["op"]
            if op == "close":
                return 0
            if op == "open":
                be = open_backend(doc["name"], Path(doc["model"]), int(doc["threads"]), doc["options"])
                served = _Served(be, 1)
            elif op == "resize":
                if served is None:
                    raise BackendError("no model open")
                served.be.resize_batch(int(doc["n"]))
                old, served = served, _Served(served.be, int(doc["n"]))
                old.close()
            elif op == "reset":
                if served is None:
                    raise BackendError("no model open")
                served.be.reset_state()
                sock.sendall(b"k")
                continue
            else:
                raise BackendError(f"unknown request {op!r}")
            socket.send_fds(sock, [served.layout_doc()], [served.fd])
        except Exception as err:  # the one catch-all: every failure goes back to the parent as its reason
            text = str(err) if isinstance(err, BackendError) else f"{type(err).__name__}: {err}"
            try:
                sock.sendall(b"e" + text.encode()[: _MSG - 1])
            except OSError:
                return 1


def main(argv: list[str] | None = None) -> int:
    # A stop reaches every process of the service (systemd signals its whole control group, a terminal its
    # process group): the agent stops its pipelines first, and closes this process once no frame needs it,
    # so the child leaves on the closed socket, not mid-invoke with a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    try:
        return serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
