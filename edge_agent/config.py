"""Agent configuration: a TOML file, `EDGE_AGENT_*` env vars (``__`` nests), CLI flags on top.

Every field carries a description and bounds so that `edge-agent config` and docs/configuration.md
can describe it, and a mistyped key is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import contextvars
import difflib
import json
import os
import re
import socket
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "EDGE_AGENT_"
ENV_NESTED = "__"
#: MQTT topic levels may not hold wildcards or separators; keep ids to a safe alphabet.
_TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")



def topic_level(v: str) -> str:
    """A name that becomes one MQTT topic level (device, pipeline, zone): checked the same everywhere."""
    if not _TOPIC_SAFE.match(v):
        raise ValueError("must be 1-64 of A-Z a-z 0-9 _ . -")
    return v


class ConfigError(Exception):
    """Raised with one line per offending key; the CLI turns it into exit code 2."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: The port IANA assigns to MQTT over TLS.
MQTTS_PORT = 8883


def _existing_file(v: Path) -> Path:
    if not v.is_file():
        raise ValueError(_not_found(v))
    return v


def _not_found(v: Path | str) -> str:
    """A missing file's error, with why where the path is one a shell would have expanded: `~` or `$HOME`
    in a configuration file or an environment variable's value stays as it is written (under systemd
    the agent's home is not the user's either)."""
    text = str(v)
    if text.startswith("~") or "$" in text:
        return f"file not found: {text} (~ and $VARIABLES are not expanded here: write the full path)"
    return f"file not found: {text}"


#: A path that must name a file as the settings are read (a CA bundle, a certificate, a key).
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


class TLSConfig(_Strict):
    enabled: bool | None = Field(
        None,
        description="TLS to the broker. Default: on where ca_file or cert_file is set or the port is 8883 (MQTT "
        "over TLS), verifying the broker against ca_file, else against the system's trusted CAs (a cloud "
        "broker with a public certificate needs no ca_file).",
    )
    ca_file: ExistingFile | None = Field(
        None, description="CA bundle that signs the broker certificate (default: the system's trusted CAs)."
    )
    cert_file: ExistingFile | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: ExistingFile | None = Field(None, description="Private key of the client certificate.")
    insecure: bool = Field(False, description="Skip hostname verification (testing only).")

    @model_validator(mode="after")
    def _not_off_with_files(self) -> TLSConfig:
        if self.enabled is False and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError("tls.enabled is false while a TLS file is set: remove the file, or enable TLS")
        return self

    def on(self, port: int) -> bool:
        """Whether the connection to a broker at `port` uses TLS. A client certificate without a CA file
        used to mean no TLS at all: the certificate unused and the password sent in clear text."""
        if self.enabled is not None:
            return self.enabled
        return self.ca_file is not None or self.cert_file is not None or port == MQTTS_PORT


