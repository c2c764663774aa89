"""The outbox on its own: order, persistence, bounds and policies, degrading when the disk fails."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.outbox import Outbox
from edge_agent.sinks.base import Message


def msgs(n: int, start: int = 0) -> list[Message]:
    return [Message("edge/d/predictions", str(i).encode(), 1) for i in range(start, start + n)]


def payloads(rows: list[tuple[int, Message]]) -> list[int]:
    return [int(m.payload) for _, m in rows]


def test_order_persistence_and_ack(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", 1000, "drop_oldest", 60)
    ob.put_many(msgs(10))
    assert ob.depth() == 10
    ob.close()  # commits the pending batch
    again = Outbox(tmp_path / "o.sqlite", 1000, "drop_oldest", 60)
    rows = again.peek(4)
    assert payloads(rows) == [0, 1, 2, 3] and again.mode == "disk"
    assert payloads(again.peek(3, after_id=rows[-1][0])) == [4, 5, 6]
    again.ack([i for i, _ in rows])
    assert payloads(again.peek(100)) == [4, 5, 6, 7, 8, 9]


def test_batched_commits(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", 1000, "drop_oldest", 3600)
    ob.put_many(msgs(5))
    ob.maybe_commit()  # interval not reached: nothing written yet
    raw = sqlite3.connect(str(tmp_path / "o.sqlite"))
    assert raw.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    ob.commit()
    assert raw.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 5


@pytest.mark.parametrize(
    ("policy", "kept", "reason"),
    [
        ("drop_oldest", list(range(10, 20)), "outbox_full_oldest"),
        ("drop_newest", list(range(10)), "outbox_full_newest"),
    ],
)
def test_full_policies(tmp_path: Path, policy: str, kept: list[int], reason: str) -> None:
    ob = Outbox(tmp_path / "o.sqlite", 10, policy, 60)  # type: ignore[arg-type]
    ob.put_many(msgs(20))
    ob.commit()
    assert payloads(ob.peek(100)) == kept and ob.drops[reason] == 10


def test_downsample_keeps_the_span(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", 10, "downsample", 60)
    ob.put_many(msgs(14))
    ob.commit()
    left = payloads(ob.peek(100))
    assert len(left) == 10 and left[0] == 0 and left[-1] == 13 and ob.drops["outbox_downsampled"] == 4


@pytest.mark.parametrize("where", ["file_parent", "proc"])
def test_unusable_state_directory_degrades_to_memory(tmp_path: Path, where: str) -> None:
    if where == "file_parent":
        blocker = tmp_path / "not_a_dir"
        blocker.write_text("x")
        path = blocker / "outbox.sqlite"
    else:
        path = Path("/proc/edge-agent-test/outbox.sqlite")  # a read-only file system
    ob = Outbox(path, 5, "drop_oldest", 60)
    assert ob.mode == "memory" and "unusable" in (ob.last_error or "")
    ob.put_many(msgs(8))
    ob.commit()
    assert payloads(ob.peek(100)) == [3, 4, 5, 6, 7] and ob.drops["outbox_full_oldest"] == 3


def test_disk_full_mid_run_keeps_results_in_memory(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", 100_000, "drop_oldest", 60)
    ob.put_many(msgs(3))
    ob.commit()
    assert ob._db is not None
    # SQLite's page cap raises the very error a full disk does (SQLITE_FULL)
    pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
    ob._db.execute(f"PRAGMA max_page_count = {pages}")
    ob.put_many([Message("t", b"x" * 50_000, 1) for _ in range(20)])
    ob.commit()
    assert ob.mode == "memory" and "full" in (ob.last_error or "")
    assert ob.depth() == 23  # what was on disk came along
    assert payloads(ob.peek(3)) == [0, 1, 2]


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 2 MB file system (tmpfs), so that the disk really fills."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def fat_stick(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A FAT32 file system mounted through FUSE (fusefat), as a USB stick may be: one that gives SQLite
    no shared memory for WAL's index (its `-shm` file cannot be mapped)."""
    import os
    import shutil
    import subprocess

    if shutil.which("fusefat") is None or shutil.which("mkfs.vfat") is None:
        pytest.skip("fusefat and dosfstools are not installed (scripts/test.sh installs them)")
    image, where = tmp_path / "stick.img", tmp_path / "stick"
    where.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.vfat", "-F", "32", str(image)], check=True, capture_output=True)
    subprocess.run(["fusefat", "-o", "rw+", str(image), str(where)], check=True, capture_output=True)
    assert os.path.ismount(where)
    yield where
    subprocess.run(["fusermount3", "-u", "-z", str(where)], check=False, capture_output=True)


