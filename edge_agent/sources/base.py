"""What every frame source provides; capture pacing and recovery live in edge_agent.capture."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig

DEMO_VIDEO = "demo.avi"


class SourceError(RuntimeError):
    """The source cannot be opened or stopped delivering; capture reopens it with backoff."""


class FrameError(Exception):
    """One frame cannot be decoded, while the source itself is fine: an unreadable image in a set, a corrupt
    frame in a file. Capture counts it (`undecodable`) and goes on with the next frame; reopening a finite
    source would start it again from its first frame, and never reach the frames after the bad one."""


class EndOfStream(Exception):
    """A finite source (file, image set) reached its end and is not looping."""


@dataclass(frozen=True, slots=True)
class Frame:
    image: np.ndarray  # BGR uint8, H x W x 3
    ts: float  # capture time, epoch seconds
    mono: float  # capture time, time.monotonic()
    index: int  # frames captured since start
    size: tuple[int, int] | None = None  # (height, width), kept when the picture is let go
    clock: float | None = None  # a file's own clock (its `ts`); None: `mono`

    @property
    def steady(self) -> float:
        """Seconds on a clock that never steps, for tracking: a file's own, else the monotonic clock.
        `ts` follows the wall clock, which a board without a real-time clock sets hours or days at
        once when it reaches a time server."""
        return self.clock if self.clock is not None else self.mono


#: The `source.*` settings every frame source reads (capture paces, watches and reopens them all).
FRAME_SETTINGS = frozenset({"uri", "fps", "read_timeout_s", "reopen_min_s", "reopen_max_s", "scaled_decode"})
#: ... and those that do not come live (files, pictures, replays: capture paces them by `realtime`)
PLAYED_SETTINGS = frozenset({"realtime"})
#: ... and those that do (cameras, streams: capture watches their picture, `edge_agent.picture`)
LIVE_SETTINGS = frozenset({"frozen_after_s", "blank_after_s", "dark_is_blank"})


class Source(abc.ABC):
    kind: str = "source"
    #: the `source.*` settings this kind reads beyond `FRAME_SETTINGS`; another one set for it is refused
    #: (it would be taken and never read: a size asked of a stream, TLS of a file)
    options: ClassVar[frozenset[str]] = frozenset()
    #: frames arrive on their own clock (camera, stream) rather than when we read them (file)
    live: bool = True
    #: each frame is fetched when asked for (a camera's snapshot URL): read once inference has taken the
    #: last, at most at the fps cap, never to be thrown away
    polled: bool = False

    def __init__(self, uri: str):
        self.uri = uri
        self.nominal_fps: float | None = None

    @classmethod
    @abc.abstractmethod
    def claims(cls, uri: str) -> bool:
        """Whether this kind reads `uri`. The registry asks each kind in its order; the first one that
        claims a URI opens it, so a kind needs no edit anywhere else to be recognised."""

    @classmethod
    @abc.abstractmethod
    def create(cls, uri: str, cfg: SourceConfig) -> Source:
        """The source for `uri`, with the settings of `[source]` that this kind uses."""

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device or file; raise SourceError."""

    @abc.abstractmethod
    def grab(self) -> None:
        """Advance one frame without decoding it where the backend allows; raise SourceError or EndOfStream."""

    @abc.abstractmethod
    def retrieve(self) -> np.ndarray:
        """Decode the last grabbed frame; raise SourceError."""

    def retrieve_reduced(self, reduce: int) -> tuple[np.ndarray, tuple[int, int] | None]:
        """The last grabbed frame decoded at 1/`reduce` of its size (2, 4 or 8), where this kind can do so
        for less work than a whole decode (a JPEG's scaled inverse DCT): the picture, and the whole
        frame's (height, width) where the picture came out smaller (None: it is whole). The default
        decodes it whole; raise as `retrieve`."""
        return self.retrieve(), None

    def read(self) -> np.ndarray:
        self.grab()
        return self.retrieve()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""

    def describe(self) -> str:
        return f"{self.kind}:{self.uri}"


def demo_video_path() -> Path:
    """The bundled demo video: `models/` beside the package (a checkout) or in /usr/share."""
    for base in (Path(__file__).resolve().parents[2] / "models", Path("/usr/share/edge-agent/models")):
        if (base / DEMO_VIDEO).is_file():
            return base / DEMO_VIDEO
    raise SourceError(f"demo video {DEMO_VIDEO} not found; run scripts/fetch_models.py")
