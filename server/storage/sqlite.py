"""SQLite storage: one file, WAL, a unique (agent, epoch, seq)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import chain
from typing import Any

from sensor_edge.contract.protocol import Reading
from sensor_edge.server.storage import (
    READING_COLUMNS,
    Batch,
    ReadingQuery,
    alert_state,
    differing,
    ha_entity_ids,
    rollup_tables,
    rollups,
)
from sensor_edge.server.storage.rollup_tables import SQLITE
from sensor_edge.server.storage.rollups import TIERS, CommitRollups, SeriesQuery

# 2: alert_state. 3: ha_entity_ids. 4: readings.received (retention keys on it
# too), added to an older file on open. 5: rollups.
SCHEMA_VERSION = 5
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
    -- version 4: when the collector stored it (its own clock); NULL in older rows
    received REAL,
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
-- Version 3: Home Assistant ids (server/storage/ha_entity_ids.py).
CREATE TABLE IF NOT EXISTS ha_entity_ids (
    agent TEXT NOT NULL,
    sensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    object_id TEXT NOT NULL,
    unique_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (agent, sensor, metric)
);
-- Version 5: rollups (server/storage/rollups.py, rollup_tables.py).
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
-- Readings stored before version 5 are the backfill's; a new database has none.
INSERT OR IGNORE INTO rollup_backfill (id, done) SELECT 1, NOT EXISTS (SELECT 1 FROM readings);
"""

# Rows per INSERT statement at most. One statement of many rows, not executemany()
# of one row each: sqlite3 releases and retakes the GIL around every statement's
# step, and the event loop waits for it each time (a quarter of the writer's time
# at one row a step). Powers of two below it: 8 statement shapes, all kept in
# sqlite3's statement cache. 128 rows are 771 parameters, under the 999 that
# SQLite before 3.32 allows.
_ROWS_PER_INSERT = 128


def _insert_sql(rows: int) -> str:
    """INSERT OR IGNORE of ``rows`` readings; ?1, ?2, ?3 (agent, epoch, received) are
    shared by every row, then each row's six fields in protocol.Reading order."""
    values = ",".join(f"(?1,?2,?{4 + 6 * i},?{5 + 6 * i},?{6 + 6 * i},?{7 + 6 * i},"
                      f"?{8 + 6 * i},?{9 + 6 * i},?3)" for i in range(rows))
    return ("INSERT OR IGNORE INTO readings "
            f"(agent, epoch, seq, sensor, metric, value, unit, ts, received) VALUES {values}")


_INSERTS = {1 << n: _insert_sql(1 << n) for n in range(_ROWS_PER_INSERT.bit_length())}


def _insert(db: sqlite3.Connection, agent: str, epoch: str, rows: list[Reading],
            now: float) -> None:
    """One batch's rows, in a few multi-row statements (a batch of 50: 32 + 16 + 2)."""
    done, total = 0, len(rows)
    while done < total:
        left = total - done
        size = _ROWS_PER_INSERT if left >= _ROWS_PER_INSERT else 1 << (left.bit_length() - 1)
        # The parameters built in C: no Python step per row.
        db.execute(_INSERTS[size], (agent, epoch, now, *chain.from_iterable(
            rows[done:done + size])))
        done += size


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
        # The script's BEGIN stays open for the column check after it.
        try:
            db.executescript(f"BEGIN IMMEDIATE; {SCHEMA}")
            columns = [row[1] for row in db.execute("PRAGMA table_info(readings)")]
            if "received" not in columns:  # a file from before version 4
                db.execute("ALTER TABLE readings ADD COLUMN received REAL")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
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
            _roll_back(db)
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
                _insert(db, agent, epoch, batch.rows, now)
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

    def differing_duplicates(self, batch: Batch) -> list[tuple[Reading, Reading]]:
        stored = self._connection().execute(
            _STORED_ROWS, (batch.agent, batch.epoch, batch.rows[0][0], batch.rows[-1][0])
        ).fetchall()
        return differing(batch.rows, stored)

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

    def newest_window(self, query: ReadingQuery) -> tuple[float, int] | None:
        return _newest_window(self._connection().execute, query)

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
                "DELETE FROM readings WHERE rowid IN (SELECT rowid FROM readings "
                f"WHERE {EXPIRED} LIMIT ?)", (cutoff, cutoff, limit)).rowcount

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

    def ha_entity_ids(self) -> list[tuple]:
        return ha_entity_ids.load(self._connection())

    def claim_ha_entity_ids(self, proposals: list[tuple]) -> list[tuple]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            winners = ha_entity_ids.claim(db, "?", proposals)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return winners

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            try:
                db.close()
            except sqlite3.Error:
                pass


def _roll_back(db: sqlite3.Connection) -> None:
    """Roll back a failed transaction, if SQLite has not already.

    On SQLITE_FULL, SQLITE_IOERR and a few others SQLite rolls back by itself;
    a ROLLBACK then would raise "no transaction is active" and hide the real error.
    """
    if db.in_transaction:
        db.execute("ROLLBACK")


_SELECT = f"SELECT {', '.join(READING_COLUMNS)} FROM readings"
# What retention deletes: read and received before the cutoff. The ts index
# finds them; a reading stamped near 1970 by a Pi before time sync waits until
# it was received long enough ago. Rows from before `received` go by ts alone.
# (PostgreSQL's driver writes each ? as %s.)
EXPIRED = "ts < ? AND (received < ? OR received IS NULL)"
# The rows of one agent epoch's seq range, shaped like a batch's (protocol.Reading).
_STORED_ROWS = ("SELECT seq, sensor, metric, value, unit, ts FROM readings "
                "WHERE agent = ? AND epoch = ? AND seq BETWEEN ? AND ?")


def _newest_window(execute: Callable[..., Any], query: ReadingQuery,
                   mark: str = "?") -> tuple[float, int] | None:
    """:meth:`Storage.newest_window` with a driver's ``execute`` (sqlite3's or psycopg's)."""
    where, args = _filters(query, mark)
    # ORDER BY ts alone walks the ts index; the full key would sort every match.
    found = execute(f"SELECT ts FROM readings{_where(where)} ORDER BY ts DESC "
                    f"LIMIT 1 OFFSET {mark}", (*args, query.limit - 1)).fetchone()
    if found is None:
        return None
    where, args = _filters(replace(query, since=found[0]), mark)
    (matching,) = execute(f"SELECT count(*) FROM readings{_where(where)}", args).fetchone()
    return found[0], matching


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


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
