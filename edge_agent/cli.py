"""`edge-agent`: run, check, inspect, predict, config, listen, cloud-worker, fleet."""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import logging
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from edge_agent import __version__, human
from edge_agent.untrusted import document, plain

if TYPE_CHECKING:
    from edge_agent.config import Settings
    from edge_agent.model import Model

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

#: CLI shortcut -> dotted setting
_SHORTCUTS = {
    "device_id": "device_id",
    "source": "source.uri",
    "fps": "source.fps",
    "model": "model.path",
    "labels": "model.labels",
    "task": "model.task",
    "score_threshold": "model.score_threshold",
    "accelerator": "runtime.accelerator",
    "threads": "runtime.threads",
    "mqtt_host": "mqtt.host",
    "mqtt_port": "mqtt.port",
    "log_level": "log_level",
    "state_dir": "state_dir",
}


#: What each shortcut flag sets, for --help (the setting's own description: `config --describe`)
_SHORTCUT_HELP = {
    "--device-id": "this device's name in its topics (device_id)",
    "--source": "camera index, /dev/videoN, /dev/v4l/by-id/..., file, URL, pipeline, image glob, synthetic, demo "
                "(source.uri)",
    "--fps": "frame rate cap (source.fps)",
    "--model": "model file, .tflite (model.path)",
    "--labels": "labels file (model.labels)",
    "--task": "auto|classification|detection|raw (model.task)",
    "--score-threshold": "the least score a detection or class is reported at (model.score_threshold)",
    "--accelerator": "auto|cpu|gpu|npu|edgetpu|vx|armnn|/path/to/delegate.so (runtime.accelerator)",
    "--threads": "CPU threads of the interpreter; 0: chosen by timing (runtime.threads)",
    "--mqtt-host": "the broker's host (mqtt.host)",
    "--mqtt-port": "the broker's port (mqtt.port)",
    "--state-dir": "where the outbox, models and clips are kept (state_dir)",
    "--log-level": "DEBUG|INFO|WARNING|ERROR (log_level)",
}
_JSON_HELP = "print JSON (the default when stdout is not a terminal)"
_VERSION_HELP = "the release's version, a whole number: a device never takes one older than it has"
_NAME_HELP = "the model's name in the manifest (default: the file's stem)"
_VALID_HELP = "hours the signed manifest is valid for: a device refuses it after that"
#: the shortcut flags a command that only talks to the broker takes
_BROKER_FLAGS = ("--device-id", "--mqtt-host", "--mqtt-port", "--log-level")


#: the shortcut flags of the fleet commands: the model flags there describe what is sent, not this host
_FLEET_FLAGS = ("--mqtt-host", "--mqtt-port", "--log-level")
#: ... and the cloud worker, which runs a model on what devices send (no source of its own)
_WORKER_FLAGS = ("--model", "--labels", "--task", "--score-threshold", "--accelerator", "--threads", "--state-dir",
                 *_FLEET_FLAGS)


def _settings_args(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """--config and --set (every command), and the shortcut flags (`only`: those a command uses)."""
    g = p.add_argument_group("configuration (flags override env vars, which override the file)")
    g.add_argument("--config", type=Path, help="TOML config file")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting by dotted key, e.g. --set mqtt.qos=0 or --set 'homeassistant.labels=[\"person\"]' "
        "(lists are JSON; repeatable)",
    )
    for flag in _SHORTCUT_HELP if only is None else only:
        g.add_argument(flag, help=_SHORTCUT_HELP[flag])


