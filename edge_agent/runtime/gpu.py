"""LiteRT's GPU accelerator (OpenCL, Vulkan/WebGPU) through CompiledModel, after a probe in a child."""

from __future__ import annotations

from edge_agent.runtime.base import Accelerator
from edge_agent.runtime.compiled import compiled_opener, compiled_precheck

GPU_NODES = (
    "/dev/dri/renderD*",
    "/dev/nvidia[0-9]*",
    "/dev/mali*",
    "/dev/kgsl-3d0",
    "/dev/nvhost-gpu",
    "/dev/nvgpu/*",
)


def precheck() -> str | None:
    return compiled_precheck("gpu", GPU_NODES, "/dev/dri/renderD*, /dev/nvidia*, /dev/mali*, /dev/kgsl*")


ACCELERATOR = Accelerator("gpu", compiled_opener("gpu"), precheck, compiled=True)
