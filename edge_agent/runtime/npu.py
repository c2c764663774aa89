"""LiteRT's NPU accelerator through CompiledModel (vendor dispatch libraries), after a probe in a child."""

from __future__ import annotations

from edge_agent.runtime.base import Accelerator
from edge_agent.runtime.compiled import compiled_opener, compiled_precheck

NPU_NODES = ("/dev/accel/accel*", "/dev/apusys", "/dev/fastrpc-*", "/dev/adsprpc-smd", "/dev/vipcore", "/dev/galcore")


def precheck() -> str | None:
    return compiled_precheck("npu", NPU_NODES, "/dev/accel/*, /dev/apusys, /dev/fastrpc-*, /dev/galcore")


ACCELERATOR = Accelerator("npu", compiled_opener("npu"), precheck, compiled=True)
