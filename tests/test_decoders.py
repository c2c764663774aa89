"""Output decoders and box geometry on hand-made tensors (the real models have their own tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.modelfile import ModelFile, TensorSpec
from edge_agent.postprocess.decoders import (
    DECODERS,
    BlazeFaceDecoder,
    ClassificationDecoder,
    DecodeOptions,
    ModelIO,
    RawDecoder,
    SSDPostprocessDecoder,
    YoloDecoder,
    YoloEndToEndDecoder,
    ssd_anchors,
)
from edge_agent.postprocess.geometry import iou_one_to_many, nms, weighted_nms, weighted_nms_few
from edge_agent.preprocess import plan_resize


def ts(name: str, index: int, shape: tuple[int, ...], dtype: type = np.float32) -> TensorSpec:
    return TensorSpec(name, index, shape, np.dtype(dtype), 0.0, 0)


def test_iou_and_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    ious = iou_one_to_many(boxes[0], boxes)
    assert ious[0] == pytest.approx(1.0) and ious[1] == pytest.approx(81 / 119) and ious[2] == 0
    kept = nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5, 10)
    assert kept.tolist() == [0, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5, 1).tolist() == [0]


def test_weighted_nms_blends_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], np.float32)
    out = weighted_nms(boxes, np.array([0.75, 0.25]), 0.3, 10)
    assert len(out) == 1
    box, score, _ = out[0]
    assert score == 0.75 and box[0] == pytest.approx(0.5) and box[2] == pytest.approx(10.5)


_box = st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0.001, 0.5), st.floats(0.001, 0.5))


@settings(max_examples=300, deadline=None)
@given(
    boxes=st.lists(_box, min_size=1, max_size=30),
    scores=st.lists(st.floats(0.01, 1.0), min_size=30, max_size=30),
    iou=st.sampled_from([0.0, 0.1, 0.3, 0.45, 0.9]),
    max_out=st.integers(1, 40),
)
def test_weighted_nms_of_a_few_floats_clusters_as_the_numpy_one(
    boxes: list[tuple[float, float, float, float]], scores: list[float], iou: float, max_out: int
) -> None:
    """The decoder's path for a few candidates (Python floats) keeps the same clusters, in the same order,
    blended the same, as numpy's for many."""
    xyxy = [(x, y, x + w, y + h) for x, y, w, h in boxes]
    sc = scores[: len(boxes)]
    extra = [[x * 2, y * 3] for x, y, _, _ in xyxy]
    a = weighted_nms(np.array(xyxy, np.float32), np.array(sc, np.float32), iou, max_out, np.array(extra, np.float32))
    # (float32 inputs on both sides: the scores and boxes a model gives)
    f32 = [[float(v) for v in np.array(b, np.float32)] for b in xyxy]
    b = weighted_nms_few(f32, [float(np.float32(v)) for v in sc], iou, max_out, extra)
    assert len(a) == len(b)
    for (box_a, score_a, ext_a), (box_b, score_b, ext_b) in zip(a, b, strict=True):
        assert score_a == score_b
        assert box_b == pytest.approx(box_a.tolist(), abs=1e-5)
        assert ext_a is not None and ext_b == pytest.approx(ext_a.tolist(), abs=1e-5)


def test_quantized_dequantize() -> None:
    s = TensorSpec("q", 0, (4,), np.dtype(np.uint8), 0.5, 10)
    assert s.dequantize(np.array([10, 12, 0, 255], np.uint8)).tolist() == [0.0, 1.0, -5.0, 122.5]


def test_classification_topk_threshold_and_logits() -> None:
    dec = ClassificationDecoder([ts("p", 0, (1, 4))], ("a", "b", "c", "d"), DecodeOptions(0.1, top_k=2))
    rs = plan_resize(10, 10, 10, 10, "stretch")
    r = dec([np.array([[0.05, 0.6, 0.3, 0.05]], np.float32)], rs)
    assert [(c.label, c.index) for c in r.classes] == [("b", 1), ("c", 2)]
    logits = dec([np.array([[1.0, 5.0, -2.0, 0.0]], np.float32)], rs)
    assert logits.classes[0].label == "b" and 0.9 < logits.classes[0].score < 1.0