class MQTTConfig(_Strict):
    host: str = Field("localhost", min_length=1, max_length=253, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    topic_prefix: str = Field(
        "edge", min_length=1, max_length=128, description="First topic level(s); topics are {prefix}/{device_id}/..."
    )
    username: str | None = Field(None, max_length=256, description="Broker user name.")
    password: SecretStr | None = Field(None, description="Broker password; never logged or printed.")
    password_file: Path | None = Field(
        None,
        description="File holding the broker password (default: $CREDENTIALS_DIRECTORY/mqtt_password when "
        "systemd's LoadCredential provides it).",
    )
    tls: TLSConfig = Field(
        default_factory=TLSConfig, description="TLS settings; on where tls.ca_file or cert_file is set or port is 8883."
    )
    qos: int = Field(1, ge=0, le=2, description="QoS of predictions (availability always uses 1).")
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version.")
    keepalive_s: int = Field(
        15, ge=5, le=3600, description="Keepalive; a silent broker is declared lost after 1.5x this."
    )
    client_id: str | None = Field(None, max_length=128, description="Client id; default edge-agent-{device_id}.")
    queue_size: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Outgoing messages held while the broker is slow or away before drops are counted.",
    )
    linger_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="While messages keep coming, the publisher gathers them this long and sends them together: "
        "one wake-up of its thread for several messages rather than one each, which frees CPU for the pipelines "
        "at high message rates. A message may reach the broker up to this much later; the first after a quiet "
        "spell goes at once. 0: each message as it comes.",
    )
    reconnect_min_s: float = Field(0.5, ge=0.05, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, ge=0.1, le=3600, description="Longest reconnect delay (exponential backoff).")
    down_log_s: float = Field(
        60.0, ge=1, le=86400, description="While the broker cannot be reached, log that this often (first: at once)."
    )
    max_packet_bytes: int = Field(
        0,
        ge=0,
        le=268_435_460,
        description="Largest MQTT packet the broker takes (AWS IoT Core: 131072); a larger message is dropped, "
        "counted and said in health instead of sent, since a broker closes the connection on one and it would "
        "be sent again at every reconnect. 0: what an MQTT 5 broker says when it accepts the connection, or "
        "what the broker shows by closing the connection on the same large packet twice.",
    )

    @model_validator(mode="after")
    def _password_from_file(self) -> MQTTConfig:
        path = self.password_file
        if path is None and self.password is None and os.environ.get("CREDENTIALS_DIRECTORY"):
            cred = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "mqtt_password"
            path = cred if cred.is_file() else None
        if path is not None and self.password is None:
            try:
                # utf-8-sig: a byte order mark (a file saved by Notepad) is no part of the password
                secret = path.read_text(encoding="utf-8-sig").rstrip("\r\n")
            except OSError as err:
                raise ValueError(f"password_file {path}: {err.strerror}") from None
            object.__setattr__(self, "password", SecretStr(secret))
        return self

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        from edge_agent.topics import unfit

        if any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must not contain '#' or '+', nor start or end with '/'")
        bad = unfit(v)
        if bad is not None:  # the broker would close the connection at each publish, for good
            raise ValueError(f"holds {bad}, which no MQTT topic may hold (a control character or non-character)")
        return v

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> Any:
        """`protocol = 5` in TOML, or `--set mqtt.protocol=5` (read as JSON), is the number 5: meant as "5"."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class SourceConfig(_Strict):
    uri: str = Field(
        "demo",
        min_length=1,
        max_length=4096,
        description="'demo', camera index ('0'), /dev/videoN or /dev/v4l/by-id/..., 'rpicam[:N]' (Raspberry Pi "
        "camera module), 'exec:COMMAND' (writing MJPEG), video file, rtsp:// or http(s):// URL, GStreamer "
        "pipeline (contains '!'), image directory or glob, 'synthetic[:WxH]', "
        "or 'replay:FILE' (decoded once into memory, replayed). Signals: 'wav:FILE' (or any .wav, .flac, .ogg, "
        ".opus, .mp3), 'pcm:-' (stdin) or 'pcm:FIFO', 'mic:[DEVICE]', 'iio:NAME' (the driver's name for the "
        "sensor), 'iio:iio:deviceN' or 'iio:/sys/bus/iio/devices/iio:deviceN', "
        "'serial:/dev/ttyUSB0', 'mqtt:TOPIC', 'csv:FILE'.",
    )
    fps: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Cap on frames handed to inference per second; none = as fast as inference goes.",
    )
    loop: bool = Field(True, description="Restart a video file or image set at its end.")
    realtime: bool = Field(
        True,
        description="Play files at their own frame rate (dropping what inference cannot keep up with, and what is "
        "over the fps cap) rather than as fast as inference takes them; either way a file's frames carry its own "
        "clock. Read by files, picture sets, replays and recordings of sound or readings; a camera or a stream "
        "gives frames at its own rate.",
    )
    tls_verify: bool = Field(
        True,
        description="Verify an https:// or rtsps:// camera's certificate (against tls_ca_file, else the system's "
        "trusted CAs). "
        "Most cameras serve a certificate they signed themselves, for no host name: set false for those on a "
        "network you trust.",
    )
    tls_ca_file: ExistingFile | None = Field(
        None, description="CA bundle, or a camera's own certificate, trusted for https:// and rtsps:// cameras."
    )
    width: int | None = Field(None, ge=16, le=8192, description="Capture width to ask a camera for.")
    height: int | None = Field(None, ge=16, le=8192, description="Capture height to ask a camera for.")
    read_timeout_s: float = Field(
        5.0, ge=0.1, le=600, description="A source that delivers no frame for this long is reopened."
    )
    reopen_min_s: float = Field(0.5, ge=0.01, le=60, description="First delay before reopening a failed source.")
    reopen_max_s: float = Field(
        30.0, ge=0.1, le=3600, description="Longest delay between reopen attempts (exponential backoff)."
    )
    frozen_after_s: float = Field(
        120.0,
        ge=0,
        le=86400,
        description="A camera's picture that has not changed for this long is said to be frozen (health: "
        "degraded, with the reason): a stream that repeats its last frame while its camera or a recorder hangs. "
        "Sensor noise changes a real picture every second, however still the scene; a codec repeats one only "
        "until its next key frame. 0: never. Read by cameras and streams, not files.",
    )
    blank_after_s: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="A camera's picture of one flat tone for this long is said to be blank (health: degraded, "
        "with its grey level): the lens covered or facing a wall or the sky, too dark to see, no signal. "
        "0: never. Read by cameras and streams, not files.",
    )
    dark_is_blank: bool = Field(
        True,
        description="A picture of one flat tone too dark to see (grey level under 40 of 255: a covered lens, a "
        "night without infrared, the lights off) counts as blank. false for a camera without infrared that goes "
        "dark every night: such a picture is said as 'dark' in health and is no problem, while a flat picture "
        "that is not dark (sprayed, facing a wall, a decoder's grey) still is. Read by cameras and streams.",
    )
    scaled_decode: bool = Field(
        True,
        description="Decode JPEG frames (Motion JPEG files and RTSP streams, HTTP cameras, 'exec:' and 'rpicam' "
        "sources, photo folders) at 1/2, 1/4 or 1/8 of their size, in the JPEG decoder itself, where the model "
        "takes the frame at no more than that and nothing after it wants the picture (the live view while a page "
        "shows it, scene events with snapshots, clips or a second stage, escalation of frames or crops, an update "
        "on probation): less work per frame, boxes still in the frame's own pixels. Off: every frame decoded whole.",
    )


class ModelConfig(_Strict):
    path: Path | None = Field(
        None, description="TFLite/LiteRT model file; default: the bundled BlazeFace short-range detector."
    )
    labels: Path | None = Field(
        None, description="Labels file (one per line, 'index name' lines, JSON, or a data.yaml's names); default: "
        "labels embedded in the model."
    )
    task: Literal["auto", "classification", "detection", "raw"] = Field(
        "auto", description="How outputs are read; auto picks from the output tensors."
    )
    score_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Detections and classes below this score are not reported."
    )
    iou_threshold: float = Field(
        0.45, ge=0.0, le=1.0, description="Non-maximum suppression overlap for decoders that need it."
    )
    top_k: int = Field(5, ge=1, le=1000, description="Classes reported per classification.")
    max_detections: int = Field(100, ge=1, le=10000, description="Detections reported per frame.")
    raw_max_values: int = Field(
        4096,
        ge=0,
        le=1 << 24,
        description="A raw output (a model no decoder reads: a segmentation map, a depth map, features) with more "
        "values than this is published as its shape, min, max and mean, not value by value: a 512x512x3 map is "
        "15 MB of JSON a frame. 0: never the values.",
    )
    change_threshold: float = Field(
        0.0,
        ge=0,
        le=255,
        description="Skip inference when a frame differs from the last inferred one by less than this mean grey "
        "level (on a 32x24 thumbnail); the last result is published again with cached: true. 0 = off.",
    )
    change_max_age_s: float = Field(
        10.0, gt=0, le=3600, description="Infer at least this often even when nothing changes."
    )
    resize: Literal["auto", "stretch", "letterbox"] = Field(
        "auto", description="auto: letterbox for anchor/YOLO detectors, stretch otherwise."
    )
    input_size: list[Annotated[int, Field(ge=16, le=4096)]] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[width, height] to run a model at whose input size its file leaves open (exported with "
        "dynamic sizes: -1 in its input's shape signature); default: the size its export metadata names "
        "(Ultralytics' imgsz), else 640 x 640. A model of a fixed size takes only its own.",
    )
    mean: list[float] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="Float-input normalisation mean (per channel or one); default from model metadata, else 127.5.",
    )
    std: list[float] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="Float-input normalisation std; default from model metadata, else 127.5.",
    )
    name: str | None = Field(
        None, max_length=128, description="Model name reported in predictions; default: file stem."
    )
    version: str | None = Field(None, max_length=64, description="Model version reported in predictions.")
    isolated_check: bool = Field(
        True,
        description="Load a model first in a child process with memory and time limits (a crafted file can "
        "crash native code); the verdict is cached per sha256.",
    )

    @field_validator("path", "labels")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.exists():
            raise ValueError(_not_found(v))
        return v

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(x == 0 for x in v):
            raise ValueError("std values must be non-zero")
        return v


class EventsConfig(_Strict):
    on: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Smoothed score at which an event starts; default: the model's manifest, else 0.8.",
    )
    off: float | None = Field(
        None, ge=0, le=1, description="Smoothed score below which it ends (hysteresis); default: half of `on`."
    )
    smoothing: int | None = Field(
        None, ge=1, le=1000, description="Windows averaged before the thresholds; default: the manifest's, else 1."
    )
    refractory_s: float = Field(
        1.0, ge=0, le=3600, description="No new event of the same label this soon after one ended."
    )
    labels: list[str] | None = Field(
        None, max_length=1000, description="Labels that raise events; default: every label of the model."
    )

    @model_validator(mode="after")
    def _order(self) -> EventsConfig:
        if self.on is not None and self.off is not None and self.off > self.on:
            raise ValueError("events.off must not exceed events.on")
        return self


class SignalConfig(_Strict):
    rate: float | None = Field(
        None,
        gt=0,
        le=384_000,
        description="Samples per second: the poll rate of IIO sysfs, the nominal rate of serial, MQTT and CSV "
        "input, the rate of raw PCM; default 16000 for audio, 10 for sensors (a WAV file has its own).",
    )
    channels: list[str] | None = Field(
        None, max_length=64, description="Channels to use: IIO channel names, CSV columns or JSON keys, in order."
    )
    audio_channels: int = Field(1, ge=1, le=32, description="Channels of raw PCM and microphone input.")
    baud: int = Field(115200, ge=50, le=4_000_000, description="Serial port speed.")
    iio_device: str | None = Field(
        None, max_length=4096, description="IIO buffered character device; default /dev/<device directory name>."
    )
    frontend: Literal["auto", "none", "micro"] = Field(
        "auto",
        description="Per-frame features: micro = the microWakeWord audio front end (16 kHz, 40 bins every 10 ms); "
        "auto picks it for models whose manifest asks for it.",
    )
    transform: Literal["none", "spectrogram"] = Field(
        "none", description="Per-window transform before the model: none, or a log power spectrum per channel."
    )
    window: int | None = Field(
        None, ge=1, le=1_000_000, description="Frames per window; default: what the model's input holds."
    )
    hop: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Frames between window starts; default: the window (streaming models), else half of it.",
    )
    offset: list[float] | None = Field(
        None, min_length=1, max_length=64, description="Subtracted per channel before scaling (one value or one each)."
    )
    scale: list[float] | None = Field(
        None, min_length=1, max_length=64, description="Multiplied per channel after the offset."
    )
    predictions_hz: float = Field(
        1.0,
        ge=0,
        le=10_000,
        description="Per-window predictions published at most this often (the latest window wins); 0 = events only.",
    )
    events: EventsConfig = Field(default_factory=EventsConfig, description="Threshold crossings as events.")
    queue_s: float = Field(
        2.0,
        ge=0.05,
        le=600,
        description="Seconds of input held between capture and inference before drops are counted.",
    )
    flat_after_s: float | None = Field(
        None,
        ge=0,
        le=604800,
        description="A live microphone or sensor whose every sample has been one value for this long is said to "
        "be flat (health: degraded, with the value): a microphone muted, unplugged from its sound card or on a "
        "channel nothing is wired to (exact digital silence), a sensor that stopped measuring. Default: 300 "
        "for audio, never for sensor readings (a temperature to a tenth of a degree may rightly hold for hours). "
        "0: never. Read by microphones, sensors and raw PCM, not by recordings and CSV files.",
    )


class HTTPConfig(_Strict):
    enabled: bool = Field(
        False, description="Serve /metrics (Prometheus), /healthz and a live status page over HTTP."
    )
    bind: str = Field(
        "127.0.0.1",
        min_length=1,
        max_length=253,
        description="Address to listen on; 127.0.0.1 keeps it on the device, 0.0.0.0 opens it to the network.",
    )
    port: int = Field(8780, ge=1, le=65535, description="TCP port.")
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of the live frame.")
    max_width: int = Field(960, ge=64, le=8192, description="The live frame is scaled down to at most this width.")
    client_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="A client that sends or takes nothing for this long is disconnected: a connection left "
        "open and idle never holds one of the connections the server takes at once.",
    )
    max_connections: int = Field(
        32,
        ge=1,
        le=1024,
        description="Connections served at once; more are closed at once, unread (each takes a thread).",
    )

    @model_validator(mode="after")
    def _unread_while_off(self) -> HTTPConfig:
        _refuse_unread_while_off(self, self.enabled, "the HTTP side", "")
        return self


class HomeAssistantConfig(_Strict):
    enabled: bool = Field(
        False, description="Publish Home Assistant MQTT discovery configs, so the device appears with no YAML."
    )
    discovery_prefix: str = Field(
        "homeassistant", min_length=1, max_length=128, description="Home Assistant's discovery prefix."
    )
    status_topic: str = Field(
        "homeassistant/status",
        min_length=1,
        max_length=256,
        description="Home Assistant's birth topic: configs are published again when it says 'online'.",
    )
    labels: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Watched labels: each gets a binary sensor ('person detected'), a count and a last-seen "
        "sensor; default: the first label the model produces. A label no model can produce is an error.",
    )
    off_delay_s: float = Field(
        5.0, ge=0, le=3600, description="A watched label is 'clear' after this long without being seen."
    )
    state_interval_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="At most one label state message per this many seconds (a label turning on is sent at "
        "once; the last change in an interval is sent when it ends); 0 sends every change.",
    )

    @model_validator(mode="after")
    def _unread_while_off(self) -> HomeAssistantConfig:
        _refuse_unread_while_off(self, self.enabled, "Home Assistant discovery", "")
        return self


class EscalationConfig(_Strict):
    enabled: bool = Field(
        False,
        description="Send hard cases (confidence inside the band, or an always-escalate label) to a cloud worker.",
    )
    low: float = Field(0.3, ge=0, le=1, description="Results whose top score is at least this ...")
    high: float = Field(0.6, ge=0, le=1, description="... and below this are escalated.")
    labels: list[str] = Field(
        default_factory=list, max_length=256, description="Labels that are always escalated when seen."
    )
    content: Literal["frame", "crops", "features"] = Field(
        "crops",
        description="What goes up: the whole frame (JPEG), only the detection crops (JPEG), or no pixels at all "
        "(the local result; for audio and sensors, the window's values).",
    )
    blur_faces: bool = Field(
        True, description="Blur faces (found by the bundled face detector) in any picture before it leaves."
    )
    max_per_minute: float = Field(
        30.0, gt=0, le=100_000, description="Escalations sent per minute at most (the rest are counted, not sent)."
    )
    max_kbytes_per_s: float = Field(
        100.0, gt=0, le=1_000_000, description="Bandwidth budget for escalations, kB/s averaged over a minute."
    )
    deadline_s: float = Field(
        2.0, gt=0, le=600, description="Without an answer by then, the local result stands (counted as a timeout)."
    )
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of escalated pictures.")
    max_width: int = Field(640, ge=32, le=8192, description="Escalated pictures are scaled down to this width.")

    @model_validator(mode="after")
    def _band(self) -> EscalationConfig:
        if self.low > self.high:
            raise ValueError("escalation.low must not exceed escalation.high")
        _refuse_unread_while_off(self, self.enabled, "escalation", "")
        return self


class RuntimeConfig(_Strict):
    accelerator: str = Field(
        "auto",
        description="auto, a registered accelerator (cpu, gpu, npu, edgetpu, vx, armnn), or the path of an external "
        "delegate .so.",
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU inference threads; 0 = chosen per model: one per core, or fewer where timing on this "
        "machine shows them as fast (within 5%), measured once per model and kept in state_dir.",
    )
    preprocess_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="OpenCV threads for resizing and colour conversion; 0 = OpenCV's default (one per core). "
        "One leaves the cores to inference: splitting one frame's resize costs more in thread wake-ups "
        "than it saves while inference keeps every core busy.",
    )
    delegate_options: dict[str, str] = Field(
        default_factory=dict, description="Options passed to an external delegate."
    )
    probe_timeout_s: float = Field(30.0, ge=1, le=600, description="Longest wait for one accelerator probe subprocess.")
    cpu_fallback: bool = Field(True, description="Fall back to the CPU when an accelerator fails at run time.")
    recover_s: float = Field(
        600.0,
        ge=0,
        le=86400,
        description="Where the CPU stands in for an accelerator that failed at run time or could not be opened "
        "at start (a USB accelerator unplugged or not yet found at boot), select again this often, as at start "
        "(a probe in a child process where no verdict is cached): once it passes, the accelerator serves from "
        "the next frame. 0: only a restart tries it again.",
    )
    own_process: bool = Field(
        False,
        description="Run each model's backend (accelerator, CPU interpreters, CPU fallback) in a child process "
        "of its own, fed through shared memory: a driver that crashes takes down only that process, one that "
        "hangs (15 s without an answer) is killed (the model then falls back to the CPU), and Python's lock "
        "stays free while LiteRT's GPU runs. Off by default, as measured: on a GPU with 4 pipelines 1.08-1.46x "
        "the frames a second where no batch forms, but 0.76-1.13x with the default batching (fuller batches "
        "form in the agent); on the CPU 0.72-0.88x.",
    )
    malloc_arenas: int = Field(
        2,
        ge=0,
        le=64,
        description="glibc malloc arenas at most, set at start before any thread: per-thread arenas kept freed "
        "memory apart and made resident memory vary by tens of MB from run to run; 0 = glibc's default (8 per core).",
    )
    replicas: int = Field(
        0,
        ge=0,
        le=64,
        description="CPU interpreters (one thread each) that serve a model side by side once two or more "
        "pipelines share it; 0 = one per core, and one more each time a frame finds every one busy, up to one "
        "per pipeline that shares the model and twice the cores; 1 = one interpreter (with runtime.threads). "
        "Accelerators are always opened once.",
    )
    max_batch: int = Field(
        0,
        ge=0,
        le=64,
        description="Frames from different pipelines that share a model grouped into one invoke() at most, where "
        "the model's batch dimension can be resized and batched outputs match single runs; 1 = never batch; "
        "0 = 4 on a GPU or NPU (2-3x less time per frame measured there), 1 on the CPU (at most 10% gained, "
        "and an interpreter per batch size).",
    )
    batch_wait_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="Longest a frame waits for frames of other pipelines to join its batch; 0 = batch only the "
        "frames already waiting while the model was busy (never delays one); unset = 3 on a GPU or NPU (with 4 "
        "pipelines 1.9-2.1x the frames a second of no wait on a GPU, at lower latency), 0 on the CPU (where "
        "waiting cost as much as it gained).",
    )

    @field_validator("accelerator")
    @classmethod
    def _accel(cls, v: str) -> str:
        from edge_agent.runtime.registry import accelerator_names  # the backends load only when one is named

        if v in accelerator_names():
            return v
        if v.endswith(".so") or ".so." in v:
            return v
        raise ValueError(f"must be one of {', '.join(accelerator_names())} or a delegate .so path")


class HealthConfig(_Strict):
    interval_s: float = Field(10.0, ge=0.2, le=3600, description="Seconds between health messages.")
    stall_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="A stage with no progress for this long is 'stalled': the systemd watchdog stops being fed.",
    )
    min_free_mb: float = Field(
        64.0,
        ge=0,
        le=1_000_000,
        description="Health is degraded while the state directory's file system has less free space than this "
        "(the outbox, snapshots, clips and model updates need it).",
    )
    min_available_mb: float = Field(
        64.0,
        ge=0,
        le=1_000_000,
        description="Health is degraded while the system's available memory (MemAvailable: free, and cache the "
        "kernel can reclaim) is below this: the kernel may soon kill a process to free memory, this agent among "
        "them. 0: never.",
    )
    behind_after_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="Health is degraded once a pipeline with `fps` set on a live source has inferred under 0.8 of "
        "it for this long while its camera gave enough frames (the model is slower than that on this board). "
        "0: never.",
    )
    min_wifi_signal_dbm: float = Field(
        -80.0,
        ge=-120,
        le=0,
        description="Health is degraded while the Wi-Fi link that carries the broker connection has a weaker signal "
        "than this, in dBm (below about -80, messages are lost and the connection drops). 0: never.",
    )
    exit_on_stall: bool = Field(
        True,
        description="Exit with code 3 when a stage has been stalled for stall_s, so any supervisor restarts the "
        "agent (under systemd the watchdog does the same).",
    )


class OutboxConfig(_Strict):
    enabled: bool = Field(
        True, description="Keep results produced while the broker is away on disk and send them later."
    )
    max_messages: int = Field(
        100_000, ge=10, le=10_000_000, description="Results held at most; past it, `policy` applies."
    )
    policy: Literal["drop_oldest", "drop_newest", "downsample"] = Field(
        "drop_oldest", description="What gives when the outbox is full (each drop is counted in health)."
    )
    flush_interval_s: float = Field(
        1.0, ge=0.05, le=60, description="Batch writes to disk at most this often (SD card wear)."
    )
    retry_s: float = Field(
        30.0, ge=0.1, le=3600, description="While the outbox is in memory (state directory unusable), how often it "
        "tries the disk again; back there, it writes what memory held."
    )
    replay_rate: float = Field(
        200.0, ge=1, le=100_000, description="Backlog messages per second sent after a reconnect."
    )


class OTAConfig(_Strict):
    trusted_keys: list[Path] = Field(
        default_factory=list, max_length=16, description="Ed25519 public keys (PEM) whose signatures are accepted."
    )
    allow_unsigned: bool = Field(False, description="Accept unsigned manifests (development only).")
    max_bytes: int = Field(200 * 2**20, ge=1024, le=2**34, description="Largest model accepted, in bytes.")
    keep_versions: int = Field(
        3, ge=2, le=50, description="Installed versions kept on disk (current and previous always)."
    )
    stall_s: float = Field(
        30.0, ge=1, le=3600, description="A download that receives nothing for this long is resumed."
    )
    deadline_s: float = Field(
        1800.0, ge=5, le=86400, description="Longest a whole download may take; a connection still open then is cut."
    )
    probation_inferences: int = Field(
        30, ge=1, le=100_000, description="Frames a new model must run on beside the serving one before it serves."
    )
    probation_s: float = Field(
        60.0,
        ge=1,
        le=86400,
        description="Longest probation lasts; the verdict is then taken on the frames compared so far (none: kept).",
    )
    max_inference_ms: float = Field(
        1000.0, gt=0, le=60_000, description="Probation fails when inference p95 exceeds this."
    )
    min_agreement: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Agreement with the serving model a new one needs during probation, where it runs beside "
        "it on the same frames (detections matched by IoU and label, the top class, or output distance; mean "
        "over the frames compared). A manifest may ask for less if it carries acceptance tests.",
    )
    agreement_iou: float = Field(
        0.5, gt=0, le=1, description="Overlap at which a detection of the new model matches one of the serving model."
    )
    shadow_every: int = Field(
        1,
        ge=1,
        le=1000,
        description="During probation the new model runs on every k-th frame the serving model ran on (more "
        "are skipped while it is busy); raise it where the CPU cannot run both models at the frame rate.",
    )

    @field_validator("trusted_keys")
    @classmethod
    def _keys_exist(cls, v: list[Path]) -> list[Path]:
        missing = [str(p) for p in v if not p.is_file()]
        if missing:
            raise ValueError(_not_found(missing[0]))
        return v


#: Topic levels a pipeline name may not take: they are the device's own topics.
class _Area(_Strict):
    points: list[list[float]] = Field(
        min_length=1,
        max_length=100,
        description="Polygon corners [[x, y], ...] in order round the area, as fractions of the frame (0-1).",
    )
    labels: list[str] | None = Field(
        None, max_length=1000, description="Labels this applies to; default: every label."
    )

    @field_validator("points")
    @classmethod
    def _polygon(cls, v: list[list[float]]) -> list[list[float]]:
        from edge_agent.zones import polygon_problem

        problem = polygon_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


class ZoneConfig(_Area):
    name: str = Field(min_length=1, max_length=64, description="Zone name, a topic level: A-Z a-z 0-9 _ . -")
    min_score: float = Field(0.0, ge=0, le=1, description="Detections scoring less do not count in the zone.")
    min_area: float = Field(
        0.0, ge=0, le=1, description="Boxes smaller than this fraction of the frame do not count in the zone."
    )
    inertia: int = Field(
        3,
        ge=1,
        le=1000,
        description="Consecutive frames an object must be in (or out of) the zone before it counts as entered "
        "(or left), so that a flicker at the edge is not an entry.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return topic_level(v)


class MaskConfig(_Area):
    """Detections anchored inside are dropped before tracking, zones and publishing."""


class TrackingConfig(_Strict):
    iou_threshold: float = Field(
        0.2, gt=0, lt=1, description="Least IoU between a track's predicted box and a detection to match them."
    )
    max_age_s: float = Field(
        2.0, gt=0, le=60, description="A track not seen for longer ends (its event ends); shorter misses are bridged."
    )
    min_hits: int = Field(
        2, ge=1, le=100, description="Frames an object must be seen before it is a track (and raises `new`)."
    )
    high_score: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Detections scoring at least this start tracks; weaker ones only keep existing tracks alive "
        "(ByteTrack's second round). Set model.score_threshold below it to use them.",
    )


class SnapshotConfig(_Strict):
    enabled: bool = Field(True, description="Publish and keep the best frame of each object event.")
    crop: bool = Field(False, description="Crop the snapshot around the object instead of the whole frame.")
    max_width: int = Field(640, ge=64, le=8192, description="Snapshots are scaled down to at most this width.")
    max_bytes: int = Field(
        150_000, ge=4096, le=10_000_000, description="Largest snapshot JPEG; quality is lowered until it fits."
    )
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality to start from.")
    keep: int = Field(200, ge=0, le=100_000, description="Snapshots kept on disk per pipeline; the oldest go first.")


class ClipConfig(_Strict):
    enabled: bool = Field(False, description="Write a short video of each object event under state_dir/clips.")
    pre_s: float = Field(3.0, ge=0, le=60, description="Seconds kept before an event starts.")
    post_s: float = Field(3.0, ge=0, le=60, description="Seconds recorded after it ends.")
    fps: float = Field(10.0, gt=0, le=60, description="Frames per second kept for clips (JPEG in memory).")
    max_width: int = Field(640, ge=64, le=8192, description="Clip frames are scaled down to at most this width.")
    max_clips: int = Field(50, ge=1, le=100_000, description="Clips kept per pipeline; the oldest go first.")
    max_mb: float = Field(500.0, gt=0, le=1_000_000, description="Disk space all of a pipeline's clips may take.")
    max_event_s: float = Field(
        120.0, gt=0, le=3600, description="A longer event's clip is cut at this length (memory is bounded)."
    )


class SecondStageConfig(_Strict):
    """A second model run on the crops of chosen labels: a classifier, a landmark model, another detector."""

    model: ModelConfig = Field(description="The model run on each crop (its input must take an image).")
    labels: list[str] = Field(
        min_length=1, max_length=1000, description="Labels of the first model whose crops go to the second."
    )
    interval_s: float = Field(
        1.0, ge=0, le=3600, description="Least time between two runs on one track (0: every frame it is seen)."
    )
    margin: float = Field(
        0.25, ge=0, le=2, description="The crop is the box grown by this fraction of its size on every side."
    )
    square: bool = Field(True, description="Make the crop square (face, landmark and most classifier models).")
    min_size: int = Field(16, ge=1, le=4096, description="Boxes smaller than this many pixels are not run.")

    @field_validator("model")
    @classmethod
    def _path(cls, v: ModelConfig) -> ModelConfig:
        if v.path is None:
            raise ValueError("model.path is required (the second model has no default)")
        return v


def _refuse_unread_while_off(m: BaseModel, on: bool, section: str, how: str, key: str = "") -> None:
    """Settings of a part that is off would be taken and never read (`http.port` with the status page
    off, `scene.labels` with no scene): refused, unless the part is turned off on purpose (`enabled =
    false` set), which keeps its settings for when it is turned on again."""
    if on or "enabled" in m.model_fields_set:
        return
    unread = _set_keys(m)
    if unread:
        also = f" (and {', '.join(unread[1:])})" if unread[1:] else ""
        raise ValueError(
            f"{key}{unread[0]}{also}: set, but {section} is off, so nothing would read it; turn it on with enabled = "
            f"true{how}, or set enabled = false to keep such settings unused"
        )


def _set_keys(m: BaseModel, prefix: str = "") -> list[str]:
    """The dotted keys of the settings given in `m` (a file, the environment or --set), not defaulted."""
    out: list[str] = []
    for name in sorted(m.model_fields_set):
        v = getattr(m, name)
        if isinstance(v, BaseModel) and v.model_fields_set:
            out += _set_keys(v, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


class SceneConfig(_Strict):
    """Detections -> objects people act on: masks, zones, tracks, one event per object, snapshots, clips."""

    enabled: bool = Field(
        False,
        description="Track objects and publish object events; on by itself when zones, masks, clips or a second "
        "stage are set, unless set to false. Other scene settings with the scene off are refused.",
    )
    labels: list[str] | None = Field(
        None, max_length=1000, description="Labels that are tracked and raise events; default: every label."
    )
    anchor: Literal["bottom_center", "center"] = Field(
        "bottom_center", description="The point of a box that places it in zones and masks."
    )
    zones: list[ZoneConfig] = Field(default_factory=list, max_length=64, description="Named areas.")
    masks: list[MaskConfig] = Field(default_factory=list, max_length=64, description="Areas whose detections drop.")
    required_zones: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Raise an object's events only once it has entered one of these zones; default: always.",
    )
    update_interval_s: float = Field(
        2.0, ge=0.1, le=3600, description="Least time between two `update` events of one object."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="The tracker.")
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig, description="Best frame of each event.")
    clips: ClipConfig = Field(default_factory=ClipConfig, description="Short videos of events.")
    second_stage: SecondStageConfig | None = Field(
        None, description="A second model on the crops of tracked objects, once per track per interval."
    )

    @property
    def active(self) -> bool:
        """Whether the scene runs: asked for, or implied by what only it does (clips of object events too:
        `scene.clips.enabled` alone was taken and did nothing); `enabled = false` set turns it off whatever
        else is set, as a zone's settings are kept while it is off for a while."""
        if "enabled" in self.model_fields_set and not self.enabled:
            return False
        return (
            self.enabled or bool(self.zones) or bool(self.masks) or self.second_stage is not None or self.clips.enabled
        )

    @model_validator(mode="after")
    def _zone_names(self) -> SceneConfig:
        names = [z.name for z in self.zones]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"zones: duplicate name {dup[0]}")
        unknown = [z for z in self.required_zones if z not in names]
        if unknown:
            raise ValueError(f"required_zones: unknown zone '{unknown[0]}' (zones: {', '.join(names) or 'none'})")
        return self