def _overrides(args: argparse.Namespace, shortcuts: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(_usage_error(f"--set {item!r}: expected KEY=VALUE"))
        try:
            out[key.strip()] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (or nested past the parser): the text, validated as such
            out[key.strip()] = value
    for attr, key in _SHORTCUTS.items() if shortcuts else ():
        v = getattr(args, attr, None)
        if v is not None:
            out[key] = v
    return out


def _usage_error(msg: str) -> int:
    print(f"edge-agent: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _load(
    args: argparse.Namespace,
    extra: dict[str, Any] | None = None,
    shortcuts: bool = True,
    source_read: bool = True,
    said: bool = False,
) -> Any:
    """The settings every command reads: the file, EDGE_AGENT_*, --set and the command's flags
    (`shortcuts`: False where a flag of the same name means something else, as in `bench`; `source_read`:
    False where the command runs inputs of its own, not the configured source; `said`: a refusal is also
    said on the broker, as `run` says it)."""
    from edge_agent.config import ConfigError, load_settings

    overrides = {**_overrides(args, shortcuts), **(extra or {})}
    try:
        return load_settings(getattr(args, "config", None), overrides, source_read)
    except ConfigError as err:
        print(f"edge-agent: invalid configuration:\n{err}", file=sys.stderr)
        if said:
            _say_refused(getattr(args, "config", None), overrides, str(err))
        raise SystemExit(EXIT_USAGE) from None


def _say_refused(config_file: Path | None, overrides: dict[str, Any], error: str) -> None:
    """`run` exits 2 on a configuration it refuses, and systemd does not start it again: so the refusal is
    also said where the fleet sees the device, when its broker settings can be read. `availability` goes
    `offline` and the retained `info` carries `config_error`, until a start that takes the configuration
    republishes both."""
    import time
    import uuid

    from edge_agent import __version__
    from edge_agent.config import broker_of
    from edge_agent.payload import dumps, refused_info
    from edge_agent.sinks.mqtt import OFFLINE, publish_retained
    from edge_agent.topics import Topics

    found = broker_of(config_file, overrides)
    if found is None:  # the broker settings are what is refused, or cannot be read
        return
    device_id, mq = found
    topics = Topics(mq.topic_prefix, device_id)
    doc = refused_info(device_id=device_id, boot_id=uuid.uuid4().hex, agent_version=__version__,
                       started=time.time(), error=error)
    why = publish_retained(mq, mq.client_id or f"edge-agent-{device_id}",
                           [(topics.device("availability"), OFFLINE), (topics.device("info"), dumps(doc))])
    if why is not None:
        print(f"edge-agent: the broker at {mq.host}:{mq.port} was not told ({why})", file=sys.stderr)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.config import ConfigError
    from edge_agent.modelfile import ModelError

    settings = _load(args, said=True)
    _logging(settings.log_level)

    def reload(running: Any) -> Any:
        from edge_agent.config import load_settings_keeping

        return load_settings_keeping(args.config, _overrides(args), running)

    agent = Agent(settings, sink=args.sink, reload=reload, catch_faults=True)
    with agent.handle_signals():  # before anything starts: a reload sent at once must not kill the process
        try:
            agent.start()
        except ConfigError as err:  # a pipeline asks for what this board lacks: a configuration error
            print(f"edge-agent: invalid configuration:\n{err}", file=sys.stderr)
            agent.shutdown(1.0, EXIT_USAGE)
            _say_refused(args.config, _overrides(args), str(err))
            return EXIT_USAGE
        except ModelError as err:
            logging.getLogger("edge_agent").error("%s", err)
            print(f"edge-agent: {err}", file=sys.stderr)
            agent.shutdown(1.0, EXIT_FAIL)
            return EXIT_FAIL
        return agent.run(args.seconds)


def cmd_check(args: argparse.Namespace) -> int:
    """The single form's report has the model, source and first inference at its top; with pipelines,
    each pipeline has its own under `pipelines` (a model shared by several is loaded once and run on
    each one's frame), and each problem names its pipeline."""
    from edge_agent.config import pipeline_views

    settings = _load(args)
    _logging("WARNING")
    problems: list[str] = []
    report: dict[str, Any] = {"config": "ok"}
    views = pipeline_views(settings)
    models: dict[str, Model | None] = {}  # slot -> its model, None where it would not load
    try:
        for view in views:
            if view.legacy:
                _check_pipeline(view.settings, report, problems.append, models, view.slot)
            else:
                part: dict[str, Any] = {}
                report.setdefault("pipelines", {})[view.name] = part

                def named(problem: str, name: str = view.name) -> None:
                    problems.append(f"pipeline {name}: {problem}")

                _check_pipeline(view.settings, part, named, models, view.slot)
        from edge_agent.model import misnamed_features

        problems += misnamed_features(settings, [m for m in models.values() if m is not None])  # as `run` refuses
    finally:
        for model in models.values():
            if model is not None:
                model.close()
    from edge_agent.system import ClockWatch, board

    # the board as health will see it: a clock never set, a sagging supply, memory or disk under their floors
    report["board"], of_board = board(ClockWatch(), settings.health, settings.state_dir)
    problems += of_board
    if not args.offline:  # results go nowhere without it: connect (and log in) as `run` would
        from edge_agent.inbound import subscriptions
        from edge_agent.sinks.mqtt import probe_broker

        mq = settings.mqtt
        local: list[str] = []
        why = probe_broker(mq, topics=subscriptions(settings), local=local)
        who = f"{mq.host}:{mq.port}" + (f" as {mq.username}" if mq.username else "")
        report["broker"] = {"address": who, "ok": why is None, **({"error": why} if why else {})}
        if why is not None:
            problems.append(f"broker {who}: {why}")
        _check_link(local, settings, report, problems)
    report["problems"] = problems
    human.emit(report, human.check, args.json)
    return EXIT_FAIL if problems else EXIT_OK


def _check_link(local: list[str], settings: Settings, report: dict[str, Any], problems: list[str]) -> None:
    """The link the broker connection went over, as health will say it: an installer placing a box on
    Wi-Fi sees its signal, and a weak one fails the check."""
    from edge_agent.system import interface_of, link, network_problems

    interface = interface_of(local[0]) if local else None
    if interface is None:
        return
    report["network"] = {**link(interface), "flaps": None}
    problems += network_problems(report["network"], settings.health.min_wifi_signal_dbm)


def _check_pipeline(
    settings: Settings,
    report: dict[str, Any],
    problem: Callable[[str], None],
    models: dict[str, Model | None],
    slot: str,
) -> None:
    """One pipeline's model (loaded once per slot), its source opened and read, and the model run on
    what it gave."""
    from edge_agent.model import Model
    from edge_agent.modelfile import ModelError
    from edge_agent.signals import make_signal_source, signal_kind
    from edge_agent.sources import SourceError, make_source

    is_signal = signal_kind(settings.source.uri) is not None
    if slot not in models:
        try:
            models[slot] = Model(settings.model, settings.runtime, None, signal=is_signal)
        except ModelError as err:
            models[slot] = None
            problem(f"model: {err}")
    model = models[slot]
    if model is not None:
        rt = model.runtime
        report["model"] = {
            **model.info(),
            "path": str(model.path),
            "layout": model.decoder.layout,
            "task": model.decoder.task,
        }
        if model.labels_note is not None:
            problem(f"model: {model.labels_note}")
        report["accelerator"] = {
            "selected": rt.accelerator,
            "description": rt.backend.description,
            "fully_accelerated": rt.backend.fully_accelerated,
            "candidates": [p.as_dict() for p in rt.probes],
        }
        if settings.runtime.accelerator not in ("auto", "cpu") and rt.accelerator == "cpu":
            problem(
                f"accelerator {settings.runtime.accelerator} unusable: "
                + "; ".join(p.reason for p in rt.probes if not p.ok)
            )
        from edge_agent.scene import labels_problem

        why = labels_problem(settings, model.produced_labels)  # as `run` refuses them
        if why is not None:
            problem(why)
    try:
        if is_signal:
            report["source"] = _check_signal(make_signal_source(settings))
            return
        src = make_source(settings.source)
        t0 = time.monotonic()
        src.open()
        img = src.read()
        opened_ms = round((time.monotonic() - t0) * 1e3, 1)
        blank = None
        if (src.live or src.polled) and settings.source.blank_after_s:
            img, blank = _first_second(src, img)
        src.close()
        report["source"] = {
            "uri": src.describe(),
            "frame": [int(img.shape[1]), int(img.shape[0])],
            "open_read_ms": opened_ms,
        }
        if blank is not None:
            report["source"]["picture"] = {"flat": blank[0], "level": round(blank[1], 1)}
            from edge_agent.picture import DARK_LEVEL

            dark_ok = not settings.source.dark_is_blank and blank[1] < DARK_LEVEL  # a camera that is dark at night
            if blank[0] and not dark_ok:
                problem(f"source: the camera's picture is one flat tone, grey level {blank[1]:.0f} of 255, after "
                        f"{_SETTLE_S:g} s: the lens covered or facing a wall or the sky, too dark to see, or no "
                        "signal (source.blank_after_s = 0 leaves it unwatched)")
        if model is not None:
            inf = model.infer(img)
            report["first_inference"] = {"inference_ms": round(inf.inference_ms, 2), **inf.result.as_dict()}
    except SourceError as err:
        problem(f"source: {err}")


#: How long `check` reads a camera before judging its picture: a camera's first frames are often dark while
#: its exposure settles.
_SETTLE_S = 1.0


def _first_second(src: Any, img: Any) -> tuple[Any, tuple[bool, float]]:
    """A live camera's frames for `_SETTLE_S` after its first: the last, and whether it is one flat tone
    (`edge_agent.picture`), as the running agent would say after `source.blank_after_s`."""
    from edge_agent.picture import flat
    from edge_agent.sources import FrameError

    if src.polled:  # a snapshot URL: one more picture after the pause, not a second of requests
        time.sleep(_SETTLE_S)
        img = src.read()
    end = time.monotonic() + _SETTLE_S
    while not src.polled and time.monotonic() < end:
        try:
            img = src.read()
        except FrameError:  # one frame lost: the one before stands
            continue
    return img, flat(img)


def _check_signal(src: Any) -> dict[str, Any]:
    """Open the source and read for up to two seconds: rate, channels and a first reading."""
    from edge_agent.signals import EndOfStream, SourceError

    t0 = time.monotonic()
    src.open()
    try:
        first = None
        while first is None and time.monotonic() - t0 < 2.0:
            try:
                first = src.read(0.5)
            except EndOfStream:
                break
        if first is None:
            raise SourceError(f"{src.describe()}: opened, but nothing arrived within 2 s")
        return {
            "uri": src.describe(),
            "rate": src.rate,
            "channels": list(src.channel_names),
            "first_reading": [round(float(v), 6) for v in first.samples[0]],
            "open_read_ms": round((time.monotonic() - t0) * 1e3, 1),
        }
    finally:
        src.close()


def cmd_inspect(args: argparse.Namespace) -> int:
    from edge_agent.modelfile import ModelError, read_model_file
    from edge_agent.runtime.base import BackendError
    from edge_agent.runtime.cpu import InterpreterBackend

    # the same rules as every command: a bad setting is an error (the model is the one named, not a pipeline's)
    settings = _load(args, {"model.path": str(args.model), "pipelines": []}, source_read=False)
    from edge_agent.model import fit_labels, normalisation, sized_model

    sized = None
    try:
        mf = read_model_file(args.model)
        path = args.model
        if mf.open_size is not None:  # read as the agent runs it: at the size it picks
            path, sized = sized_model(mf, settings.model, settings.state_dir)
        be = InterpreterBackend(path, threads=1)
    except (ModelError, BackendError) as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_FAIL
    from edge_agent.postprocess.decoders import DecodeOptions, make_decoder
    from edge_agent.preprocess import build_lut, input_layout

    feeds: dict[str, Any] | None = None
    note = None
    try:
        dec = make_decoder("auto", mf, be.inputs, be.outputs, mf.labels, DecodeOptions())
        layout = dec.layout
        if mf.labels is not None and dec.classes is not None:
            note = fit_labels(mf.labels, dec.classes)[1]
        spec = be.inputs[0]
        try:  # what an image model is given: each channel's value for a black and a white pixel
            if len(spec.shape) != 4 or mf.stateful:
                raise ValueError("not an image input")
            lut = build_lut(spec, *normalisation(None, mf, dec, spec), input_layout(spec)[2])
            lo, hi = (0, 255) if lut is None else (lut[0, 0].item(), lut[0, 255].item())
            feeds = {"black": lo, "white": hi, "resize": dec.preferred_resize, "letterbox_fill": dec.letterbox_fill}
        except (ValueError, IndexError):  # not an image input (a signal model's)
            feeds = None
    except ModelError as err:
        layout = f"unknown ({err})"
        dec = None
    doc = {
        "path": str(mf.path),
        "size": mf.size,
        "sha256": mf.sha256,
        "inputs": [s.as_dict() for s in be.inputs],
        "outputs": [s.as_dict() for s in be.outputs],
        "ops": sorted(set(mf.ops)),
        "custom_ops": list(mf.custom_ops),
        "requires_delegates": mf.required_delegates(),
        "metadata": {k: v for k, v in vars(mf.metadata).items() if v is not None},
        "associated_files": list(mf.associated_files),
        "labels": list(mf.labels) if mf.labels else None,
        "detected_layout": layout,
        "classes": dec.classes if dec is not None else None,
        "keypoints": list(kp) if (kp := getattr(dec, "keypoints", None)) else None,
        "labels_problem": note,
        "feeds": feeds,
        "input_size_open": {"runs_at": list(sized)} if sized is not None else None,
    }
    be.close()
    human.emit(doc, human.inspect, args.json)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    # the same settings as `run` (file, EDGE_AGENT_*, --set); the flags here are shortcuts on top
    # the model named here, with the top-level settings, whatever pipelines the file has
    extra: dict[str, Any] = {"model.path": str(args.model), "pipelines": []}
    if args.resize is not None:
        extra["model.resize"] = args.resize
    settings = _load(args, extra, source_read=False)
    with contextlib.ExitStack() as stack:
        inputs = _inputs(args.images, stack)
        if isinstance(inputs, str):
            return _usage_error(inputs)
        return _predict(args, settings, inputs)


class _Input(NamedTuple):
    """One input of `predict`: as the user named it, where its bytes are read (a stream's are copied to a
    file first), and how: "image", "video", or the kind of signal source that reads it ("wav", "csv")."""

    shown: str
    path: Path
    kind: str

    def said(self, err: Exception) -> str:
        """An error's text with the input as the user named it, not the file a stream was copied to."""
        return str(err).replace(str(self.path), self.shown)


def _inputs(given: list[Path], stack: contextlib.ExitStack) -> list[_Input] | str:
    """`predict`'s inputs, each with how it is read: by its name's ending, else (a pipe, standard input
    as `-`, a file named by where it came from) by what its first bytes are (`filekind`). A directory
    gives its pictures and videos in name order (`source.uri` reads its pictures alike), or where it
    has none, its recordings. A usage error's text instead, where standard input is named twice or is
    a terminal."""
    from edge_agent.filekind import VIDEO_ENDINGS, is_stream, named, spooled
    from edge_agent.redact import hide_credentials
    from edge_agent.signals import signal_kind
    from edge_agent.signals.csv_file import CsvSource
    from edge_agent.signals.wav import SUFFIXES
    from edge_agent.sources.images import IMAGE_EXTS

    def kind(name: str) -> str:
        return signal_kind(name) or ("image" if name.lower().endswith(IMAGE_EXTS) else "video")

    known = IMAGE_EXTS + SUFFIXES + CsvSource.suffixes
    out: list[_Input] = []
    stdin = False
    for p in given:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", str(p)) and not p.exists() and not signal_kind(str(p)):
            # a camera's URL (Path made its // one)
            return (f"{hide_credentials(str(p).replace(':/', '://', 1))}: predict reads files and pipes; "
                    "`edge-agent check --source URL` runs a camera's first frame through the model")
        if str(p) == "-":
            if stdin:
                return "standard input (-) can be read only once"
            if sys.stdin is None or sys.stdin.isatty():
                return "standard input (-) is a terminal: pipe a picture, a recording or a video into it"
            stdin = True
            path = stack.enter_context(spooled(sys.stdin.buffer))
            out.append(_Input("-", path, kind(path.name)))
        elif is_stream(p):
            try:
                f = stack.enter_context(p.open("rb"))
            except OSError as err:
                return f"cannot read {p}: {err.strerror or err}"
            path = stack.enter_context(spooled(f))
            out.append(_Input(str(p), path, kind(path.name)))
        elif p.is_dir():  # its pictures and videos in name order (what a camera uploads), else its recordings
            files = sorted(f for f in p.iterdir() if f.is_file())
            shown = IMAGE_EXTS + VIDEO_ENDINGS
            frames = [_Input(str(f), f, kind(f.name)) for f in files if f.name.lower().endswith(shown)]
            sounds = [_Input(str(f), f, kind(f.name)) for f in files if signal_kind(f.name)]
            out += frames or sounds or [_Input(str(p), p, "none")]  # none: said later
        else:
            ending = named(p, known) if not signal_kind(str(p)) else None
            out.append(_Input(str(p), p, kind(ending) if ending else kind(str(p))))
    return out


def _predict(args: argparse.Namespace, settings: Any, inputs: list[_Input]) -> int:
    from edge_agent.imageheader import read_image
    from edge_agent.model import Model
    from edge_agent.modelfile import ModelError
    from edge_agent.payload import prediction

    mc, rc = settings.model, settings.runtime
    recordings = [i for i in inputs if i.kind not in ("image", "video", "none")]
    if recordings and len(recordings) != len(inputs):
        return _usage_error("give either images or recordings, not both")
    try:
        model = Model(mc, rc, None, signal=bool(recordings))
    except ModelError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_FAIL
    if recordings:
        from edge_agent.config import ConfigError

        try:
            return _predict_recordings(args, model, settings, recordings)
        except ConfigError as err:  # signal.* asking for what this model cannot give
            print(f"edge-agent: invalid configuration:\n{err}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            model.close()
    status = EXIT_OK
    seq = itertools.count(1)

    def emit(img: Any, source: str, position: tuple[int, float | None] | None = None) -> float:
        t0 = time.monotonic()
        inf = model.infer(img)
        doc = prediction(
            device_id="predict",
            boot_id="predict",
            seq=next(seq),
            ts=time.time(),
            model=model.info(),
            accelerator=model.runtime.accelerator,
            latency_ms={
                "capture_to_publish": (time.monotonic() - t0) * 1e3,
                "preprocess": inf.preprocess_ms,
                "inference": inf.inference_ms,
                "postprocess": inf.postprocess_ms,
            },
            frame_size=(img.shape[1], img.shape[0]),
            result=inf.result,
            source=source,
            position=position,
        )
        human.emit(doc, human.prediction, args.json, indent=None)
        return inf.inference_ms

    try:
        for inp in inputs:
            if inp.kind == "none":
                print(f"edge-agent: no pictures, videos or recordings in {inp.shown}", file=sys.stderr)
                status = EXIT_FAIL
                continue
            if inp.kind == "video":
                status = max(status, _predict_video(args, inp, emit))
                continue
            try:
                img = read_image(str(inp.path))
            except (OSError, ValueError) as err:
                print(f"edge-agent: cannot read image {inp.shown}: {err}", file=sys.stderr)
                status = EXIT_FAIL
                continue
            emit(img, inp.shown)
    finally:
        model.close()
    return status


def _predict_video(args: argparse.Namespace, inp: _Input, emit: Callable[..., float]) -> int:
    """Every frame of a video file, in order, then a summary line: frames, those that did not decode
    (skipped, as the daemon's file source skips them), and inference time."""
    from edge_agent.sources import EndOfStream, FrameError, SourceError
    from edge_agent.sources.video import VideoFileSource
    from edge_agent.stats import LatencyWindow

    with contextlib.suppress(OSError):
        if inp.path.is_file() and inp.path.stat().st_size == 0:  # a pipe that gave nothing, mostly
            print(f"edge-agent: {inp.shown} is empty", file=sys.stderr)
            return EXIT_FAIL
    src = VideoFileSource(str(inp.path), loop=False)
    try:
        with _opencv_quiet():  # its "backend ... can't be used to capture by name" says nothing to act on
            src.open()
    except SourceError as err:
        # a file there that no reader takes: a model given twice, a document, a format not read here
        hint = (" (not a picture, a video or a recording that predict reads)"
                if str(err).startswith("cannot open") and inp.path.is_file() else "")
        print(f"edge-agent: {inp.said(err)}{hint}", file=sys.stderr)
        return EXIT_FAIL
    t0 = time.monotonic()
    fps, frames, undecodable, lat = src.nominal_fps, 0, 0, LatencyWindow()
    try:
        while True:
            frames += 1
            try:
                img = src.read()
            except FrameError as err:
                undecodable += 1
                print(f"edge-agent: {inp.said(err)}: skipped", file=sys.stderr)
                continue
            except EndOfStream:
                frames -= 1
                break
            except SourceError as err:
                print(f"edge-agent: {inp.said(err)}", file=sys.stderr)
                return EXIT_FAIL
            lat.add(emit(img, inp.shown, (frames, (frames - 1) / fps if fps else None)))
    finally:
        src.close()
    summary = {
        "frames": frames,
        "undecodable": undecodable,
        "seconds": round(frames / fps, 3) if fps else None,
        "inference_ms": lat.percentiles(),
        "wall_s": round(time.monotonic() - t0, 3),
    }
    human.emit({"file": inp.shown, "summary": summary}, human.prediction, args.json, indent=None)
    return EXIT_OK


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's own warnings off for the block (its errors still said)."""
    import cv2

    levels: Any = getattr(getattr(cv2, "utils", None), "logging", None)  # untyped in OpenCV's stubs
    if levels is None:
        yield
        return
    before = levels.getLogLevel()
    levels.setLogLevel(2)  # LOG_LEVEL_ERROR
    try:
        yield
    finally:
        levels.setLogLevel(before)


def _predict_recordings(args: argparse.Namespace, model: Any, base: Any, inputs: list[_Input]) -> int:
    """Each recording through the real signal pipeline: its events, and how long after the loud part
    of the recording ended each one came (`after_speech_s`, audio only)."""
    from edge_agent.config import SourceConfig
    from edge_agent.features import speech_end_s
    from edge_agent.imageheader import utf8_path
    from edge_agent.signal_pipeline import run_offline
    from edge_agent.signals import SourceError, signal_kind
    from edge_agent.signals.wav import read_wav

    status = EXIT_OK
    for inp in inputs:
        path, kind = inp.path, inp.kind
        signal = base.signal
        if not args.windows and "predictions_hz" not in signal.model_fields_set:
            signal = signal.model_copy(update={"predictions_hz": 0})
        try:
            with utf8_path(str(path)) as name:
                # a name not in UTF-8 (its descriptor), or one whose ending does not say what it holds: by kind
                uri = name if name == str(path) and signal_kind(name) == kind else f"{kind}:{name}"
                settings = base.model_copy(
                    update={"source": SourceConfig(uri=uri, loop=False, realtime=False), "signal": signal}
                )
                run = run_offline(settings, model)
                end = speech_end_s(*read_wav(name)) if kind == "wav" else None
        except (SourceError, OSError) as err:
            print(f"edge-agent: {inp.said(err)}", file=sys.stderr)
            status = EXIT_FAIL
            continue
        for doc in run.predictions:
            human.emit({"file": inp.shown, **doc}, human.prediction, args.json, indent=None)
        for doc in run.events:
            extra = {"after_speech_s": round(doc["offset_s"] - end, 3)} if end is not None else {}
            human.emit({"file": inp.shown, **doc, **extra}, human.prediction, args.json, indent=None)
        summary = {
            "file": inp.shown,
            "summary": {
                "events": sum(1 for e in run.events if e["type"] == "new"),
                "windows": run.windows,
                "seconds": round(run.samples / run.rate, 3) if run.rate else None,
                "speech_end_s": None if end is None else round(end, 3),
                "inference_ms": run.inference_ms,
                "wall_s": round(run.wall_s, 3),
            },
        }
        human.emit(summary, human.prediction, args.json, indent=None)
    return status


def cmd_config(args: argparse.Namespace) -> int:
    from edge_agent.config import describe_fields, masked_dump

    if args.describe is not None:
        want = args.describe.strip(".")
        rows = [r for r in describe_fields() if not want or r[0] == want or r[0].startswith((want + ".", want + "["))]
        if not rows:
            return _usage_error(f"--describe {args.describe}: no such setting{_closest_key(want)}")
        print("key\tenvironment variable\tdefault\tdescription")
        for key, env, default, desc in rows:
            print(f"{key}\t{env}\t{default}\t{desc}")
        return EXIT_OK
    settings = _load(args)
    human.emit(masked_dump(settings), human.settings, args.json)
    return EXIT_OK


def _closest_key(want: str) -> str:
    """' (did you mean 'mqtt.host'?)' for the setting closest to a key that names none, else ''."""
    import difflib

    from edge_agent.config import describe_fields

    close = difflib.get_close_matches(want, [k for k, *_ in describe_fields()], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_agent.bench import HEADER, compare
    from edge_agent.model import default_model_path

    _load(args, shortcuts=False)  # bench's flags are its own; a bad setting is still an error
    if args.pipelines or args.batch or args.decode or args.replicas or args.linger is not None:
        return _bench_pipelines(args)
    if args.model:
        models = list(args.model)
    else:
        base = default_model_path().parent
        shared = base.parent.parent / "shared" / "models" / "ssd_mobilenet_v1_coco_uint8.tflite"
        models = [base / "face_detection_full_range.tflite", base / "face_detection_short_range_int8.tflite", shared]
    models = [m for m in models if m.is_file()]
    if not models:
        return _usage_error("no model to benchmark: give --model")
    from edge_agent.model import NOT_FRAMES, misfit

    for m in models:  # the benchmark runs frames of the demo video through each model
        why = misfit(m, signal=False)
        if why is not None:
            print(f"edge-agent: {m} {why}: {NOT_FRAMES}", file=sys.stderr)
            return EXIT_FAIL
    print(HEADER, flush=True)
    rows = compare(models, args.threads, args.seconds, args.runs, sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return EXIT_OK


def _counts(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(_usage_error(f"{flag} takes numbers separated by commas, e.g. 1,2,4")) from None
    if not values or min(values) < 1:
        raise SystemExit(_usage_error(f"{flag} takes numbers of at least 1, e.g. 1,2,4"))
    return values


def _on_off(v: str | None) -> bool | None:
    return None if v is None else v == "on"


def _bench_pipelines(args: argparse.Namespace) -> int:
    """Several pipelines in one agent against as many agents (--pipelines), frames decoded whole against
    scaled (--decode), CPU interpreters one per core against grown as frames wait (--replicas), the MQTT
    publisher woken per message against lingering (--linger), or batch sizes (--batch)."""
    from edge_agent.bench_pipelines import (
        BATCH_HEADER,
        DECODE_HEADER,
        LINGER_HEADER,
        PIPELINES_HEADER,
        REPLICAS_HEADER,
        compare_batches,
        compare_decode,
        compare_linger,
        compare_pipelines,
        compare_replicas,
    )
    from edge_agent.model import default_model_path

    models = list(args.model) if args.model else [default_model_path()]
    rows: list[dict[str, Any]] = []
    if args.pipelines:
        print(PIPELINES_HEADER, flush=True)
        for m in models:
            rows += compare_pipelines(
                m, _counts(args.pipelines, "--pipelines"), args.seconds, args.runs, args.threads, sys.stdout,
                max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, arenas=args.malloc_arenas,
                own_process=_on_off(args.own_process), accelerator=args.accelerator,
            )
        for r in rows:
            ratios, costs = r["one_vs_separate_by_round"], r["stalled_cost_by_round"]
            print(f"{r['pipelines']} pipelines, round by round: one / N agents "
                  + ", ".join(f"{x:.2f}" for x in ratios) + f" (median {statistics.median(ratios):.2f}); "
                  + "stalled costs " + ", ".join(f"{x:.1%}" for x in costs)
                  + f" (median {statistics.median(costs):.1%}), its own threads "
                  + ", ".join(f"{x:.2%}" for x in r["stalled_cpu_share_by_round"]) + " of the agent's CPU", flush=True)
        print("models ran on: " + ", ".join(f"{r['pipelines']}: {'/'.join(r['ran_on'])}" for r in rows), flush=True)
        print("one agent's peak RSS / single-pipeline agent's: " + ", ".join(
            f"{r['pipelines']}: {r['rss_vs_single']:.2f}" for r in rows), flush=True)
        for r in rows:
            print(f"RSS of one agent with {r['pipelines']} pipeline(s), MB: {r['one']['rss_breakdown']}", flush=True)
            print(f"peak RSS MB of each run, one agent with {r['pipelines']}: {r['one']['peak_rss_runs']}", flush=True)
        if rows:
            print("one agent's own memory (heap, malloc arenas, other anonymous, stacks) / single-pipeline agent's: "
                  + ", ".join(f"{r['pipelines']}: {r['own_vs_single']:.2f}" for r in rows), flush=True)
            print(f"a read fault maps {rows[0]['mapped_per_fault_kb']:.0f} KB of OpenCV's library as the page cache "
                  "holds it now (64: fault-around; more where the kernel maps a large folio whole, as Linux 6.18 "
                  "does for a file read whole): the libraries' share of the RSS grows with it, the agent's own "
                  "memory does not", flush=True)
    if args.decode:
        if args.decode < 1:
            return _usage_error("--decode takes a number of pipelines of at least 1")
        print(DECODE_HEADER, flush=True)
        rows += compare_decode(models, args.decode, args.seconds, args.runs, args.threads, sys.stdout)
    if args.replicas:
        if args.replicas < 2:
            return _usage_error("--replicas takes a number of pipelines of at least 2 (one has no replicas)")
        print(REPLICAS_HEADER, flush=True)
        rows += compare_replicas(models, args.replicas, args.seconds, args.runs, args.threads, sys.stdout)
    if args.linger is not None:
        if args.linger < 1:
            return _usage_error("--linger takes a number of pipelines of at least 1")
        print(LINGER_HEADER, flush=True)
        rows += compare_linger(models, args.linger, args.seconds, args.runs, args.threads, sys.stdout)
    if args.batch:
        print(BATCH_HEADER, flush=True)
        sizes = _counts(args.batch, "--batch")
        rows += compare_batches(
            models, args.batch_pipelines, sizes, args.seconds, args.runs, args.threads, sys.stdout,
            args.accelerator, args.batch_wait_ms, _on_off(args.own_process),
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return EXIT_OK


def cmd_cloud_worker(args: argparse.Namespace) -> int:
    import signal

    from edge_agent.cloud_worker import CloudWorker
    from edge_agent.model import Model
    from edge_agent.modelfile import ModelError
    from edge_agent.process_signals import SignalThread

    settings = _load(args)
    _logging(settings.log_level)
    try:
        model = Model(settings.model, settings.runtime, settings.state_dir, signal=args.signal)
    except ModelError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_FAIL
    worker = CloudWorker(settings, model, args.group, args.worker_id)
    try:
        with SignalThread({sig: lambda _: worker.stop.set() for sig in (signal.SIGTERM, signal.SIGINT)}):
            return worker.run(args.seconds)
    finally:
        model.close()


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not 1 or more")
    return n


def cmd_listen(args: argparse.Namespace) -> int:
    from paho.mqtt.client import topic_matches_sub as mqtt_matches

    from edge_agent.sinks.mqtt import Subscriber
    from edge_agent.topics import device_pattern

    settings = _load(args)
    prefix = settings.mqtt.topic_prefix
    topics = [device_pattern(prefix, args.device, t) for t in args.topics.split(",")]
    # every device's availability as well, kept and not shown (unless asked for): what to say when nothing
    # comes (a device id or a topic prefix mistyped shows nothing, for as long as one waits)
    everyone = device_pattern(prefix, None, "availability")
    sub = Subscriber(settings.mqtt, topics if everyone in topics else [*topics, everyone])
    if not sub.start(10.0):
        print(f"edge-agent: {sub.why_not()}", file=sys.stderr)
        sub.stop()
        return EXIT_FAIL
    start = time.monotonic()
    deadline = start + args.seconds if args.seconds else None
    hint_at: float | None = start + _LISTEN_HINT_S  # or at the end, if that comes first
    shown = 0
    devices: dict[str, str] = {}
    try:
        while (deadline is None or time.monotonic() < deadline) and (args.count is None or shown < args.count):
            if not shown and hint_at is not None and time.monotonic() >= hint_at:
                print(f"edge-agent: {_nothing_yet(prefix, args.device, devices, 'yet')}", file=sys.stderr,
                      flush=True)
                hint_at = None
            m = sub.get(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
            if m is None:
                continue
            topic, payload, _ = m
            if mqtt_matches(everyone, topic) and not any(mqtt_matches(t, topic) for t in topics):
                devices[topic.split("/")[-2]] = payload.decode("utf-8", "replace")[:20]
                continue
            print(summarise(topic, payload) if not args.raw else f"{plain(topic, None)} {human.printable(payload)}",
                  flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        sub.stop()
    if not shown and hint_at is not None:
        waited = f"in {time.monotonic() - start:.0f} s"
        print(f"edge-agent: {_nothing_yet(prefix, args.device, devices, waited)}", file=sys.stderr)
    if args.count is not None and shown < args.count:
        within = f" in {args.seconds:g} s" if args.seconds else ""
        print(f"edge-agent: {shown} of {args.count} messages{within}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


#: How long `listen` waits for a first message before it says what the broker has instead.
_LISTEN_HINT_S = 5.0


def _nothing_yet(prefix: str, device: str | None, devices: dict[str, str], when: str) -> str:
    """What `listen` says when nothing has come (`when`: "yet", or "in N s" at its end): the devices whose
    availability the broker holds under the prefix (a device id mistyped, or one that never connected),
    or that it holds none there (another prefix, or no agent has ever connected to this broker)."""
    who = f"device '{plain(device, None)}'" if device else "any device"
    if not devices:
        return (f"nothing {when} from {who}, and no device's availability is on this broker under "
                f"'{prefix}/' (another mqtt.topic_prefix, or no agent has connected here yet)")
    known = ", ".join(f"{plain(d, None)} ({plain(state, None)})" for d, state in sorted(devices.items())[:20])
    more = f" and {len(devices) - 20} more" if len(devices) > 20 else ""
    return f"nothing {when} from {who}; devices on this broker under '{prefix}/': {known}{more}"


def summarise(topic: str, payload: bytes) -> str:
    """One readable line per message, for people watching the demo. Anything may publish under the
    prefix: a message that is not a document of the shape its topic says (a snapshot's JPEG, other
    text, a field of another type) is shown as it came, made plain, and never ends the command."""
    doc = document(payload)
    if doc is not None:
        try:
            return plain(_summary(topic, doc), None)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            pass
    return f"{plain(topic, None)} {human.printable(payload)}"


def _summary(topic: str, doc: dict[str, Any]) -> str:
    if topic.endswith("/predictions"):
        items = doc.get("detections") or doc.get("classes") or []
        found = (
            ", ".join(
                f"{d['label']} {d['score']:.2f}" + (f" @{[round(v) for v in d['box']]}" if "box" in d else "")
                for d in items
            )
            or "nothing"
        )
        if doc.get("source") == "cloud":
            return (
                f"#{doc.get('seq')} cloud ({doc.get('worker')}) refines #{doc.get('refines_seq')}, "
                f"round trip {doc.get('rtt_ms', 0):.1f} ms: {found}"
            )
        lat = doc.get("latency_ms", {})
        who = f"[{doc['pipeline']}] " if doc.get("pipeline") else ""
        return (
            f"{who}#{doc.get('seq')} {doc.get('accelerator')} infer {lat.get('inference', 0):.1f} ms "
            f"capture->publish {lat.get('capture_to_publish', 0):.1f} ms: {found}"
        )
    if topic.endswith("/health"):
        fps = doc.get("fps", {})
        return (
            f"health {doc.get('status')}: fps in/inf/out {fps.get('captured')}/{fps.get('inferred')}/"
            f"{fps.get('published')}, rss {doc.get('process', {}).get('rss_mb')} MB (own "
            f"{doc.get('process', {}).get('anon_mb')}) {doc.get('problems') or ''}"
        )
    if topic.endswith("/events") and "type" in doc:
        who = f"[{doc['pipeline']}] " if doc.get("pipeline") else ""
        return f"{who}event {doc.get('type')} {doc.get('label')} {doc.get('score', 0):.2f} ({doc.get('id')})"
    return f"{topic} {json.dumps(doc)[:200]}"


def cmd_fleet_keygen(args: argparse.Namespace) -> int:
    from edge_agent.ota.manifest import write_keypair

    try:
        priv, pub = write_keypair(args.dir, args.name)
    except FileExistsError:
        print(f"edge-agent: {args.dir / (args.name + '.key')} exists; not overwriting a key", file=sys.stderr)
        return EXIT_FAIL
    print(f"private key (keep it here, mode 0600): {priv}\npublic key (give to devices: ota.trusted_keys): {pub}")
    return EXIT_OK


def cmd_fleet_sign(args: argparse.Namespace) -> int:
    from edge_agent.ota.manifest import ManifestError, load_private_key, parse_manifest

    try:
        key = load_private_key(args.key)
        m = parse_manifest(json.loads(args.manifest.read_text()))
        print(json.dumps(m.signed(key).model_dump(mode="json"), indent=2))
    except (ManifestError, ValueError, OSError) as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _fleet_manifest(args: argparse.Namespace, rollout: bool = False) -> tuple[Any, Any] | int:
    """The signed manifest `fleet push` and `fleet rollout` send, and the file server behind --serve;
    or the exit code of a usage error (already printed)."""
    from edge_agent.fleet import FileServer, build_manifest
    from edge_agent.modelfile import ModelError, load_labels
    from edge_agent.ota.manifest import ManifestError, load_private_key

    if sum(map(bool, (args.serve, args.url, getattr(args, "mqtt", False)))) != 1:
        return _usage_error(f"fleet {'rollout' if rollout else 'push'} needs exactly one of --serve HOST:PORT, "
                            "--url URL" + ("" if rollout else " or --mqtt"))
    if args.serve and args.serve.rpartition(":")[0] in ("", "0.0.0.0", "::", "[::]") and not args.advertise:
        return _usage_error(f"--serve {args.serve} listens on every address, and devices cannot download from "
                            "that: add --advertise HOST (this machine's name or address as the devices see it)")
    if not args.model.is_file():
        return _usage_error(f"model not found: {args.model}")
    try:
        labels = list(load_labels(args.labels_file)) if args.labels_file else None
    except ModelError as err:
        return _usage_error(f"--labels-file: {err}")
    key = None
    if args.key:
        try:
            key = load_private_key(args.key)
        except ManifestError as err:
            print(f"edge-agent: --key: {err}", file=sys.stderr)
            return EXIT_USAGE
    else:
        print("edge-agent: warning: no --key: the manifest is unsigned, and devices with ota.trusted_keys "
              "(every device should have them) will reject it", file=sys.stderr)
    server = None
    url = None
    if args.serve:
        host, _, port = args.serve.rpartition(":")
        server = FileServer(args.model.resolve().parent, host or "0.0.0.0", int(port or 0))
        advertise = args.advertise or host or "127.0.0.1"
        url = f"http://{advertise}:{server.port}/{args.model.name}"
    elif args.url:
        url = args.url
    manifest = build_manifest(
        args.model,
        args.version,
        args.name,
        [url] if url else [],
        labels,
        args.valid_hours,
        "mqtt" if getattr(args, "mqtt", False) else "http",
    )
    if args.score_threshold is not None:
        manifest = manifest.model_copy(update={"score_threshold": args.score_threshold})
    if key is not None:
        manifest = manifest.signed(key)
    return manifest, server


def _target(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.for_model:
        return {"model": args.for_model}
    return {"pipelines": args.pipelines.split(",")} if args.pipelines else None


def cmd_fleet_push(args: argparse.Namespace) -> int:
    from edge_agent.fleet import BrokerUnreachable, push

    settings = _load(args)
    if not args.device and not args.group:
        return _usage_error("fleet push needs --device ID (repeatable) or --group G")
    made = _fleet_manifest(args)
    if isinstance(made, int):
        return made
    manifest, server = made
    try:
        status = push(
            settings.mqtt,
            manifest,
            args.device or [],
            args.group,
            args.timeout,
            sys.stdout,
            args.model.read_bytes() if args.mqtt else None,
            _target(args),
            args.answer_timeout,
        )
    except BrokerUnreachable as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        if server is not None:
            server.close()
    human.emit(status, human.push_outcome, args.json)
    ok = bool(status) and all(s.get("state") == "active" for s in status.values())
    return EXIT_OK if ok else EXIT_FAIL


def cmd_fleet_rollout(args: argparse.Namespace) -> int:
    from edge_agent.fleet import BrokerUnreachable, FileServer
    from edge_agent.rollout import Rollout, Runner, group_members, new_rollout, share

    settings = _load(args)
    server = None
    if args.resume:
        try:
            plan = Rollout.load(args.resume)
        except (OSError, ValueError) as err:
            return _usage_error(f"--resume {args.resume}: not a rollout state file ({str(err).splitlines()[0]})")
        path = args.resume
        if plan.status != "running":
            human.emit(plan.summary(), human.rollout_outcome, args.json)
            return EXIT_OK if plan.status == "completed" else EXIT_FAIL
        if plan.serve:  # the signed URL names this address: serve the model there again
            server = FileServer(Path(plan.serve["directory"]), plan.serve["host"], int(plan.serve["port"]))
    else:
        if args.model is None or args.version is None:
            return _usage_error("fleet rollout needs MODEL and --version (or --resume FILE)")
        if not args.device and not args.group:
            return _usage_error("fleet rollout needs --device ID (repeatable) or --group G")
        try:
            for spec in (args.canary, *args.waves.split(","), args.max_failures):
                share(spec, 100)
        except ValueError as err:
            return _usage_error(f"a count or a share such as 25%: {err}")
        try:
            devices = sorted(set(args.device or []) | set(group_members(settings.mqtt, args.group) if args.group
                                                          else []))
        except BrokerUnreachable as err:
            print(f"edge-agent: {err}", file=sys.stderr)
            return EXIT_FAIL
        if not devices:
            print(f"edge-agent: no device of group {args.group} has ever connected to this broker", file=sys.stderr)
            return EXIT_FAIL
        made = _fleet_manifest(args, rollout=True)
        if isinstance(made, int):
            return made
        manifest, server = made
        plan = new_rollout(manifest, devices, args.canary, args.waves.split(","), args.soak_s, args.max_failures,
                           args.rollback, _target(args), args.answer_timeout, args.wave_timeout)
        if server is not None:
            host = args.serve.rpartition(":")[0] or "0.0.0.0"
            plan.serve = {"directory": str(args.model.resolve().parent), "host": host, "port": server.port}
        path = args.state or Path(f"{plan.id}.json")
        plan.save(path)
        print(f"edge-agent: rollout state in {path} (resume with --resume {path})", file=sys.stderr)
    try:
        plan = Runner(settings.mqtt, plan, path, sys.stderr if args.json else sys.stdout).run()
    except BrokerUnreachable as err:
        print(f"edge-agent: {err}; resume with --resume {path}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        if server is not None:
            server.close()
    human.emit(plan.summary(), human.rollout_outcome, args.json)
    return EXIT_OK if plan.status == "completed" else EXIT_FAIL


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from edge_agent.fleet import BrokerUnreachable, status

    settings = _load(args)
    try:
        devices = status(settings.mqtt, args.wait)
    except BrokerUnreachable as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(devices, indent=2))
        return EXIT_OK
    print(f"{'device':<20} {'availability':<12} {'model':<36} {'update':<12} {'fps':>6} {'status':<9}")
    for name, d in sorted(devices.items()):
        upd = _obj(d.get("model/state"))
        h = _obj(d.get("status") or d.get("health"))  # the device's answer, else its last health message
        label = _models_label(_obj(d.get("info")))
        fps = _obj(h.get("fps")).get("inferred", "-")
        refused = _obj(d.get("info")).get("config_error")  # it exited 2, and says why (docs/mqtt.md)
        state = h.get("status", "refused" if refused else "-")
        print(  # each field from whatever published it: made plain
            f"{plain(name, 60):<20} {plain(d.get('availability', '?'), 40):<12} {plain(label, 80):<36} "
            f"{plain(upd.get('state', '-'), 40):<12} {plain(fps, 12):>6} {plain(state, 40):<9}"
        )
        if refused:
            print(f"  configuration refused: {plain(refused, 400)}")
    return EXIT_OK


def _models_label(info: dict[str, Any]) -> str:
    """The models a device serves, from its info: each pipeline's (several cameras may run several), else
    the device's own; a version only where the model has one."""
    pipes = _obj(info.get("pipelines"))
    models = [_obj(_obj(p).get("model")) for p in pipes.values()] if pipes else [_obj(info.get("model"))]
    names = []
    for m in models:
        if m.get("name") is None:
            continue
        name = f"{m['name']} v{m['version']}" if m.get("version") is not None else str(m["name"])
        if name not in names:
            names.append(name)
    return ", ".join(names) or "-"


def _obj(value: Any) -> dict[str, Any]:
    """A field of a device's document that should be an object, or an empty one: the fleet's view is
    made from what anything on the broker published, and one odd device must not end it."""
    return value if isinstance(value, dict) else {}


def cmd_fleet_rollback(args: argparse.Namespace) -> int:
    from edge_agent.fleet import BrokerUnreachable, send_command

    settings = _load(args)
    try:
        answer = send_command(settings.mqtt, args.device, "rollback", args.timeout,
                              {"version": args.version} if args.version is not None else None)
    except BrokerUnreachable as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_FAIL
    if answer is None:
        print(f"edge-agent: {args.device} did not answer within {args.timeout:g} s (unknown or offline?)",
              file=sys.stderr)
    human.emit(answer, human.command_answer, args.json)
    return EXIT_OK if answer and answer.get("status") == "done" else EXIT_FAIL


def build_parser() -> argparse.ArgumentParser:
    from edge_agent.sinks import SINKS

    p = _Parser(prog="edge-agent", description="On-device inference agent.")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="run the agent (the daemon)")
    _settings_args(r)
    r.add_argument("--seconds", type=float, help="stop after this many seconds")
    r.add_argument("--sink", choices=sorted(SINKS), default="mqtt", help="where results go")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser(
        "check", help="validate config, accelerators, source, model and broker; exit 1 naming what is wrong"
    )
    _settings_args(c)
    c.add_argument("--offline", action="store_true", help="skip the broker (results go to another sink)")
    c.add_argument("--json", action="store_true", help=_JSON_HELP)
    c.set_defaults(func=cmd_check)

    i = sub.add_parser("inspect", help="show a model's inputs, outputs, quantization, ops, metadata, labels")
    i.add_argument("model", type=Path, help="the model file (.tflite)")
    _settings_args(i, ())
    i.add_argument("--json", action="store_true", help=_JSON_HELP)
    i.set_defaults(func=cmd_inspect)

    pr = sub.add_parser(
        "predict",
        help="one-shot inference on images or every frame of video files (prints the daemon's JSON), or on "
        "recordings (.wav, .flac, .ogg, .mp3, .csv: prints events)",
    )
    pr.add_argument("model", type=Path, help="the model file (.tflite)")
    pr.add_argument(
        "images", type=Path, nargs="+",
        help="images or video files, or WAV/CSV recordings for audio and sensor models; - reads standard input "
        "(a pipe). A pipe, or a file whose name does not end as its format does, is read as what its first "
        "bytes are",
    )
    _settings_args(pr, ("--labels", "--task", "--score-threshold", "--accelerator", "--threads", "--log-level"))
    pr.add_argument("--windows", action="store_true", help="recordings: print every window's prediction too")
    pr.add_argument("--resize", choices=("auto", "stretch", "letterbox"), help="model.resize")
    pr.add_argument("--json", action="store_true", help=_JSON_HELP + " (one document per line)")
    pr.set_defaults(func=cmd_predict)

    cf = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    _settings_args(cf)
    cf.add_argument("--describe", nargs="?", const="", metavar="KEY",
                    help="list every key with its env var and meaning; with KEY, only those it begins (mqtt, "
                    "scene.zones)")
    cf.add_argument("--json", action="store_true", help=_JSON_HELP)
    cf.set_defaults(func=cmd_config)

    ls = sub.add_parser("listen", help="subscribe to the agent's topics and print what arrives")
    _settings_args(ls, ("--mqtt-host", "--mqtt-port"))
    ls.add_argument("--device", help="device id (default: all)")
    ls.add_argument(
        "--topics",
        default="predictions,events,health,+/predictions,+/events",
        help="comma-separated topic suffixes ('+/predictions': every named pipeline's)",
    )
    ls.add_argument("--seconds", type=float, help="stop after this long (with --count: exit 1 if it ends first)")
    ls.add_argument("--count", type=_positive_int, metavar="N",
                    help="exit after N messages, however long they take (as mosquitto_sub -C)")
    ls.add_argument("--raw", action="store_true", help="print payloads as they are")
    ls.set_defaults(func=cmd_listen)

    bn = sub.add_parser(
        "bench",
        help="the agent against the bare runtime and a naive loop, side by side, each variant in its own process",
    )
    _settings_args(bn, ())
    bn.add_argument("--model", type=Path, action="append", help="model (repeatable); default: the bundled models")
    bn.add_argument("--seconds", type=float, default=5.0, help="per variant and run")
    bn.add_argument("--runs", type=int, default=3, help="runs per variant (medians are reported)")
    bn.add_argument(
        "--threads", type=int, default=0, help="inference threads; 0 = what the agent chooses for each model (timed)"
    )
    bn.add_argument("--json", type=Path, help="also write the figures here")
    bn.add_argument(
        "--pipelines",
        help="e.g. 1,2,4: one agent with N pipelines (each on its own copy of the demo video) against N agents, "
        "and with a stalled camera beside them",
    )
    bn.add_argument(
        "--decode", type=int, metavar="N",
        help="one agent with N pipelines on Motion JPEG, every frame decoded whole against at the scale the model "
        "needs (source.scaled_decode)",
    )
    bn.add_argument(
        "--replicas", type=int, metavar="N",
        help="one agent with N pipelines sharing the model on the CPU: runtime.replicas one per core against the "
        "default, which opens more as frames find every one busy",
    )
    bn.add_argument(
        "--linger", type=int, metavar="N",
        help="one agent with N pipelines publishing to a real mosquitto: mqtt.linger_ms 0 (the publisher woken for "
        "each message) against the default",
    )
    bn.add_argument("--batch", help="e.g. 1,2,4: one agent with --batch-pipelines pipelines at each runtime.max_batch")
    bn.add_argument("--batch-pipelines", type=int, default=4, help="pipelines for --batch (frames in memory)")
    bn.add_argument("--max-batch", type=int, default=0, help="runtime.max_batch for --pipelines runs (0: the default)")
    bn.add_argument("--accelerator", default="cpu", help="for --pipelines and --batch: cpu or gpu")
    bn.add_argument(
        "--malloc-arenas", type=int, help="for --pipelines: runtime.malloc_arenas (0: glibc's default of 8 per core)"
    )
    bn.add_argument("--batch-wait-ms", type=float, default=None, help="runtime.batch_wait_ms (default: the setting's)")
    bn.add_argument(
        "--own-process", choices=("on", "off"),
        help="runtime.own_process for --pipelines and --batch (default: the setting's)",
    )
    bn.set_defaults(func=cmd_bench)

    cw = sub.add_parser(
        "cloud-worker",
        help="server side of hybrid mode: answer escalations from any number of devices with a bigger model",
    )
    _settings_args(cw, only=_WORKER_FLAGS)
    cw.add_argument("--group", default="edge-agent-workers", help="shared-subscription group (they split the load)")
    cw.add_argument("--worker-id", help="name reported with each answer (default: host-pid)")
    cw.add_argument("--signal", action="store_true", help="the model takes audio/sensor windows, not images")
    cw.add_argument("--seconds", type=float, help="stop after this many seconds")
    cw.set_defaults(func=cmd_cloud_worker)

    fl = sub.add_parser("fleet", help="fleet side: keys, signed manifests, pushing models")
    fsub = fl.add_subparsers(dest="fleet_command", required=True, metavar="FLEET_COMMAND")
    kg = fsub.add_parser("keygen", help="make an Ed25519 key pair (private key mode 0600)")
    kg.add_argument("--dir", type=Path, default=Path("."), help="where the two files go (default: here)")
    kg.add_argument("--name", default="fleet", help="the files' name: NAME.key (private), NAME.pub (public)")
    kg.set_defaults(func=cmd_fleet_keygen)
    sg = fsub.add_parser("sign", help="sign a manifest; prints it with its signature")
    sg.add_argument("manifest", type=Path, help="the manifest (JSON) to sign")
    sg.add_argument("--key", type=Path, required=True, help="private key to sign with")
    sg.set_defaults(func=cmd_fleet_sign)
    ps = fsub.add_parser("push", help="push a model to devices and follow it until each is done")
    _settings_args(ps, only=_FLEET_FLAGS)
    ps.add_argument("model", type=Path, help="the model file (.tflite) to deploy")
    ps.add_argument("--version", type=int, required=True, help=_VERSION_HELP)
    ps.add_argument("--name", help=_NAME_HELP)
    ps.add_argument("--device", action="append", help="a device to update (repeatable)")
    ps.add_argument("--group", help="every device whose retained info lists this group")
    ps.add_argument("--key", type=Path, help="private key to sign with")
    ps.add_argument("--labels-file", type=Path, help="labels to ship with the model")
    ps.add_argument("--score-threshold", type=float, help="the score threshold devices use with this model")
    ps.add_argument("--serve", help="serve the model from this HOST:PORT")
    ps.add_argument("--advertise", help="host name devices use to reach --serve")
    ps.add_argument("--url", help="where devices download the model")
    ps.add_argument("--mqtt", action="store_true", help="send the model in chunks over MQTT (devices without HTTP)")
    ps.add_argument("--for-model", help="on devices with several models: the shared model (or pipeline) to replace")
    ps.add_argument("--pipelines", help="on devices with several models: the pipelines to update (comma-separated)")
    ps.add_argument("--valid-hours", type=float, default=24.0, help=_VALID_HELP)
    ps.add_argument("--timeout", type=float, default=600.0, help="give up on the whole push after this many seconds")
    ps.add_argument("--json", action="store_true", help=_JSON_HELP)
    ps.add_argument("--answer-timeout", type=float, default=10.0,
                    help="give up on a device that has not answered the deploy command after this many seconds")
    ps.set_defaults(func=cmd_fleet_push)
    ro = fsub.add_parser("rollout", help="a staged rollout: canary, then waves, each after the last is active "
                         "and healthy for a soak time; halts on failures")
    _settings_args(ro, only=_FLEET_FLAGS)
    ro.add_argument("model", type=Path, nargs="?", help="the model file (.tflite) to deploy (not with --resume)")
    ro.add_argument("--version", type=int, help=_VERSION_HELP)
    ro.add_argument("--name", help=_NAME_HELP)
    ro.add_argument("--device", action="append", help="a device to update (repeatable)")
    ro.add_argument("--group", help="every device whose retained info lists this group")
    ro.add_argument("--key", type=Path, help="private key to sign with")
    ro.add_argument("--labels-file", type=Path, help="labels to ship with the model")
    ro.add_argument("--score-threshold", type=float, help="the score threshold devices use with this model")
    ro.add_argument("--serve", help="serve the model from this HOST:PORT (a resumed rollout serves it there again)")
    ro.add_argument("--advertise", help="host name devices use to reach --serve")
    ro.add_argument("--url", help="where devices download the model")
    ro.add_argument("--for-model", help="on devices with several models: the shared model (or pipeline) to replace")
    ro.add_argument("--pipelines", help="on devices with several models: the pipelines to update (comma-separated)")
    ro.add_argument("--valid-hours", type=float, default=72.0, help=_VALID_HELP)
    ro.add_argument("--canary", default="1", help="devices in the first wave: a count or a share (5%%)")
    ro.add_argument("--waves", default="25%,50%,100%",
                    help="share of the fleet reached after each wave, comma-separated (the last takes the rest)")
    ro.add_argument("--soak-s", type=float, default=300.0,
                    help="seconds a wave must stay active and healthy before the next starts (longer than the "
                    "devices' health.interval_s)")
    ro.add_argument("--max-failures", default="0", help="failures a wave may have: a count or a share (10%%)")
    ro.add_argument("--rollback", action="store_true", help="on a halt, roll the halted wave's devices back")
    ro.add_argument("--answer-timeout", type=float, default=10.0,
                    help="give up on a device that has not answered the deploy command after this many seconds")
    ro.add_argument("--wave-timeout", type=float, default=1800.0, help="longest a wave may take to reach a verdict")
    ro.add_argument("--state", type=Path, help="the rollout's state file (default: ROLLOUT-ID.json here)")
    ro.add_argument("--resume", type=Path, help="carry on with the rollout in this state file")
    ro.add_argument("--json", action="store_true", help=_JSON_HELP)
    ro.set_defaults(func=cmd_fleet_rollout)
    st = fsub.add_parser("status", help="a table of devices from their retained state and recent health")
    _settings_args(st, only=_FLEET_FLAGS)
    st.add_argument("--wait", type=float, default=2.0, help="seconds to listen")
    st.add_argument("--json", action="store_true", help=_JSON_HELP)
    st.set_defaults(func=cmd_fleet_status)
    rb = fsub.add_parser("rollback", help="roll one device back to its previous model")
    _settings_args(rb, only=_FLEET_FLAGS)
    rb.add_argument("--device", required=True, help="the device to roll back")
    rb.add_argument("--version", type=int, default=None,
                    help="undo only this release: refused where the device no longer has it, instead of "
                         "undoing the one before it")
    rb.add_argument("--timeout", type=float, default=10.0, help="give up after this many seconds without an answer")
    rb.add_argument("--json", action="store_true", help=_JSON_HELP)
    rb.set_defaults(func=cmd_fleet_rollback)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse, with the closest flag or command suggested for a typo (as Python 3.14's will)."""

    def error(self, message: str) -> NoReturn:
        hint = _suggestion(self, message)
        super().error(message + (f"\n{hint}" if hint else ""))


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    import difflib

    argv = sys.argv[1:] if _ARGV is None else _ARGV
    # the deepest sub-command named on the line: its flags are the candidates
    node, names = parser, []
    while True:
        sub = next((a for a in node._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            break
        name = next((w for w in argv if w in sub.choices), None)
        if name is None:
            m = re.search(r"invalid choice: '([^']+)'", message)
            close = difflib.get_close_matches(m.group(1), list(sub.choices), n=1) if m else []
            return f"did you mean '{close[0]}'?" if close else ""
        names.append(name)
        node = sub.choices[name]
    m = re.search(r"unrecognized arguments: (.+)$", message)
    if m is None:
        return ""
    flags = list(node._option_string_actions)
    hints = []
    for word in m.group(1).split():
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1, cutoff=0.6)
            if close:
                hints.append(f"{word}: did you mean {close[0]}?")
    return "\n".join(hints)


_ARGV: list[str] | None = None


def main(argv: list[str] | None = None) -> int:
    global _ARGV
    _ARGV = argv
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    except BrokenPipeError:  # `edge-agent ... | head`: the reader has what it wanted
        sys.stderr.close()
        return EXIT_OK
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        # `edge-agent config > file` on a full disk: said in a line, as other tools say it, not a traceback
        where = f": {err.filename}" if err.filename else ""
        print(f"edge-agent: cannot write{where}: {err.strerror}", file=sys.stderr)
        _quiet_stdout()
        return EXIT_FAIL


#: what a write to a full disk (or past a quota or a file size limit) raises
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _quiet_stdout() -> None:
    """What standard output still holds goes out if it can; where it cannot (a full disk behind it), the
    stream is pointed at /dev/null, so that the interpreter's own flush at exit does not raise again."""
    from edge_agent.system import to_devnull

    try:
        sys.stdout.flush()
    except OSError:
        to_devnull(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
