"""One CLI, one set of rules: every command reads the same settings, lists have one syntax, typos get a
suggestion, a terminal gets text and a pipe gets JSON, and the native runtime's chatter stays off it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import DEMO_VIDEO, MODELS, ROOT, SHORT, SHORT_INT8, Broker, free_port, run_cli
from .conftest import run_tty as _tty


@pytest.fixture(scope="module")
def face_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skimage.data as d

    img = tmp_path_factory.mktemp("cli") / "astronaut.png"
    cv2.imwrite(str(img), d.astronaut()[..., ::-1])
    return img


def test_a_terminal_gets_text_a_pipe_gets_json_and_no_runtime_chatter(face_image: Path) -> None:
    rc, out, err = _tty("check", "--source", "synthetic", "--model", str(SHORT), "--accelerator", "cpu", "--offline")
    assert rc == 0, out + err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["config", "ok"] and lines[-1].split() == ["problems", "none"]
    assert any(line.startswith("model ") and "face_detection_short_range" in line for line in lines)
    assert not out.lstrip().startswith("{")
    rc, out, err = _tty("predict", str(SHORT), str(face_image), "--accelerator", "cpu")
    assert rc == 0 and out.startswith(f"{face_image}: face 0.") and " ms)" in out, out + err
    assert "XNNPACK" not in out + err  # the runtime's "Created ... delegate" line stays off the console
    rc, out, _ = _tty("inspect", str(SHORT_INT8))
    assert rc == 0 and "layout    blazeface" in out and "labels    face" in out
    rc, out, _ = _tty("config", "--set", "mqtt.qos=0")
    assert rc == 0 and "mqtt.qos = 0" in out.splitlines()
    # --json asks for the machine form at a terminal too; a pipe always gets it
    rc, out, _ = _tty("inspect", str(SHORT_INT8), "--json")
    assert json.loads(out)["detected_layout"] == "blazeface"
    piped = run_cli("predict", str(SHORT), str(face_image), "--accelerator", "cpu")
    assert json.loads(piped.stdout)["detections"][0]["label"] == "face"
    assert "XNNPACK" not in piped.stdout + piped.stderr


def test_words_from_elsewhere_reach_a_terminal_without_their_escape_sequences(face_image: Path, tmp_path: Path) -> None:
    """What a command prints for a person holds words it did not write: a model's labels, a device's
    reason. A labels file whose label carries an escape sequence (it would retitle the window, clear
    the screen) is printed with its control characters written out as JSON writes them; the JSON form
    carries the label as it is."""
    labels = tmp_path / "labels.txt"
    labels.write_text("fa\x1b]0;owned\x07ce\x1b[2J\n")
    rc, out, err = _tty("predict", str(SHORT), str(face_image), "--accelerator", "cpu", "--labels", str(labels))
    assert rc == 0 and "fa\\u001b]0;owned\\u0007ce\\u001b[2J 0." in out, out + err
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    piped = run_cli("predict", str(SHORT), str(face_image), "--accelerator", "cpu", "--labels", str(labels))
    assert json.loads(piped.stdout)["detections"][0]["label"] == "fa\x1b]0;owned\x07ce\x1b[2J"


def test_predict_inspect_and_bench_read_the_same_settings_as_run(face_image: Path, tmp_path: Path) -> None:
    def faces(*extra: str, env: dict[str, str] | None = None) -> int:
        r = run_cli("predict", str(SHORT), str(face_image), *extra, env=env)
        assert r.returncode == 0, r.stderr
        return len(json.loads(r.stdout)["detections"])

    assert faces() >= 1
    assert faces(env={"EDGE_AGENT_MODEL__SCORE_THRESHOLD": "0.9999"}) == 0
    assert faces("--set", "model.score_threshold=0.9999") == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[model]\nscore_threshold = 0.9999\n")
    assert faces("--config", str(cfg)) == 0
    assert faces("--config", str(cfg), "--score-threshold", "0.3") >= 1  # a flag wins over the file
    for cmd in (["predict", str(SHORT), str(face_image)], ["inspect", str(SHORT)], ["bench", "--seconds", "0.1"],
                ["check", "--offline"], ["config"], ["listen", "--seconds", "0.1"]):
        bad = run_cli(*cmd, env={"EDGE_AGENT_MODEL__BOGUS": "1"})
        assert bad.returncode == 2 and "EDGE_AGENT_MODEL__BOGUS: unknown setting" in bad.stderr, (cmd, bad.stderr)


def test_a_malformed_list_exits_2_naming_the_key_and_the_syntax(tmp_path: Path) -> None:
    env = run_cli("config", env={"EDGE_AGENT_HOMEASSISTANT__LABELS": "person,cat"})
    assert env.returncode == 2 and "Traceback" not in env.stderr
    assert "EDGE_AGENT_HOMEASSISTANT__LABELS: not valid JSON" in env.stderr and '["a", "b"]' in env.stderr
    flag = run_cli("config", "--set", "homeassistant.labels=person,cat")
    assert flag.returncode == 2 and "homeassistant.labels: Input should be a valid list" in flag.stderr
    assert """--set 'homeassistant.labels=["a", "b"]'""" in flag.stderr
    cfg = tmp_path / "l.toml"
    cfg.write_text('[homeassistant]\nlabels = "person"\n')
    toml = run_cli("config", "--config", str(cfg))
    assert toml.returncode == 2 and "homeassistant.labels" in toml.stderr
    good = run_cli("config", "--set", 'homeassistant.labels=["person", "cat"]', "--set", "homeassistant.enabled=true",
                   "--json")
    assert json.loads(good.stdout)["homeassistant"]["labels"] == ["person", "cat"]


def test_describe_has_a_header_and_every_choice() -> None:
    r = run_cli("config", "--describe")
    lines = r.stdout.splitlines()
    assert lines[0].split("\t") == ["key", "environment variable", "default", "description"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert rows["outbox.policy"][3].endswith("One of: drop_oldest, drop_newest, downsample.")
    assert "One of: bottom_center, center." in rows["scene.anchor"][3]
    assert "JSON in the environment and --set" in rows["homeassistant.labels"][3]
    # one setting, or a table's, rather than 195 rows to search: a mistyped one gets the closest
    tls = run_cli("config", "--describe", "mqtt.tls").stdout.splitlines()
    assert tls[0] == lines[0] and [line.split("\t")[0] for line in tls[1:]] == [
        "mqtt.tls.enabled", "mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file", "mqtt.tls.insecure"]
    zones = [line.split("\t")[0] for line in run_cli("config", "--describe", "scene.zones").stdout.splitlines()[1:]]
    assert zones[0] == "scene.zones" and "scene.zones[].points" in zones and "scene.masks" not in zones
    typo = run_cli("config", "--describe", "mqtt.hots")
    assert typo.returncode == 2 and "no such setting (did you mean 'mqtt.host'?)" in typo.stderr


def test_a_typo_gets_the_closest_flag_or_command_and_listen_has_only_its_flags() -> None:
    r = run_cli("run", "--sorce", "demo")
    assert r.returncode == 2 and "--sorce: did you mean --source?" in r.stderr
    r = run_cli("fleet", "push", "m.tflite", "--version", "1", "--devcie", "x")
    assert r.returncode == 2 and "--devcie: did you mean --device?" in r.stderr
    r = run_cli("rnu")
    assert r.returncode == 2 and "did you mean 'run'?" in r.stderr
    listen = run_cli("listen", "--help").stdout
    assert "--mqtt-host" in listen and "--source" not in listen and "--model" not in listen


def test_every_option_of_every_command_says_what_it_does() -> None:
    """`--help` listed bare flags (`--threads`, `--version` of a push, `--valid-hours`) and fleet status
    took a camera's and a model's flags it never reads. Each option now has a line, a shortcut names the
    setting it sets, the fleet's commands take only the broker's flags and the cloud worker no camera's."""
    import argparse

    from edge_agent.cli import _SHORTCUTS, build_parser

    bare: list[str] = []
    helps: dict[str, dict[str, str]] = {}  # command -> option -> its help

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, f"{path} {name}".strip())
                continue
            if not a.help:
                bare.append(f"{path} {'/'.join(a.option_strings) or a.dest}")
            helps.setdefault(path, {}).update((o, str(a.help)) for o in a.option_strings)

    walk(build_parser(), "")
    assert not bare, bare
    for attr, key in _SHORTCUTS.items():  # e.g. --threads: "... (runtime.threads)"
        said = helps["run"][f"--{attr.replace('_', '-')}"]
        assert said.endswith(f"({key})"), (attr, said)
    for command in ("fleet status", "fleet rollback", "fleet push", "fleet rollout"):
        assert not helps[command].keys() & {"--source", "--model", "--threads", "--fps"}, (command, helps[command])
    assert not helps["cloud-worker"].keys() & {"--source", "--fps", "--device-id"}  # no camera of its own


