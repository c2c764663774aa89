"""Snapshots: the best frame of an object event as a JPEG, its box drawn so anyone can read it.

The label sits on a filled box of the box's colour with text in black or white, whichever contrasts
more, so it is legible on any background. The JPEG is scaled to `max_width` and its quality lowered
step by step until it fits `max_bytes` (a retained MQTT message stays small for every subscriber).
Files on disk are bounded by count; a full or read-only disk costs the files, never the detection.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import SnapshotConfig

log = logging.getLogger(__name__)

#: Box colours (BGR) by label, stable across runs: the label's own hash picks one.
_PALETTE = ((0, 200, 255), (255, 160, 0), (60, 220, 60), (220, 60, 220), (40, 40, 240), (240, 240, 60))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def colour_for(label: str) -> tuple[int, int, int]:
    return _PALETTE[sum(label.encode()) % len(_PALETTE)]


def luminance(bgr: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of BGR colours (the last axis), 0 to 1."""
    c = np.asarray(bgr, np.float64) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.0722, 0.7152, 0.2126])


def _luminance(bgr: tuple[int, int, int]) -> float:
    return float(luminance(np.array(bgr)))


def contrast(pixels: np.ndarray) -> float:
    """WCAG contrast ratio between the darkest and the lightest of some BGR pixels (a label's text and
    fill), robust to a few stray ones: how the tests and benchmarks/live_view.py measure legibility."""
    lum = luminance(pixels.reshape(-1, 3))
    return float((np.percentile(lum, 97) + 0.05) / (np.percentile(lum, 3) + 0.05))


BGR = tuple[int, int, int]


def label_colours(colour: BGR, target: float = 7.0) -> tuple[BGR, BGR]:
    """(fill, text) for a label in `colour`: black or white text, whichever contrasts more, on the colour
    lightened or darkened just enough for a WCAG contrast of `target` (7: legible after JPEG too)."""
    black = (_luminance(colour) + 0.05) / 0.05
    white = 1.05 / (_luminance(colour) + 0.05)
    text, toward = ((0, 0, 0), 255) if black >= white else ((255, 255, 255), 0)
    fill = colour
    for step in range(11):
        fill = tuple(round(c + (toward - c) * step / 10) for c in colour)  # type: ignore[assignment]
        lum = _luminance(fill)
        ratio = (lum + 0.05) / 0.05 if toward == 255 else 1.05 / (lum + 0.05)
        if ratio >= target:
            break
    return fill, text


