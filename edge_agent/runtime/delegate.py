"""External TFLite delegates by shared-library path: Edge TPU, NXP VX, Arm NN, any vendor's."""

from __future__ import annotations

import ctypes.util
import os
import threading
from pathlib import Path
from typing import Any

from edge_agent.runtime import litert
from edge_agent.runtime.base import Accelerator, Backend, BackendError, Missing
from edge_agent.runtime.cpu import InterpreterBackend

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


_loaded: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
_loaded_lock = threading.Lock()


def shared_delegate(library: str, options: dict[str, str] | None = None) -> Any:
    """The process's one instance of a delegate: an Edge TPU (or another exclusive device) is opened once
    and every interpreter on it, whatever pipeline or model it serves, goes through that instance."""
    key = (library, tuple(sorted((options or {}).items())))
    with _loaded_lock:
        delegate = _loaded.get(key)
        if delegate is None:
            try:
                delegate = litert.interpreter_module().load_delegate(library, options or {})
            except (ValueError, OSError, RuntimeError, AttributeError) as err:  # AttributeError: not a delegate
                raise BackendError(
                    f"delegate {library} failed to load: {str(err).strip().splitlines()[0]}"
                ) from None
            _loaded[key] = delegate
        return delegate


class DelegateBackend(InterpreterBackend):
    def __init__(
        self,
        model_path: Path,
        library: str,
        options: dict[str, str] | None = None,
        threads: int = 0,
        kind: str = "delegate",
    ):
        if find_library(library) is None:
            raise BackendError(f"delegate library not found: {library}")
        delegate = shared_delegate(library, options)
        super().__init__(model_path, threads=threads, delegates=[delegate])
        self.kind = kind
        self.library = library

    @property
    def description(self) -> str:
        return f"{self.kind} ({self.library})"


def delegate_accelerator(name: str, library: str) -> Accelerator:
    """A registry entry for a vendor delegate installed system-wide under a known library name."""

    def precheck() -> str | None:
        return None if find_library(library) else Missing(f"{library} not installed")

    def open_delegate(path: Path, threads: int, options: dict[str, str]) -> Backend:
        return DelegateBackend(path, library, options, threads, kind=name)

    return Accelerator(name, open_delegate, precheck)
