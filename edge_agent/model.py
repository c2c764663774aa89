"""A loaded model: file checks, labels, backend choice, pre/post-processing, and one `infer` call."""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.config import ModelConfig, RuntimeConfig, Settings
from edge_agent.engine import Engine, ModelPool, finite
from edge_agent.modelfile import (
    LABEL_GAP,
    ModelError,
    ModelFile,
    TensorSpec,
    load_labels,
    read_model_file,
    sized_copy,
)
from edge_agent.postprocess.decoders import DecodeOptions, Decoder, make_decoder
from edge_agent.postprocess.geometry import iou_one_to_many
from edge_agent.preprocess import Preprocessor, Resize, input_layout, plan_resize
from edge_agent.results import Result
from edge_agent.runtime.base import Backend, BackendError
from edge_agent.runtime.cpu import default_threads
from edge_agent.runtime.delegate import find_library
from edge_agent.runtime.select import AgreeFn, ProbeCache, ProbeResult, Runtime, Selection, select_backend

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "face_detection_short_range.tflite"
#: runtime.max_batch = 0 on an accelerator (edge-agent bench --batch on a GPU: 2-3x less time per frame at 4)
AUTO_MAX_BATCH = 4
#: runtime.batch_wait_ms unset on an accelerator (benchmarks/device_batch.sh on a GPU, 4 pipelines: 1.9-2.1x
#: the frames a second of no wait at max_batch 4, since frames seldom queue while the GPU run holds the GIL)
AUTO_BATCH_WAIT_MS = 3.0


#: runtime.replicas = 0 on the CPU: interpreters at most per core, where as many pipelines share a model (four
#: on two cores: a lower capture-to-publish p50 than one per core, and 1.04x the frames a second in the median
#: of paired rounds; `edge-agent bench --replicas 4`)
REPLICAS_PER_CORE = 2


def max_batch(rt: RuntimeConfig, accelerator: str) -> int:
    """runtime.max_batch, or where it is 0 the default for the accelerator the model runs on."""
    return rt.max_batch or (1 if accelerator == "cpu" else AUTO_MAX_BATCH)


def batch_wait_ms(rt: RuntimeConfig, accelerator: str) -> float:
    """runtime.batch_wait_ms, or where it is unset the default for the accelerator the model runs on."""
    if rt.batch_wait_ms is not None:
        return rt.batch_wait_ms
    return 0.0 if accelerator == "cpu" else AUTO_BATCH_WAIT_MS


def default_model_path() -> Path:
    """The bundled default model: `models/` beside the package (a checkout) or in /usr/share."""
    for base in (Path(__file__).resolve().parent.parent / "models", Path("/usr/share/edge-agent/models")):
        if (base / DEFAULT_MODEL_NAME).is_file():
            return base / DEFAULT_MODEL_NAME
    raise ModelError(
        f"default model {DEFAULT_MODEL_NAME} not found; run scripts/fetch_models.py (scripts/demo.sh does) "
        "or set model.path"
    )


def outputs_agree(decoder: Decoder, specs: Sequence[TensorSpec]) -> AgreeFn:
    """A comparison of raw outputs by what they mean: decoded detections by IoU, top class, or values."""
    rs = plan_resize(640, 480, 640, 480, "stretch")

    def agree(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> tuple[bool, str]:
        fa = [s.dequantize(x) for s, x in zip(specs, a, strict=True)]
        fb = [s.dequantize(x) for s, x in zip(specs, b, strict=True)]
        if decoder.task == "detection":
            ra, rb = decoder(fa, rs), decoder(fb, rs)
            if len(ra.detections) != len(rb.detections):
                return False, f"{len(ra.detections)} detections on the CPU, {len(rb.detections)} here"
            for d in ra.detections:
                if not rb.detections:
                    break
                ious = iou_one_to_many(np.array(d.box), np.array([e.box for e in rb.detections]))
                if float(ious.max()) < 0.5:
                    return False, f"no match for {d.label} at {d.box} (best IoU {float(ious.max()):.2f})"
            return True, ""
        if decoder.task == "classification":
            ta, tb = int(np.argmax(fa[0])), int(np.argmax(fb[0]))
            return (ta == tb, "" if ta == tb else f"top class {ta} on the CPU, {tb} here")
        for i, (x, y) in enumerate(zip(fa, fb, strict=True)):
            span = float(np.ptp(x)) or 1.0
            err = float(np.mean(np.abs(x - y))) / span
            if err > 0.05:
                return False, f"output {i} differs by {err:.1%} of its range on average"
        return True, ""

    return agree


def check_isolated(path: Path, sha256: str, state_dir: Path | None) -> None:
    """Load the model in a limited child first; a verdict per digest is kept, so restarts skip it."""
    import json

    from edge_agent.validate import validate_in_child

    cache = state_dir / "validated.json" if state_dir else None
    known: dict[str, str] = {}
    if cache is not None:
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    if known.get(sha256) == "ok":
        return
    verdict = validate_in_child(path)
    if not verdict["ok"]:
        reason = str(verdict["reason"])
        raise ModelError(reason if str(path) in reason else f"{path}: {reason}")
    if cache is not None:
        known[sha256] = "ok"
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(known))
            tmp.replace(cache)
        except OSError as err:
            log.warning("cannot record validation in %s: %s", cache, err)


