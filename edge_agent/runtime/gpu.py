"""LiteRT's GPU accelerator (OpenCL, Vulkan/WebGPU) through CompiledModel, after a probe in a child."""

from __future__ import annotations

import platform

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


def cpu_features() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("features", "flags")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def precheck() -> str | None:
    if platform.machine() in ("aarch64", "arm64") and not {"asimddp", "fphp"} <= cpu_features():
        return "LiteRT GPU plugin aborts on aarch64 CPUs without dotprod/fp16 (e.g. Pi 4, Jetson Nano)"
    return compiled_precheck("gpu", GPU_NODES, "/dev/dri/renderD*, /dev/nvidia*, /dev/mali*, /dev/kgsl*")


ACCELERATOR = Accelerator("gpu", compiled_opener("gpu"), precheck, compiled=True)
