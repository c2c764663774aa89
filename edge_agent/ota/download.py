"""HTTP download of a model: Range resume, stall timeout, total deadline, byte cap, streaming sha256."""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
#: Client errors that a retry will not cure; anything else (5xx, 408, 429, a dropped connection) is retried.
_RETRYABLE_4XX = (408, 425, 429)
#: Backoff between attempts: doubles from the first to the last.
_BACKOFF_S = (1.0, 30.0)
#: Free space left over after a download, so the state directory never fills to the brim.
DISK_MARGIN = 16 * 1024 * 1024


class DownloadError(Exception):
    """The download failed for good; the message says why."""


def _hash_existing(path: Path) -> tuple[int, hashlib._Hash]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h


def download(
    urls: list[str],
    dest: Path,
    size: int,
    sha256: str,
    stall_s: float,
    deadline_s: float,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], str | None] | None = None,
) -> Path:
    """Fetch into `dest` (a .part file, resumed if present) and verify; returns dest.

    Permanent failures end the download at once with the reason: a client error from every URL (404,
    403, 416: the file is smaller than the manifest says), or the local file that cannot be written
    (read-only or full disk). Transient ones (5xx, a stall, a dropped connection) are retried with
    exponential backoff until the deadline, each logged. `cancelled` (checked between reads and while
    backing off) gives a reason to stop, such as a newer deploy."""
    if not urls:
        raise DownloadError("no URL to download from")
    have = dest.stat().st_size if dest.exists() else 0
    if have > size:
        dest.unlink()
        have = 0
    free = shutil.disk_usage(dest.parent).free
    if free - (size - have) < DISK_MARGIN:
        raise DownloadError(
            f"not enough disk: {free // 2**20} MiB free, {(size - have) // 2**20} MiB needed "
            f"plus a margin of {DISK_MARGIN // 2**20} MiB"
        )
    got, hasher = _hash_existing(dest) if have else (0, hashlib.sha256())
    deadline = time.monotonic() + deadline_s
    last_error = "no attempt"
    attempt = 0
    refused: dict[str, str] = {}  # URL -> the permanent error it gave
    backoff = _BACKOFF_S[0]
    while got < size:
        _check(cancelled)
        if time.monotonic() > deadline:
            raise DownloadError(f"not complete within {deadline_s:g} s ({got} of {size} bytes): {last_error}")
        live = [u for u in urls if u not in refused]
        url = live[attempt % len(live)]
        attempt += 1
        req = urllib.request.Request(url, headers={"Range": f"bytes={got}-"} if got else {})
        try:
            with urllib.request.urlopen(req, timeout=stall_s) as resp:
                if got and resp.status != 206:  # no Range support: start over
                    got, hasher = 0, hashlib.sha256()
                    mode = "wb"
                else:
                    mode = "ab" if got else "wb"
                out = _open(dest, mode)
                with out:
                    while time.monotonic() < deadline:
                        _check(cancelled)
                        chunk = resp.read(min(_CHUNK, size - got + 1))
                        if not chunk:
                            break
                        if got + len(chunk) > size:
                            raise DownloadError(f"server sent more than the manifest's {size} bytes")
                        _write(out, chunk, dest)
                        hasher.update(chunk)
                        got += len(chunk)
                        backoff = _BACKOFF_S[0]  # progress: the next trouble starts the backoff afresh
                        if progress is not None:
                            progress(got, size)
                        if got == size:
                            break
            last_error = "connection closed early" if got < size else ""
        except DownloadError:
            _discard(dest)
            raise
        except TimeoutError:
            last_error = f"stalled for {stall_s:g} s"
        except urllib.error.HTTPError as err:
            last_error = f"HTTP {err.code}"
            if 400 <= err.code < 500 and err.code not in _RETRYABLE_4XX:
                why = "the file is smaller than the manifest's size" if err.code == 416 else err.reason
                refused[url] = f"HTTP {err.code} ({why})"
                if len(refused) == len(set(urls)):
                    raise DownloadError("; ".join(f"{u}: {r}" for u, r in refused.items())) from None
                continue
        except (urllib.error.URLError, OSError) as err:
            last_error = str(getattr(err, "reason", err))
        if got < size and time.monotonic() < deadline:
            wait = min(backoff, max(0.0, deadline - time.monotonic()))
            log.warning("download of %s: %s; retrying in %.0f s (%d of %d bytes)", url, last_error, wait, got, size)
            _sleep(wait, cancelled)
            backoff = min(_BACKOFF_S[1], backoff * 2)
    if hasher.hexdigest() != sha256:
        _discard(dest)
        raise DownloadError(f"sha256 mismatch: got {hasher.hexdigest()[:16]}..., manifest says {sha256[:16]}...")
    return dest


def _check(cancelled: Callable[[], str | None] | None) -> None:
    why = cancelled() if cancelled is not None else None
    if why:
        raise DownloadError(why)


def _sleep(seconds: float, cancelled: Callable[[], str | None] | None) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        _check(cancelled)
        time.sleep(min(0.1, left))


def _open(dest: Path, mode: str) -> Any:
    try:
        return open(dest, mode)
    except OSError as err:
        raise DownloadError(f"cannot write {dest}: {err.strerror or err}") from None


def _write(out: Any, chunk: bytes, dest: Path) -> None:
    try:
        out.write(chunk)
    except OSError as err:
        raise DownloadError(f"cannot write {dest}: {err.strerror or err}") from None


def _discard(dest: Path) -> None:
    """Remove a partial file that must not be resumed; a directory that refuses even that keeps it."""
    try:
        dest.unlink(missing_ok=True)
    except OSError:
        pass