def _scene_on_frames(uri: str, scene: SceneConfig, key: str) -> None:
    """Scene settings that would be taken and never run are refused, naming the key. On an audio or
    sensor source, any (zones, masks, tracks, object events, snapshots, clips, a second stage): the
    scene works on boxes in frames. On frames, those of a scene that is off: `scene.labels` or a
    snapshot setting alone (which do not turn the scene on) tracked nothing and said nothing, unless
    the scene is turned off on purpose (`enabled = false`)."""
    from edge_agent.redact import hide_credentials
    from edge_agent.signals import signal_kind  # here: it imports this module, and most settings need it not

    kind = signal_kind(uri)
    if kind is None:
        on_too = " (zones, masks, clips or a second stage turn it on too)"
        _refuse_unread_while_off(scene, scene.active, "the scene", on_too, f"{key}: ")
    elif scene.active or [k for k in _set_keys(scene) if k != "enabled"]:
        raise ValueError(
            f"{key}: zones, tracks and object events work on camera frames, and source {hide_credentials(uri)!r} is "
            f"a {kind} "
            "signal (its events are the model's own: signal.events)"
        )


#: Whether the settings being read run the configured source (see `load_settings`).
_SOURCE_READ: contextvars.ContextVar[bool] = contextvars.ContextVar("source_read", default=True)
#: Shared models named by pipelines a reload refused (`load_settings_keeping`): not unused, only not yet served.
_NAMED_BY_REFUSED: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "named_by_refused", default=frozenset()
)


