"""The one table of accelerators and the one factory that opens them.

Adding an accelerator is one file (its opener and precheck, declared as an `Accelerator`) and one
line in `ACCELERATORS`, whose order is the order `runtime.accelerator = "auto"` tries them in; the
CPU, which always works, comes last. Any other name is the path of an external delegate library.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.runtime import armnn, cpu, edgetpu, gpu, npu, vx
from edge_agent.runtime.base import Accelerator, Backend, Missing
from edge_agent.runtime.delegate import DelegateBackend, find_library
from edge_agent.runtime.worker import ProcessBackend

ACCELERATORS: list[Accelerator] = [
    edgetpu.ACCELERATOR,
    vx.ACCELERATOR,
    armnn.ACCELERATOR,
    npu.ACCELERATOR,
    gpu.ACCELERATOR,
    cpu.ACCELERATOR,
]
BACKENDS: dict[str, Accelerator] = {a.name: a for a in ACCELERATORS}


def accelerator_names() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


def precheck(name: str) -> str | None:
    """A reason to skip a candidate without starting a child process, or None to probe it."""
    acc = BACKENDS.get(name)
    if acc is not None:
        return acc.precheck()
    return None if find_library(name) is not None else Missing(f"delegate library not found: {name}")


def is_compiled(kind: str) -> bool:
    acc = BACKENDS.get(kind)
    return acc is not None and acc.compiled


def open_backend(
    name: str, model_path: Path, threads: int = 0, options: dict[str, str] | None = None, own_process: bool = False
) -> Backend:
    """`name` is a registry key or the path of an external delegate library; `own_process` opens and runs
    it in a child process (`edge_agent.runtime.worker`)."""
    if own_process:
        return ProcessBackend(name, model_path, threads, options)
    acc = BACKENDS.get(name)
    if acc is None:
        return DelegateBackend(model_path, name, options, threads)
    return acc.open(model_path, threads, options or {})