def test_the_package_builds_without_setuptools_warnings(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    noise = [line for line in (r.stdout + r.stderr).splitlines() if "Deprecat" in line or "License classifiers" in line]
    assert not noise, noise
    assert list(tmp_path.glob("edge_agent-*.whl"))


def test_predict_on_a_video_file_gives_every_frame_its_place_and_skips_a_corrupt_one(
    face_image: Path, tmp_path: Path
) -> None:
    """A recording from a camera, through `predict`: one document per frame with its number and time in
    the file, the face found in each, a frame that does not decode skipped and counted, then a summary."""
    astronaut = cv2.imread(str(face_image))  # 512 x 512, the face about 225 px from its left edge
    video = tmp_path / "door.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 512))
    for k in range(12):
        frame = np.full((512, 640, 3), 60, np.uint8)
        frame[:, round(128 * k / 11) : round(128 * k / 11) + 512] = astronaut  # moving right, 128 px in all
        w.write(frame)
    w.release()
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[5] : starts[6] - 8] = bytes(starts[6] - 8 - starts[5])  # the 6th frame's JPEG wiped
    video.write_bytes(bytes(data))
    r = run_cli("predict", str(SHORT), str(video), str(face_image), str(tmp_path / "none.mp4"), "--accelerator", "cpu")
    assert r.returncode == 1, r.stderr  # the missing video
    assert "frame 6 of 12 could not be decoded: skipped" in r.stderr and "none.mp4 not found" in r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    frames = [d for d in docs if d.get("source") == str(video)]
    assert [d["frame"]["index"] for d in frames] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]
    assert [d["frame"]["offset_s"] for d in frames] == [(k - 1) / 10 for k in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12)]
    for d in frames:  # the face, where it was put in that frame
        k = d["frame"]["index"] - 1
        (box,) = [x["box"] for x in d["detections"] if x["label"] == "face"]
        assert abs((box[0] + box[2]) / 2 - (round(128 * k / 11) + 225)) < 20, (k, box)
    (summary,) = [d["summary"] for d in docs if "summary" in d]
    assert summary["frames"] == 12 and summary["undecodable"] == 1 and summary["seconds"] == 1.2
    assert [d["seq"] for d in docs if "seq" in d] == list(range(1, 13))  # the image after the video: 12
    assert docs[-1]["source"] == str(face_image) and "index" not in docs[-1]["frame"]