@dataclass
class RawInference:
    outputs: list[np.ndarray]
    resize: Resize
    preprocess_ms: float
    inference_ms: float
    accelerator: str
    wait_ms: float = 0.0  # queued behind other pipelines sharing the model, or for a batch
    batch: int = 1


@dataclass
class Inference:
    result: Result
    resize: Resize
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


@dataclass(frozen=True)
class SignalHints:
    """What a model's sidecar manifest says about running it on a signal (microWakeWord's JSON)."""

    label: str | None = None
    threshold: float | None = None
    smoothing: int | None = None
    frontend: str | None = None


def signal_hints(path: Path) -> SignalHints:
    """`model.json` beside `model.tflite`, in microWakeWord's format; empty hints when absent or unreadable."""
    import json

    side = path.with_suffix(".json")
    try:
        doc = json.loads(side.read_text())
        micro = doc["micro"]
        return SignalHints(
            label=str(doc.get("wake_word") or path.stem),
            threshold=float(micro["probability_cutoff"]),
            smoothing=int(micro.get("sliding_window_size", 1)),
            frontend="micro",
        )
    except (OSError, ValueError, KeyError, TypeError):
        return SignalHints()


_NO_RESIZE = plan_resize(1, 1, 1, 1, "stretch")


#: The smallest side of a picture a model takes: below it the input is not an image (an audio feature window
#: of 3 x 40 parses as a one-channel picture, a sensor window of 30 x 6 as a six-pixel-wide one).
_MIN_SIDE = 16


def picture_problem(inputs: Sequence[TensorSpec], stateful: bool) -> str | None:
    """Why a model cannot run on pictures (camera frames, crops of them), or None."""
    if stateful:
        return "is a streaming model (it keeps state between calls)"
    if len(inputs) != 1:
        return f"has {len(inputs)} inputs"
    try:
        h, w, _, _ = input_layout(inputs[0])
    except ValueError as err:
        return str(err)
    if min(h, w) < _MIN_SIDE:
        return f"takes a {w}x{h} input, not a picture"
    return None


#: What to do about a model that takes no pictures, given a camera or images.
NOT_FRAMES = (
    "it takes no camera frames or images (an audio or sensor model runs on a signal source: wav:, mic:, csv:, ...)"
)


def _misfit(
    file: ModelFile, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], signal: bool, task: str
) -> str | None:
    """Why a model cannot run on a source of that kind (frames, or a signal), or None."""
    if signal:
        if task != "auto":
            return None  # the configured task is taken at its word
        found = make_decoder("auto", file, inputs, outputs, file.labels, DecodeOptions())
        if found.task in ("classification", "raw"):
            return None
        return (
            f"is an image model ({found.layout} outputs): it takes pictures, not an audio or sensor signal "
            "(set model.task if it is not)"
        )
    return picture_problem(inputs, file.stateful)


