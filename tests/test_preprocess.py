"""Resize planning, coordinate mapping and input encoding, apart from any model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.modelfile import TensorSpec
from edge_agent.preprocess import Preprocessor, build_lut, input_layout, plan_resize


def spec(shape: tuple[int, ...], dtype: type, scale: float = 0.0, zp: int = 0) -> TensorSpec:
    return TensorSpec("input", 0, shape, np.dtype(dtype), scale, zp)


def test_letterbox_keeps_aspect_and_centres() -> None:
    r = plan_resize(640, 480, 128, 128, "letterbox")
    assert (r.new_w, r.new_h, r.pad_x, r.pad_y) == (128, 96, 0, 16)
    s = plan_resize(640, 480, 128, 128, "stretch")
    assert (s.new_w, s.new_h, s.pad_x, s.pad_y) == (128, 128, 0, 0)


@settings(max_examples=300, deadline=None)
@given(
    fw=st.integers(16, 4000), fh=st.integers(16, 4000), iw=st.integers(16, 640), ih=st.integers(16, 640),
    mode=st.sampled_from(["stretch", "letterbox"]),
    x=st.floats(0, 1), y=st.floats(0, 1),
)
def test_model_coordinates_map_back_to_the_frame(fw: int, fh: int, iw: int, ih: int, mode: str,
                                                 x: float, y: float) -> None:
    """A frame point placed into the model input and mapped back lands where it started."""
    r = plan_resize(fw, fh, iw, ih, mode)  # type: ignore[arg-type]
    px, py = x * fw, y * fh
    mx = (px * r.new_w / fw + r.pad_x) / iw
    my = (py * r.new_h / fh + r.pad_y) / ih
    back = r.to_frame(np.array([mx, my]))
    assert back[0] == pytest.approx(px, abs=1e-2 * fw) and back[1] == pytest.approx(py, abs=1e-2 * fh)
    # the same mapping for a point held as Python floats (a decoder's few candidates); to_frame works in
    # float32, whose rounding of x * input size is scaled up by frame size / resized size
    one = r.point_to_frame(mx, my)
    tol_x, tol_y = 1e-6 * iw * fw / r.new_w + 1e-6, 1e-6 * ih * fh / r.new_h + 1e-6
    assert one[0] == pytest.approx(float(back[0]), abs=tol_x) and one[1] == pytest.approx(float(back[1]), abs=tol_y)
    outside = r.point_to_frame(-0.5, 1.5)  # clipped to the frame, as to_frame clips
    assert outside == tuple(float(v) for v in r.to_frame(np.array([-0.5, 1.5])))


def test_lut_encodings() -> None:
    # uint8 model input without normalisation takes raw pixels
    assert build_lut(spec((1, 8, 8, 3), np.uint8, 1 / 128, 128), None, None, 3) is None
    # float: (p - mean) / std
    lut = build_lut(spec((1, 8, 8, 3), np.float32), (127.5,), (127.5,), 3)
    assert lut is not None and lut.dtype == np.float32
    assert lut[0, 0] == pytest.approx(-1.0) and lut[2, 255] == pytest.approx(1.0)
    # int8 with quantization: round(real / scale + zp), clipped
    q = build_lut(spec((1, 8, 8, 3), np.int8, 2 / 255, 0), (127.5,), (127.5,), 3)
    assert q is not None and q.dtype == np.int8
    assert int(q[0, 0]) == -128 and int(q[0, 255]) == 127
    # per-channel mean/std
    pc = build_lut(spec((1, 8, 8, 3), np.float32), (0.0, 100.0, 200.0), (1.0, 2.0, 4.0), 3)
    assert pc is not None and pc[1, 100] == 0 and pc[2, 204] == 1.0


def test_layouts() -> None:
    assert input_layout(spec((1, 224, 320, 3), np.float32)) == (224, 320, 3, False)
    assert input_layout(spec((1, 3, 224, 320), np.float32)) == (224, 320, 3, True)
    assert input_layout(spec((1, 96, 96, 1), np.uint8)) == (96, 96, 1, False)
    with pytest.raises(ValueError):
        input_layout(spec((1, 10), np.float32))


def test_preprocessor_writes_rgb_into_the_given_buffer_without_reallocating() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[..., 0] = 255  # pure blue in BGR
    p = Preprocessor(spec((1, 96, 128, 3), np.float32), "letterbox", (0.0,), (255.0,))
    out = np.full((1, 96, 128, 3), 7, np.float32)
    r = p(frame, out)
    assert (r.pad_x, r.pad_y, r.new_w, r.new_h) == (0, 0, 128, 96)
    assert np.allclose(out[0, ..., 2], 1.0) and np.allclose(out[0, ..., :2], 0.0)  # blue is channel 2 in RGB
    canvas, resized = p._canvas, p._resized
    p(frame, out)
    assert p._canvas is canvas and p._resized is resized  # per-frame path reuses its buffers


def test_preprocessor_letterbox_pads_with_zero_pixels_and_uint8_direct() -> None:
    frame = np.full((100, 400, 3), 200, np.uint8)
    p = Preprocessor(spec((1, 64, 64, 3), np.uint8, 1 / 128, 128), "letterbox", None, None)
    out = np.zeros((1, 64, 64, 3), np.uint8)
    r = p(frame, out)
    assert r.pad_y == 24 and r.new_h == 16
    assert (out[0, :24] == 0).all() and (out[0, 24:40] == 200).all() and (out[0, 40:] == 0).all()
    direct = Preprocessor(spec((1, 64, 64, 3), np.uint8, 1 / 128, 128), "stretch", None, None)
    out2 = np.zeros((1, 64, 64, 3), np.uint8)
    direct(frame, out2)
    assert (out2 == 200).all()


def test_channels_first_and_grayscale() -> None:
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[..., 2] = 255  # red
    cf = Preprocessor(spec((1, 3, 16, 16), np.float32), "stretch", (0.0,), (1.0,))
    out = np.zeros((1, 3, 16, 16), np.float32)
    cf(frame, out)
    assert (out[0, 0] == 255).all() and (out[0, 1:] == 0).all()
    g = Preprocessor(spec((1, 16, 16, 1), np.uint8, 1.0, 0), "stretch", None, None)
    out_g = np.zeros((1, 16, 16, 1), np.uint8)
    g(frame, out_g)
    assert 70 <= int(out_g.mean()) <= 80  # BT.601 luma of pure red


@pytest.mark.parametrize(
    ("mean", "std"), [((127.5,), (127.5,)), ((100.0, 120.0, 140.0), (50.0, 60.0, 70.0)), ((0.0,), (255.0,))]
)
def test_float_normalisation_matches_the_formula_per_channel(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """(rgb - mean) / std, whichever fast path applies (one scale for all channels, or a table per channel)."""
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    spec = TensorSpec("in", 0, (1, 64, 64, 3), np.dtype(np.float32), 0.0, 0)
    out = np.zeros(spec.shape, np.float32)
    Preprocessor(spec, "stretch", mean, std)(frame, out)
    rgb = frame[..., ::-1].astype(np.float64)
    want = (rgb - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(out[0], want, atol=1e-5)
