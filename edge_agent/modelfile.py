"""Read (and, for the project's own models, write) what a .tflite file says about itself.

Everything here works on the file's bytes in Python, so a truncated or corrupt file is
reported with its name before any native interpreter code touches it.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from flatbuffers.table import Table

from edge_agent.untrusted import number

TFLITE_IDENTIFIER = b"TFL3"
METADATA_NAME = b"TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
#: Custom ops that only a specific delegate can run, with the library that provides it.
DELEGATE_CUSTOM_OPS = {
    "edgetpu-custom-op": "libedgetpu.so.1 (Edge TPU)",
    "DarwiNN": "libedgetpu.so.1 (Edge TPU)",
}
# metadata_schema.fbs enum values
_PROCESS_NORMALIZATION = 1
_FILE_TENSOR_AXIS_LABELS = 2
_FILE_TENSOR_VALUE_LABELS = 3


class ModelError(Exception):
    """A model file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype in (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16))

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Real values: scale * (q - zero_point); float tensors pass through."""
        if not self.quantized:
            return q.astype(np.float32, copy=False)
        return (q.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Real values into this tensor's type: round(x / scale + zero_point), clipped to its range."""
        if not self.quantized:
            return np.asarray(x).astype(self.dtype, copy=False)
        info = np.iinfo(self.dtype)
        q = np.round(np.asarray(x, np.float32) / np.float32(self.scale) + np.float32(self.zero_point))
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "quantization": {"scale": self.scale, "zero_point": self.zero_point} if self.quantized else None,
        }


@dataclass(frozen=True)
class Metadata:
    name: str | None = None
    description: str | None = None
    version: str | None = None
    author: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    label_file: str | None = None


@dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str
    size: int
    ops: tuple[str, ...]
    custom_ops: tuple[str, ...]
    metadata: Metadata
    labels: tuple[str, ...] | None
    associated_files: tuple[str, ...] = field(default=())
    #: tensor indices of TFLite_Detection_PostProcess outputs (boxes, classes, scores, count)
    detection_op_outputs: tuple[int, ...] | None = None
    #: a pose model's keypoints and values per keypoint (x, y and maybe visibility), where the file says it
    keypoint_shape: tuple[int, int] | None = None
    #: the range the pixels go in as, where the file's exporter fixes one and its metadata gives no
    #: normalisation: (0, 1) for every Ultralytics model (detector, classifier, pose, segmentation)
    input_range: tuple[float, float] | None = None
    #: bytes of all tensors of all subgraphs at their declared shapes: about what loading allocates
    tensor_bytes: int = 0
    #: the image input's height and width as the file leaves them: None for one left open (-1 in its shape
    #: signature: a model exported with dynamic sizes), where the agent picks it (`sized_copy`)
    open_size: tuple[int | None, int | None] | None = None
    #: the input size the export was made for, (height, width), where its metadata says (Ultralytics' `imgsz`)
    export_size: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name or self.path.stem

    @property
    def stateful(self) -> bool:
        """Keeps variables between invocations (a streaming model): one step per hop, reset on restart."""
        return any(o in _STATE_OPS or (o.startswith("op") and o[2:] in _STATE_CODES) for o in self.ops)

    def required_delegates(self) -> list[str]:
        return sorted({DELEGATE_CUSTOM_OPS[o] for o in self.custom_ops if o in DELEGATE_CUSTOM_OPS})


_CUSTOM = 32  # BuiltinOperator.CUSTOM
_STATE_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"})
_STATE_CODES = frozenset({"142", "143", "144"})  # their codes, where the schema module is missing


