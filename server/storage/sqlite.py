"""SQLite storage: one file, WAL, a unique (agent, epoch, seq)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from sensor_edge.server.storage import READING_COLUMNS, Batch, ReadingQuery

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    agent TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (agent, epoch, seq)
);
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (ts);
CREATE INDEX IF NOT EXISTS readings_by_agent_time ON readings (agent, ts);
-- The highest seq per epoch outlives deleted readings, so an agent is never
-- told to resend what was stored and later expired.
CREATE TABLE IF NOT EXISTS epochs (
    agent TEXT NOT NULL,
    epoch TEXT NOT NULL,
    acked INTEGER NOT NULL,
    PRIMARY KEY (agent, epoch)
);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    last_seen REAL NOT NULL,
    readings INTEGER NOT NULL
);
"""

_INSERT = (
    "INSERT OR IGNORE INTO readings (agent, epoch, seq, sensor, metric, value, unit, ts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteStorage:
    def __init__(self, path: str):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        db = self._connection()
        with db:
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread: the writer's, and each API reader's."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            # An ack promises the batch is on disk: pay for the fsync, once per group commit.
            db.execute("PRAGMA synchronous = FULL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def store(self, batches: list[Batch], now: float) -> list[int]:
        db = self._connection()
        added: list[int] = []
        per_agent: dict[str, int] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                before = db.total_changes
                agent, epoch = batch.agent, batch.epoch
                db.executemany(_INSERT, [(agent, epoch, *row) for row in batch.rows])
                count = db.total_changes - before
                added.append(count)
                per_agent[agent] = per_agent.get(agent, 0) + count
                if batch.rows:
                    db.execute(
                        "INSERT INTO epochs (agent, epoch, acked) VALUES (?, ?, ?) "
                        "ON CONFLICT (agent, epoch) DO UPDATE SET acked = max(acked, excluded.acked)",
                        (agent, epoch, batch.rows[-1][0]),
                    )
            for agent, count in per_agent.items():
                db.execute(
                    "INSERT INTO agents (id, last_seen, readings) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, "
                    "readings = readings + excluded.readings",
                    (agent, now, count),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

    def acked(self, agent: str, epoch: str) -> int:
        row = self._connection().execute(
            "SELECT acked FROM epochs WHERE agent = ? AND epoch = ?", (agent, epoch)
        ).fetchone()
        return row[0] if row else 0

    def readings(self, query: ReadingQuery) -> list[dict[str, Any]]:
        where, args = _filters(query)
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        # The newest `limit`, handed back oldest first.
        sql += " ORDER BY ts DESC, seq DESC LIMIT ?"
        rows = self._connection().execute(sql, (*args, query.limit)).fetchall()
        return [dict(zip(READING_COLUMNS, row)) for row in reversed(rows)]

    def iter_readings(self, query: ReadingQuery, chunk: int = 5000) -> Iterator[tuple]:
        where, args = _filters(query)
        db = self._connection()
        after: tuple | None = None
        while True:
            clauses, values = list(where), list(args)
            if after is not None:
                clauses.append("(ts, agent, epoch, seq) > (?, ?, ?, ?)")
                values.extend(after)
            sql = _SELECT
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY ts, agent, epoch, seq LIMIT ?"
            rows = db.execute(sql, (*values, chunk)).fetchall()
            yield from rows
            if len(rows) < chunk:
                return
            last = rows[-1]
            after = (last[7], last[0], last[1], last[2])

    def delete_older_than(self, cutoff: float, limit: int) -> int:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted = db.execute(
                "DELETE FROM readings WHERE rowid IN "
                "(SELECT rowid FROM readings WHERE ts < ? LIMIT ?)", (cutoff, limit)).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return deleted

    def agents(self) -> list[dict[str, Any]]:
        rows = self._connection().execute(
            "SELECT id, last_seen, readings FROM agents ORDER BY id"
        ).fetchall()
        return [{"id": r[0], "last_seen": r[1], "readings": r[2]} for r in rows]

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            try:
                db.close()
            except sqlite3.Error:
                pass


_SELECT = f"SELECT {', '.join(READING_COLUMNS)} FROM readings"


def _filters(query: ReadingQuery, mark: str = "?") -> tuple[list[str], list[Any]]:
    """The WHERE clauses and their arguments for a query's filters (``mark``: the
    driver's placeholder, ``?`` here, ``%s`` for psycopg)."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("agent", query.agent), ("sensor", query.sensor),
                          ("metric", query.metric)):
        if value is not None:
            where.append(f"{column} = {mark}")
            args.append(value)
    if query.since is not None:
        where.append(f"ts >= {mark}")
        args.append(query.since)
    if query.until is not None:
        where.append(f"ts <= {mark}")
        args.append(query.until)
    return where, args
