"""The agent's durable store-and-forward buffer (SQLite, WAL).

A reading gets its (epoch, seq) when it is committed here, and leaves only
when the collector has acknowledged it (or when the buffer is full and it is
the oldest). The epoch is created once with the buffer file and names it for
good; seqs are contiguous within the buffer. Every method blocks: the agent
calls them on one dedicated thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid

from ..server.protocol import Reading
from .sensors import Sample

log = logging.getLogger("sensor_edge.agent.buffer")

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

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def append(self, samples: list[Sample]) -> int:
        """Commit samples as the next seqs; drop the oldest past the bound. Returns last seq."""
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
            db.execute("ROLLBACK")
            raise
        self.last_seq = last
        if over > 0:
            self.dropped += over
            log.warning("buffer full (%d readings): dropped the %d oldest, %d dropped in all",
                        self.max_readings, over, self.dropped)
        return last

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
        self._db.execute("DELETE FROM readings WHERE seq <= ?", (seq,))

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
                db.execute("ROLLBACK")
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