def test_ssd_postprocess_maps_by_op_output_order() -> None:
    # model output order differs from the op's (boxes, classes, scores, count)
    specs = [ts("scores", 12, (1, 3)), ts("boxes", 10, (1, 3, 4)), ts("count", 13, (1,)), ts("classes", 11, (1, 3))]
    dec = SSDPostprocessDecoder(specs, ("person", "bicycle"), DecodeOptions(0.5), (10, 11, 12, 13))
    outs = [
        np.array([[0.9, 0.4, 0.8]], np.float32),
        np.array([[[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1], [0.5, 0.5, 1.0, 1.0]]], np.float32),
        np.array([3.0], np.float32),
        np.array([[1.0, 0.0, 0.0]], np.float32),
    ]
    r = dec(outs, plan_resize(200, 100, 300, 300, "stretch"))
    assert [d.label for d in r.detections] == ["bicycle", "person"]
    assert [d.score for d in r.detections] == pytest.approx([0.9, 0.8])
    assert r.detections[0].box == pytest.approx((40.0, 10.0, 120.0, 50.0))  # (x1, y1, x2, y2) pixels
    assert r.detections[0].box_norm == pytest.approx((0.2, 0.1, 0.6, 0.5))


def test_yolo_v8_and_v5_layouts() -> None:
    n, nc = 200, 3
    v8 = np.zeros((1, 4 + nc, n), np.float32)
    v8[0, :4, 5] = [320, 240, 100, 50]  # cx, cy, w, h in input pixels
    v8[0, 4 + 2, 5] = 0.9
    v8[0, :4, 6] = [322, 241, 100, 50]  # duplicate, suppressed
    v8[0, 4 + 2, 6] = 0.8
    v8[0, :4, 7] = [100, 100, 40, 40]
    v8[0, 4 + 0, 7] = 0.7
    dec = YoloDecoder([ts("out", 0, (1, 4 + nc, n))], ("a", "b", "c"), DecodeOptions(0.5, 0.5), (640, 640))
    assert dec.channels_first and not dec.objectness
    r = dec([v8], plan_resize(640, 640, 640, 640, "stretch"))
    assert [(d.label, round(d.score, 2)) for d in r.detections] == [("c", 0.9), ("a", 0.7)]
    assert r.detections[0].box == pytest.approx((270, 215, 370, 265))

    v5 = np.zeros((1, n, 5 + nc), np.float32)
    v5[0, 3] = [0.5, 0.5, 0.2, 0.2, 0.9, 0.1, 0.9, 0.0]  # normalised, objectness 0.9
    dec5 = YoloDecoder([ts("out", 0, (1, n, 5 + nc))], ("a", "b", "c"), DecodeOptions(0.5), (320, 320))
    assert dec5.objectness
    r5 = dec5([v5], plan_resize(100, 100, 320, 320, "stretch"))
    assert len(r5.detections) == 1 and r5.detections[0].label == "b"
    assert r5.detections[0].score == pytest.approx(0.81)
    assert r5.detections[0].box == pytest.approx((40, 40, 60, 60))


def _layout(out_shape: tuple[int, ...], size: int) -> str:
    """The layout `model.task = auto` reads off a model with this one output and a size x size image input."""
    io = ModelIO(ModelFile.__new__(ModelFile), [ts("in", 0, (1, size, size, 3))], [ts("out", 1, out_shape)])
    return next(d for d in DECODERS if d.matches(io)).layout


