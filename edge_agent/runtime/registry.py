"""The one table of inference backends and the one factory that opens them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge_agent.runtime.base import Backend
from edge_agent.runtime.compiled import CompiledBackend
from edge_agent.runtime.cpu import InterpreterBackend
from edge_agent.runtime.delegate import EDGETPU_LIB, DelegateBackend

Factory = Callable[[Path, int, dict[str, str]], Backend]


def _compiled(kind: str) -> Factory:
    def make(path: Path, threads: int, options: dict[str, str]) -> Backend:
        ref = InterpreterBackend(path, threads=1)  # quantization details CompiledModel does not expose
        specs = (ref.inputs, ref.outputs)
        ref.close()
        return CompiledBackend(path, kind, specs)

    return make


BACKENDS: dict[str, Factory] = {
    "cpu": lambda path, threads, options: InterpreterBackend(path, threads),
    "gpu": _compiled("gpu"),
    "npu": _compiled("npu"),
    "edgetpu": lambda path, threads, options: DelegateBackend(path, EDGETPU_LIB, options, threads, kind="edgetpu"),
}


def open_backend(name: str, model_path: Path, threads: int = 0, options: dict[str, str] | None = None) -> Backend:
    """`name` is a registry key or the path of an external delegate library."""
    factory = BACKENDS.get(name)
    if factory is None:
        return DelegateBackend(model_path, name, options, threads)
    return factory(model_path, threads, options or {})
