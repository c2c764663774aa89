"""LiteRT's NPU accelerator through CompiledModel (vendor dispatch libraries), after a probe in a child."""

from __future__ import annotations

from pathlib import Path

from edge_agent.runtime import litert
from edge_agent.runtime.base import Accelerator, Backend, present
from edge_agent.runtime.compiled import open_compiled

NPU_NODES = ("/dev/accel/accel*", "/dev/apusys", "/dev/fastrpc-*", "/dev/adsprpc-smd", "/dev/vipcore", "/dev/galcore")


def precheck() -> str | None:
    if litert.compiled_model_api() is None:
        return f"{litert.version()} has no CompiledModel NPU accelerator"
    if not present(NPU_NODES):
        return "no NPU device node (/dev/accel/*, /dev/apusys, /dev/fastrpc-*, /dev/galcore)"
    return None


def open_npu(path: Path, threads: int, options: dict[str, str]) -> Backend:
    return open_compiled(path, "npu")


ACCELERATOR = Accelerator("npu", open_npu, precheck, compiled=True)