def test_an_end_to_end_yolo_is_told_from_a_raw_head_by_its_row_count() -> None:
    """`[1, N, 6]` is an end-to-end model's finished boxes (N its max_det) or a raw one-class head; a raw
    head has one row per grid cell of its strides for the input size, three with v5's anchors."""
    assert _layout((1, 300, 6), 640) == "yolo_end2end"  # YOLO26 / YOLOv10 / nms=True at max_det 300
    assert _layout((1, 100, 6), 320) == "yolo_end2end"
    assert _layout((1, 8400, 6), 640) == "yolo"  # v8, two classes, channels last: 80^2 + 40^2 + 20^2
    assert _layout((1, 6300, 6), 320) == "yolo"  # v5, one class: 3 x (40^2 + 20^2 + 10^2)
    assert _layout((1, 6, 8400), 640) == "yolo"  # v8, two classes, channels first
    assert _layout((1, 25500, 6), 1280) == "yolo_end2end"  # no grid of 1280 has that many rows
    assert _layout((1, 3 * 34000, 6), 1280) == "yolo"  # v5 P6 at 1280: 3 x (160^2 + 80^2 + 40^2 + 20^2)


def test_a_raw_yolo_head_without_labels_is_read_by_its_grid() -> None:
    """With no labels to count the classes by, a channels-last head of COCO's 80 classes (84 or 85 columns)
    is read as the column count says; any other with a row per grid cell is v8's (no objectness), and one
    with three per cell v5's."""
    v8 = YoloDecoder([ts("out", 0, (1, 8400, 84))], None, DecodeOptions(0.5), (640, 640))
    assert not v8.objectness
    pred = np.zeros((1, 8400, 84), np.float32)
    pred[0, 7, :4] = [320, 320, 64, 64]
    pred[0, 7, 4 + 16] = 0.9  # class 16 (a dog in COCO), no objectness column
    r = v8([pred], plan_resize(640, 640, 640, 640, "stretch"))
    assert [(d.label, round(d.score, 2)) for d in r.detections] == [("16", 0.9)]
    assert r.detections[0].box == pytest.approx((288, 288, 352, 352))
    assert YoloDecoder([ts("out", 0, (1, 25200, 85))], None, DecodeOptions(0.5), (640, 640)).objectness
    # COCO's 80 classes first (YOLOX: one row per cell, with objectness), then the grid
    assert YoloDecoder([ts("out", 0, (1, 8400, 85))], None, DecodeOptions(0.5), (640, 640)).objectness
    assert not YoloDecoder([ts("out", 0, (1, 8400, 7))], None, DecodeOptions(0.5), (640, 640)).objectness
    assert YoloDecoder([ts("out", 0, (1, 25200, 7))], None, DecodeOptions(0.5), (640, 640)).objectness
    # labels that count the classes still decide
    labels = [str(i) for i in range(81)]
    assert not YoloDecoder([ts("out", 0, (1, 25200, 85))], labels, DecodeOptions(), (640, 640)).objectness


def test_end_to_end_yolo_rows_are_final_detections() -> None:
    """Corners, score and a float class index per row, best first; padding scored 0 (or class -1); no
    NMS, so two overlapping objects of one class both stay; input-pixel corners are scaled like normalised
    ones."""
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [100, 100, 300, 400, 0.9, 0.0]  # input pixels, a person
    rows[0, 1] = [150, 110, 330, 410, 0.8, 0.0]  # another person, IoU 0.6 with the first: NMS would drop it
    rows[0, 2] = [10, 10, 50, 50, 0.7, 16.9999]  # a class index just under 17 (float arithmetic)
    rows[0, 3] = [0, 0, 640, 640, 0.95, -1.0]  # padding in an export that marks it with class -1
    rows[0, 4] = [0, 0, 10, 10, 0.3, 2.0]  # under the threshold
    dec = YoloEndToEndDecoder([ts("out", 0, (1, 300, 6))], ["person"] + [str(i) for i in range(1, 80)],
                              DecodeOptions(0.5, max_detections=2), (640, 640))
    r = dec([rows], plan_resize(1280, 1280, 640, 640, "stretch"))
    assert [(d.label, round(d.score, 2)) for d in r.detections] == [("person", 0.9), ("person", 0.8)]
    assert r.detections[0].box == pytest.approx((200, 200, 600, 800))
    r = YoloEndToEndDecoder([ts("out", 0, (1, 300, 6))], None, DecodeOptions(0.5), (640, 640))(
        [rows], plan_resize(640, 640, 640, 640, "stretch"))
    assert [d.label for d in r.detections] == ["0", "0", "17"]
    normalised = rows.copy()
    normalised[0, :3, :4] /= 640
    r2 = YoloEndToEndDecoder([ts("out", 0, (1, 300, 6))], None, DecodeOptions(0.5), (640, 640))(
        [normalised], plan_resize(640, 640, 640, 640, "stretch"))
    assert [v for d in r2.detections for v in d.box] == pytest.approx([v for d in r.detections for v in d.box])


