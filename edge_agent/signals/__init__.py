"""Signal sources (audio, numeric sensors): the registry of kinds and the one factory that reads a URI.

Adding a kind is one file (a `SignalSource` subclass with `kind`, optional `suffixes` and `audio`, and
`create`) and one line in `SIGNALS`. A URI names its kind by scheme (`serial:/dev/ttyUSB0`), or
by its file ending (`.wav`, `.flac`, `.csv`, ...); anything else is a camera, video or image source.
"""

from __future__ import annotations

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

SIGNALS: list[type[SignalSource]] = [
    WavSource,
    PcmSource,
    MicrophoneSource,
    IIOSource,
    SerialSource,
    MqttTopicSource,
    CsvSource,
]
AUDIO_KINDS = tuple(c.kind for c in SIGNALS if c.audio)


def signal_class(uri: str) -> type[SignalSource] | None:
    """The kind a source URI names (a scheme first, then a file ending), or None for a frame source."""
    scheme, sep, _ = uri.partition(":")
    for cls in SIGNALS:
        if sep and cls.kind == scheme:
            return cls
    low = uri.lower()
    for cls in SIGNALS:
        if cls.suffixes and low.endswith(cls.suffixes):
            return cls
    return None


def signal_kind(uri: str) -> str | None:
    cls = signal_class(uri)
    return cls.kind if cls else None


def make_signal_source(s: Settings) -> SignalSource:
    cls = signal_class(s.source.uri)
    if cls is None:
        raise SourceError(f"{s.source.uri!r} is not a signal source")
    scheme, sep, rest = s.source.uri.partition(":")
    arg = rest if sep and scheme == cls.kind else s.source.uri
    return cls.create(s.source.uri, arg, s)
