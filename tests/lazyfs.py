"""A FUSE file system that loses, on a simulated power cut, everything not yet made durable.

kill -9 is not a power cut: what a process wrote reaches the kernel's page cache and survives the
process, but not the power going. This file system keeps every write in memory and makes it durable
only as a disk with a journal would: a file's data at its `fsync`, a directory's entries (creations,
renames, removals) at the `fsync` of the directory itself. A cut throws away everything else and
puts back the last durable state, the way LazyFS (INESC TEC) does for a real page cache. It is as
strict as POSIX and stricter than ext4's ordered mode, which often persists a new file's entry with
its data: code that survives it survives the real thing.

Cuts are placed by counting the operations that change something (write, truncate, create, mkdir,
unlink, rmdir, rename, fsync): `arm N` in the control file `/.power` cuts the power just before the
N-th such operation from then, which is not applied (`arm N fsync` counts only fsyncs, `arm N write
outbox-db` only writes to the outbox's database file); `cut` cuts at once. From the cut every
operation fails with EIO until `on` is written. Reading `/.power` gives the state, the number of
cuts and where the last one fell (operation and path).

    python tests/lazyfs.py MOUNTPOINT        # foreground; fusermount3 -u MOUNTPOINT to end

Built on mfusepy (the maintained fork of fusepy: ctypes over libfuse 3, no compilation).
"""

from __future__ import annotations

import errno
import json
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import mfusepy

CONTROL = "/.power"
MUTATING = ("write", "truncate", "create", "mkdir", "unlink", "rmdir", "rename", "fsync", "fsyncdir")


@dataclass
class Node:
    kind: str  # "f" or "d"
    mode: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)
    mtime: float = field(default_factory=time.time)


