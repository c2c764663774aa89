"""The classic LiteRT Interpreter on the CPU (XNNPACK), also the host for external delegates."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime import litert
from edge_agent.runtime.base import Accelerator, Backend, BackendError, T, spec_from_details
from edge_agent.system import quiet_native_stderr


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class InterpreterBackend(Backend):
    kind = "cpu"

    def __init__(self, model_path: Path, threads: int = 0, delegates: list[Any] | None = None):
        super().__init__(model_path)
        self.threads = threads or default_threads()
        self._delegates = delegates
        self._it = self._load()
        self.inputs = tuple(spec_from_details(d) for d in self._it.get_input_details())
        self.outputs = tuple(spec_from_details(d) for d in self._it.get_output_details())
        self._in_views = [self._it.tensor(s.index) for s in self.inputs]
        self.fully_accelerated = True if delegates is None else None

    def _load(self) -> Any:
        mod = litert.interpreter_module()
        try:
            with quiet_native_stderr():  # no "Created TensorFlow Lite XNNPACK delegate" on the console
                it = mod.Interpreter(
                    model_path=str(self.model_path), num_threads=self.threads, experimental_delegates=self._delegates
                )
                it.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BackendError(_explain(str(err), self.model_path)) from None
        return it

    def reset_state(self) -> None:
        """A new interpreter: resource variables (streaming state) live in the interpreter."""
        self._in_views = []
        self._it = self._load()
        self._in_views = [self._it.tensor(s.index) for s in self.inputs]

    def resize_batch(self, n: int) -> None:
        """resize_tensor_input on the batch dimension; XNNPACK refuses models whose reshapes fix it."""
        self._in_views = []
        try:
            for s in self.inputs:
                self._it.resize_tensor_input(s.index, [n, *s.shape[1:]], strict=False)
            with quiet_native_stderr():
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BackendError(f"batch of {n}: {str(err).strip().splitlines()[0][:200]}") from None
        self._in_views = [self._it.tensor(s.index) for s in self.inputs]

    @property
    def description(self) -> str:
        return f"cpu (XNNPACK, {self.threads} threads)"

    def write_input(self, i: int, fill: Callable[[np.ndarray], T]) -> T:
        view = self._in_views[i]()
        try:
            return fill(view)
        finally:
            del view  # a live view into the arena would make invoke() refuse to run

    def invoke(self) -> None:
        self._it.invoke()

    def output(self, i: int) -> np.ndarray:
        return self._it.get_tensor(self.outputs[i].index)

    def close(self) -> None:
        self._in_views = []
        self._it = None


def _explain(msg: str, path: Path) -> str:
    first = msg.strip().splitlines()[0] if msg.strip() else "no message from LiteRT"
    if not msg.strip() or "failed to prepare" in msg or "alloc" in msg.lower():
        from edge_agent.modelfile import ModelError, read_model_file

        try:
            need = read_model_file(path).tensor_bytes
        except ModelError:
            need = 0
        if need > 2**30:  # the likely cause, named: a failed allocation is all LiteRT reports of it
            return f"{path}: LiteRT could not load the model ({first}): its tensors need about {need / 2**20:,.0f} MB"
    if "edgetpu-custom-op" in msg:
        return f"{path}: model is compiled for the Edge TPU and needs the libedgetpu.so.1 delegate ({first})"
    if "unresolved custom op" in msg.lower() or "didn't find op" in msg.lower():
        return f"{path}: model uses an op this runtime does not provide: {first}"
    return f"{path}: LiteRT could not load the model: {first}"


def open_cpu(path: Path, threads: int, options: dict[str, str]) -> Backend:
    return InterpreterBackend(path, threads)


ACCELERATOR = Accelerator("cpu", open_cpu, lambda: None)
