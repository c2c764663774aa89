"""The small interface every inference backend implements."""

from __future__ import annotations

import abc
import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge_agent.modelfile import TensorSpec

T = TypeVar("T")


class BackendError(RuntimeError):
    """A backend could not load or run the model; the message says why."""


class BackendGone(BackendError):
    """The process a backend ran in is gone (killed, or crashed in a native library): a fresh one can
    serve, where the same model in the same process could not."""


def spec_from_details(d: dict[str, Any]) -> TensorSpec:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(d.get("name", "")),
        index=int(d.get("index", -1)),
        shape=tuple(int(x) for x in d["shape"]),
        dtype=np.dtype(d["dtype"]),
        scale=float(scale),
        zero_point=int(zp),
    )


class Backend(abc.ABC):
    #: accelerator family reported in predictions and health: cpu, gpu, npu, edgetpu, delegate
    kind: str = "cpu"
    #: runs in a child process (`runtime.own_process`); a backend reopened in its place runs the same way
    own_process: bool = False

    def __init__(self, model_path: Path):
        self.model_path = model_path
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        #: whether every op runs on the accelerator (None: the backend cannot tell)
        self.fully_accelerated: bool | None = None

    @property
    def description(self) -> str:
        return self.kind

    @abc.abstractmethod
    def write_input(self, i: int, fill: Callable[[np.ndarray], T]) -> T:
        """Call `fill` with a writable view of input i (batch dim included) and return its result."""

    @abc.abstractmethod
    def invoke(self) -> None:
        """Run the model once; blocks (the classic interpreter releases the GIL meanwhile)."""

    @abc.abstractmethod
    def output(self, i: int) -> np.ndarray:
        """Output i, raw (quantized as stored); a copy the caller may keep."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""

    def reset_state(self) -> None:
        """Put a streaming model's variables back to their initial values; BackendError if not possible here."""
        raise BackendError(f"{self.kind} backend cannot reset model state in place")

    def resize_batch(self, n: int) -> None:
        """Make every input hold n frames (outputs grow to match); BackendError where the model cannot."""
        raise BackendError(f"{self.kind} backend cannot resize its inputs")

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Convenience for probes and tests: copy inputs in, invoke, return raw outputs."""
        for i, arr in enumerate(inputs):

            def fill(view: np.ndarray, a: np.ndarray = arr) -> None:
                np.copyto(view, a.reshape(view.shape))

            self.write_input(i, fill)
        self.invoke()
        return [self.output(i) for i in range(len(self.outputs))]


#: Opens a model on one accelerator: (model path, CPU threads (0 = the backend's choice), options).
Opener = Callable[[Path, int, dict[str, str]], "Backend"]


class Missing(str):
    """A precheck's reason that may stop holding while the agent runs: a device node the driver has not
    made yet, a library not installed yet. The other reasons (a CPU the plugin rejects, a runtime without
    the API) hold for good."""


@dataclass(frozen=True)
class Accelerator:
    """One entry of the accelerator registry (`runtime.accelerator = NAME`): each backend file
    declares one, and `edge_agent.runtime.registry` lists them in the order `auto` tries them."""

    name: str
    open: Opener
    #: a reason to skip it without starting a probe child (no device node, no library: `Missing`), or None
    precheck: Callable[[], str | None]
    #: runs through LiteRT's CompiledModel: a model that cannot reset in place reopens on the same kind
    compiled: bool = False


def present(patterns: Sequence[str]) -> list[str]:
    """The device nodes or files matching any of the glob patterns."""
    return [p for pat in patterns for p in glob.glob(pat)]