def test_a_yolo_pose_head_gives_each_person_its_keypoints() -> None:
    """Ultralytics' pose heads: box, a score per class, then each keypoint's x, y (and visibility). Read as
    classes, the 51 keypoint columns became 51 more "classes" scored by their pixel coordinates."""
    n = 8400
    raw = np.zeros((1, 56, n), np.float32)
    raw[0, :5, 9] = [320, 240, 100, 200, 0.9]  # a person, centre (320, 240), in input pixels
    raw[0, 5:, 9] = np.tile([300, 180, 0.95], 17)  # every keypoint at (300, 180), visible
    raw[0, 5 + 3 * 16 : 5 + 3 * 16 + 2, 9] = [340, 330]  # the last (a right ankle) lower down
    frame = plan_resize(1280, 960, 640, 480, "stretch")
    for labels in (None, ["person"]):
        dec = YoloDecoder([ts("out", 0, (1, 56, n))], labels, DecodeOptions(0.5), (480, 640))
        assert dec.keypoints == (17, 3)
        (d,) = dec([raw], frame).detections
        assert d.label == (labels[0] if labels else "0") and d.score == pytest.approx(0.9)
        assert d.box == pytest.approx((540, 280, 740, 680))
        assert len(d.keypoints) == 17
        assert d.keypoints[0] == pytest.approx((600, 360)) and d.keypoints[16] == pytest.approx((680, 660))
    # what the file says (a tiger's 12 keypoints of x and y), and labels that count COCO's classes wrong
    tiger = YoloDecoder([ts("out", 0, (1, 4 + 1 + 24, n))], ["tiger"], DecodeOptions(0.5), (480, 640), (12, 2))
    assert tiger.keypoints == (12, 2) and tiger.classes_end == 5
    assert YoloDecoder([ts("out", 0, (1, 84, n))], ["x"] * 77, DecodeOptions(), (640, 640)).keypoints is None
    assert YoloDecoder([ts("out", 0, (1, 84, n))], None, DecodeOptions(), (640, 640)).keypoints is None


def test_an_end_to_end_pose_model_gives_its_keypoints() -> None:
    """YOLO26-pose: [1, 300, 57], the six columns of a detection and then 17 keypoints of three."""
    assert _layout((1, 300, 57), 640) == "yolo_end2end"
    assert _layout((1, 300, 7), 640) == "yolo"  # no keypoints fit one column: a raw head of two classes
    rows = np.zeros((1, 300, 57), np.float32)
    rows[0, 0, :6] = [0.25, 0.25, 0.5, 0.75, 0.8, 0]
    rows[0, 0, 6:] = np.tile([0.375, 0.3, 0.9], 17)
    dec = YoloEndToEndDecoder([ts("out", 0, (1, 300, 57))], ["person"], DecodeOptions(0.5), (640, 640))
    (d,) = dec([rows], plan_resize(640, 640, 640, 640, "stretch")).detections
    assert d.label == "person" and d.box == pytest.approx((160, 160, 320, 480))
    assert [v for p in d.keypoints for v in p] == pytest.approx([240, 192] * 17)
    declared = YoloEndToEndDecoder([ts("out", 0, (1, 300, 30))], None, DecodeOptions(0.5), (640, 640), (12, 2))
    assert declared.keypoints == (12, 2)