def draw_box(
    img: np.ndarray, box: tuple[float, float, float, float], text: str, colour: tuple[int, int, int]
) -> tuple[int, int, int, int]:
    """A box and a filled label above it (inside the frame when the box touches the top), its text black
    or white, whichever stands out on the box's colour; returns the label's rectangle (x1, y1, x2, y2)."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, x2 = max(0, min(w - 1, x1)), max(0, min(w - 1, x2))
    y1, y2 = max(0, min(h - 1, y1)), max(0, min(h - 1, y2))
    thick = max(2, round(min(h, w) / 240))
    cv2.rectangle(img, (x1, y1), (x2, y2), colour, thick)
    scale = max(0.5, min(h, w) / 640)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, max(1, thick // 2))
    pad = max(2, thick)
    top = y1 - th - base - 2 * pad
    if top < 0:
        top = min(h - th - base - 2 * pad, y1 + thick)
    left = max(0, min(w - tw - 2 * pad, x1))
    fill, ink = label_colours(colour)
    cv2.rectangle(img, (left, top), (left + tw + 2 * pad, top + th + base + 2 * pad), fill, cv2.FILLED)
    cv2.putText(img, text, (left + pad, top + pad + th), _FONT, scale, ink, max(1, thick // 2), cv2.LINE_AA)
    return left, top, left + tw + 2 * pad, top + th + base + 2 * pad


def draw_banner(img: np.ndarray, text: str) -> tuple[int, int, int, int]:
    """White text on a black band in the top-left corner (frame number and time); returns its rectangle."""
    h, w = img.shape[:2]
    scale = max(0.5, min(h, w) / 640)
    thick = max(1, round(scale))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = 4
    rect = (0, 0, min(w, tw + 2 * pad), min(h, th + base + 2 * pad))
    cv2.rectangle(img, rect[:2], (rect[2], rect[3]), (0, 0, 0), cv2.FILLED)
    cv2.putText(img, text, (pad, pad + th), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return rect


def fit_jpeg(img: np.ndarray, max_width: int, quality: int, max_bytes: int) -> bytes:
    """Encode at `quality`, lowering it (and then the size) until the JPEG fits `max_bytes`."""
    if img.shape[1] > max_width:
        f = max_width / img.shape[1]
        img = cv2.resize(img, (max_width, max(1, round(img.shape[0] * f))), interpolation=cv2.INTER_AREA)
    q = quality
    while True:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise ValueError("JPEG encoding failed")
        if buf.nbytes <= max_bytes:
            return buf.tobytes()
        if q > 30:
            q -= 15
        elif img.shape[1] > 64:
            img = cv2.resize(img, (max(64, img.shape[1] * 3 // 4), max(1, img.shape[0] * 3 // 4)))
        else:
            return buf.tobytes()


@dataclass(frozen=True)
class Best:
    """The picture an event's snapshot comes from, and the object's box in it: the camera frame as it
    was, or (`compact`) what the snapshot shows of it, the object's surroundings with `crop`, at most
    `max_width` wide."""

    image: np.ndarray
    box: tuple[float, float, float, float]  # pixels of `image`
    score: float
    ts: float
    compact: bool = False

    def compacted(self, cfg: SnapshotConfig) -> Best:
        return self if self.compact else Best.take(self.image, self.box, self.score, self.ts, cfg)

    @classmethod
    def take(
        cls, frame: np.ndarray, box: tuple[float, float, float, float], score: float, ts: float, cfg: SnapshotConfig
    ) -> Best:
        """The part of `frame` the snapshot will show, scaled down to `max_width`: what an object holds
        once its best has stood a while (`SceneStage._compact` says why). A frame no wider than that is
        held as it is, not copied."""
        h, w = frame.shape[:2]
        x1, y1, x2, y2 = box
        img = frame
        if cfg.crop:
            bw, bh = x2 - x1, y2 - y1
            cx1, cy1 = max(0, int(x1 - bw * 0.5)), max(0, int(y1 - bh * 0.5))
            cx2, cy2 = max(cx1 + 1, min(w, int(x2 + bw * 0.5) + 1)), max(cy1 + 1, min(h, int(y2 + bh * 0.5) + 1))
            img = frame[cy1:cy2, cx1:cx2]
            x1, y1, x2, y2 = x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1
        if img.shape[1] > cfg.max_width:
            f = cfg.max_width / img.shape[1]
            img = cv2.resize(img, (cfg.max_width, max(1, round(img.shape[0] * f))), interpolation=cv2.INTER_AREA)
            x1, y1, x2, y2 = x1 * f, y1 * f, x2 * f, y2 * f
        elif img is not frame:
            img = img.copy()  # a view would keep the whole frame alive
        return cls(img, (x1, y1, x2, y2), score, ts, compact=True)


def render(best: Best, label: str, cfg: SnapshotConfig) -> bytes:
    best = best.compacted(cfg)
    img = best.image.copy()
    draw_box(img, best.box, f"{label} {best.score:.0%}", colour_for(label))
    return fit_jpeg(img, cfg.max_width, cfg.jpeg_quality, cfg.max_bytes)


class SnapshotStore:
    """`{dir}/{event id}.jpg`, at most `keep` files; failures are counted and reported, not raised."""

    def __init__(self, directory: Path, keep: int):
        self.dir = directory
        self.keep = keep
        self.saved = 0
        self.error: str | None = None

    def save(self, name: str, jpeg: bytes) -> Path | None:
        if self.keep == 0:
            return None
        path = self.dir / f"{name}.jpg"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)
            self._prune()
        except OSError as err:
            if self.error is None:
                log.error("snapshots: cannot write %s: %s (detection goes on)", path, err)
            self.error = f"{type(err).__name__}: {err.strerror or err}"
            return None
        self.saved += 1
        self.error = None
        return path

    def _prune(self) -> None:
        files = sorted(self.dir.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.keep)]:
            old.unlink(missing_ok=True)

    def listing(self) -> list[dict[str, object]]:
        try:
            files = sorted(self.dir.glob("*.jpg"), key=lambda p: p.stat().st_mtime, reverse=True)
            return [{"name": p.name, "bytes": p.stat().st_size, "mtime": p.stat().st_mtime} for p in files]
        except OSError:
            return []
