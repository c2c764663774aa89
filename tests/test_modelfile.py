"""Bad model files fail at start with the file named; metadata and labels are read from the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import ModelConfig, RuntimeConfig
from edge_agent.model import Model
from edge_agent.modelfile import ModelError, build_metadata, parse_labels, read_model_file, rewrite_model

from .conftest import SHORT, run_cli


def model(path: Path, accelerator: str = "cpu") -> Model:
    return Model(ModelConfig(path=path), RuntimeConfig(accelerator=accelerator), None)


@pytest.fixture
def good_bytes() -> bytes:
    return SHORT.read_bytes()


def test_missing_empty_garbage_truncated(tmp_path: Path, good_bytes: bytes) -> None:
    cases = {
        "empty.tflite": b"",
        "garbage.tflite": b"this is not a model at all" * 100,
        "jpeg.tflite": b"\xff\xd8\xff\xe0" + bytes(2000),
    }
    for cut in (16, 100, 1000, len(good_bytes) // 3, len(good_bytes) // 2, len(good_bytes) - 100):
        cases[f"trunc{cut}.tflite"] = good_bytes[:cut]
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ModelError) as err:
            model(p)
        assert str(p) in str(err.value), name
    with pytest.raises(ModelError, match="not found"):
        read_model_file(tmp_path / "absent.tflite")


@pytest.mark.emulation_slow(
    "hundreds of corrupted models loaded in child processes: each start costs seconds under qemu"
)
def test_random_corruption_never_crashes_the_process(tmp_path: Path, good_bytes: bytes) -> None:
    """Flipped bytes in the structure: a clear ModelError or a model that still loads, never a crash."""
    rng = np.random.default_rng(1234)
    outcomes = {"error": 0, "loaded": 0}
    for i in range(40):
        data = bytearray(good_bytes)
        for pos in rng.integers(0, 4096, size=8):  # the flatbuffer tables sit at the front
            data[pos] = int(rng.integers(0, 256))
        p = tmp_path / f"corrupt{i}.tflite"
        p.write_bytes(bytes(data))
        try:
            m = model(p)
            m.infer(np.zeros((48, 64, 3), np.uint8))
            outcomes["loaded"] += 1
        except ModelError as err:
            assert str(p) in str(err)
            outcomes["error"] += 1
    assert outcomes["error"] > 0


def test_run_with_truncated_model_exits_1_naming_the_file(tmp_path: Path, good_bytes: bytes) -> None:
    p = tmp_path / "half.tflite"
    p.write_bytes(good_bytes[: len(good_bytes) // 2])
    r = run_cli("run", "--model", str(p), "--source", "synthetic", "--sink", "stdout", "--seconds", "1",
                env={"EDGE_AGENT_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 1
    assert str(p) in r.stderr and "truncated" in r.stderr
    r2 = run_cli("check", "--offline", "--model", str(p), "--source", "synthetic")
    assert r2.returncode == 1 and str(p) in r2.stdout


def test_edgetpu_model_without_edgetpu_names_the_delegate(tmp_path: Path, good_bytes: bytes) -> None:
    p = tmp_path / "face_edgetpu.tflite"
    p.write_bytes(rewrite_model(good_bytes, custom_op="edgetpu-custom-op"))
    assert read_model_file(p).required_delegates() == ["libedgetpu.so.1 (Edge TPU)"]
    with pytest.raises(ModelError, match=r"libedgetpu\.so\.1 is not installed"):
        model(p)
    r = run_cli("run", "--model", str(p), "--source", "synthetic", "--sink", "stdout", "--seconds", "1",
                env={"EDGE_AGENT_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 1 and "libedgetpu.so.1" in r.stderr


def test_metadata_normalisation_and_labels_are_used(tmp_path: Path, good_bytes: bytes) -> None:
    meta = build_metadata("faces", "7", "test model", [127.5], [127.5], "labels.txt", num_outputs=2)
    p = tmp_path / "with_meta.tflite"
    p.write_bytes(rewrite_model(good_bytes, metadata=meta, files={"labels.txt": b"visage\n"}))
    mf = read_model_file(p)
    assert (mf.metadata.name, mf.metadata.version, mf.labels) == ("faces", "7", ("visage",))
    m = model(p)
    assert m.name == "faces" and m.version == "7" and m.labels == ("visage",)
    # different normalisation in the metadata changes what goes into the model
    odd = tmp_path / "odd_norm.tflite"
    odd.write_bytes(rewrite_model(good_bytes, metadata=build_metadata("x", "1", "", [0.0], [1.0], None)))
    assert model(odd).pre.lut is not None and float(model(odd).pre.lut[0, 255]) == 255.0


def test_label_file_formats() -> None:
    assert parse_labels("cat\ndog\n\n") == ("cat", "dog")
    assert parse_labels("0  person\n2 car\n") == ("person", "???", "car")
    assert parse_labels("1 two words\n0 zero\n") == ("zero", "two words")
    assert parse_labels("\ufeffperson\r\nbicycle\r\n") == ("person", "bicycle")  # as Notepad saves it
    # an index str.isdigit() takes and int() refuses is no index: the line is a label (a ValueError before)
    assert parse_labels("\u00b2 person\n") == ("\u00b2 person",)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("list.json", '["person", "car"]'),
        ("index.json", '{"0": "person", "1": "car"}'),
        ("metadata.json", '{"task": "detect", "names": {"0": "person", "1": "car"}, "imgsz": [640, 640]}'),
        ("labels.json", '{"labels": ["person", "car"]}'),
        ("data.yaml", "path: ../x\ntrain: images/train\nnames:\n  0: person\n  # the second\n  1: 'car'\nnc: 2\n"),
        ("list.yaml", "names:\n  - person\n  - car\n"),
        ("inline.yaml", "nc: 2\nnames: ['person', \"car\"]  # both\n"),
        ("labels.txt", "person\ncar\n"),
    ],
)
def test_a_labels_file_in_json_or_an_ultralytics_data_yaml_gives_its_names(
    name: str, text: str, tmp_path: Path
) -> None:
    """Labels come as JSON (a list, an index -> name table, an exporter's metadata) and, for YOLO users,
    as the dataset's data.yaml: read line by line, each line was a label ("{", "names:", "  0: person")."""
    from edge_agent.modelfile import load_labels

    path = tmp_path / name
    path.write_text(text)
    assert load_labels(path) == ("person", "car")


def test_a_json_file_with_no_labels_in_it_is_refused_naming_it(tmp_path: Path) -> None:
    """A wake-word model's settings file given as a detector's labels became its labels, a line each, and
    `check` said nothing: every detection was named `{` or `"type": "micro",`. It is refused, saying why,
    by the model, by `check` and by `fleet push --labels-file`."""
    from edge_agent.modelfile import load_labels

    settings = tmp_path / "alexa.json"
    settings.write_text('{"type": "micro", "wake_word": "Alexa", "micro": {"probability_cutoff": 0.9}}\n')
    with pytest.raises(ModelError, match=r"alexa\.json: JSON without labels in it"):
        load_labels(settings)
    (tmp_path / "cut.json").write_text('{"names": ["person", ')
    with pytest.raises(ModelError, match=r"cut\.json: starts as JSON but is not JSON"):
        load_labels(tmp_path / "cut.json")
    r = run_cli("check", "--offline", "--source", "synthetic", "--model", str(SHORT), "--labels", str(settings))
    assert r.returncode == 1 and "alexa.json: JSON without labels in it" in r.stdout, r.stdout + r.stderr
    r = run_cli("fleet", "push", str(SHORT), "--version", "1", "--url", "http://x/m", "--device", "d",
                "--labels-file", str(settings))
    assert r.returncode == 2 and "--labels-file: labels file" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_labels_that_would_fill_millions_of_gaps_are_refused(tmp_path: Path, good_bytes: bytes) -> None:
    """'index label' pairs fill the gaps below the largest index: a file saying "999999999 person" (a
    typo, or a model file from anywhere with such a file inside) built a tuple of a billion labels,
    gigabytes, as the model loaded. An index of MAX_LABELS or more is refused, and a labels file inside
    a model is read only up to a bound (a zip member is inflated whole)."""
    from edge_agent.modelfile import MAX_LABELS

    assert len(parse_labels(f"{MAX_LABELS - 1} last\n")) == MAX_LABELS
    with pytest.raises(ModelError, match=r"index 1000000 \(a model has at most 100000 labels\)"):
        parse_labels("1000000 person\n")
    meta = build_metadata("faces", "7", "test model", [127.5], [127.5], "labels.txt", num_outputs=2)
    big = tmp_path / "big_labels.tflite"
    big.write_bytes(rewrite_model(good_bytes, metadata=meta, files={"labels.txt": b"x\n" * (3 << 20)}))
    with pytest.raises(ModelError, match=r"labels file labels\.txt in the model: 6291456 bytes"):
        read_model_file(big)