def misfit(path: Path, signal: bool, task: str = "auto") -> str | None:
    """Why the model file at `path` cannot run on a source of that kind, or None; None too for a file that
    cannot be read (loading it says why)."""
    from edge_agent.runtime.cpu import InterpreterBackend

    try:
        file = read_model_file(path)
        ref = InterpreterBackend(path, threads=1)
    except (ModelError, BackendError, OSError):
        return None
    try:
        return _misfit(file, ref.inputs, ref.outputs, signal, task)
    finally:
        ref.close()


def misnamed_labels(
    named: Iterable[tuple[str, Sequence[str] | None]], produced: Sequence[str], models: int = 1
) -> str | None:
    """Of settings (key, labels) that pick labels of a model's results, the first naming one the model never
    produces (a typo, another model's word), which would pick nothing and say nothing: its key and the
    labels, else None. None too where the model's labels are not known. `models`: how many models'
    labels `produced` holds, for the wording."""
    if not produced:
        return None
    known = set(produced)
    for key, labels in named:
        missing = [x for x in labels or () if x not in known]
        if missing:
            order = [x for x in dict.fromkeys(produced) if x != LABEL_GAP]  # the model's order, without gaps
            some = ", ".join(order[:12]) + (", ..." if len(order) > 12 else "")
            names = ", ".join(repr(x) for x in missing)
            who = "the model produces (its" if models == 1 else "any model in use produces (their"
            return f"{key}: {names} is not a label {who} labels: {some})"
    return None


def misnamed_by_all(key: str, labels: Sequence[str], models: Sequence[Model]) -> str | None:
    """`misnamed_labels` for a device-wide setting (`escalation.labels`): a label none of the models in use
    produces. None where one of them has labels that are not known."""
    if not labels or not models or not all(m.produced_labels for m in models):
        return None
    return misnamed_labels([(key, labels)], [x for m in models for x in m.produced_labels], len(models))


def misnamed_features(settings: Settings, models: Sequence[Model]) -> list[str]:
    """The device-wide label settings of the parts that are on (`escalation.labels`,
    `homeassistant.labels`) naming a label none of `models` produces: each as `run` refuses it."""
    out = []
    for key, feature in (("escalation.labels", settings.escalation), ("homeassistant.labels", settings.homeassistant)):
        if feature.enabled:
            why = misnamed_by_all(key, feature.labels, models)
            if why is not None:
                out.append(why)
    return out




#: An ImageNet classifier trained with TF-slim scores 1001 classes, the first "background"; the usual
#: ImageNet labels file names the 1000 others.
_IMAGENET = 1000


def fit_labels(labels: tuple[str, ...], classes: int) -> tuple[tuple[str, ...], str | None]:
    """The labels for a model that scores `classes` classes, and what is wrong where their counts differ.
    Each label names the class of its place, so a file one short names every class after the gap
    wrongly, silently; said here, the names stand as given. One case is read rightly: 1000 labels for
    1001 classes (a TF-slim ImageNet classifier, whose first output is "background"), where every name
    was one class off."""
    if len(labels) == classes:
        return labels, None
    if classes == _IMAGENET + 1 and len(labels) == _IMAGENET:
        return ("background", *labels), (
            f"the model scores {classes} classes and the labels name {len(labels)}: its first output is taken "
            "for 'background' (an ImageNet classifier trained with TF-slim), and the labels for the others"
        )
    if len(labels) < classes:
        return labels, (f"the labels name {len(labels)} classes and the model scores {classes}: classes past "
                        f"the labels are published by their index, and the names may be off (check model.labels)")
    return labels, (f"the labels name {len(labels)} classes and the model scores {classes}: the last "
                    f"{len(labels) - classes} never come, and the names may be off (check model.labels)")