def _recording(path: Path, seconds: float) -> bytes:
    """A 16 kHz mono 16-bit WAV of `seconds` of quiet noise, written to `path`: its bytes."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.random.default_rng(7).normal(0, 300, round(16000 * seconds))).astype("<i2").tobytes())
    return path.read_bytes()


def _piped(*args: str, data: bytes, stdin: int | None = None) -> subprocess.CompletedProcess[bytes]:
    """A command with `data` written to its standard input through a pipe (or `stdin`, a descriptor)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], input=None if stdin is not None else data,
                          stdin=stdin, capture_output=True, timeout=120, env=env, cwd=str(ROOT))


def _docs(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.decode().splitlines()]


def test_predict_reads_a_pipe_and_a_file_named_by_where_it_came_from(face_image: Path, tmp_path: Path) -> None:
    """`curl -s http://camera/snapshot.jpg | edge-agent predict model -`, the same through `/dev/stdin`
    or bash's `<(...)`, and `wget`'s `snapshot.cgi`: each read as what its bytes are (a picture, JPEGs
    end to end, a recording), with the name the user gave. A pipe used to be taken for a missing video,
    and a picture with another ending for a video of one frame."""
    cpu = ("--accelerator", "cpu")
    by_name = json.loads(run_cli("predict", str(SHORT), str(face_image), *cpu).stdout)
    png = face_image.read_bytes()
    for arg in ("-", "/dev/stdin"):
        r = _piped("predict", str(SHORT), arg, *cpu, data=png)
        assert r.returncode == 0, r.stderr.decode()
        (doc,) = _docs(r.stdout)
        assert doc["source"] == arg and doc["detections"] == by_name["detections"]
    cgi = tmp_path / "snapshot.cgi"
    cgi.write_bytes(png)
    r = _piped("predict", str(SHORT), str(cgi), *cpu, data=b"")
    (doc,) = _docs(r.stdout)  # a picture: no frame number, no summary line
    assert doc["source"] == str(cgi) and doc["detections"] == by_name["detections"] and "index" not in doc["frame"]

    # JPEGs end to end, as a camera's Motion JPEG stream or `ffmpeg -f mjpeg -` gives them: every frame
    cap = cv2.VideoCapture(str(DEMO_VIDEO))
    frames = [cap.read()[1] for _ in range(4)]
    cap.release()
    mjpeg = b"".join(cv2.imencode(".jpg", f)[1].tobytes() for f in frames)
    (tmp_path / "cam.dat").write_bytes(mjpeg)
    for arg, data in (("-", mjpeg), (str(tmp_path / "cam.dat"), b"")):
        r = _piped("predict", str(SHORT), arg, *cpu, data=data)
        assert r.returncode == 0, r.stderr.decode()
        docs = _docs(r.stdout)
        assert [d["frame"]["index"] for d in docs[:-1]] == [1, 2, 3, 4]  # type: ignore[index]
        assert docs[-1]["file"] == arg and docs[-1]["summary"]["frames"] == 4  # type: ignore[index]

    # a recording: through the signal pipeline, to its summary
    wav = _recording(tmp_path / "door.wav", 1.5)
    r = _piped("predict", str(MODELS / "wakeword" / "hey_jarvis.tflite"), "-", data=wav)
    assert r.returncode == 0, r.stderr.decode()
    (summary,) = _docs(r.stdout)
    assert summary["file"] == "-" and summary["summary"]["seconds"] == 1.5  # type: ignore[index]

    # what cannot be read: named in a line, never a hang or a traceback (nor OpenCV's chatter about it)
    r = _piped("predict", str(SHORT), "rtsp://admin:secret@10.0.0.5/live", *cpu, data=b"")
    said = b"rtsp://admin:**********@10.0.0.5/live: predict reads files and pipes; `edge-agent check --source URL`"
    assert r.returncode == 2 and said in r.stderr and b"secret" not in r.stderr, r.stderr
    r = _piped("predict", str(SHORT), str(SHORT), "-", *cpu, data=b"\x00\x00\x00\x18not a video at all")
    assert r.returncode == 1 and b"Traceback" not in r.stderr and b"VIDEOIO" not in r.stderr, r.stderr
    lines = r.stderr.decode().splitlines()
    assert lines == [f"edge-agent: cannot open file:{f} (not a picture, a video or a recording that predict reads)"
                     for f in (SHORT, "-")], lines
    r = _piped("predict", str(SHORT), "-", "-", *cpu, data=png)
    assert r.returncode == 2 and b"standard input (-) can be read only once" in r.stderr
    r = _piped("predict", str(SHORT), "-", *cpu, data=b"")
    assert r.returncode == 1 and b"edge-agent: - is empty" in r.stderr and b"Traceback" not in r.stderr
    master, terminal = pty.openpty()
    try:
        r = _piped("predict", str(SHORT), "-", *cpu, data=b"", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(master)
    assert r.returncode == 2 and b"standard input (-) is a terminal" in r.stderr


def _written(ext: str, tmp_path: Path) -> bytes:
    """A file of the format `ext` names, as the library a device or a user would use writes it."""
    if ext in (".jpg", ".png", ".bmp", ".tif", ".webp"):
        return cv2.imencode(ext, np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    path = tmp_path / f"x{ext}"
    if ext in (".wav", ".flac", ".ogg", ".mp3"):
        import soundfile

        soundfile.write(str(path), np.zeros(16000, np.float32), 16000)
    else:
        fourcc = {".avi": "MJPG", ".mp4": "mp4v"}[ext]
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
        for _ in range(3):
            w.write(np.full((48, 64, 3), 90, np.uint8))
        w.release()
    return path.read_bytes()


@pytest.mark.parametrize(
    ("ext", "named"),
    [(".jpg", ".jpg"), (".png", ".png"), (".bmp", ".bmp"), (".tif", ".tif"), (".webp", ".webp"), (".wav", ".wav"),
     (".flac", ".flac"), (".ogg", ".ogg"), (".mp3", ".mp3"), (".avi", ".avi"), (".mp4", None)],
)
def test_what_a_file_holds_is_told_from_its_first_bytes(ext: str, named: str | None, tmp_path: Path) -> None:
    from edge_agent.filekind import HEAD, sniff

    assert sniff(_written(ext, tmp_path)[:HEAD]) == named


def test_text_is_a_sensor_recording_and_binary_is_left_to_the_video_reader() -> None:
    from edge_agent.filekind import HEAD, sniff

    text = ("t,acc_x,acc_y,temp_°C\n" + "0.1,0.25,-0.5,21.5\n" * 8).encode()
    assert sniff(text[:HEAD]) == ".csv"
    assert sniff(text[: text.index("°".encode()) + 1]) == ".csv"  # a head that ends inside a character
    assert sniff(b"\x1aE\xdf\xa3\x9fB\x86\x81\x01") is None  # a Matroska (mkv) header
    assert sniff(b"\x00\x00\x00\x01gB\xc0\x1e") is None  # raw H.264
    assert sniff(b"") is None


def test_predict_on_a_directory_reads_its_pictures_and_videos_in_name_order_else_its_recordings(
    face_image: Path, tmp_path: Path
) -> None:
    """A folder a camera uploads to holds pictures and clips: each, in name order (a clip frame by frame,
    then its summary). A folder of recordings gives its recordings to an audio model. A note beside them
    is no input, and a folder with nothing to read is said."""
    shots = tmp_path / "shots"
    shots.mkdir()
    for name in ("b.png", "a.PNG"):
        (shots / name).write_bytes(face_image.read_bytes())
    w = cv2.VideoWriter(str(shots / "c.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for _ in range(2):
        w.write(cv2.imread(str(face_image)))
    w.release()
    (shots / "notes.txt").write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("predict", str(SHORT), str(shots), str(empty), "--accelerator", "cpu")
    assert r.returncode == 1 and f"no pictures, videos or recordings in {empty}" in r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    names = ("a.PNG", "b.png", "c.avi", "c.avi", "c.avi")  # the clip's two frames and its summary
    assert [d.get("source", d.get("file")) for d in docs] == [str(shots / n) for n in names]
    assert all(d["detections"][0]["label"] == "face" for d in docs if "detections" in d)
    assert docs[-1]["summary"]["frames"] == 2
    words = tmp_path / "words"
    words.mkdir()
    _recording(words / "b.wav", 1.0)
    _recording(words / "a.wav", 2.0)
    (words / "notes.txt").write_text("not a recording")
    r = run_cli("predict", str(MODELS / "wakeword" / "hey_jarvis.tflite"), str(words))
    assert r.returncode == 0, r.stderr
    summaries = [json.loads(line) for line in r.stdout.splitlines() if '"summary"' in line]
    assert [(Path(d["file"]).name, d["summary"]["seconds"]) for d in summaries] == [("a.wav", 2.0), ("b.wav", 1.0)]


def test_predict_and_bench_refuse_a_model_that_cannot_take_the_input(face_image: Path, tmp_path: Path) -> None:
    """A wake-word model given a photo, a sensor model given a photo, a face detector given a recording:
    each is refused naming why, rather than printing what the model makes of the wrong input; `bench`,
    which runs the demo video's frames, refuses a wake-word model the same way."""
    rec = tmp_path / "door.wav"
    _recording(rec, 1.0)
    for model, item, expect in (
        (ROOT / "models" / "wakeword" / "okay_nabu.tflite", face_image, "is a streaming model"),
        (ROOT / "models" / "motion_float.tflite", face_image, "takes a 6x30 input, not a picture"),
        (SHORT, rec, "is an image model (blazeface outputs)"),
    ):
        r = run_cli("predict", str(model), str(item))
        assert r.returncode == 1 and f"{model} {expect}" in r.stderr, r.stderr
        assert r.stdout == ""
    wake = ROOT / "models" / "wakeword" / "okay_nabu.tflite"
    r = run_cli("bench", "--model", str(wake), "--seconds", "1", "--runs", "1")
    assert r.returncode == 1 and f"{wake} is a streaming model" in r.stderr and "Traceback" not in r.stderr


def test_listen_shows_object_events_and_a_snapshot_as_what_it_is(broker: Broker) -> None:
    """`listen` shows the single form's object events by default, and a snapshot's JPEG (with `--raw`,
    or under any summary) is a line saying so, not its bytes."""
    from edge_agent.payload import event
    from edge_agent.sinks.mqtt import Subscriber

    pub = Subscriber(broker.mqtt(), [])
    assert pub.start(10)
    ok, jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))
    assert ok
    body = {"type": "new", "id": "e1", "track_id": 3, "label": "person", "score": 0.9}
    doc = event(device_id="lc", boot_id="b", seq=1, ts=1.0, model=None, body=body)
    # retained, so that they reach a listener whatever the moment it subscribes
    pub.publish("edge/lc/events", json.dumps(doc).encode(), retain=True)
    pub.publish("edge/lc/snapshot/person", jpeg.tobytes(), retain=True)
    pub.publish("edge/lc/zones/road/person", b"2", retain=True)
    pub.stop()
    mq = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--device", "lc", "--seconds", "2"]
    shown = run_cli("listen", *mq).stdout.splitlines()
    assert "event new person 0.90 (e1)" in shown, shown
    for extra in ([], ["--raw"]):
        lines = run_cli("listen", *mq, "--topics", "snapshot/+,zones/+/+", *extra).stdout.splitlines()
        snap = next(line for line in lines if line.startswith("edge/lc/snapshot/person "))
        assert json.loads(snap.split(" ", 1)[1]) == {"binary": "image/jpeg", "bytes": len(jpeg)}, lines
        assert "edge/lc/zones/road/person 2" in lines and len(lines) == 2, lines


def test_listen_count_exits_after_that_many_messages_and_fails_when_they_do_not_come(broker: Broker) -> None:
    """`--count N` ends `listen` at the Nth message (a script waits for messages, not for a guess at how
    long an agent takes to start); with `--seconds` too, the time running out first is exit 1."""
    from edge_agent.sinks.mqtt import Subscriber

    pub = Subscriber(broker.mqtt(), [], client_id="counted")
    assert pub.start(10)
    for n in range(3):  # retained: they reach the listener whenever it subscribes
        pub.publish(f"edge/n{n}/health", b'{"status": "ok"}', retain=True)
    pub.stop()
    mq = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]
    two = run_cli("listen", *mq, "--count", "2", timeout=60)
    assert two.returncode == 0 and len(two.stdout.splitlines()) == 2, two.stdout + two.stderr
    short = run_cli("listen", *mq, "--count", "4", "--seconds", "2", timeout=60)
    assert short.returncode == 1 and len(short.stdout.splitlines()) == 3, short.stdout + short.stderr
    assert "edge-agent: 3 of 4 messages in 2 s" in short.stderr
    assert run_cli("listen", *mq, "--count", "0").returncode == 2


def test_listen_that_hears_nothing_names_the_devices_the_broker_knows(broker: Broker) -> None:
    """A device id or a topic prefix mistyped showed nothing, for as long as one waited. `listen` now says,
    once nothing has come (after 5 s, or at the end of `--seconds`), which devices' availability the
    broker holds under the prefix, or that it holds none there; it shows availability only where asked."""
    from edge_agent.sinks.mqtt import Subscriber

    pub = Subscriber(broker.mqtt(), [], client_id="yard-devices")
    assert pub.start(10)
    pub.publish("yard/porch/availability", b"online", retain=True)
    pub.publish("yard/garage/availability", b"offline", retain=True)
    pub.stop()
    mq = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--set", "mqtt.topic_prefix=yard"]
    typo = run_cli("listen", *mq, "--device", "prch", "--seconds", "1", timeout=60)
    assert typo.returncode == 0 and typo.stdout == "", typo.stdout  # the availability seen is not shown
    said = "devices on this broker under 'yard/': garage (offline), porch (online)"
    assert "nothing in 1 s from device 'prch'; " + said in typo.stderr, typo.stderr
    other = run_cli("listen", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port),
                    "--set", "mqtt.topic_prefix=yrd", "--device", "porch", "--seconds", "1", timeout=60)
    assert "no device's availability is on this broker under 'yrd/'" in other.stderr, other.stderr
    away = run_cli("listen", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(free_port()), "--seconds", "1")
    assert away.returncode == 1 and "(connection refused (nothing listens on that port))" in away.stderr, away.stderr
    asked = run_cli("listen", *mq, "--device", "porch", "--topics", "availability", "--count", "1", timeout=60)
    assert asked.returncode == 0 and asked.stdout.split() == ["yard/porch/availability", "online"], asked.stdout
    assert "nothing" not in asked.stderr, asked.stderr


