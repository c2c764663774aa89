#!/usr/bin/env python3
"""Train the project's activity model on BasicMotions and write it as float and fully int8 LiteRT models.

Data: BasicMotions (smart-watch 3-axis accelerometer and gyroscope at 10 Hz, four activities:
Standing, Running, Walking, Badminton; 40 recordings to train on, 40 held out), as it ships in
the `sktime` wheel (taken with `pip download --no-deps` by scripts/fetch_models.py).

Model: a window of WINDOW samples x 6 channels in physical units -> a small two-layer network
-> four class probabilities. The per-channel standardisation is folded into the first layer, so
the agent feeds raw sensor values. Trained with numpy (seeded), written with LiteRT's flatbuffer
schema, then int8-quantized by ai-edge-quantizer (static int8 weights and activations),
calibrated on training windows. Prints accuracy on the held-out recordings for both models.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.modelfile import build_metadata, rewrite_model  # noqa: E402
from edge_agent.progress import Progress  # noqa: E402

DATA = ROOT / ".cache" / "basicmotions"
CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
LABELS = ("Standing", "Running", "Walking", "Badminton")
RATE_HZ = 10.0
WINDOW = 30  # 3 s at 10 Hz
HIDDEN = 32


def load_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A .ts file (sktime's format): per line, one comma list per dimension, ':'-separated, then the label."""
    xs, ys = [], []
    body = False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower() == "@data":
            body = True
            continue
        if not body:
            continue
        *dims, label = line.split(":")
        xs.append(np.array([[float(v) for v in d.split(",")] for d in dims], np.float32).T)  # [T, C]
        ys.append(LABELS.index(label))
    return np.stack(xs), np.array(ys)


def windows(series: np.ndarray, hop: int) -> np.ndarray:
    return np.stack([series[s : s + WINDOW] for s in range(0, len(series) - WINDOW + 1, hop)])


class MLP:
    def __init__(self, n_in: int, rng: np.random.Generator):
        self.w1 = (rng.standard_normal((n_in, HIDDEN)) * np.sqrt(2 / n_in)).astype(np.float32)
        self.b1 = np.zeros(HIDDEN, np.float32)
        self.w2 = (rng.standard_normal((HIDDEN, len(LABELS))) * np.sqrt(2 / HIDDEN)).astype(np.float32)
        self.b2 = np.zeros(len(LABELS), np.float32)

    def params(self) -> list[np.ndarray]:
        return [self.w1, self.b1, self.w2, self.b2]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.maximum(x @ self.w1 + self.b1, 0)
        z = h @ self.w2 + self.b2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return h, e / e.sum(axis=1, keepdims=True)


def train(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 300, lr: float = 3e-3, l2: float = 1e-3) -> MLP:
    rng = np.random.default_rng(seed)
    m = MLP(x.shape[1], rng)
    ps = m.params()
    mom = [np.zeros_like(p) for p in ps]
    vel = [np.zeros_like(p) for p in ps]
    t = 0
    bar = Progress("training epochs", epochs)
    for _ in range(epochs):
        bar.update()
        order = rng.permutation(len(x))
        for s in range(0, len(x), 64):
            idx = order[s : s + 64]
            xb, yb = x[idx] + rng.normal(0, 0.05, x[idx].shape).astype(np.float32), y[idx]
            h, p = m.forward(xb)
            g = p.copy()
            g[np.arange(len(yb)), yb] -= 1
            g /= len(yb)
            gw2, gb2 = h.T @ g + l2 * m.w2, g.sum(0)
            gh = (g @ m.w2.T) * (h > 0)
            gw1, gb1 = xb.T @ gh + l2 * m.w1, gh.sum(0)
            t += 1
            for i, (p_, g_) in enumerate(zip(ps, (gw1, gb1, gw2, gb2), strict=True)):
                mom[i] = 0.9 * mom[i] + 0.1 * g_
                vel[i] = 0.999 * vel[i] + 0.001 * g_ * g_
                p_ -= lr * (mom[i] / (1 - 0.9**t)) / (np.sqrt(vel[i] / (1 - 0.999**t)) + 1e-8)
    bar.close()
    return m