def _fill(where: Path) -> Path:
    filler = where / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:  # ENOSPC: the disk is full
            pass
    return filler


def test_a_full_disk_sends_the_outbox_to_memory_and_freed_space_brings_it_back(small_disk: Path) -> None:
    path = small_disk / "outbox.sqlite"
    ob = Outbox(path, 100_000, "drop_oldest", 60, retry_s=0.1)
    ob.put_many(msgs(3))
    ob.commit()
    filler = _fill(small_disk)
    ob.put_many([Message("t", b"%d" % i + b" " * 20_000, 1) for i in range(3, 40)])
    ob.commit()
    assert ob.mode == "memory" and "full" in (ob.last_error or "")
    assert not ob.try_disk()  # still full: it stays in memory
    assert ob.mode == "memory" and ob.depth() == 40
    filler.unlink()  # space freed
    deadline = time.monotonic() + 5
    while not ob.try_disk():
        assert time.monotonic() < deadline, ob.last_error
        time.sleep(0.12)
    assert ob.mode == "disk" and ob.depth() == 40
    assert [int(m.payload.split()[0]) for _, m in ob.peek(100)] == list(range(40))  # oldest first, none twice
    ob.put_many([Message("t", b"40", 1)])
    ob.commit()
    ob.close()
    again = Outbox(path, 100_000, "drop_oldest", 60)  # on disk for real: a restart finds all of it
    assert again.mode == "disk" and [int(m.payload.split()[0]) for _, m in again.peek(100)] == list(range(41))