class LazyFS(mfusepy.Operations):
    use_ns = True  # utimens times in nanoseconds

    def __init__(self) -> None:
        self._mu = threading.RLock()
        self.nodes: dict[int, Node] = {1: Node("d", 0o755)}
        self.next_ino = 2
        self.handles: dict[int, int] = {}  # fh -> ino
        self.snapshots: dict[int, bytes] = {}  # fh of the control file -> the status it reads
        self.next_fh = 1
        # what a cut leaves: file data at its last fsync, directory entries at their last fsync
        self.durable_data: dict[int, bytes] = {}
        self.durable_entries: dict[int, dict[str, int]] = {1: {}}
        self.durable_kind: dict[int, tuple[str, int]] = {1: ("d", 0o755)}
        self.powered = True
        self.armed: int | None = None
        self.arm_op: str | None = None
        self.arm_class: str | None = None
        self.cuts = 0
        self.ops = 0
        self.point: dict[str, Any] | None = None
        #: the last operation that changed something: where a cut at an arbitrary moment falls
        self.last: tuple[str, str | None] = ("-", None)
        self.points: dict[str, int] = {}

    # --- power ----------------------------------------------------------------------------------
    def _gate(self, op: str, path: str | None) -> None:
        """Every operation passes here: EIO while the power is off; a cut when the armed count runs out."""
        if not self.powered:
            raise mfusepy.FuseOSError(errno.EIO)
        if op not in MUTATING:
            return
        self.ops += 1
        self.last = (op, path)
        if self.armed is None:
            return
        if self.arm_op is not None and op != self.arm_op:
            return
        if self.arm_class is not None and path_class(path) != self.arm_class:
            return
        self.armed -= 1
        if self.armed > 0:
            return
        self.armed = None
        self._cut(op, path)
        raise mfusepy.FuseOSError(errno.EIO)

    def _cut(self, op: str, path: str | None, after: bool = False) -> None:
        """Power off before `op` (or, `after`, just after it) and put back the last durable state."""
        self.cuts += 1
        self.powered = False
        op = f"after {op}" if after else op
        self.point = {"op": op, "path": path}
        key = f"{op} {path_class(path)}"
        self.points[key] = self.points.get(key, 0) + 1
        nodes: dict[int, Node] = {}

        def restore(ino: int) -> None:
            kind, mode = self.durable_kind[ino]
            if kind == "d":
                entries = {n: c for n, c in self.durable_entries.get(ino, {}).items() if c in self.durable_kind}
                nodes[ino] = Node("d", mode, entries=dict(entries))
                for child in entries.values():
                    if child not in nodes:
                        restore(child)
            else:
                nodes[ino] = Node("f", mode, data=bytearray(self.durable_data.get(ino, b"")))

        restore(1)
        self.nodes = nodes
        self.handles.clear()

    def _control(self, text: str) -> None:
        cmd, _, arg = text.strip().partition(" ")
        if cmd == "arm":  # arm N [OP [FILE-CLASS]]: at the N-th operation (of that kind, on that kind of file)
            words = arg.split()
            self.armed = max(1, int(words[0]))
            self.arm_op = words[1] if len(words) > 1 else None
            self.arm_class = words[2] if len(words) > 2 else None
        elif cmd == "on":
            self.powered, self.armed = True, None
        elif cmd == "cut":  # now: after the last operation that changed something
            self._cut(*self.last, after=True)
        elif cmd == "disarm":
            self.armed = None
        else:
            raise mfusepy.FuseOSError(errno.EINVAL)

    def _status(self) -> bytes:
        return json.dumps({"powered": self.powered, "armed": self.armed, "cuts": self.cuts, "ops": self.ops,
                           "point": self.point, "points": self.points}).encode()

    # --- names ----------------------------------------------------------------------------------
    def _lookup(self, path: str) -> int:
        ino = 1
        for part in [p for p in path.split("/") if p]:
            node = self.nodes.get(ino)
            if node is None or node.kind != "d" or part not in node.entries:
                raise mfusepy.FuseOSError(errno.ENOENT)
            ino = node.entries[part]
        return ino

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self.nodes[self._lookup(head or "/")]
        if parent.kind != "d":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _new(self, kind: str, mode: int) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.nodes[ino] = Node(kind, mode)
        return ino

    # --- operations -----------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mu:
            if path == CONTROL:
                return {"st_mode": stat.S_IFREG | 0o666, "st_nlink": 1, "st_size": 4096}
            if path != "/":  # the root stays visible with the power off: the way to the control file
                self._gate("getattr", path)
            ino = self.handles[fh] if fh is not None and fh in self.handles else self._lookup(path)
            n = self.nodes[ino]
            kind = stat.S_IFDIR if n.kind == "d" else stat.S_IFREG
            return {"st_mode": kind | n.mode, "st_nlink": 2 if n.kind == "d" else 1, "st_size": len(n.data),
                    "st_ino": ino, "st_mtime": int(n.mtime * 1e9), "st_ctime": int(n.mtime * 1e9),
                    "st_atime": int(n.mtime * 1e9),
                    "st_uid": 0, "st_gid": 0}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mu:
            self._gate("readdir", path)
            return [".", "..", *self.nodes[self._lookup(path)].entries]

    def access(self, path: str, amode: int) -> int:
        with self._mu:
            if path != CONTROL:
                self._gate("access", path)
                self._lookup(path)
            return 0

    def statfs(self, path: str) -> dict[str, Any]:
        used = sum(len(n.data) for n in self.nodes.values()) // 4096
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 262144, "f_bfree": 262144 - used,
                "f_bavail": 262144 - used, "f_files": 65536, "f_ffree": 65536 - len(self.nodes), "f_namemax": 255}

    def open(self, path: str, flags: int) -> int:
        with self._mu:
            if path == CONTROL:  # what a read of it says is fixed at its open
                fh = self.next_fh
                self.next_fh += 1
                self.snapshots[fh] = self._status().ljust(4096)
                return fh
            self._gate("open", path)
            ino = self._lookup(path)
            if flags & (1 << 9):  # O_TRUNC
                self._gate("truncate", path)
                self.nodes[ino].data.clear()
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = ino
            return fh

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mu:
            self._gate("create", path)
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                ino = parent.entries[name] = self._new("f", stat.S_IMODE(mode))
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = ino
            return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mu:
            if path == CONTROL:
                return self.snapshots.get(fh, b"")[offset : offset + size]
            self._gate("read", path)
            node = self.nodes[self._handle(fh, path)]
            return bytes(node.data[offset : offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mu:
            if path == CONTROL:
                self._control(data.decode())
                return len(data)
            self._gate("write", path)
            node = self.nodes[self._handle(fh, path)]
            if offset > len(node.data):
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset : offset + len(data)] = data
            node.mtime = time.time()
            return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self._mu:
            if path == CONTROL:
                return 0
            self._gate("truncate", path)
            node = self.nodes[self._handle(fh, path) if fh is not None else self._lookup(path or "/")]
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(b"\0" * (length - len(node.data)))
            return 0

    def _handle(self, fh: int | None, path: str | None) -> int:
        if fh is not None and fh in self.handles:
            return self.handles[fh]
        if fh:  # a handle from before a cut
            raise mfusepy.FuseOSError(errno.EIO)
        return self._lookup(path or "/")

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mu:
            if path == CONTROL:
                return 0
            self._gate("fsync", path)
            ino = self._handle(fh, path)
            node = self.nodes[ino]
            self.durable_data[ino] = bytes(node.data)
            self.durable_kind.setdefault(ino, ("f", node.mode))
            return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._mu:
            self._gate("fsyncdir", path)
            ino = self._lookup(path)
            node = self.nodes[ino]
            self.durable_entries[ino] = dict(node.entries)
            self.durable_kind.setdefault(ino, ("d", node.mode))
            for child in node.entries.values():
                c = self.nodes[child]
                self.durable_kind.setdefault(child, (c.kind, c.mode))  # its data: as last fsynced, or none
            return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._mu:
            self.handles.pop(fh, None)
            self.snapshots.pop(fh, None)
            return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._mu:
            self._gate("mkdir", path)
            parent, name = self._parent(path)
            if name in parent.entries:
                raise mfusepy.FuseOSError(errno.EEXIST)
            parent.entries[name] = self._new("d", stat.S_IMODE(mode))
            return 0

    def rmdir(self, path: str) -> int:
        with self._mu:
            self._gate("rmdir", path)
            parent, name = self._parent(path)
            ino = self._lookup(path)
            if self.nodes[ino].entries:
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
            return 0

    def unlink(self, path: str) -> int:
        with self._mu:
            self._gate("unlink", path)
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise mfusepy.FuseOSError(errno.ENOENT)
            del parent.entries[name]
            return 0

    def rename(self, old: str, new: str) -> int:
        with self._mu:
            self._gate("rename", old)
            src, sname = self._parent(old)
            dst, dname = self._parent(new)
            if sname not in src.entries:
                raise mfusepy.FuseOSError(errno.ENOENT)
            target = dst.entries.get(dname)
            if target is not None and self.nodes[target].kind == "d" and self.nodes[target].entries:
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            dst.entries[dname] = src.entries.pop(sname)
            return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._mu:
            self._gate("chmod", path)
            self.nodes[self._lookup(path)].mode = stat.S_IMODE(mode)
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> int:
        with self._mu:
            if path != CONTROL:
                self._gate("utimens", path)
                self.nodes[self._lookup(path)].mtime = times[1] / 1e9 if times else time.time()
            return 0


def path_class(path: str | None) -> str:
    """Where in the state directory a cut fell, by kind of file (for the coverage report)."""
    if not path:
        return "-"
    name = path.rsplit("/", 1)[-1]
    for marker, cls in (("-wal", "outbox-wal"), ("-journal", "outbox-journal"), ("-shm", "outbox-shm"),
                        ("outbox.", "outbox-db"), ("state.json", "model-state"), (".part", "download"),
                        (".tflite", "model-blob"), (".labels.txt", "model-labels"), (".json", "manifest")):
        if marker in name:
            return cls
    return "dir" if "." not in name else name.rsplit(".", 1)[-1]


def main() -> None:
    mount = sys.argv[1]
    mfusepy.FUSE(LazyFS(), mount, foreground=True, nothreads=False, attr_timeout=0, entry_timeout=0,
                 negative_timeout=0, default_permissions=True)


if __name__ == "__main__":
    main()