def build_tflite(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> bytes:
    """input [1, WINDOW, 6] -> RESHAPE [1, WINDOW*6] -> FULLY_CONNECTED+RELU -> FULLY_CONNECTED -> SOFTMAX."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT()
    model.version = 3
    model.description = "edge-agent activity model (BasicMotions)"
    buffers: list = [s.BufferT()]  # buffer 0: the empty sentinel

    def buffer(arr: np.ndarray | None) -> int:
        b = s.BufferT()
        if arr is not None:
            b.data = np.frombuffer(np.ascontiguousarray(arr).tobytes(), np.uint8)
        buffers.append(b)
        return len(buffers) - 1

    tensors: list = []

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None, dtype: int = s.TensorType.FLOAT32) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type = name, shape, dtype
        t.buffer = buffer(data) if data is not None else buffer(None)
        tensors.append(t)
        return len(tensors) - 1

    n_in = WINDOW * len(CHANNELS)
    x = tensor("window", [1, WINDOW, len(CHANNELS)])
    shape = tensor("flat_shape", [2], np.array([1, n_in], np.int32), s.TensorType.INT32)
    flat = tensor("flat", [1, n_in])
    k1 = tensor("dense1/kernel", [HIDDEN, n_in], w1.T.astype(np.float32))
    c1 = tensor("dense1/bias", [HIDDEN], b1.astype(np.float32))
    h = tensor("dense1", [1, HIDDEN])
    k2 = tensor("dense2/kernel", [len(LABELS), HIDDEN], w2.T.astype(np.float32))
    c2 = tensor("dense2/bias", [len(LABELS)], b2.astype(np.float32))
    logits = tensor("logits", [1, len(LABELS)])
    probs = tensor("probabilities", [1, len(LABELS)])

    codes = []
    for op in (s.BuiltinOperator.RESHAPE, s.BuiltinOperator.FULLY_CONNECTED, s.BuiltinOperator.SOFTMAX):
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = op, op, 1
        codes.append(oc)

    def operator(code: int, ins: list[int], outs: list[int], opt_type: int = 0, opts: object = None) -> object:
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code, ins, outs
        if opts is not None:
            o.builtinOptionsType, o.builtinOptions = opt_type, opts
        return o

    fc_relu = s.FullyConnectedOptionsT()
    fc_relu.fusedActivationFunction = s.ActivationFunctionType.RELU
    fc = s.FullyConnectedOptionsT()
    sm = s.SoftmaxOptionsT()
    sm.beta = 1.0
    rs = s.ReshapeOptionsT()
    rs.newShape = [1, n_in]
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.name = tensors, [x], [probs], "main"
    sg.operators = [
        operator(0, [x, shape], [flat], s.BuiltinOptions.ReshapeOptions, rs),
        operator(1, [flat, k1, c1], [h], s.BuiltinOptions.FullyConnectedOptions, fc_relu),
        operator(1, [h, k2, c2], [logits], s.BuiltinOptions.FullyConnectedOptions, fc),
        operator(2, [logits], [probs], s.BuiltinOptions.SoftmaxOptions, sm),
    ]
    model.operatorCodes, model.subgraphs, model.buffers = codes, [sg], buffers
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def run(model: bytes, xs: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for x in xs:
        if i["dtype"] != np.float32:
            sc, zp = i["quantization"]
            x = np.clip(np.round(x / sc + zp), -128, 127).astype(i["dtype"])
        it.set_tensor(i["index"], x[None].astype(i["dtype"]))
        it.invoke()
        y = it.get_tensor(o["index"])[0]
        if o["dtype"] != np.float32:
            sc, zp = o["quantization"]
            y = (y.astype(np.float32) - zp) * sc
        out.append(y)
    return np.stack(out)


def quantize(float_model: bytes, calibration: np.ndarray) -> bytes:
    from ai_edge_quantizer import quantizer, recipe

    with tempfile.TemporaryDirectory() as tmp:
        signed = Path(tmp, "signed.tflite")
        signed.write_bytes(rewrite_model(float_model, add_signature=True))
        q = quantizer.Quantizer(str(signed))
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        qsv = q.calibrate({"serving_default": [{"window": x[None]} for x in calibration]})
        out = Path(tmp, "int8.tflite")
        q.quantize(qsv).export_model(str(out), overwrite=True)
        return out.read_bytes()


def with_metadata(model: bytes, name: str, description: str) -> bytes:
    meta = build_metadata(
        name=name, version="1", description=description, mean=None, std=None, label_file="labels.txt", num_outputs=1
    )
    return rewrite_model(model, metadata=meta, files={"labels.txt": ("\n".join(LABELS) + "\n").encode()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "models", help="directory for the .tflite files")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the accuracy report here")
    args = ap.parse_args()

    xtr, ytr = load_ts(args.data / "BasicMotions_TRAIN.ts")
    xte, yte = load_ts(args.data / "BasicMotions_TEST.ts")
    wtr = np.concatenate([windows(s, 2) for s in xtr])
    ltr = np.concatenate([[y] * len(windows(s, 2)) for s, y in zip(xtr, ytr, strict=True)])
    mean = wtr.reshape(-1, len(CHANNELS)).mean(0)
    std = wtr.reshape(-1, len(CHANNELS)).std(0) + 1e-6
    norm = ((wtr - mean) / std).reshape(len(wtr), -1)
    m = train(norm, ltr, args.seed)
    # fold the standardisation into the first layer: the model takes raw sensor units
    inv = np.tile(1.0 / std, WINDOW).astype(np.float32)
    w1 = m.w1 * inv[:, None]
    b1 = m.b1 - (np.tile(mean, WINDOW).astype(np.float32) * inv) @ m.w1

    float_model = build_tflite(w1, b1, m.w2, m.b2)
    rng = np.random.default_rng(args.seed)
    int8_model = quantize(float_model, wtr[rng.choice(len(wtr), 200, replace=False)])

    wte = [windows(s, 10) for s in xte]
    flat_te = np.concatenate(wte)
    lte = np.concatenate([[y] * len(w) for w, y in zip(wte, yte, strict=True)])
    report: dict[str, object] = {"windows_test": len(flat_te), "recordings_test": len(xte), "window": WINDOW}
    for name, blob in (("float", float_model), ("int8", int8_model)):
        p = run(blob, flat_te)
        win_acc = float((p.argmax(1) == lte).mean())
        per_rec, start = [], 0
        for w in wte:
            per_rec.append(int(p[start : start + len(w)].mean(0).argmax()))
            start += len(w)
        rec_acc = float((np.array(per_rec) == yte).mean())
        report[name] = {
            "window_accuracy": round(win_acc, 4),
            "recording_accuracy": round(rec_acc, 4),
            "bytes": len(blob),
        }
        if name == "float":
            ref = p
        else:
            report["int8_agrees_with_float"] = round(float((p.argmax(1) == ref.argmax(1)).mean()), 4)
            report["int8_max_prob_diff"] = round(float(np.abs(p - ref).max()), 4)
    args.out.mkdir(parents=True, exist_ok=True)
    desc = f"BasicMotions activity, {WINDOW} samples x {len(CHANNELS)} channels ({', '.join(CHANNELS)}) at 10 Hz"
    for name, blob in (("motion_float", float_model), ("motion_int8", int8_model)):
        path = args.out / f"{name}.tflite"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(
            with_metadata(blob, name, desc + (", int8 (ai-edge-quantizer static_wi8_ai8)" if "int8" in name else ""))
        )
        tmp.replace(path)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
