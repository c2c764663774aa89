#!/usr/bin/env python3
"""Make the demo source: a short 640x480 MJPG video cut from real photos (scikit-image's).

Scenes: the astronaut photo panned and zoomed (a face), a cup of coffee (no face), the
cameraman (a face), and the astronaut small and moving across the rocket launch.

    python scripts/make_demo_video.py models/demo.avi
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

W, H, FPS = 640, 480, 15


def _bgr(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3][..., ::-1])


def _fit(img: np.ndarray, zoom: float, cx: float, cy: float) -> np.ndarray:
    """Crop around (cx, cy) (fractions) at `zoom` and resize to the frame, keeping 4:3."""
    h, w = img.shape[:2]
    ch = min(h, int(h / zoom))
    cw = min(w, int(ch * W / H))
    ch = int(cw * H / W)
    x = int(np.clip(cx * w - cw / 2, 0, w - cw))
    y = int(np.clip(cy * h - ch / 2, 0, h - ch))
    return cv2.resize(img[y : y + ch, x : x + cw], (W, H), interpolation=cv2.INTER_AREA)


def frames() -> list[np.ndarray]:
    import skimage.data as d

    astro, coffee, camera, rocket = (_bgr(x) for x in (d.astronaut(), d.coffee(), d.camera(), d.rocket()))
    out = []
    n = 4 * FPS
    for i in range(n):  # astronaut: slow zoom in toward the face
        t = i / (n - 1)
        out.append(_fit(astro, 1.0 + 0.6 * t, 0.5 - 0.05 * t, 0.5 - 0.2 * t))
    for i in range(2 * FPS):  # coffee: nothing to find
        out.append(_fit(coffee, 1.0 + 0.2 * i / (2 * FPS), 0.5, 0.5))
    n = 3 * FPS
    for i in range(n):  # cameraman: pan
        out.append(_fit(camera, 1.8, 0.3 + 0.3 * i / (n - 1), 0.4))
    n = 3 * FPS
    small = cv2.resize(astro, (200, 200), interpolation=cv2.INTER_AREA)
    for i in range(n):  # small astronaut moving over the rocket
        bg = _fit(rocket, 1.0, 0.5, 0.5).copy()
        x = int(20 + (W - 240) * i / (n - 1))
        bg[140:340, x : x + 200] = small
        out.append(bg)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dst", type=Path)
    args = ap.parse_args()
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.dst.with_name(args.dst.stem + ".tmp.avi")
    vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    if not vw.isOpened():
        print("cannot open a MJPG video writer", file=sys.stderr)
        return 1
    fs = frames()
    for f in fs:
        vw.write(f)
    vw.release()
    tmp.replace(args.dst)
    print(f"wrote {args.dst} ({len(fs)} frames, {W}x{H} @ {FPS} fps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
