"""Installed model versions on disk, stored by digest, with an atomically switched `current`.

Layout under `<state_dir>/models/`:
  blobs/<sha256>.tflite      the model files (never modified once written)
  manifests/<sha256>.json    the manifest each came with
  state.json                 current, previous, probation, highest accepted version,
                             crash counts, history (written with temp + fsync + rename)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes its entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p that survives a power cut: each directory made is fsynced into its parent. A directory
    whose own entry was never made durable can vanish after a cut with every file in it, however
    carefully those were written."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        fsync_path(d.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write-temp, fsync, rename, fsync the directory: after a power cut, old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _sound(st: Any) -> bool:
    """A store state as save() writes it (what JSON that parses can still get wrong)."""
    if not isinstance(st, dict):
        return False
    for key in ("current", "previous"):
        v = st.get(key)
        if v is not None and not (isinstance(v, dict) and isinstance(v.get("sha256"), str)):
            return False
    return isinstance(st.get("highest_version", 0), int)


def _locked(method: Callable[Concatenate[ModelStore, _P], _R]) -> Callable[Concatenate[ModelStore, _P], _R]:
    """The store's state is changed and saved by the update thread and by the command thread (a
    `rollback` arriving while a verdict is applied): one at a time, or two saves race for the same
    temporary file and the state written can be a mix of both."""

    @functools.wraps(method)
    def run(self: ModelStore, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return method(self, *args, **kwargs)

    return run


class ModelStore:
    def __init__(self, root: Path, keep: int = 3, read_only: bool = False):
        """read_only: a store on a file system mounted read-only: what is installed can be served, and
        nothing is written (decisions at start, such as a rollback, hold for this run only)."""
        self.root = root
        self.keep = keep
        self.read_only = read_only
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.incoming = root / "incoming"
        if not read_only:
            for d in (self.blobs, self.manifests, self.incoming):
                make_dirs(d)
        self.state_path = root / "state.json"
        #: held by every method that reads several fields or writes; reentrant (they call each other)
        self.lock = threading.RLock()
        self.state: dict[str, Any] = self._load()

    @property
    def copy_path(self) -> Path:
        """A second copy of the state, written after the first: a lost sector takes one, not both."""
        return self.state_path.with_name(self.state_path.name + ".bak")

    def _load(self) -> dict[str, Any]:
        """The state, from its first readable copy. Neither readable (both damaged) starts from the
        configured model, and takes the highest version accepted from the manifests still on disk, so
        that an older release is not accepted again."""
        seen = []
        for path in (self.state_path, self.copy_path):
            try:
                st = json.loads(path.read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as err:
                seen.append(f"{path.name}: {err}")
                continue
            if _sound(st):
                if seen:
                    log.error("model store state %s unreadable; using its copy %s", "; ".join(seen), path.name)
                return dict(st)
            seen.append(f"{path.name}: not a store state")
        fresh: dict[str, Any] = {
            "current": None,
            "previous": None,
            "probation": None,
            "highest_version": 0,
            "crashes": {},
            "blocked": [],
            "history": [],
        }
        if seen:
            fresh["highest_version"] = self._highest_on_disk()
            log.error(
                "model store state unreadable (%s): the configured model serves; versions up to %d, the highest "
                "among the manifests on disk, are refused", "; ".join(seen), fresh["highest_version"],
            )
        return fresh

    def _highest_on_disk(self) -> int:
        highest = 0
        for p in self.manifests.glob("*.json"):
            try:
                v = json.loads(p.read_text()).get("version")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(v, int) and not isinstance(v, bool):
                highest = max(highest, v)
        return highest

    @_locked
    def save(self) -> None:
        if self.read_only:
            return
        data = json.dumps(self.state, indent=1).encode()
        atomic_write(self.state_path, data)
        atomic_write(self.copy_path, data)

    def blob(self, sha256: str) -> Path:
        return self.blobs / f"{sha256}.tflite"

    def labels(self, sha256: str) -> Path:
        """Where the labels an update shipped in its manifest are kept, beside the manifest."""
        return self.manifests / f"{sha256}.labels.txt"

    def intact(self, sha256: str) -> bool:
        """The installed file is there and is what was installed (read whole: once per start)."""
        import hashlib

        h = hashlib.sha256()
        try:
            with open(self.blob(sha256), "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except OSError:
            return False
        return h.hexdigest() == sha256

    def manifest(self, sha256: str) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.manifests / f"{sha256}.json").read_text())
            return doc if isinstance(doc, dict) else None
        except (OSError, ValueError):
            return None

    def install(self, downloaded: Path, sha256: str, manifest: dict[str, Any]) -> Path:
        """Move a verified download into place (a rename on the same file system). Its data is made
        durable first: a rename can reach the disk before the data it names, and `current` would then
        point at an empty file after a power cut."""
        target = self.blob(sha256)
        fsync_path(downloaded)
        os.replace(downloaded, target)
        fsync_path(self.blobs)
        atomic_write(self.manifests / f"{sha256}.json", json.dumps(manifest).encode())
        return target

    @_locked
    def record(self, event: str, **fields: Any) -> None:
        self.state["history"] = (
            [*self.state.get("history", []), {"event": event, "ts": round(time.time(), 3), **fields}]
        )[-50:]

    @_locked
    def activate(self, sha256: str, version: int, kernel_boot: str | None = None) -> None:
        """Point `current` at a new version and put it on probation; the old one stays `previous`.
        kernel_boot: the system's boot id, so a later start tells a crash from a power cut."""
        st = self.state
        st["previous"], st["current"] = st.get("current"), {"sha256": sha256, "version": version}
        st["probation"] = {"sha256": sha256, "started": round(time.time(), 3), "kernel_boot": kernel_boot}
        st["highest_version"] = max(int(st.get("highest_version", 0)), version)
        self.record("activated", sha256=sha256, version=version)
        self.save()

    @_locked
    def pass_probation(self) -> None:
        self.state["probation"] = None
        cur = self.state.get("current") or {}
        self.record("active", **cur)
        self.save()
        self.prune()

    @_locked
    def rollback(self, reason: str) -> dict[str, Any] | None:
        """Back to `previous`; returns it (None: nothing to go back to, the config's model serves)."""
        st = self.state
        bad, st["current"], st["previous"] = st.get("current"), st.get("previous"), None
        st["probation"] = None
        self.record("rolled_back", reason=reason, **(bad or {}))
        self.save()
        return st["current"]

    @_locked
    def note_crash(self, sha256: str) -> int:
        crashes = self.state.setdefault("crashes", {})
        crashes[sha256] = int(crashes.get(sha256, 0)) + 1
        if crashes[sha256] >= 2 and sha256 not in self.state.setdefault("blocked", []):
            self.state["blocked"].append(sha256)
        self.save()
        return int(crashes[sha256])

    def is_blocked(self, sha256: str) -> bool:
        return sha256 in self.state.get("blocked", [])

    @_locked
    def versions(self) -> list[dict[str, Any]]:
        out = []
        cur = (self.state.get("current") or {}).get("sha256")
        prev = (self.state.get("previous") or {}).get("sha256")
        for p in sorted(self.blobs.glob("*.tflite"), key=lambda q: q.stat().st_mtime, reverse=True):
            sha = p.stem
            m = self.manifest(sha) or {}
            out.append(
                {
                    "sha256": sha,
                    "name": m.get("name"),
                    "version": m.get("version"),
                    "size": p.stat().st_size,
                    "current": sha == cur,
                    "previous": sha == prev,
                    "blocked": self.is_blocked(sha),
                }
            )
        return out

    @_locked
    def discard(self, sha256: str) -> None:
        """Remove a version that will never serve (rejected); never the current or previous one."""
        if sha256 in {(self.state.get(k) or {}).get("sha256") for k in ("current", "previous")}:
            return
        self._remove(sha256)

    def _remove(self, sha256: str) -> None:
        """Every file of a version: the model, its manifest and the labels an update shipped with it."""
        for p in (self.blob(sha256), self.manifests / f"{sha256}.json", self.labels(sha256)):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass

    @_locked
    def prune(self) -> None:
        """Keep the newest `keep` versions; never the current or previous one."""
        pinned = {(self.state.get(k) or {}).get("sha256") for k in ("current", "previous")}
        for i, v in enumerate(self.versions()):
            if i >= self.keep and v["sha256"] not in pinned:
                self._remove(v["sha256"])
        for p in self.incoming.glob("*.part"):
            if time.time() - p.stat().st_mtime > 86400:
                p.unlink(missing_ok=True)
