"""Arm NN's delegate: Mali GPUs and NEON Cortex-A cores through Arm's compute library."""

from __future__ import annotations

from edge_agent.runtime.delegate import delegate_accelerator

ACCELERATOR = delegate_accelerator("armnn", "/usr/lib/libarmnnDelegate.so")
