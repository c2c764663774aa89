#!/usr/bin/env python3
"""Wake words through the agent's signal pipeline: which model fires on which recording, how long after
the end of the word, and what one step costs.

For every microWakeWord model in models/wakeword/ and every recording in ../shared/data/wakeword/:
- offline (as fast as it goes): events raised, and `after word`, the stream time from the end of the
  spoken word (the loud part of the recording, see edge_agent.features.speech_end_s) to the window
  that raised the event;
- real time (the WAV played at its own rate, as a microphone would deliver it), own word only: the wall
  time from the moment the end of the word was captured to the event being handed to the sink;
- per step: inference p50 and process CPU per second of audio (front end + model + events).

    python benchmarks/wakeword.py
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.config import ModelConfig, RuntimeConfig, Settings, SignalConfig, SourceConfig  # noqa: E402
from edge_agent.features import speech_end_s  # noqa: E402
from edge_agent.model import Model  # noqa: E402
from edge_agent.signal_pipeline import SignalPipeline, run_offline  # noqa: E402
from edge_agent.signals.wav import read_wav  # noqa: E402

WAVS = ROOT.parent / "shared" / "data" / "wakeword"
MODELS = ROOT / "models" / "wakeword"


def speech_end(path: Path) -> float:
    end = speech_end_s(*read_wav(str(path)))
    assert end is not None
    return end


def settings(model: Path, wav: Path, realtime: bool) -> Settings:
    return Settings(
        source=SourceConfig(uri=f"wav:{wav}", loop=False, realtime=realtime),
        model=ModelConfig(path=model),
        signal=SignalConfig(predictions_hz=0),
    )


def realtime_latency(model: Model, s: Settings, word_end: float) -> float | None:
    """Wall seconds from the capture of the word's last sample to the event reaching the sink."""
    pipe, sink = SignalPipeline.standalone(s, lambda: model)
    stop = pipe.stop
    pipe.start()
    got: float | None = None
    deadline = time.monotonic() + 10
    while got is None and time.monotonic() < deadline:
        for m in list(sink.messages):
            doc = json.loads(m.payload)
            if doc["type"] == "new":
                got = doc["ts"] - (doc["start_ts"] - doc["offset_s"] + word_end)
        stop.wait(0.005)
    stop.set()
    pipe.join(2)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-realtime", action="store_true", help="skip the real-time runs")
    args = ap.parse_args()
    if not WAVS.is_dir():
        print(f"no recordings at {WAVS}", file=sys.stderr)
        return 1
    wavs = sorted(WAVS.glob("*.wav"))
    print(
        f"{'model':12} {'recording':28} {'events':>6} {'after word s':>12} {'real time s':>11} "
        f"{'infer p50 ms':>12} {'CPU ms per s of audio':>21}"
    )
    for mpath in sorted(MODELS.glob("*.tflite")):
        model = Model(ModelConfig(path=mpath), RuntimeConfig(accelerator="cpu", threads=1), None, signal=True)
        own = mpath.stem
        for wav in wavs:
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            run = run_offline(settings(mpath, wav, False), model)
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) * 1e3 / (run.samples / run.rate)
            end = speech_end(wav)
            new = [e for e in run.events if e["type"] == "new"]
            after = ", ".join(f"{e['offset_s'] - end:+.2f}" for e in new) or "-"
            rt = "-"
            if new and wav.stem.startswith(own) and not args.no_realtime:
                lat = realtime_latency(model, settings(mpath, wav, True), end)
                rt = f"{lat:.3f}" if lat is not None else "none"
            p50 = run.inference_ms["p50"] if run.inference_ms else float("nan")
            print(f"{own:12} {wav.name:28} {len(new):>6} {after:>12} {rt:>11} {p50:>12.3f} {cpu:>21.1f}")
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