def _builtin_names() -> dict[int, str]:
    """Op names by code, from LiteRT's schema module when present (tflite-runtime lacks it)."""
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        return {}
    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def read_model_file(path: Path) -> ModelFile:
    """Parse and sanity-check a model file; raise ModelError naming the file when it is unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except OSError as err:
        raise ModelError(f"model file unreadable: {path}: {err.strerror}") from None
    if len(data) < 16 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"not a TFLite model (no TFL3 header): {path} ({len(data)} bytes)")
    try:
        ops, custom, meta_buf, det_outputs, tensor_bytes = _parse_model(data)
    except ModelError as err:
        raise ModelError(f"corrupt or truncated model file: {path}: {err}") from None
    except Exception as err:  # flatbuffers raises assorted types on garbage offsets
        raise ModelError(f"corrupt or truncated model file: {path}: {type(err).__name__}: {err}") from None
    metadata = Metadata()
    if meta_buf is not None:
        try:
            metadata = parse_metadata(meta_buf)
        except (IndexError, struct.error, ValueError, UnicodeDecodeError):
            metadata = Metadata()  # broken metadata is not fatal: the graph itself is fine
    files, labels, keypoints, exporter, export_size = _associated(data, metadata.label_file)
    try:
        open_size = _open_size(data)
    except Exception as err:  # flatbuffers raises assorted types on garbage offsets
        raise ModelError(f"corrupt or truncated model file: {path}: {type(err).__name__}: {err}") from None
    return ModelFile(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        ops=tuple(ops),
        custom_ops=tuple(custom),
        metadata=metadata,
        labels=labels,
        associated_files=tuple(files),
        detection_op_outputs=det_outputs,
        keypoint_shape=keypoints,
        input_range=(0.0, 1.0) if exporter == "ultralytics" else None,
        tensor_bytes=tensor_bytes,
        open_size=open_size,
        export_size=export_size,
    )


def _image_input(data: bytes) -> tuple[Table, list[int], int] | None:
    """The first subgraph's first input, where it is an image's ([1, H, W, C] or [1, C, H, W]): the tensor,
    its shape signature (its shape where it has none), and the position of its height (1 or 2). Read from
    `data` itself: only positions are wanted (`sized_copy` writes into a copy of its own)."""
    model = Table(data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
    sg = next(_tables(model, 2), None)
    inputs = _ints(sg, 1) if sg is not None else []
    if sg is None or not inputs:
        return None
    tensors = list(_tables(sg, 0))
    if not 0 <= inputs[0] < len(tensors):
        raise ModelError(f"input tensor {inputs[0]} of {len(tensors)}")
    t = tensors[inputs[0]]
    sig = _ints(t, 7) or _ints(t, 0)  # shape_signature, else shape
    if len(sig) != 4:
        return None
    if sig[3] in (1, 3, 4):
        return t, sig, 1
    return (t, sig, 2) if sig[1] in (1, 3, 4) else None


def _open_size(data: bytes) -> tuple[int | None, int | None] | None:
    """The image input's (height, width), None for a side left open; None where neither is (the usual model)."""
    found = _image_input(data)
    if found is None:
        return None
    _, sig, h = found
    if sig[h] > 0 and sig[h + 1] > 0:
        return None
    return (sig[h] if sig[h] > 0 else None, sig[h + 1] if sig[h + 1] > 0 else None)


def sized_copy(data: bytes, height: int, width: int) -> bytes:
    """The model with its image input's open sides set to (height, width), and an open batch to 1, in its
    shape and shape signature: what `resize_tensor_input` does at each load, done once to the file, so that
    every backend (the CPU, a delegate, LiteRT's accelerators, a probe or a model in a process of its own)
    loads the same fixed model. The vectors keep their length, so they are written in place and the rest
    of the file (weights, metadata, packed labels) stays byte for byte."""
    found = _image_input(data)
    if found is None:
        raise ModelError("no image input to size")
    t, sig, h = found
    want = list(sig)
    want[0] = 1 if want[0] < 1 else want[0]
    want[h] = height if want[h] < 1 else want[h]
    want[h + 1] = width if want[h + 1] < 1 else want[h + 1]
    out = bytearray(data)
    for which in (0, 7):  # shape, shape_signature
        o = _field(t, which)
        if o and t.VectorLen(o) == 4:
            struct.pack_into("<4i", out, t.Vector(o), *want)
    return bytes(out)


#: Bytes per element by TensorType (schema.fbs); others count 4.
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 13: 1, 14: 8, 15: 2, 16: 2}