def normalisation(
    cfg: ModelConfig | None, file: ModelFile, decoder: Decoder, spec: TensorSpec
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) the pixels are normalised with, real = (p - mean) / std: the config's, else the file's
    metadata's, else the range the file's exporter or the decoder's layout fixes (a YOLO's pixels / 255),
    else none (preprocess.build_lut: raw pixels for uint8, [-1, 1] otherwise). A uint8 input takes raw
    pixels whatever the range: its quantization says what they mean."""
    meta = file.metadata
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else meta.mean
    std = tuple(cfg.std) if cfg is not None and cfg.std else meta.std
    span = file.input_range or decoder.input_range  # the file's exporter knows best
    if mean is None and std is None and span is not None and spec.dtype != np.uint8:
        lo, hi = span  # real = lo + p * (hi - lo) / 255 = (p - mean) / std
        std = (255.0 / (hi - lo),)
        mean = (-lo * std[0],)
    return mean, std

def decode_options(m: ModelConfig) -> DecodeOptions:
    """The decoder's settings from the model's: at load, and again where a reload changes them."""
    return DecodeOptions(m.score_threshold, m.iou_threshold, m.top_k, m.max_detections, m.raw_max_values)


#: The side a model whose file leaves its input size open runs at, where nothing says another.
OPEN_SIZE_DEFAULT = 640
#: Sized copies kept (`sized_model`): the most recently used, beyond those this process loaded.
_SIZED_KEPT = 16
#: The sized copies this process loaded (never removed while it runs: a fallback opens its copy again).
_SIZED_IN_USE: set[Path] = set()


def sized_model(file: ModelFile, cfg: ModelConfig, state_dir: Path | None) -> tuple[Path, tuple[int, int]]:
    """A model exported with its input size left open (-1 in its image input's shape signature: YOLOs
    exported with `dynamic=True`, MoveNet MultiPose, models converted from ONNX with dynamic axes) loads
    as 1x1, a picture of one pixel. It is run at `model.input_size`, else the size its export's metadata
    names, else 640 x 640, from a copy of its file with that size written in (`sized_copy`), so that every
    backend, probe and model process loads the same fixed model. The copy is kept by digest and size under
    the state directory (else the system's temporary one), made once; the 16 most recently used are kept
    and the rest removed, never one this process loaded."""
    h_open, w_open = file.open_size or (None, None)
    if cfg.input_size is not None:
        w, h = cfg.input_size
        how = "model.input_size"
    elif file.export_size is not None:
        h, w = file.export_size
        how = "its export's metadata"
    else:
        h = w = OPEN_SIZE_DEFAULT
        how = "the default: model.input_size sets another"
    h, w = h_open or h, w_open or w  # a side the file fixes stays as it is
    where = (state_dir if state_dir is not None else Path(tempfile.gettempdir()) / "edge-agent") / "sized"
    out = where / f"{file.sha256[:16]}-{w}x{h}.tflite"
    try:
        where.mkdir(parents=True, exist_ok=True)
        if out.is_file():
            os.utime(out)  # used: among the most recent
        else:
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            tmp.write_bytes(sized_copy(file.path.read_bytes(), h, w))
            os.replace(tmp, out)
    except OSError as err:
        raise ModelError(f"{file.path}: its input size is left open, and a copy sized {w}x{h} could not be "
                         f"written to {where}: {err.strerror or err}") from None
    _SIZED_IN_USE.add(out)
    copies = sorted(where.glob("*.tflite"), key=_mtime, reverse=True)
    for old in copies[_SIZED_KEPT:]:
        if old not in _SIZED_IN_USE:
            old.unlink(missing_ok=True)
    log.info("model %s leaves its input size open: run at %dx%d (%s)", file.name, w, h, how)
    return out, (w, h)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:  # removed meanwhile (another process keeping its own 16)
        return 0.0


#: How long after the last frame whose outputs were NaN or infinite health still says so.
NOT_FINITE_RECENT_S = 60.0


class Model:
    def __init__(
        self,
        cfg: ModelConfig,
        rt: RuntimeConfig,
        state_dir: Path | None,
        signal: bool = False,
        pool: ModelPool | None = None,
    ):
        """signal: the input is a window of samples or features, not an image.
        pool: the agent's loaded models; a file already loaded there is shared, not loaded again
        (streaming models, whose state belongs to one stream, never are)."""
        path = cfg.path or default_model_path()
        self.file = read_model_file(path)
        self.path = path
        #: the size a model whose file leaves its input size open runs at (width, height); None for the rest
        self.sized: tuple[int, int] | None = None
        if self.file.open_size is not None and not signal:
            path, self.sized = sized_model(self.file, cfg, state_dir)  # what every backend loads
        self.cfg = cfg
        for need in self.file.required_delegates():
            lib = need.split()[0]
            if find_library(lib) is None:
                raise ModelError(f"{path}: model is compiled for {need}, but {lib} is not installed on this board")
            if rt.accelerator not in ("auto", "edgetpu", lib) and not rt.accelerator.endswith(lib):
                raise ModelError(f"{path}: model is compiled for {need}; set runtime.accelerator=edgetpu")
        if cfg.isolated_check and not self.file.required_delegates():  # (the child loads on the CPU)
            check_isolated(path, self.file.sha256, state_dir)
        self.labels: tuple[str, ...] | None = load_labels(cfg.labels) if cfg.labels else self.file.labels
        self.signal = signal
        self.hints = signal_hints(path) if signal else SignalHints()
        self.name = cfg.name or self.file.name
        self.version = cfg.version or self.file.metadata.version
        #: frames whose outputs held NaN or infinity, when the last did (monotonic) and on what: see `decode`
        self.not_finite = 0
        self.not_finite_at: float | None = None
        self.not_finite_on = ""
        opts = decode_options(cfg)

        from edge_agent.runtime.cpu import InterpreterBackend

        try:
            ref = InterpreterBackend(path, threads=1)
        except BackendError as err:
            raise ModelError(str(err)) from None
        self.inputs, self.outputs = ref.inputs, ref.outputs
        ref.close()
        if cfg.input_size is not None and self.sized is None:
            shape = list(self.inputs[0].shape) if self.inputs else []
            raise ModelError(f"{path}: model.input_size is for a model whose file leaves its input size open; this "
                             f"one's is fixed ({shape})")
        why = _misfit(self.file, self.inputs, self.outputs, signal, cfg.task)
        if why is not None:
            raise ModelError(f"{path} {why}" if signal else f"{path} {why}: {NOT_FRAMES}")
        if signal:
            if self.labels is None and len(self.outputs) == 1 and int(np.prod(self.outputs[0].shape)) == 1:
                self.labels = (self.hints.label or self.name,)  # one probability: the model's own word or event
            task = cfg.task if cfg.task != "auto" else ("classification" if len(self.outputs) == 1 else "raw")
            self.decoder = make_decoder(task, self.file, self.inputs, self.outputs, self.labels, opts)
            self.pre: Preprocessor | None = None
            self.resize_mode = "stretch"
        else:
            self.decoder = make_decoder(cfg.task, self.file, self.inputs, self.outputs, self.labels, opts)
            mode = cfg.resize if cfg.resize != "auto" else self.decoder.preferred_resize
            mean, std = normalisation(cfg, self.file, self.decoder, self.inputs[0])
            try:
                self.pre = Preprocessor(self.inputs[0], mode, mean, std, self.decoder.letterbox_fill)  # type: ignore[arg-type]
            except ValueError as err:
                raise ModelError(f"{path}: {err}") from None
            self.resize_mode = mode
        #: what is wrong with the labels for this model's outputs (logged, and a problem in `check`)
        self.labels_note: str | None = None
        if self.labels is not None and self.decoder.classes is not None:
            fitted, note = fit_labels(self.labels, self.decoder.classes)
            if note is not None and len(fitted) == self.decoder.classes:  # read rightly (ImageNet's background)
                log.info("model %s: %s", self.name, note)
            elif note is not None:
                log.warning("model %s: %s", self.name, note)
                self.labels_note = note
            self.labels = self.decoder.labels = fitted
        self._local = threading.local()
        self._pool = pool if not self.file.stateful else None

        def probe_cache() -> ProbeCache:  # read afresh each time, so verdicts kept meanwhile count
            return ProbeCache(state_dir / "probe-cache.json" if state_dir else None)

        def select() -> Selection:
            """As at start, and again where the CPU stands in for an accelerator (`Engine.try_accelerator`):
            the cache read afresh each time, so verdicts kept meanwhile count."""
            return select_backend(
                path,
                self.file.sha256,
                rt.accelerator,
                rt.threads,
                rt.delegate_options,
                self._probe_inputs,
                outputs_agree(self.decoder, self.outputs),
                rt.probe_timeout_s,
                probe_cache(),
                rt.own_process,
            )

        def make() -> Engine:
            selection = select()
            runtime = Runtime(selection, path, rt.threads, rt.cpu_fallback, cpu_own_process=rt.own_process,
                              reselect=select)

            def verdict(kind: str, why: str) -> None:  # as a probe's: the next start keeps to the CPU
                probe_cache().put(ProbeCache.key(self.file.sha256, kind), ProbeResult(kind, False, why))

            runtime.on_verdict = verdict
            threads = int(getattr(selection.backend, "threads", rt.threads) or rt.threads)
            batch = 1 if self.file.stateful else max_batch(rt, runtime.accelerator)
            wait = batch_wait_ms(rt, runtime.accelerator)
            replicas = 1 if self.file.stateful else (rt.replicas or default_threads())
            # runtime.replicas 0: more as frames find every replica busy, up to twice the cores
            grow_to = 0 if self.file.stateful or rt.replicas else REPLICAS_PER_CORE * default_threads()
            engine = Engine(
                runtime,
                self.inputs,
                self.outputs,
                path,
                threads,
                batch,
                wait,
                rt.delegate_options,
                replicas,
                grow_to,
                None if self.file.stateful else lambda accel: (max_batch(rt, accel), batch_wait_ms(rt, accel)),
            )
            post = set(self.file.detection_op_outputs or ())
            engine.unchecked = frozenset(k for k, spec in enumerate(self.outputs) if spec.index in post)
            return engine

        if self._pool is None:
            self.engine = make()
        else:
            key = (
                f"{self.file.sha256}:{rt.accelerator}:{rt.threads}:{sorted(rt.delegate_options.items())}:"
                f"{rt.own_process}:{self.sized}"
            )
            self.engine = self._pool.acquire(key, make)

    @property
    def produced_labels(self) -> tuple[str, ...]:
        """The labels this model's results carry: its decoder's own (BlazeFace's "face"), else the model's;
        empty where they are not known (raw outputs, or a detector without a labels file)."""
        return tuple(self.decoder.labels or self.labels or ())

    @property
    def runtime(self) -> Runtime:
        return self.engine.runtime

    @runtime.setter
    def runtime(self, rt: Runtime) -> None:
        """Another runtime for every pipeline of this model (tests put a failing backend in place)."""
        self.engine.runtime = rt

    def _staging(self) -> np.ndarray:
        """This thread's input buffer: pipelines sharing the model preprocess in parallel, each into its own."""
        buf: np.ndarray | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = np.zeros(self.inputs[0].shape, self.inputs[0].dtype)
        return buf

    def _preprocessor(self, pre: Preprocessor) -> Preprocessor:
        """This thread's preprocessor: it keeps scratch buffers (resized frame, canvas) that two pipelines
        sharing the model must not write at the same time."""
        mine: Preprocessor | None = getattr(self._local, "pre", None)
        if mine is None:
            mine = self._local.pre = copy.deepcopy(pre)
        return mine

    def _probe_inputs(self, backend: Backend) -> list[np.ndarray]:
        from edge_agent.sources.synthetic import pattern

        arr = np.zeros(self.inputs[0].shape, self.inputs[0].dtype)
        if self.pre is not None:
            self.pre(pattern(640, 480, 0), arr)
        return [arr]

    def reduction(self, frame_w: int, frame_h: int) -> int:
        """How many times smaller (8, 4, 2 or 1) a frame of this size may be decoded with the picture the
        model is given still at least the size the model takes it at: where it shrinks a frame anyway, a
        decoder that shrinks it first (`imageheader.decode_reduced`) saves that work and loses nothing."""
        pre = self.pre
        if pre is None or frame_w <= 0 or frame_h <= 0:
            return 1
        plan = plan_resize(frame_w, frame_h, pre.w, pre.h, pre.mode)
        for k in (8, 4, 2):
            if frame_w // k >= plan.new_w and frame_h // k >= plan.new_h:
                return k
        return 1

    def info(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "sha256": self.file.sha256}

    def health(self) -> dict[str, object]:
        """What health says of the model: what results carry (`info`), and the frames whose outputs were
        not numbers (`decode`)."""
        return {**self.info(), "outputs_not_finite": self.not_finite}

    def not_finite_problem(self, now: float) -> str | None:
        """What health's problems say while frames' outputs were NaN or infinite within the last minute."""
        at = self.not_finite_at
        if at is None or now - at > NOT_FINITE_RECENT_S:
            return None
        hint = " (an accelerator's 16-bit floats may overflow where the CPU's 32-bit ones do not: " \
            "runtime.accelerator = cpu)" if self.not_finite_on not in ("cpu", "") else ""
        return (f"model {self.name}: outputs not finite (NaN or infinity) on {self.not_finite_on}{hint}, "
                f"{self.not_finite} frame(s) since start, the last one {now - at:.0f} s ago: nothing is found in such "
                "frames")

    def run(self, frame: np.ndarray, user: str = "main", size: tuple[int, int] | None = None) -> RawInference:
        """Preprocess (on the caller's thread), then invoke in turn with the other pipelines of this model;
        the raw outputs are copies, so the next frame can go in at once. user: the pipeline. size: the
        whole frame's (height, width) where `frame` was decoded smaller (boxes come out in its pixels)."""
        pre = self.pre
        if pre is None:
            raise ModelError(f"{self.path}: a signal model takes windows (run_window), not images")
        buf, pre = self._staging(), self._preprocessor(pre)
        t0 = time.perf_counter()
        rs = pre(frame, buf, size)
        t1 = time.perf_counter()
        res = self.engine.run(user, [buf])
        return RawInference(res.outputs, rs, (t1 - t0) * 1e3, res.inference_ms, res.accelerator, res.wait_ms, res.batch)

    def run_window(self, window: np.ndarray, user: str = "main") -> RawInference:
        """One step of a signal model: a window (real values) quantized into the input tensor, invoke."""
        spec = self.inputs[0]
        if window.size != int(np.prod(spec.shape)):
            raise ModelError(f"window of shape {window.shape} does not fit input {spec.name} {list(spec.shape)}")
        buf = self._staging()
        t0 = time.perf_counter()
        buf[...] = spec.quantize(window).reshape(buf.shape)
        t1 = time.perf_counter()
        res = self.engine.run(user, [buf])
        return RawInference(
            res.outputs, _NO_RESIZE, (t1 - t0) * 1e3, res.inference_ms, res.accelerator, res.wait_ms, res.batch
        )

    def reset_state(self) -> None:
        """Streaming models keep state in variables; a restarted source must not continue the old stream."""
        self.runtime.reset()

    def decode(self, raw: RawInference) -> Inference:
        """The frame's result. Outputs of floats that hold NaN or infinity (a GPU's 16-bit floats that
        overflow on some frames, a model broken by its conversion) decode to nothing, since no NaN passes a
        threshold: such a frame is counted, for health to say (`outputs_not_finite`), instead of reading as
        a quiet scene. One sum per float output finds them (NaN and infinity carry through it)."""
        t0 = time.perf_counter()
        # an accelerator's outputs that reach here with the CPU fallback on were found numbers by the engine
        # (else the frame was redone on the CPU, and says so): not summed a second time
        checked = raw.accelerator != "cpu" and self.runtime.cpu_fallback
        if not checked and not finite(raw.outputs, self.engine.unchecked):
            self.not_finite += 1
            self.not_finite_at, self.not_finite_on = time.monotonic(), raw.accelerator
            if self.not_finite == 1 or self.not_finite in (10, 100, 1000) or self.not_finite % 10000 == 0:
                log.error("%s: outputs not finite (NaN or infinity) on %s, %d frame(s) so far: nothing is "
                          "found in such a frame", self.name, raw.accelerator, self.not_finite)
        outs = [spec.dequantize(o) for spec, o in zip(self.outputs, raw.outputs, strict=True)]
        result = self.decoder(outs, raw.resize)
        ms = (time.perf_counter() - t0) * 1e3
        return Inference(result, raw.resize, raw.preprocess_ms, raw.inference_ms, ms)

    def infer(self, frame: np.ndarray) -> Inference:
        return self.decode(self.run(frame))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.release(self.engine)
        else:
            self.engine.close()
