"""SQLite storage: one file, WAL, a unique (agent, epoch, seq)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sensor_edge.server.storage import (
    READING_COLUMNS, Batch, ReadingQuery, alert_state, rollup_tables, rollups)
from sensor_edge.server.storage.rollup_tables import SQLITE
from sensor_edge.server.storage.rollups import TIERS, CommitRollups, SeriesQuery

SCHEMA_VERSION = 3
# The same columns for each tier; WITHOUT ROWID: the rows are kept in (series, bucket) order.
_ROLLUP_TABLES = "".join(f"""
CREATE TABLE IF NOT EXISTS {table} (
    series INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    sum REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (series, bucket)
) WITHOUT ROWID;""" for table in rollups.TABLES.values())
SCHEMA = f"""
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
-- Version 2: alert states (server/storage/alert_state.py).
CREATE TABLE IF NOT EXISTS alert_state (
    rule TEXT NOT NULL,
    agent TEXT NOT NULL,
    sensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    value REAL,
    notified INTEGER NOT NULL,
    PRIMARY KEY (rule, agent, sensor, metric)
);
-- Version 3: rollups (server/storage/rollups.py, rollup_tables.py).
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    agent TEXT NOT NULL,
    sensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    unit TEXT NOT NULL,
    UNIQUE (agent, sensor, metric)
);
{_ROLLUP_TABLES}
CREATE TABLE IF NOT EXISTS rollup_backfill (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    done INTEGER NOT NULL,
    agent TEXT,
    epoch TEXT,
    seq INTEGER
);
-- Readings stored before version 3 are the backfill's; a new database has none.
INSERT OR IGNORE INTO rollup_backfill (id, done) SELECT 1, NOT EXISTS (SELECT 1 FROM readings);
"""

_INSERT = (
    "INSERT OR IGNORE INTO readings (agent, epoch, seq, sensor, metric, value, unit, ts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteStorage:
    def __init__(self, path: str, maintain_rollups: bool = True):
        """``maintain_rollups=False`` is for benchmarks only: commits then leave the
        rollups behind the readings (bench/bench_history.py compares the two)."""
        self.path = path
        self.maintain_rollups = maintain_rollups
        self._series_ids = rollup_tables.SeriesIds(SQLITE)
        self._backfilled = False
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        db = self._connection()
        # One transaction: the backfill's starting point is decided with the tables made.
        try:
            db.executescript(f"BEGIN IMMEDIATE; {SCHEMA}; "
                             f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

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

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection: committed, or rolled back
        on any error, with the series ids it found kept or forgotten alike."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._series_ids.rolled_back()
            raise
        self._series_ids.committed()

    def store(self, batches: list[Batch], now: float) -> list[int]:
        added: list[int] = []
        per_agent: dict[str, int] = {}
        commit_rollups = CommitRollups() if self.maintain_rollups else None
        with self._writing() as db:
            if commit_rollups is not None:
                backfill = self._backfill_state(db)
                # Each new row takes the next rowid: this commit's rows are the ones past it.
                last_rowid = db.execute("SELECT max(rowid) FROM readings").fetchone()[0] or 0
            for batch in batches:
                before = db.total_changes
                agent, epoch = batch.agent, batch.epoch
                db.executemany(_INSERT, [(agent, epoch, *row) for row in batch.rows])
                count = db.total_changes - before
                added.append(count)
                per_agent[agent] = per_agent.get(agent, 0) + count
                if commit_rollups is not None and count:
                    new = batch.rows if count == len(batch.rows) else self._inserted(
                        db, last_rowid, count)
                    last_rowid += count
                    commit_rollups.add(agent, backfill.rolled_up_by_commit(agent, epoch, new))
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
            if commit_rollups:
                rollup_tables.upsert(db, SQLITE, self._series_ids, commit_rollups)
        return added

    def _backfill_state(self, db: sqlite3.Connection) -> rollup_tables.Backfill:
        if self._backfilled:
            return rollup_tables.DONE
        state = rollup_tables.backfill_state(db, SQLITE)
        self._backfilled = state.done
        return state

    @staticmethod
    def _inserted(db: sqlite3.Connection, after_rowid: int, count: int) -> list[tuple]:
        """The rows a batch with duplicates inserted: the `count` rowids after `after_rowid`."""
        rows = db.execute("SELECT seq, sensor, metric, value, unit, ts FROM readings "
                          "WHERE rowid > ? AND rowid <= ?", (after_rowid, after_rowid + count)
                          ).fetchall()
        if len(rows) != count:  # never: SQLite gives a new row the highest rowid plus one
            raise RuntimeError(f"rollups: found {len(rows)} of the {count} rows just inserted")
        return rows

    def backfill_rollups(self, limit: int = rollup_tables.BACKFILL_STEP) -> tuple[int, bool]:
        with self._writing() as db:
            return rollup_tables.backfill_step(db, SQLITE, self._series_ids, limit)

    def rollups_backfilled(self) -> bool:
        return rollup_tables.backfill_state(self._connection(), SQLITE).done

    def delete_rollups_older_than(self, width: int, cutoff: float, limit: int) -> int:
        with self._writing() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM series ORDER BY id")]
            return rollup_tables.delete_older(db, SQLITE, width, cutoff, limit, ids)

    def series(self, query: SeriesQuery) -> dict[str, Any]:
        plan = rollups.plan(query)
        rows = rollup_tables.series_points(self._connection(), SQLITE, query, plan)
        return {"step": plan.step, "series": rollups.group_points(rows)}

    def rollup_rows(self, query: ReadingQuery, tier: str) -> list[dict[str, Any]]:
        rows = rollup_tables.newest_rows(self._connection(), SQLITE, query, TIERS[tier])
        return [dict(zip(rollups.ROLLUP_COLUMNS, row)) for row in rows]

    def iter_rollups(self, query: ReadingQuery, tier: str, chunk: int = 5000) -> Iterator[tuple]:
        return rollup_tables.all_rows(self._connection(), SQLITE, query, TIERS[tier], chunk)

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
        with self._writing() as db:
            return db.execute(
                "DELETE FROM readings WHERE rowid IN "
                "(SELECT rowid FROM readings WHERE ts < ? LIMIT ?)", (cutoff, limit)).rowcount

    def agents(self) -> list[dict[str, Any]]:
        rows = self._connection().execute(
            "SELECT id, last_seen, readings FROM agents ORDER BY id"
        ).fetchall()
        return [{"id": r[0], "last_seen": r[1], "readings": r[2]} for r in rows]

    def alert_states(self) -> list[tuple]:
        return alert_state.load(self._connection())

    def alert_transition(self, key: tuple[str, str, str, str], old: str, new: str,
                         since: float, value: float | None, notified: bool) -> bool:
        with self._writing() as db:
            return alert_state.transition(db, "?", key, old, new, since, value, notified)

    def alert_notified(self, key: tuple[str, str, str, str], state: str, since: float) -> None:
        alert_state.mark_notified(self._connection(), "?", key, state, since)

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