def _parse_model(data: bytes) -> tuple[list[str], list[str], bytes | None, tuple[int, ...] | None, int]:
    """Walk schema.fbs tables directly, so a bad offset raises here instead of in native code."""
    size = len(data)
    model = Table(bytearray(data), flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
    names = _builtin_names()
    codes: list[str] = []
    custom_codes: set[str] = set()
    for oc in _tables(model, 1):  # operator_codes
        code = max(_int(oc, 3, flatbuffers.number_types.Int32Flags), _int(oc, 0, flatbuffers.number_types.Int8Flags))
        if code == _CUSTOM:
            cname = _str(oc, 1) or ""
            custom_codes.add(cname)
            codes.append(cname)
        else:
            codes.append(names.get(code, f"op{code}"))
    subgraphs = list(_tables(model, 2))
    if not subgraphs:
        raise ModelError("no subgraph")
    tensor_bytes = 0
    for sg in subgraphs:  # tensors: shapes must be readable; their sum is what loading will allocate
        for t in _tables(sg, 0):
            n = 1
            for d in _ints(t, 0):
                n *= max(1, d)
            tensor_bytes += n * _TYPE_BYTES.get(_u8(t, 1), 4)
    det_outputs = None
    used: dict[str, None] = {}  # op names in order of first use (codes may list unused ops)
    for g, sg in enumerate(subgraphs):
        for op in _tables(sg, 3):
            name = codes[_int(op, 0, flatbuffers.number_types.Uint32Flags)]
            used.setdefault(name, None)
            outputs = _ints(op, 2)
            if g == 0 and name == "TFLite_Detection_PostProcess" and len(outputs) == 4:
                det_outputs = tuple(outputs)
    ops = list(used)
    custom = [o for o in ops if o in custom_codes]
    buffers = list(_tables(model, 4))
    for i, buf in enumerate(buffers):
        offset = _int(buf, 1, flatbuffers.number_types.Uint64Flags)
        length = _int(buf, 2, flatbuffers.number_types.Uint64Flags)
        if offset > 1 and offset + length > size:  # data stored after the flatbuffer (large models)
            raise ModelError(f"buffer {i} runs past the end of the file")
        o = _field(buf, 0)
        if o and buf.Vector(o) + buf.VectorLen(o) > size:
            raise ModelError(f"buffer {i} runs past the end of the file")
    meta_buf = None
    for md in _tables(model, 6):  # metadata
        if _str(md, 0) == METADATA_NAME.decode():
            buf = buffers[_int(md, 1, flatbuffers.number_types.Uint32Flags)]
            o = _field(buf, 0)
            if o:
                start = buf.Vector(o)
                meta_buf = bytes(data[start : start + buf.VectorLen(o)])
    return ops, custom, meta_buf, det_outputs, tensor_bytes


def _associated(
    data: bytes, label_file: str | None
) -> tuple[list[str], tuple[str, ...] | None, tuple[int, int] | None, str | None, tuple[int, int] | None]:
    """Files packed as a zip after the model (TFLite metadata 'associated files'), the labels among
    them (the metadata's labels file, else one named like one, else the class names of an Ultralytics
    export's own metadata, `metadata.json`), the keypoints a pose model's metadata names,
    "ultralytics" where that metadata is there, and the input size it names."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            pick = label_file if label_file in names else next((n for n in names if "label" in n.lower()), None)
            meta = _ULTRALYTICS_META if _ULTRALYTICS_META in names else None
            if pick is None and meta is not None and zf.getinfo(meta).file_size <= _MAX_LABELS_BYTES:
                pick = meta  # (one larger is no exporter's: the model is taken without it, as before)
            if pick is not None and zf.getinfo(pick).file_size > _MAX_LABELS_BYTES:
                raise ModelError(f"labels file {pick} in the model: {zf.getinfo(pick).file_size} bytes "
                                 f"(at most {_MAX_LABELS_BYTES})")
            if pick is None:
                return names, None, None, None, None
            text = zf.read(pick).decode("utf-8")
            doc = _exporter_doc(text)  # once: an older export's is Python, read by ast, up to 4 MiB
            exporter = "ultralytics" if _by_ultralytics(doc) else None
            return names, _names_in(doc) or parse_labels(text), _keypoints_in(doc), exporter, _size_in(doc)
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        return [], None, None, None, None


def _size_in(doc: dict[Any, Any] | None) -> tuple[int, int] | None:
    """An Ultralytics export's `imgsz`: [height, width], or one side for a square."""
    got = doc.get("imgsz") if doc is not None else None
    if type(got) is int:
        got = [got, got]
    if not isinstance(got, (list, tuple)) or len(got) != 2 or not all(type(v) is int and 16 <= v <= 8192 for v in got):
        return None
    return got[0], got[1]


def _by_ultralytics(doc: dict[Any, Any] | None) -> bool:
    """Ultralytics' exporter signs its metadata as the author, with the task and the input size."""
    return doc is not None and doc.get("author") == "Ultralytics" and "task" in doc and "imgsz" in doc


#: The file Ultralytics appends to its TFLite exports (as a zip member) with their class names, task and size.
_ULTRALYTICS_META = "metadata.json"


def class_names(text: str) -> tuple[str, ...] | None:
    """The class names in an Ultralytics export's metadata, or None where `text` is no such document.
    Exports since 8.3 append it as JSON (`metadata.json`, names keyed by index as strings); earlier ones
    packed the same dict, written as Python (`str(dict)`), as the TFLite metadata's labels file, where
    read line by line it made one label of the whole dict. Gaps in the indexes are LABEL_GAP."""
    return _names_in(_exporter_doc(text))


def _names_in(doc: dict[Any, Any] | None) -> tuple[str, ...] | None:
    got = doc.get("names") if doc is not None else None
    if isinstance(got, list) and got and len(got) <= MAX_LABELS:
        return tuple(str(n) for n in got)
    if not isinstance(got, dict) or not got:
        return None
    by_index: dict[int, str] = {}
    for k, v in got.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            return None
        if not 0 <= i < MAX_LABELS:
            return None
        by_index[i] = str(v)
    return tuple(by_index.get(i, LABEL_GAP) for i in range(max(by_index) + 1))


def keypoint_shape(text: str) -> tuple[int, int] | None:
    """A pose model's `kpt_shape` in an Ultralytics export's metadata (17 keypoints of x, y and
    visibility: [17, 3]), or None."""
    return _keypoints_in(_exporter_doc(text))


def _keypoints_in(doc: dict[Any, Any] | None) -> tuple[int, int] | None:
    got = doc.get("kpt_shape") if doc is not None else None
    if not isinstance(got, (list, tuple)) or len(got) != 2 or not all(type(v) is int for v in got):
        return None
    k, d = got
    return (k, d) if 1 <= k <= 1000 and d in (2, 3) else None


def _exporter_doc(text: str) -> dict[Any, Any] | None:
    """The dict an Ultralytics export's metadata holds: JSON, or before 8.3 the Python dict as `str()`
    writes it; None for anything else."""
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            doc = ast.literal_eval(text)  # literals only: no code runs
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return doc if isinstance(doc, dict) else None


#: Labels a model may have: an index beyond would fill that many gaps ("999999999 person": gigabytes).
MAX_LABELS = 100_000
#: The largest labels file read from inside a model file (a zip member is inflated whole).
_MAX_LABELS_BYTES = 4 << 20


#: The label of an index an 'index label' file leaves out.
LABEL_GAP = "???"


def parse_labels(text: str) -> tuple[str, ...]:
    """One label per line, or 'index label' pairs (gaps filled with '???'). A byte order mark (a file
    saved by Windows' Notepad) is not part of the first label: "\ufeffperson" would match no zone filter,
    Home Assistant label or `labels` setting that says "person". ModelError for an index of MAX_LABELS
    or more."""
    lines = [ln.strip() for ln in text.removeprefix("\ufeff").splitlines() if ln.strip()]
    pairs = [ln.split(maxsplit=1) for ln in lines]
    indexes = [number(p[0], 9) if len(p) == 2 else None for p in pairs]
    if lines and None not in indexes:
        by_index = {i: p[1].strip() for i, p in zip(indexes, pairs, strict=True) if i is not None}
        if max(by_index) >= MAX_LABELS:
            raise ModelError(f"labels: index {max(by_index)} (a model has at most {MAX_LABELS} labels)")
        return tuple(by_index.get(i, LABEL_GAP) for i in range(max(by_index) + 1))
    return tuple(lines)


def read_labels(text: str, what: str) -> tuple[str, ...]:
    """A labels file as people bring them: one label per line or 'index label' pairs (`parse_labels`),
    JSON (a list of names, an index -> name table, or either under "names" or "labels", as an Ultralytics
    export's metadata has them), or a YAML `names:` entry (Ultralytics' data.yaml). JSON that holds no
    names is refused naming `what`: read line by line, a model's settings file given as its labels
    (`{`, `"type": "micro",` ...) became the labels, and every class was named by a line of it."""
    body = text.removeprefix("\ufeff").strip()
    if body.startswith(("[", "{")):
        try:
            doc = json.loads(body)
        except ValueError as err:
            raise ModelError(f"{what}: starts as JSON but is not JSON ({err})") from None
        if isinstance(doc, dict) and ("names" in doc or "labels" in doc):
            doc = doc.get("names", doc.get("labels"))
        names = _names_in({"names": doc}) if not isinstance(doc, list) or all(isinstance(n, str) for n in doc) else None
        if names is None:
            raise ModelError(f"{what}: JSON without labels in it (a list of names, an index -> name table, or "
                             "one of them under \"names\" or \"labels\")")
        return names
    return _yaml_names(body) or parse_labels(text)


_YAML_NAMES = re.compile(r"^names:[ \t]*(.*)$", re.MULTILINE)
_YAML_ITEM = re.compile(r"^[ \t]+(?:(\d+)[ \t]*:|-)[ \t]*(.+?)[ \t]*$")


def _yaml_names(text: str) -> tuple[str, ...] | None:
    """The class names of a YAML file's top-level `names:` entry (Ultralytics' data.yaml): an indented
    block of `N: name` or `- name` lines, or an inline [a, b] list; None where it has none."""
    m = _YAML_NAMES.search(text)
    if m is None:
        return None
    inline = m.group(1).split("#")[0].strip()
    if inline.startswith("[") and inline.endswith("]"):
        got: Any = [_unquoted(v) for v in inline[1:-1].split(",") if v.strip()]
    elif inline:
        return None
    else:
        got = {}
        for line in text[m.end() :].splitlines()[1:]:
            item = _YAML_ITEM.match(line)
            if item is None:
                if line.strip() and not line.lstrip().startswith("#"):
                    break  # the next top-level entry
                continue
            got[int(item.group(1)) if item.group(1) is not None else len(got)] = _unquoted(item.group(2))
    return _names_in({"names": got})


def _unquoted(value: str) -> str:
    return value.strip().strip("'\"")


def load_labels(path: Path) -> tuple[str, ...]:
    try:
        return read_labels(path.read_text(encoding="utf-8"), f"labels file {path}")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"labels file unreadable: {path}: {err}") from None


