"""The Coral Edge TPU, through its TFLite delegate on the classic interpreter."""

from __future__ import annotations

from edge_agent.runtime.delegate import delegate_accelerator

EDGETPU_LIB = "libedgetpu.so.1"

ACCELERATOR = delegate_accelerator("edgetpu", EDGETPU_LIB)
