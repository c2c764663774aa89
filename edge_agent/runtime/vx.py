"""NXP's VX delegate: the NPU of the i.MX 8M Plus and i.MX 93, installed with the vendor's BSP."""

from __future__ import annotations

from edge_agent.runtime.delegate import delegate_accelerator

ACCELERATOR = delegate_accelerator("vx", "/usr/lib/libvx_delegate.so")
