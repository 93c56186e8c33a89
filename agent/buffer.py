"""The agent's durable store-and-forward buffer (SQLite, WAL).

A reading gets its (epoch, seq) when it is committed here, and leaves only
when the collector has acknowledged it (or when the buffer is full and it is
the oldest). The epoch is created once with the buffer file and names it for
good; seqs are contiguous within the buffer. Every method blocks: the agent
calls them on one dedicated thread.

A full disk is the same policy as a full buffer: the oldest readings make
room and are counted as dropped. SQLite needs a little space even to delete
(the WAL, a checkpoint), so the buffer keeps a small reserve file beside it.
When the disk fills it gives the reserve up and stops the database file
growing, so new readings reuse the pages of dropped ones while the WAL lives
in the reserve's room; once the disk has room again it takes the reserve
back and lets the file grow.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
import uuid

from sensor_edge.contract.protocol import Reading
from sensor_edge.agent.sensors import Sample

log = logging.getLogger("sensor_edge.agent.buffer")

# Room the buffer keeps for itself on its file system (see the module docstring):
# more than the WAL grows between checkpoints (WAL_PAGES pages of 4 KiB).
RESERVE_BYTES = 2 * 1024 * 1024
WAL_PAGES = 256
# On a full disk: drop at least this many of the oldest, doubling on each retry.
FULL_DROP_FIRST = 100
FULL_RETRIES = 10
# How often to try to take the reserve back after the disk filled up.
RESERVE_RETRY_SECONDS = 10.0
# While the disk stays full, one warning about dropped readings per this many seconds.
DROP_LOG_EVERY = 60.0


class BufferFull(Exception):
    """The disk is full and dropping the oldest readings did not make room."""


def _disk_full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    sensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    ts REAL NOT NULL
);
"""


