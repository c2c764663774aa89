#!/usr/bin/env python3
"""How far a candidate model agrees with a serving one, frame by frame, as probation measures it.

Runs both models on every frame of a video (or a folder of images), compares what they found with
the measure the agent's shadow evaluation uses (`edge_agent.ota.shadow.agreement`), and prints the
mean, the worst tenth and the share of frames in full agreement: what a device would report in
`model/state` before the candidate takes over. A fleet operator can run it before a push.

    python benchmarks/shadow_agreement.py models/face_detection_short_range.tflite \\
        models/face_detection_short_range_int8.tflite --source models/demo.avi --frames 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.config import ModelConfig, RuntimeConfig  # noqa: E402
from edge_agent.model import Model  # noqa: E402
from edge_agent.ota.shadow import agreement  # noqa: E402
from edge_agent.sources import make_source  # noqa: E402
from edge_agent.sources.base import EndOfStream  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("serving", type=Path)
    ap.add_argument("candidate", type=Path)
    ap.add_argument("--source", default=str(ROOT / "models" / "demo.avi"))
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--iou", type=float, default=0.5, help="ota.agreement_iou")
    ap.add_argument("--candidate-threshold", type=float, default=None, help="the manifest's score_threshold")
    args = ap.parse_args()

    rt = RuntimeConfig(accelerator="cpu")
    old = Model(ModelConfig(path=args.serving), rt, None)
    upd = {"path": args.candidate}
    if args.candidate_threshold is not None:
        upd["score_threshold"] = args.candidate_threshold
    new = Model(ModelConfig.model_validate(upd), rt, None)
    from edge_agent.config import SourceConfig

    src = make_source(SourceConfig(uri=args.source, loop=False))
    scores: list[float] = []
    try:
        src.open()
        while len(scores) < args.frames:
            try:
                frame = src.read()
            except EndOfStream:
                break
            if frame is None:
                break
            scores.append(agreement(old.infer(frame).result, new.infer(frame).result, args.iou))
    finally:
        src.close()
        old.close()
        new.close()
    a = np.array(scores)
    print(json.dumps({
        "serving": args.serving.name,
        "candidate": args.candidate.name,
        "frames": int(a.size),
        "agreement": round(float(a.mean()), 4) if a.size else None,
        "agreement_p10": round(float(np.percentile(a, 10)), 4) if a.size else None,
        "frames_in_full_agreement": round(float((a == 1.0).mean()), 4) if a.size else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