def _damage_a_page(path: Path, page: int) -> None:
    """Overwrite one 4 KiB page of the file with noise, as an SD card's lost sector leaves it."""
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(page)
    raw[4096 * page: 4096 * (page + 1)] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def test_an_outbox_on_a_file_system_without_shared_memory_stays_on_disk(
    fat_stick: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's WAL keeps its index in memory shared through the `-shm` file, which a FAT stick mounted
    through FUSE cannot map (SQLITE_IOERR_SHMOPEN, "disk I/O error"): the outbox went to memory at once,
    and what it held was lost with the power. It now holds its file exclusively, where SQLite keeps that
    index in its own memory, and stays on disk: what it stored is there after a restart."""
    path = fat_stick / "state" / "outbox.sqlite"
    ob = Outbox(path, 1000, "drop_oldest", 60)
    assert ob.mode == "disk", ob.stats()
    assert "gives SQLite no shared memory" in caplog.text and "held exclusively" in caplog.text
    ob.put_many(msgs(10))
    ob.close()
    again = Outbox(path, 1000, "drop_oldest", 60)
    try:
        assert again.mode == "disk" and payloads(again.peek(100)) == list(range(10)), again.stats()
        again.ack([i for i, _ in again.peek(3)])
        again.put_many(msgs(2, start=10))
    finally:
        again.close()
    last = Outbox(path, 1000, "drop_oldest", 60)
    assert payloads(last.peek(100)) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    last.close()


def test_a_damaged_page_loses_only_what_it_held(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Results stored through an outage, then a page of the file damaged: the outbox keeps every
    message still readable, each with its id and in order, in a new file on disk; the damaged file
    is kept beside it; the next start finds a sound file."""
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, 100_000, "drop_oldest", 60)
    stored = [Message("edge/d/predictions", f"{i:06d}".encode() * 40, 1) for i in range(3000)]
    ob.put_many(stored)
    ob.close()
    pages = path.stat().st_size // 4096
    _damage_a_page(path, pages // 2)
    again = Outbox(path, 100_000, "drop_oldest", 60)
    rows = again.peek(10_000)  # the damage shows here: SQLite reads the page
    ids = [i for i, _ in rows]
    assert again.mode == "disk" and again.repairs == 1, again.stats()
    assert 2800 < len(rows) < 3000 and ids == sorted(ids), len(rows)
    assert all(m.payload == stored[i - 1].payload for i, m in rows)  # each under its own id, intact
    assert (tmp_path / "o.sqlite.corrupt").is_file() and "damaged" in caplog.text
    again.ack(ids[:10])
    again.put_many(msgs(5))
    again.close()
    sound = Outbox(path, 100_000, "drop_oldest", 60)
    assert sound.depth() == len(rows) - 10 + 5 and sound.repairs == 0
    with sqlite3.connect(str(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    sound.close()


def test_garbage_where_the_outbox_was_is_set_aside_not_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(bytes(range(256)) * 64)
    ob = Outbox(path, 1000, "drop_oldest", 60)
    assert ob.mode == "disk" and ob.repairs == 1 and "not a database" in str(ob.last_repair)
    ob.put_many(msgs(3))
    assert payloads(ob.peek(10)) == [0, 1, 2]
    ob.close()
    assert (tmp_path / "o.sqlite.corrupt").read_bytes() == bytes(range(256)) * 64


def test_what_the_broker_acknowledged_is_removed_in_batches(tmp_path: Path) -> None:
    """Acknowledgements come a few at a time after an outage. Removed in one transaction per flush
    interval, they cost the storage a fraction of what a transaction per group cost (the process's own
    bytes written, as the kernel counts them: what `process.written_mb` reports), and meanwhile an
    acknowledged message is neither counted nor read again."""
    import psutil

    class PerAck(Outbox):  # the outbox before: each group removed in a transaction of its own
        def ack(self, ids: list[int]) -> None:
            super().ack(ids)
            self._remove_acked()

    def replay(kind: type[Outbox], name: str) -> int:
        ob = kind(tmp_path / name, 100_000, "drop_oldest", 3600)
        for _ in range(10):
            ob.put_many(msgs(30))
            ob.commit()
        before = psutil.Process().io_counters().write_bytes
        after = 0
        while rows := ob.peek(20, after):
            ids = [i for i, _ in rows]
            after = ids[-1]
            for k in range(0, len(ids), 3):
                ob.ack(ids[k:k + 3])
                ob.maybe_commit()
        assert ob.depth() == 0 and ob.peek(10) == []  # acknowledged: not counted, not read again
        ob.close()
        return int(psutil.Process().io_counters().write_bytes - before)

    ob = Outbox(tmp_path / "o.sqlite", 1000, "drop_oldest", 3600)
    ob.put_many(msgs(10))
    ob.commit()
    ob.ack([i for i, _ in ob.peek(4)])
    assert ob.depth() == 6 and payloads(ob.peek(3, after_id=4)) == [4, 5, 6]
    raw = sqlite3.connect(str(tmp_path / "o.sqlite"))
    assert raw.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 10  # not yet removed from disk
    assert payloads(ob.peek(100)) == [4, 5, 6, 7, 8, 9]  # a replay from the start removes them first
    assert raw.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 6
    ob.close()
    batched, per_ack = replay(Outbox, "a.sqlite"), replay(PerAck, "b.sqlite")
    assert 3 * batched < per_ack, (batched, per_ack)


def test_a_disk_that_fills_before_the_acknowledged_are_removed_keeps_only_the_unacknowledged(
    small_disk: Path,
) -> None:
    """Results acknowledged by the broker but not yet removed when the disk fills (the removal itself needs
    room in the journal): the outbox goes to memory with what the broker has not got, and sends none of
    the acknowledged ones again."""
    ob = Outbox(small_disk / "outbox.sqlite", 100_000, "drop_oldest", 60)
    ob.put_many([Message("t", b"%d" % i + b" " * 20_000, 1) for i in range(40)])
    ob.commit()
    rows = ob.peek(10)
    ob.ack([i for i, _ in rows])  # the first ten delivered
    filler = _fill(small_disk)
    ob.close()  # removes the acknowledged: the journal has no room
    try:
        assert ob.mode == "memory" and "full" in (ob.last_error or ""), ob.stats()
        assert [int(m.payload.split()[0]) for _, m in ob.peek(100)] == list(range(10, 40))
    finally:
        filler.unlink()