def _sections_of_its_kind(uri: str, source: SourceConfig, signal: SignalConfig, key: str) -> None:
    """Settings the source never reads would be taken and never read: `signal` settings on a camera or
    video, a frame source's (`source.fps`) on an audio or sensor source, and a setting of another kind
    (a camera's `width` asked of an RTSP stream, TLS of a file, `loop` of a camera, `signal.baud` of a
    microphone, `realtime` of a live source). Refused, naming the key, as a scene on a signal source is
    (`_scene_on_frames`). Each kind declares what it reads in its own file (`options`, `signal_options`,
    and `live`: capture paces only sources that do not come live, by `realtime`)."""
    if not _SOURCE_READ.get():
        return
    # here: they import this module, and most settings need them not
    from edge_agent.redact import hide_credentials
    from edge_agent.signals import SIGNALS, signal_class
    from edge_agent.signals.base import SIGNAL_KIND_SETTINGS, SIGNAL_SETTINGS, SIGNAL_WATCHED_SETTINGS
    from edge_agent.sources import SOURCES, source_class
    from edge_agent.sources.base import FRAME_SETTINGS, LIVE_SETTINGS, PLAYED_SETTINGS, Source

    shown = hide_credentials(uri)  # the message is printed and logged: a camera URL's password is not

    def frame_reads(c: type[Source]) -> frozenset[str]:
        return FRAME_SETTINGS | c.options | (LIVE_SETTINGS if c.live else PLAYED_SETTINGS)

    def kinds(names: list[str]) -> str:
        listed = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        return f"the {listed} kind{'s' if len(names) > 1 else ''}"

    scls = signal_class(uri)
    if scls is None:
        unread = _set_keys(signal, "signal.")
        if unread:
            raise ValueError(
                f"{key}{unread[0]}: a setting of audio and sensor sources, and source {shown!r} gives frames "
                "(a camera, a video or pictures)"
            )
        fcls = source_class("demo.mp4" if uri == "demo" else uri)
        kind, reads = fcls.kind, frame_reads(fcls)
    else:
        kind, reads = scls.kind, SIGNAL_SETTINGS | scls.options
        for k in _set_keys(signal, "signal."):
            name = k.split(".")[1]
            if name in SIGNAL_KIND_SETTINGS and name not in scls.signal_options:
                readers = sorted(c.kind for c in SIGNALS if name in c.signal_options)
                raise ValueError(
                    f"{key}{k}: source {shown!r} is of the {kind} kind, which never reads it (read by {kinds(readers)})"
                )
            if name in SIGNAL_WATCHED_SETTINGS and not scls.watched:
                readers = sorted(c.kind for c in SIGNALS if c.watched)
                raise ValueError(
                    f"{key}{k}: source {shown!r} is of the {kind} kind, which never reads it (read by {kinds(readers)})"
                )
    unread = [k for k in _set_keys(source, "source.") if k.split(".")[1] not in reads]
    if unread:
        name = unread[0].split(".")[1]
        if name in FRAME_SETTINGS:
            who = "every frame source"
        else:
            who = kinds(sorted({c.kind for c in SOURCES if name in frame_reads(c)} | {
                c.kind for c in SIGNALS if name in c.options}))
        raise ValueError(
            f"{key}{unread[0]}: source {shown!r} is of the {kind} kind, which never reads it (read by {who}); "
            f"it reads {', '.join(f'source.{k}' for k in sorted(reads))}"
        )


