"""External TFLite delegates by shared-library path: Edge TPU, NXP VX, Arm NN, any vendor's."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

from edge_agent.runtime import litert
from edge_agent.runtime.base import BackendError
from edge_agent.runtime.cpu import InterpreterBackend

EDGETPU_LIB = "libedgetpu.so.1"
#: Delegates that vendors install system-wide; `auto` tries those present.
KNOWN_DELEGATES = {
    "edgetpu": EDGETPU_LIB,
    "vx": "/usr/lib/libvx_delegate.so",  # NXP i.MX 8M Plus NPU
    "armnn": "/usr/lib/libarmnnDelegate.so",  # Arm Mali / Cortex-A via Arm NN
}
_LIB_DIRS = (
    "/usr/lib",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/lib",
)


def find_library(name: str) -> str | None:
    """Path of a delegate library if it is installed, without loading it."""
    if os.path.isabs(name):
        return name if os.path.exists(name) else None
    for d in _LIB_DIRS:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    stem = name.removeprefix("lib").split(".so")[0]
    return ctypes.util.find_library(stem)


class DelegateBackend(InterpreterBackend):
    def __init__(
        self,
        model_path: Path,
        library: str,
        options: dict[str, str] | None = None,
        threads: int = 0,
        kind: str = "delegate",
    ):
        mod = litert.interpreter_module()
        if find_library(library) is None:
            raise BackendError(f"delegate library not found: {library}")
        try:
            delegate = mod.load_delegate(library, options or {})
        except (ValueError, OSError, RuntimeError, AttributeError) as err:  # AttributeError: not a delegate
            raise BackendError(f"delegate {library} failed to load: {str(err).strip().splitlines()[0]}") from None
        super().__init__(model_path, threads=threads, delegates=[delegate])
        self.kind = kind
        self.library = library

    @property
    def description(self) -> str:
        return f"{self.kind} ({self.library})"
