"""Audio sources against real counterparts: WAV files of other formats and rates (and FLAC, Ogg), raw PCM on a real
stdin pipe and a FIFO, a microphone through PortAudio and ALSA (the ALSA `file` plugin standing in for
a sound card), and a model swapped under a running stream."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import ModelConfig, RuntimeConfig, Settings, SignalConfig, SourceConfig
from edge_agent.model import Model
from edge_agent.signal_pipeline import OfflineRun, SignalPipeline, run_offline

from .conftest import ROOT, SHARED, wait_until

WAVS = SHARED / "data" / "wakeword"
WAKEWORD = ROOT / "models" / "wakeword"

pytestmark = pytest.mark.skipif(
    not WAVS.is_dir(), reason="../shared/data/wakeword is absent (a plain clone has no shared recordings)"
)


def _pcm16(name: str) -> np.ndarray:
    with wave.open(str(WAVS / name)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


def _upsample_stereo(x: np.ndarray, rate: int) -> np.ndarray:
    """An independent resampler (scipy's) makes the test input, so ours is checked against it."""
    from scipy.signal import resample_poly

    y = resample_poly(x.astype(np.float64), rate // 1000, 16)
    y = np.clip(np.round(y), -32768, 32767).astype("<i2")
    return np.stack([y, (y // 2).astype("<i2")], axis=1)  # a quieter second channel


def _model(name: str) -> Model:
    return Model(ModelConfig(path=WAKEWORD / f"{name}.tflite"), RuntimeConfig(accelerator="cpu"), None, signal=True)


def _hey_jarvis(path: Path) -> OfflineRun:
    """The recording through the real signal pipeline with the Hey Jarvis model, as fast as it goes."""
    model = _model("hey_jarvis")
    try:
        s = Settings(
            source=SourceConfig(uri=str(path), loop=False, realtime=False),
            model=ModelConfig(path=WAKEWORD / "hey_jarvis.tflite"),
            signal=SignalConfig(predictions_hz=0),
        )
        return run_offline(s, model)
    finally:
        model.close()


@pytest.mark.parametrize(("rate", "width"), [(48000, 2), (44100, 2), (16000, 1)])
def test_wav_of_another_rate_width_and_channel_count_is_resampled_for_the_model(
    tmp_path: Path, rate: int, width: int
) -> None:
    x = _pcm16("hey_jarvis_1.wav")
    st = _upsample_stereo(x, rate) if rate != 16000 else np.stack([x, x], axis=1)
    path = tmp_path / f"hj_{rate}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(rate)
        data = st if width == 2 else (st // 256 + 128).astype(np.uint8)
        w.writeframes(data.tobytes())
    run = _hey_jarvis(path)
    assert run.rate == rate and run.samples == len(st)
    assert [e["label"] for e in run.events if e["type"] == "new"] == ["Hey Jarvis"]


def _riff(fmt: bytes, data: bytes, extra: bytes = b"", data_size: int | None = None) -> bytes:
    """A WAV file put together by hand from its chunks, independently of the reader under test."""
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _recorded_formats(x: np.ndarray, rate: int) -> dict[str, bytes]:
    """The 16-bit recording `x` as field recorders and editors also write it."""
    f = x.astype(np.float64) / 32768.0
    i24 = np.round(f * (2**23 - 1)).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    f32 = f.astype("<f4").tobytes()
    pcm24 = struct.pack("<HHIIHH", 1, 1, rate, rate * 3, 3, 24)
    ieee = struct.pack("<HHIIHHH", 3, 1, rate, rate * 4, 4, 32, 0)
    # WAVE_FORMAT_EXTENSIBLE: 24 valid bits, mono, the PCM sub-format GUID
    guid = struct.pack("<IHH", 1, 0x0000, 0x0010) + bytes([0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71])
    ext = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * 3, 3, 24, 22, 24, 0x4) + guid
    tag = b"INFOISFT" + struct.pack("<I", 4) + b"rec\0"
    info = b"LIST" + struct.pack("<I", len(tag)) + tag
    fact = b"fact" + struct.pack("<I", 4) + struct.pack("<I", len(x))
    pcm16 = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    cut = x.astype("<i2").tobytes()
    return {
        "24-bit.wav": _riff(pcm24, i24),
        "float32.wav": _riff(ieee, f32, fact),
        "extensible-24-bit.wav": _riff(ext, i24, info),
        # a recording cut off by a power loss: its header promises a minute more than the file holds
        "cut-short.wav": _riff(pcm16, cut, data_size=len(cut) + 60 * rate * 2),
    }


@pytest.mark.parametrize(
    "fmt", ["24-bit.wav", "float32.wav", "extensible-24-bit.wav", "cut-short.wav", "a.flac", "a.ogg"]
)
def test_a_recording_in_the_formats_recorders_write_gives_the_same_wake_word(tmp_path: Path, fmt: str) -> None:
    """24-bit, float and WAVE_FORMAT_EXTENSIBLE WAV (which Python's `wave` refuses), a WAV whose header
    promises more than the file holds, FLAC and Ogg Vorbis: each is read whole and finds the word. The
    WAVs are put together by hand; FLAC and Ogg are written by libsndfile, the reader's own library."""
    x = _pcm16("hey_jarvis_1.wav")
    path = tmp_path / fmt
    if fmt.endswith(".wav"):
        path.write_bytes(_recorded_formats(x, 16000)[fmt])
    else:
        import soundfile

        soundfile.write(str(path), x.astype(np.float32) / 32768.0, 16000)
    run = _hey_jarvis(path)
    assert run.rate == 16000 and run.samples == len(x)
    assert [e["label"] for e in run.events if e["type"] == "new"] == ["Hey Jarvis"]


def test_predict_on_an_empty_a_broken_and_a_good_recording(tmp_path: Path) -> None:
    """An empty recording is no audio, not a crash; one with no audio data is an error naming the file;
    the others in the same command still run."""
    empty, broken, good = tmp_path / "empty.wav", tmp_path / "broken.wav", tmp_path / "good.wav"
    empty.write_bytes(_riff(struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16), b""))
    broken.write_bytes(_riff(struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16), b"")[:30])
    good.write_bytes((WAVS / "hey_jarvis_1.wav").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(tmp_path / "state")
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "predict", "--json", str(WAKEWORD / "hey_jarvis.tflite"),
         str(empty), str(broken), str(good)],
        capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=120,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert f"cannot open audio file {broken}" in r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    summaries = {Path(d["file"]).name: d["summary"] for d in docs if "summary" in d}
    assert set(summaries) == {"empty.wav", "good.wav"}
    assert summaries["empty.wav"]["windows"] == 0 and summaries["empty.wav"]["events"] == 0
    assert summaries["good.wav"]["events"] == 1


def test_predict_on_a_recording_whose_rate_no_filter_can_reach_names_the_rate(tmp_path: Path) -> None:
    """A header saying 2,147,483,647 Hz had `predict` try to build a filter of 512 GiB; one saying
    999,983 Hz took it to 3.5 GB of RSS. The first is refused naming the file and the rate, and the
    recording beside it still runs."""
    odd = tmp_path / "odd.wav"
    odd.write_bytes(_riff(struct.pack("<HHIIHH", 1, 1, 2**31 - 1, 2**31 - 1, 2, 16), b"\0\1" * 16000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(tmp_path / "state")
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "predict", "--json", str(WAKEWORD / "hey_jarvis.tflite"),
         str(odd), str(WAVS / "hey_jarvis_1.wav")],
        capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "odd.wav" in r.stderr and "cannot resample 2147483647 Hz to 16000 Hz" in r.stderr, r.stderr
    summaries = [json.loads(line) for line in r.stdout.splitlines() if '"summary"' in line]
    assert [Path(d["file"]).name for d in summaries] == ["hey_jarvis_1.wav"] and summaries[0]["summary"]["events"] == 1


def test_raw_pcm_on_stdin_at_48khz_stereo(tmp_path: Path) -> None:
    audio = _upsample_stereo(_pcm16("okay_nabu_1.wav"), 48000).tobytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(tmp_path / "state")
    cmd = [sys.executable, "-m", "edge_agent", "run", "--sink", "stdout", "--source", "pcm:-", "--model",
           str(WAKEWORD / "okay_nabu.tflite"), "--set", "signal.rate=48000", "--set", "signal.audio_channels=2",
           "--set", "signal.predictions_hz=0", "--seconds", "6"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=str(ROOT))
    out, err = proc.communicate(audio, timeout=60)  # a real pipe: written in pieces, then closed (end of stream)
    assert proc.returncode == 0, err.decode()[-2000:]
    events = [json.loads(line.split(" ", 1)[1]) for line in out.decode().splitlines() if "/events " in line]
    assert [e["type"] for e in events] == ["new", "end"] and events[0]["label"] == "Okay Nabu"
    assert "signal source pcm:- finished" in err.decode()


def test_a_swapped_model_starts_from_a_fresh_state_on_the_running_stream(tmp_path: Path) -> None:
    fifo = tmp_path / "audio.fifo"
    os.mkfifo(fifo)
    hold = os.open(fifo, os.O_RDWR)  # the writer side stays open: no end of stream between words
    models = {"okay_nabu": _model("okay_nabu"), "hey_jarvis": _model("hey_jarvis")}
    current = [models["okay_nabu"]]
    s = Settings(source=SourceConfig(uri=f"pcm:{fifo}"), signal=SignalConfig(predictions_hz=0))
    pipe, sink = SignalPipeline.standalone(s, lambda: current[0])
    stats, stop = (pipe.capture_stats, pipe.infer_stats, pipe.post_stats), pipe.stop
    pipe.start()

    def events() -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in list(sink.messages) if m.topic == "events"]

    try:
        wait_until(lambda: stats[0].state == "running", 5, what="the FIFO open")
        os.write(hold, _pcm16("okay_nabu_2.wav").tobytes())
        wait_until(lambda: any(e["label"] == "Okay Nabu" for e in events()), 10, what="the first word")
        current[0] = models["hey_jarvis"]  # what an over-the-air update does
        os.write(hold, _pcm16("hey_jarvis_1.wav").tobytes())
        wait_until(lambda: any(e["label"] == "Hey Jarvis" for e in events()), 10, what="the word after the swap")
        new = [e for e in events() if e["type"] == "new"]
        assert [e["label"] for e in new] == ["Okay Nabu", "Hey Jarvis"]
        assert new[1]["model"]["sha256"] == models["hey_jarvis"].file.sha256
        # the old model's open event (if any) ended at the swap; every event id is ended at most once
        ends = [e["id"] for e in events() if e["type"] == "end"]
        assert len(ends) == len(set(ends))
        assert pipe.capture.info()["dropped_samples"] == 0
    finally:
        stop.set()
        pipe.join(2)
        os.close(hold)
        for m in models.values():
            m.close()


def _file_pcm(name: str, infile: Path) -> str:
    """An ALSA PCM whose capture is `infile`'s bytes, behind the null device: a real device to PortAudio."""
    return f'pcm.{name} {{ type file slave.pcm "null" file "/dev/null" infile "{infile}" format "raw" }}\n'


#: What each microphone test's child runs first: `read_samples(m, n)`, the first n samples of channel 0.
_READ_SAMPLES = """
import numpy as np
def read_samples(m, n):
    parts, got = [], 0
    while got < n:
        c = m.read(2.0)
        parts.append(c.samples)
        got += len(c.samples)
    return np.concatenate(parts)[:n, 0]
"""


def _alsa_child(conf: Path, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`code` (after `_READ_SAMPLES`) in a child process whose ALSA also reads `conf`: PortAudio takes ALSA's
    configuration in the process that loads it, so each test's devices need a process of their own."""
    env = {**os.environ, "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}"}
    return subprocess.run([sys.executable, "-c", _READ_SAMPLES + code], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _alsa_json(conf: Path, code: str, timeout: float = 60) -> dict[str, Any]:
    """`_alsa_child`, which must succeed: the JSON its last line prints."""
    r = _alsa_child(conf, code, timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    doc: dict[str, Any] = json.loads(r.stdout.splitlines()[-1])
    return doc


def test_microphone_through_portaudio_and_alsa(tmp_path: Path) -> None:
    """ALSA's `file` plugin (capture data from a file behind the null device) is a real PCM device to
    PortAudio. It is not paced like a sound card, so it also shows an overrun being counted."""
    raw = _pcm16("okay_nabu_1.wav")
    (tmp_path / "in.raw").write_bytes(raw.tobytes())
    conf = tmp_path / "asound.conf"
    conf.write_text(_file_pcm("!default", tmp_path / "in.raw"))
    code = """
import json, threading
from edge_agent.signals.microphone import MicrophoneSource
m = MicrophoneSource("mic:", "", 16000, 1)
m.open()
first = read_samples(m, 16000)
for _ in range(500):  # stop reading: the device keeps delivering until the hand-off queue overflows
    if m.dropped:
        break
    threading.Event().wait(0.01)
m.close()
print(json.dumps({"first": np.round(first * 32768).astype(int).tolist(), "dropped": m.dropped}))
"""
    doc = _alsa_json(conf, code)
    assert doc["first"] == raw[:16000].tolist()  # the first second, sample for sample, before any overrun
    assert doc["dropped"] > 0  # the unpaced device outran the reader, and that was counted


def test_a_microphone_that_comes_after_the_agent_started_is_found_when_opened_again(tmp_path: Path) -> None:
    """PortAudio lists the devices when it starts: a USB microphone the kernel found after the agent
    started (at boot the service may come first) was never found by a reopen, for as long as the agent
    ran. Each open now reads the list again, except while another microphone is open (that would close
    its stream). ALSA's `file` plugin stands in for both microphones; the USB one is plugged in by
    defining it, as a card appearing defines its device."""
    default_raw, usb_raw = _pcm16("okay_nabu_1.wav"), _pcm16("okay_nabu_2.wav")
    (tmp_path / "default.raw").write_bytes(default_raw.tobytes())
    (tmp_path / "usb.raw").write_bytes(usb_raw.tobytes())
    conf = tmp_path / "asound.conf"
    default, usb = _file_pcm("!default", tmp_path / "default.raw"), _file_pcm("usbmic", tmp_path / "usb.raw")
    conf.write_text(default)
    code = f"""
import json, os
from edge_agent.signals.base import SourceError
from edge_agent.signals.microphone import MicrophoneSource

def attempt(m):
    try:
        m.open()
        return "opened"
    except SourceError as err:
        return str(err)

def plug_in():  # a new file (ALSA notices a changed inode), as a card appearing adds its device
    with open("{conf}.new", "w") as f:
        f.write({default!r} + {usb!r})
    os.replace("{conf}.new", "{conf}")

out = {{}}
usb = MicrophoneSource("mic:usbmic", "usbmic", 16000, 1)
out["before"] = attempt(usb)
other = MicrophoneSource("mic:", "", 16000, 1)
other.open()
plug_in()
out["beside_another"] = attempt(usb)
out["other_still_reads"] = other.read(2.0) is not None
other.close()
out["alone"] = attempt(usb)
if out["alone"] == "opened":
    out["first"] = np.round(read_samples(usb, 16000) * 32768).astype(int).tolist()
usb.close()
print(json.dumps(out))
"""
    doc = _alsa_json(conf, code)
    assert "cannot open microphone 'usbmic'" in doc["before"] and "(inputs: " in doc["before"], doc["before"]
    assert "another microphone" in doc["beside_another"] and doc["other_still_reads"], doc
    assert doc["alone"] == "opened", doc["alone"]
    assert doc["first"] == usb_raw[:16000].tolist()  # the USB microphone's own samples


def test_a_microphone_that_stops_delivering_is_reopened(tmp_path: Path) -> None:
    """A sound card delivers samples all the time, silence included. One whose stream goes on saying it
    runs and delivers nothing (a USB device gone wrong) was read for ever, health saying "running". Now
    no samples for `source.read_timeout_s` reopen it, and a stream that will not close is not waited for
    past a moment. ALSA's `file` plugin reading a FIFO stands in for the card: the FIFO's writer delivers
    a second of sound, then holds the FIFO open and writes nothing (PortAudio's thread hangs in the read),
    then lets go and delivers again."""
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    conf = tmp_path / "asound.conf"
    conf.write_text(_file_pcm("!default", fifo))
    code = f"""
import faulthandler, json, os, threading, time
faulthandler.dump_traceback_later(60)
from edge_agent.config import Settings, SourceConfig
from edge_agent.signal_pipeline import ChunkQueue, SignalCapture
from edge_agent.signals import make_signal_source
from edge_agent.stats import StageStats

hang, release, stop, card_stop = threading.Event(), threading.Event(), threading.Event(), threading.Event()
second = bytes(32000)  # a second of 16 kHz 16-bit silence

def card():  # each open of the device opens the FIFO (PortAudio opens it to list it, too)
    while not card_stop.is_set():
        fd = os.open({str(fifo)!r}, os.O_WRONLY)
        try:
            card_stop.wait(0.3)
            os.write(fd, second)
            if not hang.is_set():
                hang.set()
                release.wait(60)  # open, and silent: the device hangs
            else:
                while not card_stop.wait(0.2):
                    os.write(fd, second)
        except BrokenPipeError:  # an open to list the device, closed again
            pass
        finally:
            os.close(fd)

threading.Thread(target=card, daemon=True).start()
s = Settings(source=SourceConfig(uri="mic:", read_timeout_s=1.0, reopen_min_s=0.1, reopen_max_s=0.2))
st, q = StageStats("capture"), ChunkQueue(10_000_000)
cap = SignalCapture(lambda: make_signal_source(s), s, q, st, stop)
cap.start()
out = {{}}
def until(what, cond, within):
    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            out["timed_out"] = what
            return False
        time.sleep(0.05)
    return True
if until("a second heard", lambda: cap.samples >= 16000 and hang.is_set(), 30):
    t0 = time.monotonic()
    if until("the silence noticed", lambda: st.state == "reconnecting", 15):
        out["noticed_after_s"] = round(time.monotonic() - t0, 2)
        out["error"] = st.last_error
        # the hung stream's close is not waited for: the device is opened again (and found silent again)
        # while that stream still hangs
        until("a reopen while the first stream hangs", lambda: st.errors >= 2, 15)
        release.set()
        heard = cap.samples
        until("sound again", lambda: st.state == "running" and cap.samples > heard + 16000, 30)
        out["reopens"] = cap.reopens
stop.set()  # the capture first: the card goes on answering its opens meanwhile
cap.join(10)
card_stop.set()
release.set()
print(json.dumps(out))
"""
    doc = _alsa_json(conf, code, timeout=120)
    assert "timed_out" not in doc, doc
    assert "no samples for 1 s: the device stopped delivering" in doc["error"], doc
    assert doc["noticed_after_s"] < 5.0, doc  # the read timeout and a moment, not the stream's close
    assert doc["reopens"] >= 1


def test_a_microphone_that_does_not_take_the_rate_asked_is_opened_at_its_own(tmp_path: Path) -> None:
    """A USB microphone named by its ALSA `hw:` name often takes 44.1 and 48 kHz only: asked for 16 kHz,
    PortAudio says "Invalid sample rate", and the source failed to open for good. Now it opens at the
    device's own rate (which the pipeline resamples, as it does a recording's), and asks again at the
    next open. ALSA's `file` plugin is the device; PortAudio's refusal of other rates stands in for the
    card's (a rate-bound capture device cannot be made here)."""
    raw = (np.arange(44100) % 2000 - 1000).astype("<i2")
    (tmp_path / "in.raw").write_bytes(raw.tobytes())
    conf = tmp_path / "asound.conf"
    conf.write_text(_file_pcm("!default", tmp_path / "in.raw"))
    code = """
import json, sounddevice as sd
from edge_agent.signals.microphone import MicrophoneSource
real, asked = sd.InputStream, []
def only_its_own(*a, samplerate, **kw):
    asked.append(samplerate)
    if samplerate != sd.query_devices(None, "input")["default_samplerate"]:
        raise sd.PortAudioError("Error opening InputStream: Invalid sample rate", -9997)
    return real(*a, samplerate=samplerate, **kw)
sd.InputStream = only_its_own
m = MicrophoneSource("mic:", "", 16000, 1)
m.open()
first = read_samples(m, 4410)
rate = m.rate
m.close()
m.open()
m.close()
print(json.dumps({"rate": rate, "asked": asked, "first": np.round(first * 32768).astype(int).tolist()}))
"""
    doc = _alsa_json(conf, code)
    assert doc["rate"] == 44100 and doc["asked"] == [16000, 44100, 16000, 44100], doc["asked"]
    assert doc["first"] == raw[:4410].tolist()


def test_a_microphone_at_a_rate_of_its_own_is_resampled_to_the_rate_asked() -> None:
    """The microphone above, opened at 44.1 kHz where 16 kHz was asked: a front end with a rate of its own
    (a wake word's) resamples to that already; one without (`signal.frontend = "none"`, the model fed
    samples) was fed 44.1 kHz audio as if it were 16 kHz. The chain now resamples to the rate asked."""
    model = _model("okay_nabu")
    try:
        s = Settings(source=SourceConfig(uri="mic:"), model=ModelConfig(path=WAKEWORD / "okay_nabu.tflite"),
                     signal=SignalConfig(frontend="none", window=1))
        pipe, _ = SignalPipeline.standalone(s, lambda: model)
        off = pipe._build(model, 1, 44100.0, 1, asked=16000.0)
        assert off.resampler is not None and off.model_rate == 16000
        assert pipe._build(model, 1, 16000.0, 1).resampler is None  # (the rate asked: nothing to do)
        assert pipe._build(model, 1, 44100.0, 1).model_rate == 44100  # a recording's rate is its own
    finally:
        model.close()


def test_no_microphone_is_a_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "asound.conf"
    conf.write_text("pcm.!default { type hw card 7 }\n")  # no such card
    code = """
from edge_agent.signals.base import SourceError
from edge_agent.signals.microphone import MicrophoneSource
try:
    MicrophoneSource("mic:", "", 16000, 1).open()
except SourceError as err:
    print("SourceError:", err)
"""
    r = _alsa_child(conf, code)
    # which one, and that there is none at all (not "microphone None")
    assert "SourceError: cannot open the default microphone: " in r.stdout, r.stdout + r.stderr
    assert "(no audio input device at all: no microphone is connected" in r.stdout, r.stdout


def test_a_new_writer_on_the_fifo_starts_the_streaming_model_afresh(tmp_path: Path) -> None:
    """A recorder that stops mid-word and starts again: the model must not continue the old word."""
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    model = _model("okay_nabu")
    s = Settings(
        source=SourceConfig(uri=f"pcm:{fifo}", reopen_min_s=0.05, reopen_max_s=0.1),
        signal=SignalConfig(predictions_hz=10_000),  # every window
    )
    fresh_s = Settings(
        source=SourceConfig(uri=f"wav:{WAVS / 'okay_nabu_2.wav'}", loop=False, realtime=False),
        signal=SignalConfig(predictions_hz=10_000),
    )
    fresh = [p["scores"]["Okay Nabu"] for p in run_offline(fresh_s, model).predictions]
    pipe, sink = SignalPipeline.standalone(s, lambda: model)
    stop = pipe.stop
    pipe.start()
    audio = _pcm16("okay_nabu_2.wav").tobytes()
    try:
        with open(fifo, "wb") as w:  # blocks until the agent has the FIFO open
            w.write(audio[: len(audio) * 6 // 10])  # stops in the middle of the word
        wait_until(lambda: pipe.capture.reopens >= 1, 10, what="the writer's loss noticed")
        w2 = open(fifo, "wb")
        w2.write(audio)
        w2.flush()
        wait_until(lambda: any(json.loads(m.payload)["type"] == "new" for m in list(sink.messages)
                               if m.topic == "events"), 10, what="the word from the new writer")
        def second_stream() -> list[float]:
            preds = [json.loads(m.payload) for m in list(sink.messages) if m.topic == "predictions"]
            starts = [i for i in range(1, len(preds))
                      if preds[i]["window"]["offset_s"] < preds[i - 1]["window"]["offset_s"]]
            return [p["scores"]["Okay Nabu"] for p in preds[starts[-1] :]] if starts else []

        wait_until(lambda: len(second_stream()) >= len(fresh), 10, what="the second stream's windows")
        second = second_stream()[: len(fresh)]
        assert second == fresh  # exactly what a fresh model gives: no state carried over
        events = [json.loads(m.payload) for m in list(sink.messages) if m.topic == "events"]
        assert [e["type"] for e in events if e["type"] == "new"] == ["new"]
        assert pipe.capture.info()["gaps"] >= 1
        w2.close()
    finally:
        stop.set()
        pipe.join(2)
        model.close()