#: The sections each pipeline has of its own, which the single form takes from the top level.
_PIPELINE_SECTIONS = ("source", "model", "signal", "scene")


RESERVED_NAMES = frozenset(
    {"availability", "info", "health", "cmd", "model", "models", "ota", "ha", "escalations", "events",
     "predictions", "zones", "snapshot", "group"}
)


class PipelineConfig(_Strict):
    """One input and its model: a camera, a video, a microphone or a sensor, published under its own name."""

    name: str = Field(
        min_length=1, max_length=64, description="Pipeline name, a topic level: 1-64 of A-Z a-z 0-9 _ . -"
    )
    source: SourceConfig = Field(default_factory=SourceConfig, description="The pipeline's input.")
    model: ModelConfig | str = Field(
        default_factory=ModelConfig,
        description="The pipeline's model: a table like [model], or the name of a shared model in [models].",
    )
    fps: float | None = Field(None, gt=0, le=1000, description="Shortcut for source.fps.")
    signal: SignalConfig = Field(
        default_factory=SignalConfig, description="Audio and sensor settings of this pipeline."
    )
    scene: SceneConfig = Field(
        default_factory=SceneConfig, description="Zones, masks, tracking and object events of this pipeline."
    )

    @model_validator(mode="wrap")
    @classmethod
    def _named(cls, data: Any, handler: Any) -> PipelineConfig:
        """Errors inside a pipeline name it, not only its index in the list."""
        try:
            return handler(data)
        except ValidationError as err:
            name = data.get("name") if isinstance(data, dict) else None
            if not name:
                raise
            said = format_validation_error(err, cls).splitlines()
            raise ValueError("\n".join(f"pipeline '{name}': {line}" for line in said)) from None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        topic_level(v)
        if v in RESERVED_NAMES:
            raise ValueError(f"'{v}' is one of the device's own topics")
        return v

    @model_validator(mode="after")
    def _fps(self) -> PipelineConfig:
        _scene_on_frames(self.source.uri, self.scene, f"pipeline '{self.name}': scene")
        if self.fps is not None:
            object.__setattr__(self, "source", self.source.model_copy(update={"fps": self.fps}))
        _sections_of_its_kind(self.source.uri, self.source, self.signal, f"pipeline '{self.name}': ")
        return self


