"""Signal sources (audio, numeric sensors): the registry of kinds and the one factory that reads a URI."""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.config import Settings
from edge_agent.signals.base import Chunk, EndOfStream, SignalSource, SourceError
from edge_agent.signals.csv_file import CsvSource
from edge_agent.signals.iio import IIOSource
from edge_agent.signals.microphone import MicrophoneSource
from edge_agent.signals.mqtt_topic import MqttTopicSource
from edge_agent.signals.pcm import PcmSource
from edge_agent.signals.serial_port import SerialSource
from edge_agent.signals.wav import WavSource

__all__ = [
    "AUDIO_KINDS",
    "SIGNALS",
    "Chunk",
    "EndOfStream",
    "SignalSource",
    "SourceError",
    "make_signal_source",
    "signal_kind",
]

AUDIO_KINDS = ("wav", "pcm", "mic")
#: Default rates where the source has none of its own.
_AUDIO_RATE = 16000
_SENSOR_RATE = 10.0
_IIO_ROOT = "/sys/bus/iio/devices/"


def _rate(s: Settings, audio: bool) -> float:
    return s.signal.rate or (_AUDIO_RATE if audio else _SENSOR_RATE)


SIGNALS: dict[str, Callable[[str, str, Settings], SignalSource]] = {
    "wav": lambda uri, arg, s: WavSource(uri, arg, s.source.loop, s.source.realtime),
    "pcm": lambda uri, arg, s: PcmSource(uri, arg, int(_rate(s, True)), s.signal.audio_channels),
    "mic": lambda uri, arg, s: MicrophoneSource(uri, arg, int(_rate(s, True)), s.signal.audio_channels),
    "iio": lambda uri, arg, s: IIOSource(
        uri, arg if "/" in arg else _IIO_ROOT + arg, _rate(s, False), s.signal.channels, s.signal.iio_device
    ),
    "serial": lambda uri, arg, s: SerialSource(uri, arg, s.signal.baud, _rate(s, False), s.signal.channels),
    "mqtt": lambda uri, arg, s: MqttTopicSource(uri, arg, s.mqtt, _rate(s, False), s.signal.channels),
    "csv": lambda uri, arg, s: CsvSource(
        uri, arg, _rate(s, False), s.source.loop, s.source.realtime, s.signal.channels
    ),
}


def signal_kind(uri: str) -> str | None:
    """The signal kind a source URI names, or None for a camera/video/image source."""
    scheme, sep, _ = uri.partition(":")
    if sep and scheme in SIGNALS:
        return scheme
    low = uri.lower()
    if low.endswith(".wav"):
        return "wav"
    if low.endswith(".csv"):
        return "csv"
    return None


def make_signal_source(s: Settings) -> SignalSource:
    kind = signal_kind(s.source.uri)
    if kind is None:
        raise SourceError(f"{s.source.uri!r} is not a signal source")
    scheme, sep, rest = s.source.uri.partition(":")
    arg = rest if sep and scheme == kind else s.source.uri
    return SIGNALS[kind](s.source.uri, arg, s)
