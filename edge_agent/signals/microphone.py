"""A microphone through PortAudio/ALSA (`sounddevice`): the callback only enqueues, overruns are counted.

PortAudio lists the devices once, when it starts, and never again: a USB microphone that the kernel
enumerates after the agent started (at boot, the service may well start first), or one plugged back in
under another card number, is not in that list, and reopening it failed for as long as the agent ran
(or opened whatever now had the old number). So each open starts PortAudio again first, as
sounddevice's author advises (its `_terminate()` and `_initialize()`, the wrappers of `Pa_Terminate` and
`Pa_Initialize`). Stopping PortAudio closes every stream it has, so that is done only while no other
microphone of this process is open; a second microphone opened beside a running one gets the list as
it was.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.signals.base import Chunk, SignalSource, SourceError, close_quietly

if TYPE_CHECKING:
    from edge_agent.config import Settings

#: Blocks held between the audio callback and the pipeline: ~2 s at 20 ms blocks.
_QUEUE_BLOCKS = 100
#: Held while PortAudio is started again or a stream opened or closed, with the count of open streams.
_PORTAUDIO = threading.Lock()
_open_streams = 0
#: PortAudio's paInvalidSampleRate, which sounddevice's PortAudioError carries among its args.
_PA_INVALID_RATE = -9997
#: How long a close waits for PortAudio to let go of a stream (see `MicrophoneSource.close`).
_CLOSE_WAIT_S = 2.0
log = logging.getLogger(__name__)


def _rescan(sd: Any) -> None:
    """Start PortAudio again, so that its device list is the system's now. sounddevice points the
    process's stderr at /dev/null meanwhile (ALSA's complaints about each plugin it probes): the log's
    handlers are held for that moment, so that another thread's log line waits instead of being lost."""
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.acquire()
    try:
        while sd._initialized:  # a start that failed last time left it at 0, and stopping it would fail
            sd._terminate()
        sd._initialize()
    finally:
        for h in handlers:
            h.release()


def _native_rate(sd: Any, device: str | int | None) -> int | None:
    """The rate PortAudio gives as the input device's own, or None where it cannot say."""
    try:
        rate = int(sd.query_devices(device, "input")["default_samplerate"])
    except (ValueError, KeyError, TypeError, sd.PortAudioError):
        return None
    return rate if rate > 0 else None


class MicrophoneSource(SignalSource):
    kind = "mic"
    options = frozenset({"read_timeout_s"})
    signal_options = frozenset({"audio_channels"})
    audio = True
    steady = True

    @classmethod
    def create(cls, uri: str, arg: str, s: Settings) -> SignalSource:
        return cls(uri, arg, int(cls.default_rate(s)), s.signal.audio_channels)

    def __init__(self, uri: str, device: str, rate: int, channels: int):
        super().__init__(uri, rate, channels)
        self.asked_rate: float = rate
        self.device: str | int | None = int(device) if device.isdecimal() else (device or None)
        self._q: queue.Queue[tuple[np.ndarray, float, float]] = queue.Queue(_QUEUE_BLOCKS)
        self._stream: Any = None

    def open(self) -> None:
        try:
            import sounddevice as sd
        except (ImportError, OSError) as err:  # OSError: PortAudio library missing
            raise SourceError(f"microphone input needs sounddevice and libportaudio2: {err}") from None
        global _open_streams
        self.close()  # (opened again without a close)
        with _PORTAUDIO:
            try:
                if not _open_streams:
                    _rescan(sd)
                self.rate = self.asked_rate
                try:
                    self._stream = stream = self._input_stream(sd)
                except sd.PortAudioError as err:
                    # a card that does not take the rate asked (a USB microphone by its ALSA `hw:` name
                    # often takes 44.1 and 48 kHz only, where `default` would convert): at its own rate,
                    # which the pipeline resamples as it does a recording's
                    native = _native_rate(sd, self.device) if _PA_INVALID_RATE in err.args else None
                    if native is None or native == self.rate:
                        raise
                    log.info("microphone %r does not take %d Hz: opened at its own %d Hz, resampled",
                             self.device, self.rate, native)
                    self.rate = native
                    self._stream = stream = self._input_stream(sd)
                _open_streams += 1
                stream.start()
            except Exception as err:  # PortAudioError and ValueError carry the driver's words
                if self._stream is not None:
                    close_quietly(self._stream)
                    self._stream = None
                    _open_streams -= 1
                also = (" (the device list is as it was when another microphone of this agent opened: it is "
                        "read again once no microphone is open)") if _open_streams else _inputs_there(sd)
                which = "the default microphone" if self.device is None else f"microphone {self.device!r}"
                raise SourceError(f"cannot open {which}: {err}{also}") from None

    def _input_stream(self, sd: Any) -> Any:
        return sd.InputStream(
            device=self.device,
            samplerate=self.rate,
            channels=self.channels,
            dtype="int16",  # what capture hardware delivers; float32 is not native on most cards
            blocksize=int(self.rate * 0.02),
            # each stream its own queue: one left to close on its own (a device that hung) and calling
            # back once it comes loose puts nothing among the new stream's samples
            callback=functools.partial(self._callback, self._fresh_queue()),
        )

    def _fresh_queue(self) -> queue.Queue[tuple[np.ndarray, float, float]]:
        self._q = queue.Queue(_QUEUE_BLOCKS)
        return self._q

    def _callback(self, q: queue.Queue[tuple[np.ndarray, float, float]], data: np.ndarray, frames: int, t: Any,
                  status: Any) -> None:
        if status and status.input_overflow:
            self.gaps += 1
        try:
            x = data.astype(np.float32) / 32768.0
            q.put_nowait((x, time.time() - frames / self.rate, time.monotonic()))
        except queue.Full:
            self.dropped += frames

    def read(self, timeout: float) -> Chunk | None:
        if self._stream is None:
            raise SourceError("not open")
        try:
            x, ts, mono = self._q.get(timeout=timeout)
        except queue.Empty:
            if not self._stream.active:
                raise SourceError("microphone stream stopped (device removed?)") from None
            return None
        return Chunk(x, ts, mono)

    def close(self) -> None:
        """Closing a stream waits for PortAudio's thread, which a device that hangs keeps in a read: it is
        waited for `_CLOSE_WAIT_S`, then left to close on its own, so the reopen is not held up. Until it
        has closed it counts as open (PortAudio is not started again under it)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return

        def shut() -> None:
            global _open_streams
            close_quietly(stream)
            with _PORTAUDIO:
                _open_streams -= 1

        closing = threading.Thread(target=shut, name="mic-close", daemon=True)
        closing.start()
        closing.join(_CLOSE_WAIT_S)
        if closing.is_alive():
            log.warning("microphone %r: its stream did not close within %g s (the device hangs); it is left to "
                        "close on its own", self.device, _CLOSE_WAIT_S)


def _inputs_there(sd: Any) -> str:
    """The audio inputs PortAudio sees, for the error of one that would not open: none at all (no card, or
    the unit lacks the audio group), or their names, which `source.uri = mic:NAME` takes."""
    try:
        names = [str(d["name"]) for d in sd.query_devices() if int(d.get("max_input_channels", 0)) > 0]
    except (ValueError, KeyError, TypeError, sd.PortAudioError):  # as `_native_rate`: the hint is extra
        return ""
    if not names:
        return " (no audio input device at all: no microphone is connected, or this process may not use it)"
    return f" (inputs: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''})"