# --- TFLite metadata (metadata_schema.fbs), read with plain flatbuffer tables ---------------


def _field(tab: Table, i: int) -> int:
    return int(tab.Offset(4 + 2 * i))


def _str(tab: Table, i: int) -> str | None:
    o = _field(tab, i)
    return tab.String(o + tab.Pos).decode("utf-8") if o else None


def _sub(tab: Table, i: int) -> Table | None:
    o = _field(tab, i)
    return Table(tab.Bytes, tab.Indirect(o + tab.Pos)) if o else None


def _tables(tab: Table, i: int) -> Iterator[Table]:
    o = _field(tab, i)
    if not o:
        return
    start = tab.Vector(o)
    for j in range(tab.VectorLen(o)):
        yield Table(tab.Bytes, tab.Indirect(start + 4 * j))


def _floats(tab: Table, i: int) -> tuple[float, ...] | None:
    o = _field(tab, i)
    if not o:
        return None
    start, n = tab.Vector(o), tab.VectorLen(o)
    return tuple(float(x) for x in struct.unpack_from(f"<{n}f", tab.Bytes, start))


def _int(tab: Table, i: int, flags: object) -> int:
    o = _field(tab, i)
    return int(tab.Get(flags, o + tab.Pos)) if o else 0


def _ints(tab: Table, i: int) -> list[int]:
    o = _field(tab, i)
    if not o:
        return []
    start, n = tab.Vector(o), tab.VectorLen(o)
    if start + 4 * n > len(tab.Bytes):
        raise ModelError("vector runs past the end of the file")
    return list(struct.unpack_from(f"<{n}i", tab.Bytes, start))  # in place: no copy of the file per vector


