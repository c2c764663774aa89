"""HTTP download of a model: Range resume, stall timeout, total deadline, byte cap, streaming sha256."""

from __future__ import annotations

import hashlib
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

_CHUNK = 64 * 1024
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
) -> Path:
    """Fetch into `dest` (a .part file, resumed if present) and verify; returns dest."""
    if not urls:
        raise DownloadError("no URL to download from")
    have = dest.stat().st_size if dest.exists() else 0
    if have > size:
        dest.unlink()
        have = 0
    free = shutil.disk_usage(dest.parent).free
    if free - (size - have) < DISK_MARGIN:
        raise DownloadError(f"not enough disk: {free // 2**20} MiB free, {size // 2**20} MiB needed")
    got, hasher = _hash_existing(dest) if have else (0, hashlib.sha256())
    deadline = time.monotonic() + deadline_s
    last_error = "no attempt"
    attempt = 0
    while got < size:
        if time.monotonic() > deadline:
            raise DownloadError(f"not complete within {deadline_s:g} s ({got} of {size} bytes): {last_error}")
        url = urls[attempt % len(urls)]
        attempt += 1
        req = urllib.request.Request(url, headers={"Range": f"bytes={got}-"} if got else {})
        try:
            with urllib.request.urlopen(req, timeout=stall_s) as resp:
                if got and resp.status != 206:  # no Range support: start over
                    got, hasher = 0, hashlib.sha256()
                    mode = "wb"
                else:
                    mode = "ab" if got else "wb"
                with open(dest, mode) as out:
                    while time.monotonic() < deadline:
                        chunk = resp.read(min(_CHUNK, size - got + 1))
                        if not chunk:
                            break
                        if got + len(chunk) > size:
                            raise DownloadError(f"server sent more than the manifest's {size} bytes")
                        out.write(chunk)
                        hasher.update(chunk)
                        got += len(chunk)
                        if progress is not None:
                            progress(got, size)
                        if got == size:
                            break
            last_error = "connection closed early" if got < size else ""
        except DownloadError:
            dest.unlink(missing_ok=True)
            raise
        except TimeoutError:
            last_error = f"stalled for {stall_s:g} s"
        except urllib.error.HTTPError as err:
            last_error = f"HTTP {err.code}"
            if err.code in (401, 403, 404, 410):
                if attempt >= len(urls):
                    raise DownloadError(f"{url}: HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            last_error = str(getattr(err, "reason", err))
        if got < size and time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # back off before resuming
    if hasher.hexdigest() != sha256:
        dest.unlink(missing_ok=True)
        raise DownloadError(f"sha256 mismatch: got {hasher.hexdigest()[:16]}..., manifest says {sha256[:16]}...")
    return dest