class _Layered(BaseSettings):
    """Settings read from the TOML file (`load_settings` names it), the environment and keyword arguments
    (--set), the latter first."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


class Settings(_Layered):
    """The whole agent configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        validate_default=True,
    )

    device_id: str = Field(
        default_factory=lambda: _safe_id(socket.gethostname()), description="Device name in topics; default: host name."
    )
    groups: list[str] = Field(
        default_factory=list, max_length=32, description="Fleet groups: the device obeys {prefix}/group/{group}/cmd."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    state_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("STATE_DIRECTORY", "~/.local/state/edge-agent")).expanduser(),
        description="Writable directory for probe caches and state ($STATE_DIRECTORY under systemd).",
    )
    mqtt: MQTTConfig = Field(default_factory=MQTTConfig, description="Broker connection.")
    source: SourceConfig = Field(default_factory=SourceConfig, description="Input.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model and decoding.")
    signal: SignalConfig = Field(
        default_factory=SignalConfig, description="Audio and sensor input: sample rate, windows, features, events."
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Inference backend.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Health reporting and watchdog.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Store-and-forward of results.")
    ota: OTAConfig = Field(default_factory=OTAConfig, description="Over-the-air model updates.")
    http: HTTPConfig = Field(default_factory=HTTPConfig, description="Metrics, health check and status page.")
    homeassistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery."
    )
    escalation: EscalationConfig = Field(
        default_factory=EscalationConfig, description="Hybrid mode: hard cases to a bigger model elsewhere."
    )
    scene: SceneConfig = Field(
        default_factory=SceneConfig, description="Zones, masks, tracking, object events, snapshots and clips."
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=dict,
        max_length=64,
        description="Shared models by name: pipelines that name one share it (loaded once, one scheduler).",
    )
    pipelines: list[PipelineConfig] = Field(
        default_factory=list,
        max_length=64,
        description="Several inputs in one agent, each with its own source, model and topics. TOML: "
        "[[pipelines]] tables; environment: EDGE_AGENT_PIPELINES as a JSON list, e.g. "
        '[{"name": "door", "source": {"uri": "0"}, "model": "face"}]. '
        "Empty: the top-level source and model form the one pipeline; with pipelines, a top-level source, model, "
        "signal or scene is refused (each pipeline has its own).",
    )

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        return topic_level(v)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        bad = [g for g in v if not _TOPIC_SAFE.match(g)]
        if bad:
            raise ValueError(f"group names must be 1-64 of A-Z a-z 0-9 _ . -: {bad[:3]}")
        return v

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        bad = [n for n in v if not _TOPIC_SAFE.match(n)]
        if bad:
            raise ValueError(f"model names must be 1-64 of A-Z a-z 0-9 _ . -: {bad[:3]}")
        return v

    @model_validator(mode="after")
    def _pipelines(self) -> Settings:
        if self.pipelines:
            # With pipelines each reads its own sections: a top-level one would be taken and never read (zones
            # that drop nothing, a threshold that changes nothing), as the single form's did when a
            # [[pipelines]] table was added to its file.
            unread = [k for k in _PIPELINE_SECTIONS if k in self.model_fields_set]
            if unread:
                where = "give each pipeline its model, or share one through [models]" if unread[0] == "model" else (
                    f"set it in each pipeline it is meant for (pipelines[NAME].{unread[0]})"
                )
                raise ValueError(
                    f"{unread[0]}: set at the top level, which only the single-pipeline form reads; with pipelines, "
                    f"{where}"
                )
        else:
            _scene_on_frames(self.source.uri, self.scene, "scene")
            _sections_of_its_kind(self.source.uri, self.source, self.signal, "")
        named = {p.model for p in self.pipelines if isinstance(p.model, str)}
        unused = sorted(set(self.models) - named - _NAMED_BY_REFUSED.get())
        if unused and _SOURCE_READ.get():  # `predict` and `inspect` run their own model, not the pipelines
            # a shared model no pipeline names is never loaded: an entry left behind, or one a pipeline
            # was meant to name, would otherwise pass for being served
            if not self.pipelines:
                why = "shared models are named by pipelines, [[pipelines]] model = NAME; the single form reads [model]"
            else:
                why = f"pipelines name {', '.join(sorted(named))}" if named else "each pipeline has a model of its own"
            raise ValueError(f"models.{unused[0]}: no pipeline names it ({why})")
        seen: dict[str, int] = {}
        devices: dict[str, str] = {}
        for i, p in enumerate(self.pipelines):
            if p.name in seen:
                raise ValueError(f"pipelines[{p.name}].name: duplicate (pipelines {seen[p.name]} and {i})")
            seen[p.name] = i
            if isinstance(p.model, str) and p.model not in self.models:
                known = ", ".join(sorted(self.models)) or "none defined"
                raise ValueError(f"pipelines[{p.name}].model: unknown shared model '{p.model}' (models: {known})")
            dev = exclusive_device(p.source.uri)
            if dev is not None:
                if dev in devices:
                    raise ValueError(
                        f"pipelines[{p.name}].source.uri: {dev} is already used by pipeline '{devices[dev]}' "
                        "(a capture device can be opened by one pipeline only)"
                    )
                devices[dev] = p.name
        return self

def exclusive_device(uri: str) -> str | None:
    """The device a source opens exclusively (a camera, microphone, serial port, IIO buffer), or None."""
    u = uri.strip()
    if u.isdecimal():
        return f"/dev/video{int(u)}"
    if u.startswith("/dev/"):
        return os.path.realpath(u) if os.path.exists(u) else u
    if u == "rpicam" or u.startswith("rpicam:"):  # libcamera opens a camera for one process
        return f"rpicam:{u.partition(':')[2] or '0'}"
    if u.startswith("iio:"):
        # one sensor has three names: its driver's (`iio:mpu6050`), its node's (`iio:device0`) and its
        # sysfs path; where the board has it now, all three are its sysfs directory
        from edge_agent.signals.base import SourceError
        from edge_agent.signals.iio import locate

        try:
            return f"iio:{os.path.realpath(locate(u[4:]))}"
        except (SourceError, OSError):
            pass  # not there now: as written
    for kind in ("serial:", "iio:", "mic:"):
        if u.startswith(kind):
            rest = u[len(kind) :]
            return f"{kind}{os.path.realpath(rest) if rest.startswith('/') and os.path.exists(rest) else rest}"
    return None


#: pydantic-settings reads the TOML path from class state; set only inside load_settings.
_TOML_FILE: dict[str, Path | None] = {"path": None}


def _safe_id(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "-", name)[:64]
    return cleaned or "edge-agent"


def _check_env_keys(environ: dict[str, str]) -> None:
    """Unknown `EDGE_AGENT_*` variables are errors: pydantic-settings would ignore them."""
    for key in environ:
        if not key.startswith(ENV_PREFIX):
            continue
        model: type[BaseModel] = Settings
        parts = key[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
        for i, part in enumerate(parts):
            field = model.model_fields.get(part)
            if field is None:
                close = _closest(part, model)
                meant = ENV_PREFIX + ENV_NESTED.join([*parts[:i], close or "", *parts[i + 1 :]]).upper()
                raise ConfigError(f"{key}: unknown setting '{part}'" + (f" (did you mean {meant}?)" if close else ""))
            ann = field.annotation
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                break
            model = ann


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with another flag")
        node[parts[-1]] = value
    return out


#: what a list of pipelines looks like as JSON, in the hints of errors that ask for one
_PIPELINES_EXAMPLE = '[{"name": "door", "source": {"uri": "0"}}]'
#: An example of each list whose items are tables or pairs, for the hint a malformed one gets (a key's
#: own, or its end inside a pipeline); any other list is of words
_WORDS_EXAMPLE = '["a", "b"]'
_LIST_EXAMPLES = {
    "pipelines": _PIPELINES_EXAMPLE,
    "scene.zones": '[{"name": "door", "points": [[0.1, 0.5], [0.6, 0.5], [0.6, 1], [0.1, 1]]}]',
    "scene.masks": '[{"points": [[0, 0], [0.3, 0], [0.3, 0.2]]}]',
    "points": "[[0.1, 0.5], [0.6, 0.5], [0.6, 1]]",
}


def _members(ann: Any) -> list[Any]:
    """The types a setting may hold: a union's members (an optional's None left out), else its own."""
    if typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(ann) if a is not type(None)]
    return [ann]