def test_a_yolo_segmentation_model_gives_its_boxes() -> None:
    """Ultralytics' segmentation models: the detection head, its rows ending in 32 mask coefficients, and
    a second output of mask prototypes. They were read as raw numbers (1.8 million a frame); now as the
    detector they also are, the coefficients not taken for classes. The masks are not made."""
    head, protos = ts("output0", 0, (1, 116, 8400)), ts("output1", 1, (1, 160, 160, 32))
    for outputs in ([head, protos], [protos, head], [head, ts("output1", 1, (1, 32, 160, 160))]):
        io = ModelIO(ModelFile.__new__(ModelFile), [ts("in", 0, (1, 640, 640, 3))], outputs)
        assert next(d for d in DECODERS if d.matches(io)).layout == "yolo"
    dec = YoloDecoder([protos, head], None, DecodeOptions(0.5), (640, 640))
    assert dec.head == 1 and dec.classes_end == 84 and not dec.objectness and dec.keypoints is None
    pred = np.zeros((1, 116, 8400), np.float32)
    pred[0, :4, 3] = [320, 320, 64, 128]
    pred[0, 4 + 2, 3] = 0.7  # a car
    pred[0, 84:, 3] = 5.0  # its mask coefficients, larger than any score
    (d,) = dec([np.zeros((1, 160, 160, 32), np.float32), pred], plan_resize(640, 640, 640, 640, "stretch")).detections
    assert d.label == "2" and d.score == pytest.approx(0.7) and d.box == pytest.approx((288, 256, 352, 384))
    # YOLO26-seg, end to end: six columns and the 32 coefficients
    e2e = [ts("output0", 0, (1, 300, 38)), protos]
    io = ModelIO(ModelFile.__new__(ModelFile), [ts("in", 0, (1, 640, 640, 3))], e2e)
    assert next(d for d in DECODERS if d.matches(io)).layout == "yolo_end2end"
    rows = np.zeros((1, 300, 38), np.float32)
    rows[0, 0, :6] = [0.1, 0.1, 0.3, 0.5, 0.9, 7]
    rows[0, 0, 6:] = 3.0
    dec2 = YoloEndToEndDecoder(e2e, None, DecodeOptions(0.5), (640, 640))
    (d2,) = dec2([rows, np.zeros((1, 160, 160, 32), np.float32)], plan_resize(640, 640, 640, 640, "stretch")).detections
    assert d2.label == "7" and d2.score == pytest.approx(0.9) and not d2.keypoints


def test_blazeface_anchor_counts() -> None:
    assert len(ssd_anchors(128, [8, 16, 16, 16], 1.0)) == 896
    assert len(ssd_anchors(192, [4], 0.0)) == 2304
    outs = [ts("regressors", 1, (1, 896, 16)), ts("classificators", 2, (1, 896, 1))]
    assert BlazeFaceDecoder.layout_matches(outs, 128)
    assert not BlazeFaceDecoder.layout_matches(outs, 192)


def test_raw_outputs_are_plain_numbers() -> None:
    dec = RawDecoder([ts("y", 0, (1, 2))], None, DecodeOptions())
    r = dec([np.array([[0.25, -1.5]], np.float32)], plan_resize(1, 1, 1, 1, "stretch"))
    d = r.as_dict()
    assert d == {"outputs": [{"name": "y", "shape": [1, 2], "values": [0.25, -1.5]}]}
    assert all(type(v) is float for v in d["outputs"][0]["values"])