def _u8(tab: Table, i: int) -> int:
    o = _field(tab, i)
    return int(tab.Get(flatbuffers.number_types.Uint8Flags, o + tab.Pos)) if o else 0


def parse_metadata(buf: bytes) -> Metadata:
    root = Table(bytearray(buf), flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    mean = std = None
    label_file = None
    for sg in _tables(root, 3):  # subgraph_metadata
        for tm in _tables(sg, 2):  # input_tensor_metadata
            for pu in _tables(tm, 4):  # process_units
                opts = _sub(pu, 1)
                if _u8(pu, 0) == _PROCESS_NORMALIZATION and opts is not None:
                    mean, std = _floats(opts, 0), _floats(opts, 1)
        for tm in _tables(sg, 3):  # output_tensor_metadata
            for af in _tables(tm, 6):  # associated_files
                if _u8(af, 2) in (_FILE_TENSOR_AXIS_LABELS, _FILE_TENSOR_VALUE_LABELS) and label_file is None:
                    label_file = _str(af, 0)
    return Metadata(
        name=_str(root, 0),
        description=_str(root, 1),
        version=_str(root, 2),
        author=_str(root, 4),
        mean=mean,
        std=std,
        label_file=label_file,
    )


# --- writing: used by scripts/ for the project's own models and by tests ---------------------


def build_metadata(
    name: str,
    version: str,
    description: str,
    mean: list[float] | None,
    std: list[float] | None,
    label_file: str | None,
    num_outputs: int = 1,
    author: str = "edge-agent",
) -> bytes:
    """A minimal ModelMetadata flatbuffer: normalisation on the input, labels on the outputs."""
    b = flatbuffers.Builder(256)

    def fvec(vals: list[float]) -> int:
        b.StartVector(4, len(vals), 4)
        for v in reversed(vals):
            b.PrependFloat32(v)
        return int(b.EndVector())

    def tvec(offs: list[int]) -> int:
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return int(b.EndVector())

    in_units: list[int] = []
    if mean is not None and std is not None:
        m, s = fvec(mean), fvec(std)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, m, 0)
        b.PrependUOffsetTRelativeSlot(1, s, 0)
        norm = b.EndObject()
        b.StartObject(2)
        b.PrependUint8Slot(0, _PROCESS_NORMALIZATION, 0)
        b.PrependUOffsetTRelativeSlot(1, norm, 0)
        in_units.append(b.EndObject())
    in_name = b.CreateString("image")
    units = tvec(in_units) if in_units else 0
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(0, in_name, 0)
    if units:
        b.PrependUOffsetTRelativeSlot(4, units, 0)
    in_tm = b.EndObject()
    outs = []
    for _ in range(num_outputs):
        files = 0
        if label_file:
            fname = b.CreateString(label_file)
            b.StartObject(5)
            b.PrependUOffsetTRelativeSlot(0, fname, 0)
            b.PrependUint8Slot(2, _FILE_TENSOR_VALUE_LABELS, 0)
            files = tvec([b.EndObject()])
        b.StartObject(7)
        if files:
            b.PrependUOffsetTRelativeSlot(6, files, 0)
        outs.append(b.EndObject())
    in_vec, out_vec = tvec([in_tm]), tvec(outs)
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(2, in_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, out_vec, 0)
    sg = b.EndObject()
    sgs = tvec([sg])
    n, d, v, a, mpv = (b.CreateString(x) for x in (name, description, version, author, "1.0.0"))
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(0, n, 0)
    b.PrependUOffsetTRelativeSlot(1, d, 0)
    b.PrependUOffsetTRelativeSlot(2, v, 0)
    b.PrependUOffsetTRelativeSlot(3, sgs, 0)
    b.PrependUOffsetTRelativeSlot(4, a, 0)
    b.PrependUOffsetTRelativeSlot(7, mpv, 0)
    b.Finish(b.EndObject(), file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def _fold_fp16_dequantize(model: Any, s: Any) -> None:
    deq = {
        i
        for i, oc in enumerate(model.operatorCodes)
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == s.BuiltinOperator.DEQUANTIZE
    }
    for sg in model.subgraphs:
        kept = []
        for op in sg.operators:
            if op.opcodeIndex in deq:
                src_t = sg.tensors[op.inputs[0]]
                data = model.buffers[src_t.buffer].data if src_t.buffer < len(model.buffers) else None
                if src_t.type == s.TensorType.FLOAT16 and data is not None and len(data):
                    f32 = np.frombuffer(bytes(bytearray(data)), np.float16).astype(np.float32)
                    buf = s.BufferT()
                    buf.data = np.frombuffer(f32.tobytes(), np.uint8)
                    model.buffers.append(buf)
                    sg.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
                    continue
            kept.append(op)
        sg.operators = kept


def rewrite_model(
    src: bytes,
    *,
    metadata: bytes | None = None,
    add_signature: bool = False,
    custom_op: str | None = None,
    files: dict[str, bytes] | None = None,
    fold_fp16: bool = False,
) -> bytes:
    """Return a copy of a model with metadata / a default signature / a custom op / packed files.

    fold_fp16 turns float16 weights behind DEQUANTIZE ops into float32 constants, which
    full-integer quantizers need to see the weights as weights.
    """
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(src, 0))
    for buf in model.buffers or []:
        if buf.offset > 1:  # data stored after the flatbuffer: inline it, the tail is not re-emitted
            buf.data = np.frombuffer(src[buf.offset : buf.offset + buf.size], np.uint8)
            buf.offset = buf.size = 0
    for oc in model.operatorCodes or []:
        # Old converters wrote only deprecated_builtin_code; tools that read builtin_code
        # alone would see every op as ADD (code 0).
        oc.builtinCode = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        oc.deprecatedBuiltinCode = min(oc.builtinCode, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    if fold_fp16:
        _fold_fp16_dequantize(model, s)
    if add_signature:
        sg = model.subgraphs[0]

        def tmap(i: int) -> Any:
            t = s.TensorMapT()
            t.name, t.tensorIndex = sg.tensors[i].name, i
            return t

        sd = s.SignatureDefT()
        sd.signatureKey, sd.subgraphIndex = "serving_default", 0
        sd.inputs = [tmap(i) for i in sg.inputs]
        sd.outputs = [tmap(i) for i in sg.outputs]
        model.signatureDefs = [sd]
    if metadata is not None:
        buf = s.BufferT()
        buf.data = list(metadata)
        model.buffers.append(buf)
        md = s.MetadataT()
        md.name, md.buffer = METADATA_NAME.decode(), len(model.buffers) - 1
        model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME] + [md]
    if custom_op is not None:
        oc = model.operatorCodes[0]
        oc.builtinCode = oc.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
        oc.customCode = custom_op
    b = flatbuffers.Builder(len(src) + 4096)
    b.Finish(model.Pack(b), file_identifier=TFLITE_IDENTIFIER)
    out = bytes(b.Output())
    if files:
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_STORED) as zf:
            for fname, content in files.items():
                zf.writestr(fname, content)
        out += zbuf.getvalue()
    return out
