#!/usr/bin/env python3
"""Turn a float image model into a fully int8 one with a real quantizer, and show how far the two agree.

Quantization: ai-edge-quantizer, static int8 weights and activations (int8 input and outputs),
calibrated on real images preprocessed exactly as the agent will (the model's own resize mode,
colour order and normalisation from its metadata or --mean/--std). Default calibration images:
scikit-image's bundled photos and scikit-learn's sample images; or a directory or glob.
Metadata (name, version, normalisation) and labels are carried over, so the agent needs no
settings to run the result.

Comparison (--compare, default: frames of the demo video, never used for calibration): the float
and the int8 model on the same inputs through the agent's own decoding: size ratio, speed ratio
(bare invoke loop, same threads), and agreement: detections matched greedily by IoU (mean IoU,
mean score difference, unmatched on either side) or top-1 class agreement.

    python scripts/quantize_model.py models/face_detection_full_range.tflite /tmp/full_int8.tflite \
        --fix-range 'regressors|classificators=12'
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.bench import agreement, demo_frames  # noqa: E402
from edge_agent.config import ModelConfig, RuntimeConfig  # noqa: E402
from edge_agent.model import Model  # noqa: E402
from edge_agent.modelfile import TensorSpec, build_metadata, read_model_file, rewrite_model  # noqa: E402
from edge_agent.preprocess import Preprocessor  # noqa: E402
from edge_agent.progress import Progress  # noqa: E402

#: Real photos that ship in scikit-image, in the order calibration uses them.
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "horse", "clock", "immunohistochemistry")


def photos(names: tuple[str, ...] = PHOTOS) -> list[np.ndarray]:
    """scikit-image's bundled photos, BGR as frames arrive."""
    import skimage.data as d

    out = []
    for name in names:
        img = getattr(d, name)()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        out.append(np.ascontiguousarray(img[..., ::-1]))
    return out


def default_images() -> list[np.ndarray]:
    """Real photos that ship in packages: scikit-image's, and scikit-learn's where it is installed."""
    out = photos()
    try:
        from sklearn.datasets import load_sample_images

        out += [np.ascontiguousarray(i[..., ::-1]) for i in load_sample_images().images]
    except ImportError:
        pass
    return out


def images_from(pattern: str) -> list[np.ndarray]:
    import cv2

    paths = sorted(glob.glob(str(Path(pattern) / "*")) if Path(pattern).is_dir() else glob.glob(pattern))
    imgs = [cv2.imread(p, cv2.IMREAD_COLOR) for p in paths]
    return [i for i in imgs if i is not None]


