#!/usr/bin/env python3
"""Make the project's fully int8 BlazeFace: ai-edge-quantizer, calibrated on real photos.

Calibration uses augmented crops of scikit-image's bundled photos (scaled, shifted, flipped
and brightness-varied), preprocessed exactly as the agent does (letterbox, RGB, [-1, 1]).
The result has int8 input and outputs, TFLite metadata (name, version, normalisation) and a
packed labels file, so the agent needs no settings to run it.

    python scripts/quantize_blazeface.py models/face_detection_short_range.tflite \
        models/face_detection_short_range_int8.tflite
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.modelfile import TensorSpec, build_metadata, rewrite_model
from edge_agent.preprocess import Preprocessor
from edge_agent.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantize_model

MEAN, STD = [127.5], [127.5]
#: sigmoid(±12) is 0.999994 / 0.000006: scores beyond that range carry no information.
SCORE_LOGIT_RANGE = 12.0


def photos() -> list[np.ndarray]:
    """The bundled photos in this script's order (FACES below indexes into it)."""
    return quantize_model.photos(
        ("astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry", "horse", "clock")
    )


#: Face boxes (x1, y1, x2, y2) in the bundled photos that have one: calibration must see
#: faces, or the score output's range stops at "no face" and every score reads 0.5.
FACES = {0: (175, 70, 280, 175), 1: (180, 120, 265, 205)}


def calibration_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    base = photos()
    frames = []
    for i in range(n):
        k = i % (2 * len(base))
        k = k if k < len(base) else k % len(FACES)  # half of the samples hold a face
        img = base[k]
        h, w = img.shape[:2]
        s = rng.uniform(0.5, 1.0)
        ch, cw = int(h * s), int(w * s)
        if k in FACES:  # keep the whole face inside the crop
            x1, y1, x2, y2 = FACES[k]
            ch, cw = max(ch, y2 - y1 + 8), max(cw, x2 - x1 + 8)
            y = rng.integers(max(0, y2 - ch), min(y1, h - ch) + 1)
            x = rng.integers(max(0, x2 - cw), min(x1, w - cw) + 1)
        else:
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = cv2.convertScaleAbs(crop, alpha=rng.uniform(0.7, 1.3), beta=rng.uniform(-20, 20))
        frames.append(np.ascontiguousarray(crop))
    return frames


def score_path_tensors(model: bytes, outputs: list[str]) -> list[str]:
    """Tensors on the way to the score outputs through ops that only move data (reshape, concat)."""
    from ai_edge_litert import schema_py_generated as s

    m = s.Model.GetRootAs(model, 0)
    sg = m.Subgraphs(0)
    names = [sg.Tensors(i).Name().decode() for i in range(sg.TensorsLength())]
    passthrough = {s.BuiltinOperator.RESHAPE, s.BuiltinOperator.CONCATENATION}
    producer = {}
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        oc = m.OperatorCodes(op.OpcodeIndex())
        for t in op.OutputsAsNumpy():
            producer[int(t)] = (max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), [int(x) for x in op.InputsAsNumpy()])
    todo = [names.index(n) for n in outputs]
    seen: list[str] = []
    while todo:
        t = todo.pop()
        seen.append(names[t])
        code, inputs = producer.get(t, (None, []))
        if code in passthrough:
            todo.extend(
                x
                for x in inputs
                if (x >= 0 and sg.Tensors(x).Buffer() == 0)
                or (x >= 0 and not m.Buffers(sg.Tensors(x).Buffer()).DataLength())
            )
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--samples", type=int, default=96)
    args = ap.parse_args()

    from ai_edge_litert.interpreter import Interpreter

    src_bytes = args.src.read_bytes()
    it = Interpreter(model_content=src_bytes)
    d = it.get_input_details()[0]
    spec = TensorSpec(d["name"], d["index"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]), 0.0, 0)
    pre = Preprocessor(spec, "letterbox", tuple(MEAN), tuple(STD))
    samples = []
    bar = Progress("calibration frames", args.samples)
    for frame in calibration_frames(args.samples):
        bar.update()
        x = np.zeros(spec.shape, np.float32)
        pre(frame, x)
        samples.append({spec.name: x})
    bar.close()
    # Score logits span about [-100, 5], and calibration's moving average pulls the top
    # toward "no face"; a fixed symmetric range keeps resolution where the threshold is.
    score_outputs = [o["name"] for o in it.get_output_details() if o["shape"][-1] == 1]
    signed = rewrite_model(src_bytes, add_signature=True, fold_fp16=True)
    fixed = [(f"^{re.escape(n)}$", SCORE_LOGIT_RANGE) for n in score_path_tensors(signed, score_outputs)]
    qbytes = quantize_model.quantize_inputs(src_bytes, samples, fixed)

    meta = build_metadata(
        name=f"{args.src.stem}_int8",
        version="1",
        description=f"{args.src.name} fully int8-quantized (ai-edge-quantizer static_wi8_ai8, "
        f"{args.samples} calibration photos)",
        mean=MEAN,
        std=STD,
        label_file="labels.txt",
        num_outputs=2,
    )
    final = rewrite_model(qbytes, metadata=meta, files={"labels.txt": b"face\n"})
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp_dst = args.dst.with_suffix(".tmp")
    tmp_dst.write_bytes(final)
    tmp_dst.replace(args.dst)
    print(f"wrote {args.dst} ({len(final)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