def test_listen_shows_what_anything_publishes_without_ending_or_working_the_terminal(broker: Broker) -> None:
    """`listen` prints whatever arrives under the prefix, and anything may publish there: documents of
    the wrong shape, brackets nested past the JSON parser's depth, bytes that are no text, and words
    with escape sequences in them. Each is one line, shown as it came where it cannot be summarised,
    with its control characters written out, and the command goes on to the end."""
    from edge_agent.sinks.mqtt import Subscriber

    sent = {
        "edge/a/predictions": b'{"seq": 1, "detections": [1, "x"]}',
        "edge/b/predictions": b'{"seq": 2, "detections": [{"label": "cat", "score": "high"}]}',
        "edge/c/predictions": b"[" * 100_000,
        "edge/d/predictions": b"\xff\xd8\xff\xe0 a JPEG",
        "edge/e/health": b'{"status": "ok", "fps": [1], "process": 3}',
        "edge/f/events": b'{"type": "new", "label": "cat\\u001b[2J", "score": "x", "id": "1"}',
        "edge/g/predictions": b'{"seq": 7, "accelerator": "cpu\\u001b]0;pwned\\u0007", "detections": '
                              b'[{"label": "person\\u009b2J", "score": 0.9}], "latency_ms": {"inference": 1.5}}',
    }
    pub = Subscriber(broker.mqtt(), [], client_id="odd-publisher")
    assert pub.start(10)
    for topic, body in sent.items():
        pub.publish(topic, body, retain=True)
    pub.stop()
    for raw in ([], ["--raw"]):
        r = run_cli("listen", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--seconds", "2", *raw)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == len(sent), lines  # one line each, none broken by a line break it carried
        if raw:
            assert sorted(line.split()[0] for line in lines) == sorted(sent), lines
        assert not any(c in r.stdout for c in "\x1b\x07\x9b"), repr(r.stdout)
        if not raw:  # the one well-formed prediction is summarised, its words made plain
            assert "#7 cpu\\u001b]0;pwned\\u0007 infer 1.5 ms" in r.stdout and "person\\u009b2J 0.90" in r.stdout, lines
        assert 'edge/d/predictions {"binary": "image/jpeg", "bytes": 11}' in lines, lines


@pytest.mark.parametrize("command", ["run", "predict"])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(command: str, tmp_path: Path) -> None:
    """`edge-agent ... | head`: once the reader has closed the pipe, the command ends by itself with
    status 0 and no traceback. `run --sink stdout` writes from its pipelines' threads, where the broken
    pipe used to be logged, with its traceback, at every frame for as long as the source lasted (here
    an endless one: it never ended)."""
    import os

    from .conftest import scaled

    what = (["run", "--sink", "stdout", "--source", "synthetic", "--model", str(SHORT),
             "--set", f"state_dir={tmp_path / 'state'}"] if command == "run"
            else ["predict", str(SHORT), str(DEMO_VIDEO)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    with (tmp_path / "stderr").open("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "edge_agent", *what], stdout=subprocess.PIPE, stderr=err,
                             stdin=subprocess.DEVNULL, env=env, cwd=str(ROOT))
        try:
            assert p.stdout is not None
            lines = [p.stdout.readline() for _ in range(2)]
            p.stdout.close()  # as `head -n 2` does, with the command still writing
            rc = p.wait(scaled(60))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        err.seek(0)
        said = err.read()
    assert all(line.strip() for line in lines), lines
    assert rc == 0, said[-1500:]
    assert "Traceback" not in said and "Exception ignored" not in said, said[-1500:]
    if command == "run":
        assert said.count("standard output was closed by its reader: stopping") == 1, said[-1500:]


def test_the_stdout_sink_drops_what_it_cannot_write_and_never_holds_its_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write that fails (here a real one, to /dev/full: no space left) drops that message, counted and
    said once, and the sink still takes the next: a refusal would have an event's sender try again for
    as long as the disk stayed full, holding its pipeline. A reader that closes the pipe stops the
    agent (the stop event), once."""
    import contextlib
    import logging
    import os
    import threading

    from edge_agent.sinks import Message
    from edge_agent.sinks.stdout import StdoutSink

    caplog.set_level(logging.INFO, logger="edge_agent.sinks.stdout")
    stop = threading.Event()
    full = open("/dev/full", "w")  # closed below, where its close fails too: what it holds cannot be written
    try:
        sink = StdoutSink(full, stop=stop)
        assert all(sink.submit(Message(f"edge/x/events/{i}", b"{}", qos=1)) for i in range(5))
        assert sink.drops == {"write_failed": 5} and sink.sent == 0 and sink.is_healthy()
        assert not stop.is_set()
        assert caplog.text.count("No space left on device") == 1, caplog.text
    finally:
        with contextlib.suppress(OSError):
            full.close()
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as pipe:
        sink = StdoutSink(pipe, stop=stop)
        assert sink.submit(Message("edge/x/predictions", b"{}")) and sink.submit(Message("edge/x/events", b"{}"))
        assert stop.is_set() and not sink.is_healthy()
        assert sink.drops == {"reader_gone": 2} and sink.stats()["drops"] == {"reader_gone": 2}
    assert caplog.text.count("closed by its reader") == 1, caplog.text


@pytest.mark.parametrize("command", [["config"], ["inspect", str(SHORT)], ["predict", str(SHORT), str(DEMO_VIDEO)]])
def test_a_full_disk_behind_the_output_is_said_in_a_line(command: list[str]) -> None:
    """`edge-agent config > file` on a full disk (here /dev/full, whose every write fails so): exit 1 and
    one line saying why, as other tools say it, where it was a traceback, and nothing more at exit."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "edge_agent", *command], stdout=full, stderr=subprocess.PIPE,
                           text=True, env=env, cwd=str(ROOT), timeout=120)
    assert r.returncode == 1, r.stderr[-1500:]
    assert r.stderr.strip().splitlines()[-1] == "edge-agent: cannot write: No space left on device", r.stderr[-1500:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-1500:]
