"""Store-and-forward: results produced while the broker is away wait here, oldest first.

SQLite in WAL mode (holding the file exclusively where the file system cannot map WAL's shared
memory) with synchronous=FULL, written in batches (at most once per
`flush_interval_s`), so an SD card is not written per frame and a committed batch survives a
power cut. What the broker acknowledged is removed in batches too: acknowledgements come a few
at a time, and a transaction each (a sync, and a page or two of the journal rewritten) made the
replay after an outage write more than the outage had stored. An acknowledged message not yet
removed is never read again (a replay from the start removes them first); after a crash it may be
sent once more, as QoS 1 allows. Where the state directory is unusable (read-only, disk full) the
outbox degrades to a bounded in-memory queue and counts what that costs, and goes back to disk (with what it
held) once the directory takes writes again. A damaged file (an SD card's lost sectors: SQLite
says "malformed" or "not a database") is repaired instead: the messages still readable are
kept, with their ids, in a fresh file, and the damaged one is kept beside it (`.corrupt`, the
latest only). Used from one thread only: the MQTT publisher's.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from edge_agent.ota.store import make_dirs
from edge_agent.sinks.base import Message

log = logging.getLogger(__name__)

#: Acknowledged ids held for removal at most this many before they are removed anyway.
_ACKED_MAX = 10_000

Policy = Literal["drop_oldest", "drop_newest", "downsample"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def damaged(err: BaseException) -> bool:
    """SQLite's words for a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB), raised as DatabaseError
    itself; a full, read-only or failing disk is an OperationalError, which a new file would not cure."""
    text = str(err).lower()
    return type(err) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text


def _no_shared_memory(err: sqlite3.OperationalError) -> bool:
    """Whether SQLite could not map WAL's shared memory (the `-shm` file). Python before 3.11 does not give
    the extended code: there, any I/O error at the start is tried again without shared memory, which a
    disk that is failing fails as well."""
    name = getattr(err, "sqlite_errorname", None)
    return name.startswith("SQLITE_IOERR_SHM") if name else "disk i/o error" in str(err).lower()


def salvage(db: sqlite3.Connection) -> list[tuple[int, str, bytes, int, int, float]]:
    """The rows of a damaged outbox that can still be read, by id: a scan from each end, row by row,
    so a damaged page stops a scan there and loses only what neither scan reaches."""
    rows: dict[int, tuple[int, str, bytes, int, int, float]] = {}
    for order in ("ASC", "DESC"):
        try:
            cur = db.execute(f"SELECT id, topic, payload, qos, retain, created FROM outbox ORDER BY id {order}")
            for i, topic, payload, qos, retain, created in cur:
                if i in rows:
                    break  # the scans met
                if isinstance(i, int) and isinstance(topic, str) and isinstance(payload, bytes) and qos in (0, 1, 2):
                    rows[i] = (i, topic, payload, int(qos), int(bool(retain)), float(created or 0.0))
        except (sqlite3.Error, ValueError, TypeError):
            continue
    return [rows[i] for i in sorted(rows)]


class Outbox:
    def __init__(
        self, path: Path | None, max_messages: int, policy: Policy, flush_interval_s: float, retry_s: float = 30.0
    ):
        """retry_s: while in memory, how often to try the disk again."""
        self.path = path
        self.max_messages = max_messages
        self.policy = policy
        self.flush_interval_s = flush_interval_s
        self.drops: Counter[str] = Counter()
        self.last_error: str | None = None
        self._pending: list[Message] = []
        self._pending_since: float | None = None
        #: stored ids the broker acknowledged, removed from disk in one transaction per flush interval
        self._acked: list[int] = []
        self._acked_since: float | None = None
        self._mem: deque[tuple[int, Message]] = deque()
        self._next_mem_id = 1
        self._db: sqlite3.Connection | None = None
        self.stored = 0  # messages ever accepted
        self.retry_s = retry_s
        self._next_retry = 0.0
        self._copied = False  # the disk's rows were moved to memory when it failed: drop them on return
        #: damaged files repaired, and when the latest was and what it kept
        self.repairs = 0
        self.last_repair: str | None = None
        if path is not None:
            self._open(path)

    # --- storage ---------------------------------------------------------------------------
    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        make_dirs(path.parent)  # SQLite makes its own files durable in the directory, not the directory
        try:
            return Outbox._connect_as(path, exclusive=False)
        except sqlite3.OperationalError as err:
            if not _no_shared_memory(err):
                raise
            # WAL keeps its index in memory shared through the `-shm` file, which some file systems cannot
            # map (a FUSE mount, such as a FAT USB stick mounted with fusefat; a network share): SQLite says
            # SQLITE_IOERR_SHMOPEN. Holding the file exclusively, SQLite keeps that index in its own memory
            # instead (its documented way for WAL without shared memory). Nothing else reads the outbox
            # while the agent runs then, which one agent per state directory (`agent.lock`) allows.
            try:
                db = Outbox._connect_as(path, exclusive=True)
            except sqlite3.Error:
                raise err from None
            log.warning("outbox: the file system of %s gives SQLite no shared memory (%s): the outbox file is "
                        "held exclusively, so nothing else can read it while the agent runs", path.parent, err)
            return db

    @staticmethod
    def _connect_as(path: Path, exclusive: bool) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5)
        try:
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _open(self, path: Path) -> None:
        try:
            self._db = self._connect(path)
        except (sqlite3.Error, OSError) as err:
            if damaged(err) and self._repair(err):
                return
            self._degrade(f"outbox {path} unusable ({err}); holding results in memory")

    def _repair(self, err: BaseException) -> bool:
        """A damaged file: keep what can be read (with its ids, so messages in flight stay acknowledgeable)
        in a new file, and the damaged one as `.corrupt`. False where the new file cannot be made
        (the disk itself failing): the caller then holds results in memory."""
        path = self.path
        if path is None:
            return False
        rows: list[tuple[int, str, bytes, int, int, float]] = []
        try:
            old = self._db or sqlite3.connect(str(path), isolation_level=None, timeout=5)
            try:
                rows = salvage(old)
            finally:
                old.close()
        except sqlite3.Error:
            pass
        self._db = None
        db: sqlite3.Connection | None = None
        try:
            if not self._set_aside():
                raise OSError(f"cannot move {path} aside")
            db = self._connect(path)
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO outbox (id, topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?, ?)", rows
            )
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as again:
            if db is not None:
                db.close()
            for _i, topic, payload, qos, retain, _ in rows:
                self._mem_append(Message(topic, payload, qos, bool(retain)))
            self._copied = False
            log.error("outbox %s damaged (%s) and cannot be made again (%s)", path, err, again)
            return False
        self._db = db
        self.repairs += 1
        self.last_repair = f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {err}; {len(rows)} messages kept"
        log.error("outbox %s was damaged (%s): the %d stored messages still readable kept in a new file (what "
                  "its damaged pages held is lost); the damaged file is %s.corrupt", path, err, len(rows), path.name)
        return True

    def _set_aside(self) -> bool:
        """The damaged file and its journal renamed `.corrupt` (replacing an older one: the disk stays
        bounded), for whoever wants to look at it; a new file can then take its name."""
        assert self.path is not None
        kept = self.path.with_name(self.path.name + ".corrupt")
        try:
            for suffix in ("", "-wal", "-shm"):
                src = self.path.with_name(self.path.name + suffix)
                if src.exists():
                    src.replace(kept.with_name(kept.name + suffix))
                else:
                    kept.with_name(kept.name + suffix).unlink(missing_ok=True)  # no stale journal for it
            return True
        except OSError as err:
            log.error("outbox: cannot set %s aside: %s", self.path, err)
            return False

    def try_disk(self) -> bool:
        """Back to disk after a degrade, at most every retry_s, once the state directory takes writes
        again (space freed, remounted read-write): what memory held is written there first, oldest
        first. Ids change, so the caller must have no stored message in flight. True when it moved."""
        if self._db is not None or self.path is None or time.monotonic() < self._next_retry:
            return False
        self._next_retry = time.monotonic() + self.retry_s
        db = None
        try:
            db = self._connect(self.path)
            db.execute("BEGIN")
            if self._copied:
                db.execute("DELETE FROM outbox")
            now = time.time()
            db.executemany(
                "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                [(m.topic, m.payload, m.qos, int(m.retain), now) for _, m in self._mem],
            )
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            if db is not None:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                db.close()
            if damaged(err) and self._set_aside():  # what it held readable is in memory already (see _repair):
                self._next_retry = 0.0  # a new file takes what memory holds at the next call
            self.last_error = f"outbox still in memory: {self.path} unusable ({err})"
            return False
        log.warning("outbox back on disk at %s with the %d messages memory held", self.path, len(self._mem))
        self._db, self._copied, self.last_error = db, False, None
        self._mem.clear()
        return True

    def _degrade(self, why: str, delivered: list[int] | None = None) -> None:
        """To memory, with what the disk holds that the broker has not acknowledged."""
        log.error("%s", why)
        self.last_error = why
        gone = set(self._acked) | set(delivered or ())
        self._acked, self._acked_since = [], None
        if self._db is not None:
            try:
                rows = self._db.execute("SELECT id, topic, payload, qos, retain FROM outbox ORDER BY id").fetchall()
                for i, topic, payload, qos, retain in rows:
                    if i not in gone:
                        self._mem_append(Message(topic, bytes(payload), int(qos), bool(retain)))
                self._copied = True
            except sqlite3.Error:
                pass
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        self._db = None

    @property
    def mode(self) -> str:
        return "disk" if self._db is not None else "memory"

    def _mem_append(self, m: Message) -> None:
        self._mem.append((self._next_mem_id, m))
        self._next_mem_id += 1

    # --- API -------------------------------------------------------------------------------
    def put(self, msg: Message) -> None:
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._pending.append(msg)
        self.stored += 1
        if len(self._pending) >= self.max_messages:
            self.commit()

    def put_many(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self.put(m)

    def maybe_commit(self) -> None:
        if self._pending_since is not None and time.monotonic() - self._pending_since >= self.flush_interval_s:
            self.commit()
        if self._acked_since is not None and time.monotonic() - self._acked_since >= self.flush_interval_s:
            self._remove_acked()

    def commit(self) -> None:
        """Write the pending batch in one transaction, then enforce the bound."""
        batch, self._pending, self._pending_since = self._pending, [], None
        if not batch:
            return
        if self._db is not None:
            err = self._insert(self._db, batch)
            if err is not None and damaged(err) and self._repair(err) and self._db is not None:
                err = self._insert(self._db, batch)
            if err is not None:
                self._degrade(f"outbox write failed ({err}); holding results in memory")
        if self._db is None:
            for m in batch:
                self._mem_append(m)
        self._enforce_bound()

    @staticmethod
    def _insert(db: sqlite3.Connection, batch: list[Message]) -> sqlite3.Error | None:
        """One transaction; the error where it failed (rolled back)."""
        try:
            now = time.time()
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                [(m.topic, m.payload, m.qos, int(m.retain), now) for m in batch],
            )
            db.execute("COMMIT")
            return None
        except sqlite3.Error as err:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return err

    def _enforce_bound(self) -> None:
        excess = self.depth() - self.max_messages
        if excess <= 0:
            return
        self._remove_acked()  # what was delivered goes first, uncounted, before anything is dropped
        if self.policy == "downsample":
            self.drops["outbox_downsampled"] += self._thin(excess)
            return
        newest = self.policy == "drop_newest"
        self._delete_end(excess, newest)
        self.drops["outbox_full_newest" if newest else "outbox_full_oldest"] += excess

    def _delete_end(self, n: int, newest: bool) -> None:
        if self._db is not None:
            order = "DESC" if newest else "ASC"
            sql = f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id {order} LIMIT ?)"
            self._db.execute(sql, (n,))
            return
        take = self._mem.pop if newest else self._mem.popleft
        for _ in range(min(n, len(self._mem))):
            take()

    def _thin(self, excess: int) -> int:
        """Drop every other message from the oldest part until under the bound: keeps the whole span."""
        ids = [i for i, _ in self.peek(2 * excess)]
        doomed = ids[1::2][:excess] or ids[:excess]
        if self._db is not None:
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in doomed])
        else:
            gone = set(doomed)
            self._mem = deque((i, m) for i, m in self._mem if i not in gone)
        return len(doomed)

    def peek(self, n: int, after_id: int = 0) -> list[tuple[int, Message]]:
        """The n oldest stored messages with ids above after_id (pending ones are committed first). A read
        from the start (a replay after a reconnect) removes the acknowledged ones first: a read further on
        is past them already."""
        if self._pending:
            self.commit()
        if after_id == 0 and self._acked:
            self._remove_acked()
        for attempt in (1, 2):
            if self._db is None:
                break
            try:
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, n)
                ).fetchall()
                return [(int(i), Message(t, bytes(p), int(q), bool(r))) for i, t, p, q, r in rows]
            except sqlite3.Error as err:
                if attempt == 1 and damaged(err) and self._repair(err):
                    continue
                self._degrade(f"outbox read failed ({err}); holding results in memory")
        return [(i, m) for i, m in self._mem if i > after_id][:n]

    def ack(self, ids: list[int]) -> None:
        """The broker has these stored messages: removed from disk at the next flush interval (all of them
        in one transaction), from memory at once."""
        if not ids:
            return
        if self._db is not None:
            if self._acked_since is None:
                self._acked_since = time.monotonic()
            self._acked.extend(ids)
            if len(self._acked) >= _ACKED_MAX:
                self._remove_acked()
            return
        gone = set(ids)
        self._mem = deque((i, m) for i, m in self._mem if i not in gone)

    def _remove_acked(self) -> None:
        """The acknowledged ids off the disk in one transaction; where that fails, to memory without them
        (memory's own ids are removed as they are acknowledged, in `ack`)."""
        ids, self._acked, self._acked_since = self._acked, [], None
        for attempt in (1, 2):
            if not ids or self._db is None:
                return
            try:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if attempt == 1 and damaged(err) and self._repair(err):
                    continue  # the ids survived the repair
                self._degrade(f"outbox delete failed ({err}); holding results in memory", ids)

    def depth(self) -> int:
        n = len(self._pending)
        for attempt in (1, 2):
            if self._db is None:
                break
            try:
                return n + int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) - len(self._acked)
            except sqlite3.Error as err:
                if attempt == 1 and damaged(err) and self._repair(err):
                    continue
                return n
        return n + len(self._mem)

    def oldest_age_s(self) -> float | None:
        if self._db is not None:
            try:
                row = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
                if row and row[0] is not None:
                    return round(time.time() - float(row[0]), 1)
            except sqlite3.Error:
                return None
        return None

    def stats(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "depth": self.depth(),
            "max": self.max_messages,
            "policy": self.policy,
            "oldest_age_s": self.oldest_age_s(),
            "drops": dict(self.drops),
            "last_error": self.last_error,
            "repairs": self.repairs,
            "last_repair": self.last_repair,
        }

    def close(self) -> None:
        self.commit()
        self._remove_acked()
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
