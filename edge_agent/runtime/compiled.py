"""LiteRT CompiledModel accelerators (GPU, NPU).

Only ever chosen after a subprocess probe: in ai-edge-litert 2.3 the GPU plugin can abort
the whole process on some aarch64 CPUs, `GPU|CPU` raises instead of falling back, and
CompiledModel.run holds the GIL, so it is used where the accelerator's speed pays for that.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.modelfile import TensorSpec
from edge_agent.runtime import litert
from edge_agent.runtime.base import Backend, BackendError, Missing, T, present


def _reason(err: Exception) -> str:
    """The informative line of LiteRT's multi-line C++ error text."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("ERROR: [", "=== ", "third_party/", "at "))]
    return (useful or lines or [type(err).__name__])[0][:300]


#: The CPU features LiteRT's accelerator plugin checks when it loads on aarch64 (the same library
#: serves every CompiledModel accelerator, GPU and NPU, and even its CPU path): /proc/cpuinfo's name
#: -> the plugin's. Lacking any, the plugin kills the process with SIGILL ("compiled with lse
#: enabled, but this feature is not available"): a Pi 4 (Cortex-A72) lacks most; a Pi 5 has all.
PLUGIN_CPU_FEATURES = {
    "aes": "aes", "crc32": "crc32", "asimddp": "dotprod", "fphp": "fp16", "atomics": "lse", "lrcpc": "rcpc",
    "asimdrdm": "rdm", "sha2": "sha2",
}


def cpu_features(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (`Features` on ARM, `flags` on x86)."""
    try:
        with open(path) as f:
            for line in f:
                if line.lower().startswith(("features", "flags")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def missing_plugin_features(features: set[str] | None = None, machine: str | None = None) -> list[str]:
    """What this CPU lacks of what LiteRT's aarch64 plugin requires ([] elsewhere: x86 has no such check)."""
    if (machine or platform.machine()) not in ("aarch64", "arm64"):
        return []
    have = cpu_features() if features is None else features
    return [name for flag, name in PLUGIN_CPU_FEATURES.items() if flag not in have]


def compiled_precheck(kind: str, nodes: tuple[str, ...], shown: str) -> str | None:
    """Why LiteRT's `kind` accelerator cannot be tried here without a probe (a CPU its plugin rejects,
    no API, no device node)."""
    missing = missing_plugin_features()
    if missing:
        return (f"LiteRT's {kind.upper()} plugin needs CPU features this CPU lacks ({', '.join(missing)}): "
                "loading it would kill the process with SIGILL")
    if litert.compiled_model_api() is None:
        return f"{litert.version()} has no CompiledModel {kind.upper()} accelerator"
    if not present(nodes):
        return Missing(f"no {kind.upper()} device node ({shown})")
    return None


def compiled_opener(kind: str) -> Callable[[Path, int, dict[str, str]], Backend]:
    """The registry's opener for LiteRT's `kind` accelerator (threads and options do not apply)."""

    def open_kind(path: Path, threads: int, options: dict[str, str]) -> Backend:
        return open_compiled(path, kind)

    return open_kind


def open_compiled(path: Path, kind: str) -> CompiledBackend:
    """CompiledModel does not expose quantization: the tensor specs come from the interpreter's view."""
    from edge_agent.runtime.cpu import InterpreterBackend

    ref = InterpreterBackend(path, threads=1)
    specs = (ref.inputs, ref.outputs)
    ref.close()
    return CompiledBackend(path, kind, specs)


class CompiledBackend(Backend):
    def __init__(
        self, model_path: Path, kind: str, reference_specs: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]
    ):
        super().__init__(model_path)
        api = litert.compiled_model_api()
        if api is None:
            raise BackendError(f"{litert.version()} has no CompiledModel accelerator API")
        compiled_model, accel = api
        flag = {"gpu": accel.GPU, "npu": accel.NPU, "cpu": accel.CPU}[kind]
        self.kind = kind
        try:
            self._m = compiled_model.from_file(str(model_path), hardware_accel=flag)
            self._in = self._m.create_input_buffers(0)
            self._out = self._m.create_output_buffers(0)
            self.fully_accelerated = bool(self._m.is_fully_accelerated())
        except Exception as err:  # the binding raises bare RuntimeError/ValueError with C++ text
            raise BackendError(f"LiteRT {kind.upper()} accelerator: {_reason(err)}") from None
        # CompiledModel does not expose quantization; take specs from the interpreter's view.
        self.inputs, self.outputs = reference_specs
        self._staging = [np.zeros(s.shape, s.dtype) for s in self.inputs]
        self._out_shapes: list[tuple[int, ...]] = []

    @property
    def description(self) -> str:
        full = {True: "fully accelerated", False: "partly on CPU", None: ""}[self.fully_accelerated]
        return f"{self.kind} (LiteRT CompiledModel, {full})"

    def write_input(self, i: int, fill: Callable[[np.ndarray], T]) -> T:
        return fill(self._staging[i])

    def invoke(self) -> None:
        for buf, arr in zip(self._in, self._staging, strict=True):
            buf.write(arr)
        self._m.run_by_index(0, self._in, self._out)

    def output(self, i: int) -> np.ndarray:
        s = self.outputs[i]
        shape = self._out_shapes[i] if self._out_shapes else s.shape
        return np.asarray(self._out[i].read(int(np.prod(shape)), s.dtype)).reshape(shape)

    def resize_batch(self, n: int) -> None:
        """LiteRT's dynamic-shape path: inputs resized, buffers made anew for the new sizes."""
        try:
            for i, s in enumerate(self.inputs):
                self._m.resize_input_tensor(i, [n, *s.shape[1:]], strict=False)
            self._in = self._m.create_input_buffers(0)
            self._out = self._m.create_output_buffers(0)
            details = self._m.get_output_tensor_details(self._m.get_signature_by_index(0)["key"])
        except Exception as err:  # the binding raises bare RuntimeError/ValueError with C++ text
            raise BackendError(f"LiteRT {self.kind.upper()} batch of {n}: {_reason(err)}") from None
        self._staging = [np.zeros((n, *s.shape[1:]), s.dtype) for s in self.inputs]
        self._out_shapes = _output_shapes(details, self.outputs, n)

    def close(self) -> None:
        m: Any = getattr(self, "_m", None)
        if m is not None:
            m.close()


def _output_shapes(details: Any, specs: tuple[TensorSpec, ...], n: int) -> list[tuple[int, ...]]:
    """Output shapes after a resize, from LiteRT's tensor details (by output name, which is how the
    interpreter's specs name them too), else the batch dimension grown n-fold."""
    by_name = details if isinstance(details, dict) else {}
    shapes = []
    for s in specs:
        d = by_name.get(s.name)
        shape = d.get("shape") if isinstance(d, dict) else None
        shapes.append(tuple(int(x) for x in shape) if shape is not None else (n * s.shape[0], *s.shape[1:]))
    return shapes