class Buffer:
    def __init__(self, path: str, max_readings: int):
        self.path = path
        self.max_readings = max_readings
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=10)
        self._db.execute("PRAGMA journal_mode = WAL")
        # Survives a killed process; a power cut may roll back the last commits,
        # which reconcile() handles when the collector says what it holds.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
        self._db.executescript(SCHEMA)
        self._db.execute("BEGIN IMMEDIATE")
        epoch = self._meta("epoch")
        if epoch is None:
            epoch = uuid.uuid4().hex
            self._set_meta("epoch", epoch)
            self._set_meta("last_seq", "0")
            self._set_meta("dropped", "0")
            log.info("new buffer %s, epoch %s", path, epoch)
        self._db.execute("COMMIT")
        self.epoch = epoch
        self.last_seq = int(self._meta("last_seq"))
        self.dropped = int(self._meta("dropped"))
        # Seqs from here on were assigned in this run, before any collector
        # confirmed them; see reconcile().
        self._unconfirmed_from: int | None = self.last_seq + 1
        self.reserve_path = path + ".reserve"
        self._reserve_retry_at = 0.0
        self._unlimited_pages = self._db.execute("PRAGMA max_page_count").fetchone()[0]
        self._capped = False  # the file may not grow: the disk filled up
        self._drop_logged_at = -DROP_LOG_EVERY
        self._take_reserve()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def append(self, samples: list[Sample]) -> int:
        """Commit samples as the next seqs; drop the oldest past the bound. Returns last seq.

        On a full disk the oldest readings are dropped (and counted) until the
        samples fit; :class:`BufferFull` if there is nothing left to drop.
        """
        for attempt in range(FULL_RETRIES):
            try:
                last = self._append(samples)
            except sqlite3.OperationalError as e:
                if not _disk_full(e):
                    raise
                if not self._make_room(FULL_DROP_FIRST << attempt):
                    break
            else:
                if time.monotonic() >= self._reserve_retry_at:
                    self._take_reserve()
                return last
        raise BufferFull(f"the disk holding {self.path} is full and dropping the oldest "
                         "readings made no room")

    def _append(self, samples: list[Sample]) -> int:
        if not samples:
            return self.last_seq
        first = self.last_seq + 1
        rows = [(first + i, *sample) for i, sample in enumerate(samples)]
        last = first + len(rows) - 1
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO readings (seq, sensor, metric, value, unit, ts) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._set_meta("last_seq", str(last))
            over = self._depth(last) - self.max_readings
            if over > 0:
                oldest = self._oldest_seq()
                db.execute("DELETE FROM readings WHERE seq < ?", (oldest + over,))
                self._set_meta("dropped", str(self.dropped + over))
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.last_seq = last
        if over > 0:
            self.dropped += over
            log.warning("buffer full (%d readings): dropped the %d oldest, %d dropped in all",
                        self.max_readings, over, self.dropped)
        return last

    def _rollback(self) -> None:
        # SQLite has already rolled back by itself after some errors (a full disk).
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _make_room(self, count: int) -> bool:
        """The disk is full: drop up to ``count`` of the oldest readings. False: none left."""
        released = self._release_reserve()
        if not self._capped:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            self._db.execute(f"PRAGMA max_page_count = {pages}")
            self._capped = True
            log.warning("disk full: the buffer stays at %d pages; the oldest readings make "
                        "room for new ones while the disk stays full", pages)
        self._checkpoint()
        oldest = self._oldest_seq()
        if oldest is None:
            return released  # nothing to drop; the freed reserve may still be enough
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute("DELETE FROM readings WHERE seq < ?", (oldest + count,))
            dropped = cursor.rowcount
            self._set_meta("dropped", str(self.dropped + dropped))
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            self._rollback()
            if not _disk_full(e):
                raise
            log.error("disk full: cannot even drop readings from %s", self.path)
            return released
        self.dropped += dropped
        self._checkpoint()  # the deleted pages become free pages for new readings
        now = time.monotonic()
        quiet = now - self._drop_logged_at < DROP_LOG_EVERY  # a full disk drops again and again
        if not quiet:
            self._drop_logged_at = now
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "disk full: dropped the %d oldest readings to make room, %d dropped in all",
                dropped, self.dropped)
        return True

    def _checkpoint(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.OperationalError:
            pass  # not enough room even for that; dropping may still work

    def _take_reserve(self) -> None:
        """Set aside RESERVE_BYTES on the buffer's file system, if not done already."""
        self._reserve_retry_at = time.monotonic() + RESERVE_RETRY_SECONDS
        if os.path.exists(self.reserve_path):
            return
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as e:
            if os.path.exists(self.reserve_path):
                os.unlink(self.reserve_path)
            if e.errno != errno.ENOSPC:
                log.warning("cannot set aside %d bytes next to the buffer: %s", RESERVE_BYTES,
                            e.strerror or e)
            return
        self._reserve_retry_at = float("inf")  # held: no need to look again
        log.debug("set aside %s (%d bytes) for a full disk", self.reserve_path, RESERVE_BYTES)
        if self._capped:
            self._db.execute(f"PRAGMA max_page_count = {self._unlimited_pages}")
            self._capped = False
            log.warning("the disk has room again: the buffer may grow (%d dropped in all)",
                        self.dropped)

    def _release_reserve(self) -> bool:
        try:
            os.unlink(self.reserve_path)
        except FileNotFoundError:
            return False
        self._reserve_retry_at = time.monotonic() + RESERVE_RETRY_SECONDS
        log.warning("disk full: released the %d bytes set aside next to the buffer",
                    RESERVE_BYTES)
        return True

    def _oldest_seq(self) -> int | None:
        return self._db.execute("SELECT min(seq) FROM readings").fetchone()[0]

    def _depth(self, last: int) -> int:
        oldest = self._oldest_seq()
        return 0 if oldest is None else last - oldest + 1

    @property
    def depth(self) -> int:
        """Readings waiting for an ack."""
        return self._depth(self.last_seq)

    def oldest_age(self) -> float | None:
        """Seconds since the oldest waiting reading was read."""
        row = self._db.execute("SELECT ts FROM readings ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else max(0.0, time.time() - row[0])

    def after(self, seq: int, limit: int) -> list[Reading]:
        """Up to ``limit`` readings with seqs above ``seq``, in order."""
        return self._db.execute(
            "SELECT seq, sensor, metric, value, unit, ts FROM readings WHERE seq > ? "
            "ORDER BY seq LIMIT ?", (seq, limit)).fetchall()

    def acknowledged(self, seq: int) -> None:
        """The collector holds everything up to ``seq``: forget it."""
        try:
            self._db.execute("DELETE FROM readings WHERE seq <= ?", (seq,))
        except sqlite3.OperationalError as e:
            if not _disk_full(e):
                raise
            # Harmless: they are forgotten with the next ack that fits, or on reconnect.
            log.debug("disk full: acknowledged readings stay in the buffer for now")

    def reconcile(self, acked: int) -> None:
        """Square the buffer with what the collector holds (its `welcome.acked`).

        The collector can only hold seqs this buffer committed, so `acked` at
        or past our next seq means a power cut rolled back commits the collector
        had already stored. Seqs handed out since then would collide with
        different data there and be dropped as duplicates: move them past
        `acked`, keeping their order, before anything is sent.
        """
        start = self._unconfirmed_from
        if start is None:
            # Confirmed once already this run, so this is another store (a collector whose
            # database was replaced?): resend what we hold rather than risk losing it.
            start = self._oldest_seq() or self.last_seq + 1
        if acked > self.last_seq:
            shift = acked - start + 1
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                # Two steps, so no seq collides with another mid-update.
                db.execute("UPDATE readings SET seq = -(seq + ?) WHERE seq >= ?", (shift, start))
                db.execute("UPDATE readings SET seq = -seq WHERE seq < 0")
                self._set_meta("last_seq", str(self.last_seq + shift))
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            moved = self.last_seq - start + 1
            self.last_seq += shift
            log.warning("the collector already holds seqs up to %d but this buffer's next was %d "
                        "(commits lost in a power cut?): moved %d new readings past it",
                        acked, start, moved)
        self._unconfirmed_from = None
        self.acknowledged(acked)

    def close(self) -> None:
        self._db.close()