def _table(ann: Any) -> type[BaseModel] | None:
    return next((m for m in _members(ann) if isinstance(m, type) and issubclass(m, BaseModel)), None)


def _key_path(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[list[int | str], Any, bool]:
    """An error's location as the user wrote the key: the tags pydantic adds for a union's members
    (`model.ModelConfig.path` for a pipeline's model, which is a name or a table) left out. Also the
    type the location holds (Any where it is not known) and whether the path went through a member
    that is not a table (the name a table was written in place of: the table's own errors say more)."""
    shown: list[int | str] = []
    ann: Any = root
    as_table = True
    for part in loc:
        model = _table(ann)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            shown.append(part)
            ann = model.model_fields[part].annotation
            continue
        container = next((m for m in _members(ann) if typing.get_origin(m) in (list, dict)), None)
        if container is not None and isinstance(part, int) == (typing.get_origin(container) is list):
            shown.append(part)
            ann = typing.get_args(container)[-1]
            continue
        tagged = [m for m in _members(ann) if getattr(m, "__name__", None) == part]
        if len(_members(ann)) > 1 and tagged:
            ann = tagged[0]
            as_table = as_table and _table(ann) is not None
            continue
        shown.append(part)
        ann = Any
    return shown, ann, as_table


def _closest(key: str, model: type[BaseModel]) -> str | None:
    """The setting of `model` an unknown key is most likely a typo of (as the CLI's flags get), if any."""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """' (did you mean 'host'?)' for an unknown key close to one the table it is in has, else ''."""
    model = _table(_key_path(root, loc[:-1])[1])
    close = _closest(loc[-1], model) if model is not None and loc and isinstance(loc[-1], str) else None
    return f" (did you mean '{close}'?)" if close else ""


def format_validation_error(
    err: ValidationError, root: type[BaseModel] | None = None, overrides: dict[str, Any] | None = None
) -> str:
    """One line per error, naming the key as the user wrote it. `root`: the model validated (the whole
    settings unless said), whose fields an unknown key is compared with for a suggestion. `overrides`:
    the keys set on the command line, given where the environment may also hold them: a value that
    came from an EDGE_AGENT_* variable (set, and not overridden) is said with the variable's name."""
    root = root or Settings
    errors = [(e, *_key_path(root, e["loc"])) for e in err.errors()]
    # a table written where a name would also do fails as a name too: once the table's own keys are
    # what is wrong, that error says nothing more
    inside = [shown for _, shown, _, as_table in errors if as_table]
    lines = []
    for e, shown, held, as_table in errors:
        if not as_table and any(len(t) > len(shown) and t[: len(shown)] == shown for t in inside):
            continue
        loc = ".".join(str(p) for p in shown) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown setting" + _did_you_mean(root, e["loc"])
        elif e["type"] == "model_type" and len(shown) == len(e["loc"]) and (table := _table(held)) is not None:
            # `mqtt.tls = true`, where only a table will do (not a union's table member: a name would too)
            keys = list(table.model_fields)
            msg = (f"a table of settings ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}), not one "
                   f"value: set one of them, e.g. {loc}.{keys[0]}")
        elif e["type"] == "list_type":  # one syntax for lists everywhere: JSON (TOML's own arrays in a file)
            ex = _list_example(loc) or _WORDS_EXAMPLE
            if root is Settings and not any(isinstance(p, int) for p in shown):  # a key --set and env can name
                env = ENV_PREFIX + loc.upper().replace(".", "__")
                msg += f" (write a list as JSON: --set '{loc}={ex}', {env}='{ex}')"
            else:  # inside a list (a zone's points) or a pipeline: the value itself
                msg += f" (write it as JSON, e.g. {ex})"
        msg = msg.removeprefix("Value error, ")
        if overrides is not None and e["type"] != "extra_forbidden" and (source := _from_env(shown, overrides)):
            loc = f"{loc} (from {source})"
        lines.append(msg if loc == "(root)" else f"{loc}: {msg}")  # the whole's checks name their keys
    return "\n".join(lines)


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    source_read: bool = True,
) -> Settings:
    """Build Settings from file, environment and dotted CLI overrides (highest wins). `source_read`: False
    where the command runs its own input instead of the configured source (`predict`, `inspect`), so a
    `signal` section beside a camera's source is not the mismatch it would be for `run`."""
    _check_env_keys(dict(os.environ))
    if config_file is not None and not config_file.is_file():
        if config_file.is_dir():
            raise ConfigError(f"--config: {config_file} is a directory, not a file")
        raise ConfigError(f"--config: {_not_found(config_file)}")
    _TOML_FILE["path"] = config_file
    token = _SOURCE_READ.set(source_read)
    try:
        if config_file is not None:
            _read_toml(config_file)
        return Settings(**_nested(overrides or {}))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, overrides=overrides or {})) from None
    except SettingsError as err:  # a complex value in the environment that is not JSON
        raise ConfigError(_settings_error(err)) from None
    except RecursionError:  # the JSON of a list or table in the environment, parsed before it is validated
        raise ConfigError("a list or table in an EDGE_AGENT_* variable is nested too deep to read") from None
    finally:
        _TOML_FILE["path"] = None
        _SOURCE_READ.reset(token)


class _Broker(_Layered):
    """The device's name and its broker, read alone (everything else ignored) from the same file,
    environment and --set as the whole: where the whole is refused, the refusal can still be said on the
    broker (`broker_of`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, extra="ignore")

    device_id: str = Field(default_factory=lambda: _safe_id(socket.gethostname()))
    mqtt: MQTTConfig = Field(default_factory=MQTTConfig)

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        return topic_level(v)


def broker_of(config_file: Path | None, overrides: dict[str, Any] | None) -> tuple[str, MQTTConfig] | None:
    """The device id and broker settings of a configuration `load_settings` refused, or None where those
    are refused too (or the file cannot be read): an agent that will not run says why where the fleet looks."""
    mine = {k: v for k, v in (overrides or {}).items() if k == "device_id" or k.startswith("mqtt.")}
    _TOML_FILE["path"] = config_file if config_file is not None and config_file.is_file() else None
    try:
        b = _Broker(**_nested(mine))
    except (ValidationError, SettingsError, ValueError, OSError, RecursionError):  # RecursionError: a TOML
        # file nested too deep for the parser
        return None
    finally:
        _TOML_FILE["path"] = None
    return b.device_id, b.mqtt


def load_settings_keeping(
    config_file: Path | None, overrides: dict[str, Any] | None, running: Settings
) -> tuple[Settings, dict[str, str]]:
    """A reload: the configuration read again, where a pipeline that no longer validates is refused on
    its own (the running one of that name is kept; a new one is left out) rather than the whole file.
    Returns the settings and the refused pipelines with their reasons; ConfigError for anything else."""
    try:
        return load_settings(config_file, overrides), {}
    except ConfigError as err:
        if config_file is None:
            raise
        try:
            items = _read_toml(config_file).get("pipelines")
        except (OSError, ConfigError):
            raise err from None
        if not isinstance(items, list):
            raise
        running_by_name = {p.name: p for p in running.pipelines}
        refused: dict[str, str] = {}
        keep: list[Any] = []
        named: set[str] = set()  # the shared models the refused pipelines name
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            try:
                PipelineConfig.model_validate(item)
                keep.append(item)
            except ValidationError as bad:
                refused[str(name or f"#{i}")] = format_validation_error(bad, PipelineConfig)
                if isinstance(item, dict) and isinstance(item.get("model"), str):
                    named.add(item["model"])
                if name in running_by_name:
                    # as it was given: a default written out would count as set (`_refuse_unread_while_off`)
                    keep.append(running_by_name[name].model_dump(mode="json", exclude_unset=True))
        if not refused:
            raise
        token = _NAMED_BY_REFUSED.set(frozenset(named))
        try:
            return load_settings(config_file, {**(overrides or {}), "pipelines": keep}), refused
        finally:
            _NAMED_BY_REFUSED.reset(token)


def _settings_error(err: SettingsError) -> str:
    """pydantic-settings names only the top-level field whose environment value is not JSON: find the
    variable itself (a nested one such as EDGE_AGENT_HOMEASSISTANT__LABELS) and show the syntax."""
    m = re.search(r'field "([^"]+)"', str(err))
    if m is None:
        return str(err)
    env = ENV_PREFIX + m.group(1).upper()
    for name, value in sorted(os.environ.items()):
        if name == env or name.startswith(env + "__"):
            try:
                json.loads(value)
            except ValueError:
                if value.lstrip().startswith(("[", "{")) or name == env or _is_list_key(name):
                    env = name
                    break
    cause = err.__cause__
    why = f": {cause}" if cause is not None else ""
    return f"{env}: not valid JSON{why} (lists and tables are JSON here, e.g. {env}='{_json_example(env)}')"


def _from_env(shown: list[int | str], overrides: dict[str, Any]) -> str | None:
    """The EDGE_AGENT_* variable a setting's value came from: the setting's own, or that of a table or
    list holding it (EDGE_AGENT_MQTT='{"port": "x"}'), where it is set and the command line set none of
    them (the command line wins over the environment, which wins over the file)."""
    for n in range(len(shown), 0, -1):
        key = ".".join(str(p) for p in shown[:n])
        if key in overrides:
            return None
        env = ENV_PREFIX + key.upper().replace(".", ENV_NESTED)
        if env in os.environ:
            return env
    return None


def _json_example(env: str) -> str:
    """A value for an EDGE_AGENT_* variable that holds a list or a table, as JSON: the list's own example
    (`_LIST_EXAMPLES`), a table with its first setting at its default, else a list of words."""
    key = env.removeprefix(ENV_PREFIX).lower().replace(ENV_NESTED, ".")
    if (example := _list_example(key)) is not None:
        return example
    table = _table(_key_path(Settings, tuple(key.split(".")))[1])
    if table is not None:
        for name, f in table.model_fields.items():
            if isinstance(f.default, (str, int, float)) and not isinstance(f.default, bool):
                return json.dumps({name: f.default})
    return _WORDS_EXAMPLE


def _list_example(key: str) -> str | None:
    """`_LIST_EXAMPLES`' example of the list at a dotted key (its own, or its end's: a pipeline's
    `scene.zones`, a zone's `points`), or None for a list of words."""
    return next((x for k, x in _LIST_EXAMPLES.items() if key == k or key.endswith("." + k)), None)


