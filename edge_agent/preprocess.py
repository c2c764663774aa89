"""Frame -> model input: resize (keeping the scale to map boxes back), BGR->RGB, normalise, quantize.

Pure planning functions plus one Preprocessor that writes into a caller-provided tensor view
with preallocated intermediates, so the per-frame path allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from edge_agent.modelfile import TensorSpec

ResizeMode = Literal["stretch", "letterbox"]


@dataclass(frozen=True)
class Resize:
    """How a frame was placed into the model input; maps model coordinates back to frame pixels."""

    frame_w: int
    frame_h: int
    in_w: int
    in_h: int
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int

    def to_frame(self, xyxy_norm: np.ndarray) -> np.ndarray:
        """[..., 4] boxes or [..., 2] points normalised to the model input -> frame pixels."""
        pts = np.asarray(xyxy_norm, dtype=np.float32).reshape(-1, 2)
        x = (pts[:, 0] * self.in_w - self.pad_x) * (self.frame_w / self.new_w)
        y = (pts[:, 1] * self.in_h - self.pad_y) * (self.frame_h / self.new_h)
        out = np.stack([np.clip(x, 0, self.frame_w), np.clip(y, 0, self.frame_h)], axis=1)
        return out.reshape(np.shape(xyxy_norm))

    def point_to_frame(self, x: float, y: float) -> tuple[float, float]:
        """One point normalised to the model input -> frame pixels, as `to_frame` maps arrays (for a decoder
        that works on a few values as Python floats)."""
        fx = (x * self.in_w - self.pad_x) * (self.frame_w / self.new_w)
        fy = (y * self.in_h - self.pad_y) * (self.frame_h / self.new_h)
        return min(max(fx, 0.0), float(self.frame_w)), min(max(fy, 0.0), float(self.frame_h))


def plan_resize(frame_w: int, frame_h: int, in_w: int, in_h: int, mode: ResizeMode) -> Resize:
    if frame_w <= 0 or frame_h <= 0:
        raise ValueError(f"empty frame {frame_w}x{frame_h}")
    if mode == "stretch":
        return Resize(frame_w, frame_h, in_w, in_h, in_w, in_h, 0, 0)
    scale = min(in_w / frame_w, in_h / frame_h)
    new_w = max(1, min(in_w, round(frame_w * scale)))
    new_h = max(1, min(in_h, round(frame_h * scale)))
    return Resize(frame_w, frame_h, in_w, in_h, new_w, new_h, (in_w - new_w) // 2, (in_h - new_h) // 2)


def input_layout(spec: TensorSpec) -> tuple[int, int, int, bool]:
    """(height, width, channels, channels_first) of an image input tensor."""
    shape = spec.shape
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4:
        raise ValueError(f"input {spec.name} has shape {spec.shape}; an image input needs 3 or 4 dims")
    if shape[3] in (1, 3):
        return shape[1], shape[2], shape[3], False
    if shape[1] in (1, 3):
        return shape[2], shape[3], shape[1], True
    raise ValueError(f"input {spec.name} shape {spec.shape}: cannot find a 1- or 3-channel axis")


def build_lut(
    spec: TensorSpec, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, channels: int
) -> np.ndarray | None:
    """Table pixel value -> input value per channel, or None when raw pixels go in unchanged.

    A uint8 input with no normalisation given takes raw pixels (the convention of quantized
    image models); otherwise real = (p - mean) / std, quantized as round(real / scale + zp).
    """
    dtype = spec.dtype
    if dtype == np.uint8 and mean is None and std is None:
        return None
    m = np.broadcast_to(np.asarray(mean if mean is not None else (127.5,), np.float64), (channels,))
    s = np.broadcast_to(np.asarray(std if std is not None else (127.5,), np.float64), (channels,))
    p = np.arange(256, dtype=np.float64)[None, :]
    real = (p - m[:, None]) / s[:, None]
    if dtype in (np.dtype(np.float32), np.dtype(np.float16)):
        return real.astype(dtype)
    if not spec.quantized:
        raise ValueError(f"input {spec.name}: integer dtype {dtype} without quantization parameters")
    info = np.iinfo(dtype)
    q = np.clip(np.round(real / spec.scale + spec.zero_point), info.min, info.max).astype(dtype)
    if dtype == np.uint8 and np.array_equal(q, np.broadcast_to(np.arange(256), q.shape)):
        return None
    return q


class Preprocessor:
    """Writes one frame into a model input tensor; reuses its buffers while the frame size holds."""

    def __init__(
        self,
        spec: TensorSpec,
        mode: ResizeMode,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
        fill: int = 0,
    ):
        """`fill`: the grey (0-255) a letterbox's bars are, as the model was trained with them."""
        self.spec = spec
        self.mode = mode
        self.h, self.w, self.c, self.channels_first = input_layout(spec)
        self.lut = build_lut(spec, mean, std, self.c)
        self._plan: Resize | None = None
        self._fill = fill
        self._canvas = np.full((self.h, self.w, self.c), fill, np.uint8)
        self._resized = np.empty(0, np.uint8)
        # Apply the table the cheap way: cv2.LUT for 1-byte inputs, a multiply-add for floats.
        self._lut8: np.ndarray | None = None
        self._affine: tuple[Any, Any] | None = None
        self._lutf: np.ndarray | None = None
        if self.lut is not None:
            if self.lut.dtype.itemsize == 1:
                table = self.lut.view(np.uint8)  # int8 tables are applied as their bit patterns
                same = bool((table == table[0]).all())
                self._lut8 = np.ascontiguousarray(table[0] if same or self.c != 3 else table.T.reshape(256, 1, 3))
            else:
                m = np.broadcast_to(np.asarray(mean if mean is not None else (127.5,), np.float64), (self.c,))
                sd = np.broadcast_to(np.asarray(std if std is not None else (127.5,), np.float64), (self.c,))
                if np.all(m == m[0]) and np.all(sd == sd[0]):
                    # one scale and offset for every channel: numpy scalars, not a (3,) broadcast
                    # (a per-element broadcast over the channel axis is ten times slower)
                    self._affine = (self.lut.dtype.type(1.0 / sd[0]), self.lut.dtype.type(-m[0] / sd[0]))
                elif self.lut.dtype == np.float32:
                    # per-channel normalisation in one pass: cv2.LUT with a float table per channel
                    self._lutf = np.ascontiguousarray(self.lut.T.reshape(1, 256, self.c) if self.c > 1 else self.lut[0])
                else:
                    self._affine = ((1.0 / sd).astype(self.lut.dtype), (-m / sd).astype(self.lut.dtype))
        self._staging = np.empty(0, np.uint8)
        self._mid: np.ndarray | None = None
        self._mid_key: tuple[int, int, int, int] | None = None

    def plan(self, frame_w: int, frame_h: int) -> Resize:
        plan = self._plan
        if plan is None or plan.frame_w != frame_w or plan.frame_h != frame_h:
            plan = plan_resize(frame_w, frame_h, self.w, self.h, self.mode)
            self._plan = plan
            self._canvas.fill(self._fill)
            shape = (plan.new_h, plan.new_w, 3)
            self._resized = np.empty(shape, np.uint8)
            self._staging = np.empty((self.h, self.w, self.c), self.spec.dtype)
        return plan

    def _mid_buffer(self, image_w: int, image_h: int, plan: Resize) -> np.ndarray | None:
        """Shrinking by 2x or more with bilinear sampling aliases (fine texture turns into noise the model
        never saw). Area averaging avoids that but is slow at odd factors, so: bilinear to twice the
        size, then an exact 2x area step (within 1 grey level of a full area resize, at 0.4x its cost).
        This is the buffer of that middle step, for a picture of this size (a frame decoded smaller than
        the frame, `decode_reduced`, shrinks less), or None where it shrinks by less than 2x."""
        key = (image_w, image_h, plan.new_w, plan.new_h)
        if key != self._mid_key:
            self._mid_key = key
            shrink = min(plan.new_w / image_w, plan.new_h / image_h)
            self._mid = np.empty((2 * plan.new_h, 2 * plan.new_w, 3), np.uint8) if shrink < 0.5 else None
        return self._mid

    def __call__(self, frame_bgr: np.ndarray, out: np.ndarray, size: tuple[int, int] | None = None) -> Resize:
        """Fill `out` (the input tensor, batch dim included) from a BGR uint8 frame. `size`: the whole
        frame's (height, width) where the picture was decoded smaller than the frame: the returned
        `Resize` maps the model's boxes to the frame's own pixels all the same."""
        ih, iw = frame_bgr.shape[:2]
        fh, fw = size or (ih, iw)
        plan = self.plan(fw, fh)
        mid = self._mid_buffer(iw, ih, plan)
        direct = self.lut is None and not self.channels_first and self.c == 3 and self.mode == "stretch"
        target = out.reshape(self.h, self.w, self.c) if direct else self._canvas
        if frame_bgr.ndim == 2:
            frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
        if mid is not None:
            cv2.resize(frame_bgr, (2 * plan.new_w, 2 * plan.new_h), dst=mid, interpolation=cv2.INTER_LINEAR)
            cv2.resize(mid, (plan.new_w, plan.new_h), dst=self._resized, interpolation=cv2.INTER_AREA)
        else:
            cv2.resize(frame_bgr, (plan.new_w, plan.new_h), dst=self._resized, interpolation=cv2.INTER_LINEAR)
        roi = target[plan.pad_y : plan.pad_y + plan.new_h, plan.pad_x : plan.pad_x + plan.new_w]
        if self.c == 3:
            if roi.flags.c_contiguous:
                cv2.cvtColor(self._resized, cv2.COLOR_BGR2RGB, dst=roi)
            else:
                np.copyto(roi, self._resized[..., ::-1])
        else:
            np.copyto(roi, cv2.cvtColor(self._resized, cv2.COLOR_BGR2GRAY)[..., None])
        if direct:
            return plan
        src = self._canvas
        hwc = self._staging if self.channels_first else out.reshape(self.h, self.w, self.c)
        if self._lut8 is not None:
            cv2.LUT(src, self._lut8, dst=hwc.view(np.uint8))
        elif self._lutf is not None:
            cv2.LUT(src, self._lutf, dst=hwc)
        elif self._affine is not None:
            scale, offset = self._affine
            np.multiply(src, scale, out=hwc)
            np.add(hwc, offset, out=hwc)
        else:
            np.copyto(hwc, src)
        if self.channels_first:
            out.reshape(self.c, self.h, self.w)[...] = hwc.transpose(2, 0, 1)
        return plan
