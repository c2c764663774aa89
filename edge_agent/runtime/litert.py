"""The one place that picks the LiteRT Python package: ai-edge-litert first, tflite-runtime second."""

from __future__ import annotations

from typing import Any

try:  # LiteRT, the maintained successor; works with numpy 2
    from ai_edge_litert import interpreter as _interp_mod

    PACKAGE = "ai-edge-litert"
except ImportError:  # pragma: no cover - exercised only where just tflite-runtime is installed
    try:
        from tflite_runtime import interpreter as _interp_mod

        PACKAGE = "tflite-runtime"
    except ImportError:
        _interp_mod = None
        PACKAGE = ""


class RuntimeMissing(RuntimeError):
    """Neither ai-edge-litert nor tflite-runtime is importable."""


def interpreter_module() -> Any:
    if _interp_mod is None:
        raise RuntimeMissing("no LiteRT runtime installed: pip install ai-edge-litert (or tflite-runtime with numpy<2)")
    return _interp_mod


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v

    try:
        return f"{PACKAGE} {_v(PACKAGE)}" if PACKAGE else "none"
    except PackageNotFoundError:
        return PACKAGE


def compiled_model_api() -> tuple[Any, Any] | None:
    """(CompiledModel, HardwareAccelerator) when this LiteRT has the accelerator API."""
    if PACKAGE != "ai-edge-litert":
        return None
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    except ImportError:
        return None
    return CompiledModel, HardwareAccelerator