def _is_list_key(env_name: str) -> bool:
    """Whether an EDGE_AGENT_A__B variable names a list setting (whose value must be JSON)."""
    node: Any = Settings
    for part in env_name.removeprefix(ENV_PREFIX).lower().split("__"):
        fields = getattr(node, "model_fields", {})
        if part not in fields:
            return False
        ann = fields[part].annotation
        node = ann
    return getattr(node, "__origin__", None) is list


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML; ConfigError naming the file and what is wrong with it (OSError where it cannot be
    read)."""
    from edge_agent.compat import tomllib

    try:
        with path.open("rb") as f:
            head = f.read(256)
            f.seek(0)
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}{_toml_hint(path, head)}") from None
    except UnicodeDecodeError as err:  # TOML is UTF-8: another encoding (Latin-1, UTF-16) ended in a traceback
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); "
                          "save it as UTF-8") from None
    except RecursionError:  # the parser recurses into each nested array or inline table
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deep") from None


def _toml_hint(path: Path, head: bytes) -> str:
    """Why a file that is not TOML may not be: a UTF-8 byte order mark at its start (Windows' Notepad; the
    parser says only "Invalid statement (at line 1, column 1)"), or a file in YAML (as Frigate and Home
    Assistant are configured) or JSON. The settings say how each looks in TOML (docs/configuration.md)."""
    if head.startswith(b"\xef\xbb\xbf"):
        return " (the file starts with a UTF-8 byte order mark: save it as UTF-8 without one)"
    text = head.decode("utf-8", "replace").lstrip()
    if path.suffix.lower() in (".yaml", ".yml") or re.search(r"^[A-Za-z_][\w-]*:[ \t]*\r?$", text, re.MULTILINE):
        return (" (this looks like YAML; the configuration is TOML: a table is [mqtt] on a line of its own, "
                "then host = \"broker\" under it)")
    if path.suffix.lower() == ".json" or text.startswith("{"):
        return ' (this looks like JSON; the configuration is TOML: [mqtt] on a line, then host = "broker")'
    return ""


def masked_dump(settings: Settings) -> dict[str, Any]:
    """Effective config as plain data with secrets masked (SecretStr dumps as '**********', and so do the
    passwords in URLs)."""
    data = settings.model_dump(mode="json")
    # whether each scene runs, as written: zones turn it on with `enabled` left false, and a copy of this
    # printed into a file (where `enabled = false` is set, and turns the scene off) must run the same
    if settings.pipelines:  # the top-level sections each pipeline has of its own are not read (and refused)
        for key in _PIPELINE_SECTIONS:
            data.pop(key, None)
    else:
        data["scene"]["enabled"] = settings.scene.active
    for doc, pipe in zip(data["pipelines"], settings.pipelines, strict=True):
        if isinstance(doc.get("scene"), dict):
            doc["scene"]["enabled"] = pipe.scene.active
    if settings.mqtt.password is not None:
        data["mqtt"]["password"] = "**********"
    return _hide_credentials(data)


def _hide_credentials(value: Any) -> Any:
    """Every text in the dump with the passwords of the URLs in it masked (a camera's `rtsp://user:pw@`)."""
    from edge_agent.redact import hide_credentials  # here: sources import this module

    if isinstance(value, str):
        return hide_credentials(value) if "@" in value else value
    if isinstance(value, dict):
        return {k: _hide_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_credentials(v) for v in value]
    return value


def describe_fields(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, env var, default, description) for every leaf setting, for docs and `config --describe`."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
            continue
        if field.default_factory is not None:
            default = "(computed)"
        else:
            default = "(required)" if field.is_required() else repr(field.default)
        env = ENV_PREFIX + key.upper().replace(".", ENV_NESTED)
        desc = field.description or ""
        allowed = allowed_values(ann)
        if allowed:
            desc += f" One of: {', '.join(allowed)}."
        if typing.get_origin(ann) is list:
            desc += " A list: TOML array in a file, JSON in the environment and --set."
        rows.append((key, env, default, desc))
        args = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if typing.get_origin(ann) is list and args and not _has_tables(args[0]):
            # the fields of each table of a flat list ([[scene.zones]]): set in TOML, or as JSON in `env`
            rows += [(f"{key}[].{k}", f"(in {env})", d, desc) for k, _, d, desc in describe_fields(args[0])]
        elif len(args) == 1 and type(None) in typing.get_args(ann):  # an optional table
            rows.extend(describe_fields(args[0], key + "."))
    return rows


def allowed_values(ann: Any) -> list[str]:
    """The values a Literal (or an optional one, or a list of one) allows, as text; [] for other types."""
    if typing.get_origin(ann) is typing.Literal:
        return [str(a) for a in typing.get_args(ann)]
    out: list[str] = []
    for a in typing.get_args(ann):
        if a is not type(None):
            out += allowed_values(a)
    return out


def _has_tables(model: type[BaseModel]) -> bool:
    fields = model.model_fields.values()
    return any(isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) for f in fields)


class PipelineView(BaseModel):
    """One pipeline as the rest of the agent sees it: the device's settings with this pipeline's source,
    model and signal sections in place, so every stage reads `settings.source` whatever the form."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    settings: Settings
    #: The model slot: a shared model's name, else the pipeline's own name; what OTA replaces.
    slot: str
    #: True for the single-pipeline form: device-level topics, no `pipeline` field in documents.
    legacy: bool


LEGACY_PIPELINE = "default"


def pipeline_views(settings: Settings) -> list[PipelineView]:
    """The pipelines to run: the configured list, or the top-level source and model as one."""
    if not settings.pipelines:
        return [PipelineView(name=LEGACY_PIPELINE, settings=settings, slot=LEGACY_PIPELINE, legacy=True)]
    out = []
    for p in settings.pipelines:
        model = settings.models[p.model] if isinstance(p.model, str) else p.model
        view = settings.model_copy(  # one pipeline of the single form's shape: no list, no shared models
            update={
                "source": p.source, "model": model, "signal": p.signal, "scene": p.scene, "pipelines": [], "models": {}
            }
        )
        slot = p.model if isinstance(p.model, str) else p.name
        out.append(PipelineView(name=p.name, settings=view, slot=slot, legacy=False))
    return out
