"""Clips: a short video around each object event, from an in-memory ring of JPEG frames.

The post stage offers every frame; at most `fps` a second are kept, JPEG-encoded (tens of kB each,
not the megabyte of a decoded frame), for `pre_s` seconds plus the length of the events in progress.
When an event has ended and `post_s` more seconds have been seen, its frames go to a writer thread
that puts them, as they are, into an MJPG AVI (OpenCV's VideoWriter on FFmpeg, taking encoded
frames), under the clips directory, then removes the oldest clips past `max_clips` or `max_mb`.
Nothing is decoded or encoded again: a clip costs the board next to no CPU, and its frames lose no
more quality than the ring's one encoding. An OpenCV without that mode (before 4.9, or built
without FFmpeg) decodes each frame and encodes it again, which every build can. Nothing here
blocks the pipeline on the disk, and a full or read-only disk loses clips, never detections:
the error is in health.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from edge_agent.config import ClipConfig

log = logging.getLogger(__name__)

#: Clips waiting for the writer; more than this and the newest is dropped (and counted).
_WRITE_QUEUE = 8
#: The ring's JPEG quality: a clip's frames are these, unchanged.
_QUALITY = 75
#: The VideoWriter parameter that takes encoded frames (OpenCV 4.9 on, with FFmpeg); None before it.
_RAW = getattr(cv2, "VIDEOWRITER_PROP_RAW_VIDEO", None)


class _Kept(NamedTuple):
    """One frame of the ring: its time, its JPEG and the size it was encoded at (width, height)."""

    ts: float
    jpeg: bytes
    size: tuple[int, int]


@dataclass
class _Pending:
    event_id: str
    start_ts: float
    end_ts: float | None = None


@dataclass
class ClipStats:
    written: int = 0
    dropped: int = 0
    bytes: int = 0
    error: str | None = None
    frames_kept: int = 0
    last: list[str] = field(default_factory=list)


class ClipRecorder:
    def __init__(self, cfg: ClipConfig, directory: Path):
        self.cfg = cfg
        self.dir = directory
        self.ring: deque[_Kept] = deque()
        self.pending: dict[str, _Pending] = {}
        self.stats = ClipStats()
        self._last_kept = float("-inf")
        self._jobs: queue.Queue[tuple[str, list[_Kept]] | None] = queue.Queue(maxsize=_WRITE_QUEUE)
        self._writer = threading.Thread(target=self._write_loop, name=f"clips-{directory.name}", daemon=True)
        self._writer.start()

    # --- from the post stage ---------------------------------------------------------------------
    def offer(self, image: np.ndarray, ts: float) -> None:
        """Every frame; keeps one per 1/fps seconds and finishes the clips that are due."""
        if ts - self._last_kept >= 1.0 / self.cfg.fps * 0.95:
            self._last_kept = ts
            img = image
            if img.shape[1] > self.cfg.max_width:
                f = self.cfg.max_width / img.shape[1]
                size = (self.cfg.max_width, max(1, round(img.shape[0] * f)))
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _QUALITY])
            if ok:
                self.ring.append(_Kept(ts, buf.tobytes(), (img.shape[1], img.shape[0])))
                self.stats.frames_kept += 1
        self._finish_due(ts)
        self._trim(ts)

    def begin(self, event_id: str, start_ts: float) -> None:
        self.pending[event_id] = _Pending(event_id, start_ts)

    def end(self, event_id: str, end_ts: float) -> None:
        p = self.pending.get(event_id)
        if p is not None:
            p.end_ts = end_ts

    def close(self, timeout: float = 5.0) -> None:
        """Write what can be written (events in progress end here), then stop the writer. The clips of
        the events in progress wait for room in the writer's queue, within `timeout` in all: a crowd
        in view when the pipeline stops or its scene is reloaded ends more events at once than the
        queue holds, and none of them is dropped while the writer keeps up."""
        deadline = time.monotonic() + timeout
        last = self.ring[-1].ts if self.ring else 0.0
        for p in list(self.pending.values()):
            if p.end_ts is None:
                p.end_ts = last
            self._emit(p, last, max(0.0, deadline - time.monotonic()))
        self.pending.clear()
        try:
            self._jobs.put(None, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return
        self._writer.join(max(0.0, deadline - time.monotonic()))

    # --- internals -------------------------------------------------------------------------------
    def _finish_due(self, now: float) -> None:
        for p in list(self.pending.values()):
            if p.end_ts is None and now - p.start_ts > self.cfg.max_event_s:
                p.end_ts = p.start_ts + self.cfg.max_event_s  # cut: memory stays bounded
            if p.end_ts is not None and now >= p.end_ts + self.cfg.post_s:
                self._emit(p, p.end_ts + self.cfg.post_s)
                del self.pending[p.event_id]

    def _emit(self, p: _Pending, until: float, wait_s: float = 0.0) -> None:
        """Hand a clip to the writer; on the frame's path never waits (`wait_s` 0), a full queue drops it."""
        frames = [k for k in self.ring if p.start_ts - self.cfg.pre_s <= k.ts <= until]
        if not frames:
            return
        job = (p.event_id, frames)
        try:
            if wait_s > 0:
                self._jobs.put(job, timeout=wait_s)
            else:
                self._jobs.put_nowait(job)
        except queue.Full:
            self.stats.dropped += 1
            log.warning("clips: writer behind, clip of event %s dropped", p.event_id)

    def _trim(self, now: float) -> None:
        keep_from = now - self.cfg.pre_s
        for p in self.pending.values():
            keep_from = min(keep_from, p.start_ts - self.cfg.pre_s)
        while self.ring and self.ring[0].ts < keep_from:
            self.ring.popleft()

    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._write(*job)
            except Exception as err:  # the loop boundary: a clip lost, the writer goes on
                self.stats.error = f"{type(err).__name__}: {err}"
                log.exception("clips: writing %s failed", job[0])

    def _write(self, event_id: str, frames: list[_Kept]) -> None:
        span = frames[-1].ts - frames[0].ts
        fps = (len(frames) - 1) / span if span > 0 and len(frames) > 1 else self.cfg.fps
        size = frames[0].size
        path = self.dir / f"{event_id}.avi"
        tmp = self.dir / f".{event_id}.part.avi"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            writer = _open_writer(tmp, fps, size)
            try:
                if writer is not None:
                    for k in frames:  # the ring's JPEGs, as they are
                        jpeg = k.jpeg if k.size == size else _resized(k.jpeg, size)
                        if jpeg is not None:
                            writer.write(np.frombuffer(jpeg, np.uint8).reshape(1, -1))
                else:
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
                    if not writer.isOpened():
                        raise OSError(f"cannot open {tmp} for writing")
                    for k in frames:
                        img = cv2.imdecode(np.frombuffer(k.jpeg, np.uint8), cv2.IMREAD_COLOR)
                        if img is not None:
                            writer.write(img if k.size == size else cv2.resize(img, size))
            finally:
                if writer is not None:
                    writer.release()
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise OSError(f"{tmp}: nothing written (disk full or read-only?)")
            os.replace(tmp, path)
            self._prune()
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if self.stats.error is None:
                log.error("clips: cannot write %s: %s (detection goes on)", path, err)
            self.stats.error = f"{type(err).__name__}: {err}"
            return
        self.stats.written += 1
        self.stats.error = None
        self.stats.last = [path.name, *self.stats.last][:5]

    def _prune(self) -> None:
        files = sorted(self.dir.glob("*.avi"), key=lambda p: p.stat().st_mtime)
        files = [f for f in files if not f.name.startswith(".")]
        limit = self.cfg.max_mb * 2**20
        total = sum(f.stat().st_size for f in files)
        while files and (len(files) > self.cfg.max_clips or total > limit):
            old = files.pop(0)
            total -= old.stat().st_size
            old.unlink(missing_ok=True)
        self.stats.bytes = total

    def listing(self) -> list[dict[str, object]]:
        try:
            files = sorted(
                (f for f in self.dir.glob("*.avi") if not f.name.startswith(".")),
                key=lambda p: p.stat().st_mtime,
                reverse=True,
            )
            return [{"name": p.name, "bytes": p.stat().st_size, "mtime": p.stat().st_mtime} for p in files]
        except OSError:
            return []

    def health(self) -> dict[str, object]:
        return {
            "written": self.stats.written,
            "dropped": self.stats.dropped,
            "bytes": self.stats.bytes,
            "in_progress": len(self.pending),
            "ring_frames": len(self.ring),
            "error": self.stats.error,
        }


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter | None:
    """An MJPG AVI writer that takes JPEGs as they are, or None where this OpenCV has none (the caller
    then decodes and encodes each frame)."""
    if _RAW is None:
        return None
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*"MJPG"), fps, size, [_RAW, 1])
    if writer.isOpened():
        return writer
    writer.release()
    return None


def _resized(jpeg: bytes, size: tuple[int, int]) -> bytes | None:
    """A frame kept at another size (the camera's changed mid-clip) brought to the clip's size: the
    one case that decodes and encodes again."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    ok, buf = cv2.imencode(".jpg", cv2.resize(img, size), [cv2.IMWRITE_JPEG_QUALITY, _QUALITY])
    return buf.tobytes() if ok else None