def augmented(base: list[np.ndarray], n: int, seed: int = 0) -> list[np.ndarray]:
    """Crops, flips and brightness changes: calibration should see the range real frames have."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = base[i % len(base)]
        h, w = img.shape[:2]
        s = rng.uniform(0.6, 1.0)
        ch, cw = int(h * s), int(w * s)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(
            np.ascontiguousarray(cv2.convertScaleAbs(crop, alpha=rng.uniform(0.7, 1.3), beta=rng.uniform(-20, 20)))
        )
    return out


def quantize(src: Path, frames: list[np.ndarray], model: Model, fix: list[tuple[str, float]]) -> bytes:
    """Frames preprocessed as the agent will (the model's resize mode and normalisation), then quantized."""
    spec = model.inputs[0]
    float_spec = TensorSpec(spec.name, spec.index, spec.shape, np.dtype(np.float32), 0.0, 0)
    meta = model.file.metadata
    pre = Preprocessor(float_spec, model.resize_mode, meta.mean or (127.5,), meta.std or (127.5,))  # type: ignore[arg-type]
    samples = []
    for f in frames:
        x = np.zeros(spec.shape, np.float32)
        pre(f, x)
        samples.append({spec.name: x})
    return quantize_inputs(src.read_bytes(), samples, fix)


def quantize_inputs(src: bytes, samples: list[dict[str, np.ndarray]], fix: list[tuple[str, float]]) -> bytes:
    """ai-edge-quantizer static int8 (weights and activations), calibrated on `samples` (input name -> array).

    fix: (regex, R) pairs; tensors whose name matches get the range [-R, R] instead of the calibrated one,
    where calibration's moving average would cut off what matters (e.g. score logits)."""
    from ai_edge_quantizer import quantizer, recipe

    with tempfile.TemporaryDirectory() as tmp:
        signed = Path(tmp, "signed.tflite")  # the quantizer calibrates by signature
        signed.write_bytes(rewrite_model(src, add_signature=True, fold_fp16=True))
        q = quantizer.Quantizer(str(signed))
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        qsv = q.calibrate({"serving_default": samples})
        for pattern, r in fix:
            for name, stats in qsv.items():
                if re.search(pattern, name):
                    stats["min"] = np.full_like(np.asarray(stats["min"]), -r)
                    stats["max"] = np.full_like(np.asarray(stats["max"]), r)
        out = Path(tmp, "int8.tflite")
        q.quantize(qsv).export_model(str(out), overwrite=True)
        return out.read_bytes()


def speed(path: Path, threads: int, seconds: float = 2.0) -> float:
    from edge_agent.runtime.cpu import InterpreterBackend

    be = InterpreterBackend(path, threads)
    be.invoke()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        be.invoke()
        n += 1
    be.close()
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--calibration", help="directory or glob of images (default: photos from scikit-image/learn)")
    ap.add_argument("--samples", type=int, default=96, help="calibration inputs (augmented from the images)")
    ap.add_argument(
        "--fix-range",
        action="append",
        default=[],
        metavar="REGEX=R",
        help="tensors whose name matches REGEX get the range [-R, R] instead of the calibrated one",
    )
    ap.add_argument("--labels", type=Path, help="labels file to embed (default: the source model's)")
    ap.add_argument("--compare", type=int, default=120, help="demo-video frames to compare float and int8 on (0: no)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    cpu = RuntimeConfig(accelerator="cpu", threads=args.threads)
    fmodel = Model(ModelConfig(path=args.src, labels=args.labels, isolated_check=False), cpu, None)
    base = images_from(args.calibration) if args.calibration else default_images()
    if not base:
        raise SystemExit("no calibration images")
    fix = [(p.rsplit("=", 1)[0], float(p.rsplit("=", 1)[1])) for p in args.fix_range]
    with Progress("calibration", 1) as bar:
        qbytes = quantize(args.src, augmented(base, args.samples), fmodel, fix)
        bar.update()
    meta = fmodel.file.metadata
    labels = list(fmodel.labels) if fmodel.labels else None
    blob = rewrite_model(
        qbytes,
        metadata=build_metadata(
            name=f"{args.src.stem}_int8",
            version=meta.version or "1",
            description=f"{args.src.name} fully int8 (ai-edge-quantizer static_wi8_ai8, {args.samples} calibration "
            f"inputs from {len(base)} real images)",
            mean=list(meta.mean) if meta.mean else None,
            std=list(meta.std) if meta.std else None,
            label_file="labels.txt" if labels else None,
            num_outputs=len(fmodel.outputs),
        ),
        files={"labels.txt": ("\n".join(labels) + "\n").encode()} if labels else None,
    )
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.dst.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(args.dst)
    report: dict[str, Any] = {"src": str(args.src), "dst": str(args.dst)}
    qfile = read_model_file(args.dst)
    report["size_ratio"] = round(qfile.size / fmodel.file.size, 3)
    if args.compare:
        qmodel = Model(ModelConfig(path=args.dst, isolated_check=False), cpu, None)
        fs, qs = speed(args.src, args.threads), speed(args.dst, args.threads)
        report["fps"] = {"float": round(fs, 1), "int8": round(qs, 1)}
        report["speed_ratio"] = round(qs / fs, 3)
        report["agreement"] = agreement(fmodel, qmodel, demo_frames(args.compare), ("float", "int8"))
        qmodel.close()
    fmodel.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
