"""PostgreSQL storage: one database shared by any number of stateless collectors.

The same logical schema as SQLite (readings, epochs, agents), versioned by a
``schema_migrations`` table and migrated at start under an advisory lock, so
collectors starting together do not race. Exactly-once rests on the primary
key (agent, epoch, seq) and ``ON CONFLICT DO NOTHING``: two collectors handed
the same batch both ack it and store it once.

Driver: psycopg 3, its synchronous API and a small ``psycopg_pool``. The
Storage protocol is synchronous and already runs on the collector's storage
threads (one writer, a few readers), so an asyncio driver (asyncpg) would
need a second event loop or a rewrite of the batcher for no gain; psycopg
speaks COPY in binary with C speedups (``psycopg[binary]``), which is what a
group commit of tens of thousands of rows wants.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from sensor_edge.runtime.service import StartupError
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
    safe_url,
)
from sensor_edge.server.storage.rollup_tables import POSTGRES
from sensor_edge.server.storage.rollups import TIERS, CommitRollups, SeriesQuery
from sensor_edge.server.storage.sqlite import _STORED_ROWS, EXPIRED, _filters, _newest_window

log = logging.getLogger("sensor_edge.collector.storage")

PIP_HINT = "pip install 'sensor-edge[postgres]'"
# The collector's writer thread and its four readers each hold one at most.
POOL_SIZE = 5
CONNECT_TIMEOUT = 10
# How long a storage call waits for a pooled connection; during a database
# outage a commit fails after this (and its agents retry), not after 30 s.
POOL_TIMEOUT = 5
# A commit that deadlocks with another collector's (a lock taken in another
# order) is rolled back by the server; it is safe to run again.
COMMIT_ATTEMPTS = 3
# pg_advisory_xact_lock key held while migrating: "sensor-edge" in ASCII, cut to 63 bits.
MIGRATION_LOCK = 0x73656E736F722D65

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""

# (version, description, statements). Append; never edit one that has shipped.
# Text sorts bytewise ("C"), as in SQLite, so export order and keyset paging agree.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "readings, epochs and agents", (
        """CREATE TABLE readings (
            agent TEXT COLLATE "C" NOT NULL,
            epoch TEXT COLLATE "C" NOT NULL,
            seq BIGINT NOT NULL,
            sensor TEXT COLLATE "C" NOT NULL,
            metric TEXT COLLATE "C" NOT NULL,
            value DOUBLE PRECISION NOT NULL,
            unit TEXT COLLATE "C" NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (agent, epoch, seq)
        )""",
        "CREATE INDEX readings_by_time ON readings (ts)",
        # Serves /api/readings?agent=...&since=... newest first.
        "CREATE INDEX readings_by_agent_time ON readings (agent, ts)",
        # The highest seq per epoch outlives deleted readings, so an agent is
        # never told to resend what was stored and later expired.
        """CREATE TABLE epochs (
            agent TEXT COLLATE "C" NOT NULL,
            epoch TEXT COLLATE "C" NOT NULL,
            acked BIGINT NOT NULL,
            PRIMARY KEY (agent, epoch)
        )""",
        """CREATE TABLE agents (
            id TEXT COLLATE "C" PRIMARY KEY,
            last_seen DOUBLE PRECISION NOT NULL,
            readings BIGINT NOT NULL
        )""",
    )),
    (2, "alert states (server/storage/alert_state.py)", (
        """CREATE TABLE alert_state (
            rule TEXT COLLATE "C" NOT NULL,
            agent TEXT COLLATE "C" NOT NULL,
            sensor TEXT COLLATE "C" NOT NULL,
            metric TEXT COLLATE "C" NOT NULL,
            state TEXT NOT NULL,
            since DOUBLE PRECISION NOT NULL,
            value DOUBLE PRECISION,
            notified INTEGER NOT NULL,
            PRIMARY KEY (rule, agent, sensor, metric)
        )""",
    )),
    (3, "Home Assistant ids (server/storage/ha_entity_ids.py)", (
        """CREATE TABLE ha_entity_ids (
            agent TEXT COLLATE "C" NOT NULL,
            sensor TEXT COLLATE "C" NOT NULL,
            metric TEXT COLLATE "C" NOT NULL,
            object_id TEXT COLLATE "C" NOT NULL,
            unique_id TEXT COLLATE "C" NOT NULL UNIQUE,
            PRIMARY KEY (agent, sensor, metric)
        )""",
    )),
    # When the collector stored each reading (its own clock): retention keys on it
    # too. NULL in rows stored before, which expire by ts alone.
    (4, "readings.received", (
        "ALTER TABLE readings ADD COLUMN received DOUBLE PRECISION",
    )),
    (5, "rollups (server/storage/rollups.py, rollup_tables.py)", (
        """CREATE TABLE series (
            id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            agent TEXT COLLATE "C" NOT NULL,
            sensor TEXT COLLATE "C" NOT NULL,
            metric TEXT COLLATE "C" NOT NULL,
            unit TEXT NOT NULL,
            UNIQUE (agent, sensor, metric)
        )""",
        *(f"""CREATE TABLE {table} (
            series INTEGER NOT NULL,
            bucket BIGINT NOT NULL,
            min DOUBLE PRECISION NOT NULL,
            max DOUBLE PRECISION NOT NULL,
            sum DOUBLE PRECISION NOT NULL,
            count BIGINT NOT NULL,
            PRIMARY KEY (series, bucket)
        )""" for table in ("rollup_1m", "rollup_1h")),
        """CREATE TABLE rollup_backfill (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            done INTEGER NOT NULL,
            agent TEXT COLLATE "C",
            epoch TEXT COLLATE "C",
            seq BIGINT
        )""",
        # Readings stored before version 5 are the backfill's; a new database has none.
        "INSERT INTO rollup_backfill (id, done) "
        "SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM readings) THEN 0 ELSE 1 END",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Each connection's staging table for a group commit, emptied by every commit.
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS incoming (
    batch INTEGER NOT NULL,
    agent TEXT COLLATE "C" NOT NULL,
    epoch TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    sensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    unit TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL
) ON COMMIT DELETE ROWS"""
_COPY_STAGING = ("COPY incoming (batch, agent, epoch, seq, sensor, metric, value, unit, ts) "
                 "FROM STDIN (FORMAT BINARY)")
_COPY_STAGING_TYPES = ("int4", "text", "text", "int8", "text", "text", "float8", "text",
                       "float8")
_COPY_DIRECT = (f"COPY readings ({', '.join(READING_COLUMNS)}, received) "
                "FROM STDIN (FORMAT BINARY)")
_COPY_DIRECT_TYPES = (*_COPY_STAGING_TYPES[1:], "float8")
# RETURNING: the rows really inserted, for the rollups.
_INSERT = (f"INSERT INTO readings ({', '.join(READING_COLUMNS)}, received) "
           f"SELECT {', '.join(READING_COLUMNS)}, %s FROM incoming ON CONFLICT DO NOTHING "
           f"RETURNING {', '.join(READING_COLUMNS)}")
# Only when some rows were duplicates: which batch each new row came from. A
# row this transaction inserted carries its xid; a key sent twice in one group
# counts for the first batch that sent it.
_ADDED_PER_BATCH = """
SELECT batch, count(*) FROM (
    SELECT DISTINCT ON (i.agent, i.epoch, i.seq) i.batch
    FROM incoming i JOIN readings r USING (agent, epoch, seq)
    WHERE r.xmin = pg_current_xact_id()::xid
    ORDER BY i.agent, i.epoch, i.seq, i.batch
) AS fresh GROUP BY batch"""
_EPOCHS = """
INSERT INTO epochs (agent, epoch, acked)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])
ON CONFLICT (agent, epoch) DO UPDATE SET acked = GREATEST(epochs.acked, excluded.acked)"""
_AGENTS = """
INSERT INTO agents (id, last_seen, readings)
SELECT a.id, %s, a.added FROM unnest(%s::text[], %s::bigint[]) AS a(id, added)
ON CONFLICT (id) DO UPDATE SET last_seen = GREATEST(agents.last_seen, excluded.last_seen),
                               readings = agents.readings + excluded.readings"""
_SELECT = f"SELECT {', '.join(READING_COLUMNS)} FROM readings"
_SYNCHRONOUS_COMMIT = ("SELECT set_config('synchronous_commit', 'on', false) "
                       "WHERE current_setting('synchronous_commit') = 'off'")


def _driver():
    """psycopg and psycopg_pool, or a one-line error that says how to install them."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise StartupError(f"PostgreSQL storage needs psycopg 3: {PIP_HINT}") from None
    return psycopg, psycopg_pool


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def migrate(db: Any) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the version found before."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.execute(MIGRATIONS_TABLE)
        found = db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StartupError(
                f"the database's schema is version {found}, newer than this collector knows "
                f"({SCHEMA_VERSION}): upgrade sensor-edge")
        for version, description, statements in MIGRATIONS:
            if version <= found:
                continue
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                       (version, description))
            log.info("database schema migrated to version %d: %s", version, description)
    return found


def _write(copy: Any, batches: list[Batch], order: list[int], with_index: bool,
           received: float | None = None) -> None:
    """Every row of the group into a COPY, in `order`; each led by its batch's index
    in the group when ``with_index``, and followed by ``received`` when given."""
    write = copy.write_row
    tail = () if received is None else (received,)
    for i in order:
        batch = batches[i]
        lead = (i, batch.agent, batch.epoch) if with_index else (batch.agent, batch.epoch)
        for row in batch.rows:
            write((*lead, *row, *tail))


class PostgresStorage:
    def __init__(self, url: str, pool_size: int = POOL_SIZE, maintain_rollups: bool = True):
        """``maintain_rollups=False`` is for benchmarks only: commits then leave the
        rollups behind the readings (bench/bench_history.py compares the two)."""
        psycopg, psycopg_pool = _driver()
        self.url = url
        self.maintain_rollups = maintain_rollups
        self._series_ids = rollup_tables.SeriesIds(POSTGRES)
        self._backfilled = False
        self._errors = psycopg.errors
        try:
            with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as db:
                migrate(db)
        except psycopg.Error as e:
            raise StartupError(f"PostgreSQL at {safe_url(url)}: {_one_line(e)}") from None

        def prepare(db: Any) -> None:
            db.execute(_STAGING)
            # An ack promises the batch is on disk; the server's (or the database's)
            # `synchronous_commit = off` would ack before the WAL is flushed.
            # Stronger choices (remote_apply) are left alone.
            db.execute(_SYNCHRONOUS_COMMIT)

        # check: a connection the server dropped while it sat in the pool (a restart,
        # a failover, an idle timeout) is replaced before use, not failed on.
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, configure=prepare, timeout=POOL_TIMEOUT,
            check=psycopg_pool.ConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            name="sensor-edge")

    def store(self, batches: list[Batch], now: float) -> list[int]:
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                with self._pool.connection() as db:
                    try:
                        with db.transaction():
                            added = self._store(db, batches, now)
                    except BaseException:
                        self._series_ids.rolled_back()
                        raise
                    self._series_ids.committed()
                    return added
            except (self._errors.DeadlockDetected, self._errors.SerializationFailure) as e:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                log.warning("commit clashed with another collector's (%s); retrying",
                            _one_line(e))
        raise AssertionError("unreachable")  # pragma: no cover

    def _store(self, db: Any, batches: list[Batch], now: float) -> list[int]:
        # Rows go in sorted by key, as every collector's do, so two commits that
        # touch the same keys lock them in one order and cannot deadlock.
        order = sorted((i for i, b in enumerate(batches) if b.rows),
                       key=lambda i: (batches[i].agent, batches[i].epoch, batches[i].rows[0][0]))
        commit_rollups = CommitRollups() if self.maintain_rollups else None
        backfill = rollup_tables.DONE
        if commit_rollups is not None and not self._backfilled:
            backfill = rollup_tables.backfill_state(db, POSTGRES, POSTGRES.lock_share)
            self._backfilled = backfill.done
        with db.cursor() as cur:
            try:
                # Nearly every group is all new: COPY straight into the table is
                # 1.6x the staging path. A duplicate aborts it (savepoint) and the
                # group takes the staging path, which skips what is stored.
                with db.transaction(), cur.copy(_COPY_DIRECT) as copy:
                    copy.set_types(_COPY_DIRECT_TYPES)
                    _write(copy, batches, order, with_index=False, received=now)
                added = [len(b.rows) for b in batches]
                if commit_rollups is not None:
                    for batch in batches:
                        commit_rollups.add(batch.agent, backfill.rolled_up_by_commit(
                            batch.agent, batch.epoch, batch.rows))
            except self._errors.UniqueViolation:
                added = self._store_staged(cur, batches, order, now, commit_rollups, backfill)
            acked: dict[tuple[str, str], int] = {}
            per_agent: dict[str, int] = {}
            for batch, count in zip(batches, added):
                per_agent[batch.agent] = per_agent.get(batch.agent, 0) + count
                if batch.rows:
                    key = (batch.agent, batch.epoch)
                    acked[key] = max(acked.get(key, 0), batch.rows[-1][0])
            keys = sorted(acked)
            cur.execute(_EPOCHS, ([a for a, _ in keys], [e for _, e in keys],
                                  [acked[k] for k in keys]))
            ids = sorted(per_agent)
            cur.execute(_AGENTS, (now, ids, [per_agent[a] for a in ids]))
        if commit_rollups:
            rollup_tables.upsert(db, POSTGRES, self._series_ids, commit_rollups)
        return added

    def _store_staged(self, cur: Any, batches: list[Batch], order: list[int],
                      now: float, commit_rollups: CommitRollups | None,
                      backfill: rollup_tables.Backfill) -> list[int]:
        """Stage the group, insert what is new, roll that up; how many rows each batch added."""
        with cur.copy(_COPY_STAGING) as copy:
            copy.set_types(_COPY_STAGING_TYPES)
            _write(copy, batches, order, with_index=True)
        cur.execute(_INSERT, (now,))
        inserted: dict[tuple[str, str], list[tuple]] = {}
        for agent, epoch, *row in cur.fetchall():
            inserted.setdefault((agent, epoch), []).append(row)
        if commit_rollups is not None:
            for (agent, epoch), rows in inserted.items():
                commit_rollups.add(agent, backfill.rolled_up_by_commit(agent, epoch, rows))
        added = [len(b.rows) for b in batches]
        if sum(len(rows) for rows in inserted.values()) != sum(added):
            added = [0] * len(batches)
            for i, count in cur.execute(_ADDED_PER_BATCH):
                added[i] = count
        return added

    def differing_duplicates(self, batch: Batch) -> list[tuple[Reading, Reading]]:
        with self._pool.connection() as db:
            stored = db.execute(_STORED_ROWS.replace("?", "%s"), (
                batch.agent, batch.epoch, batch.rows[0][0], batch.rows[-1][0])).fetchall()
        return differing(batch.rows, stored)

    def acked(self, agent: str, epoch: str) -> int:
        with self._pool.connection() as db:
            row = db.execute("SELECT acked FROM epochs WHERE agent = %s AND epoch = %s",
                             (agent, epoch)).fetchone()
        return row[0] if row else 0

    def newest_window(self, query: ReadingQuery) -> tuple[float, int] | None:
        with self._pool.connection() as db:
            return _newest_window(db.execute, query, "%s")

    def iter_readings(self, query: ReadingQuery, chunk: int = 5000) -> Iterator[tuple]:
        # A server-side cursor streams `chunk` rows a fetch from one snapshot;
        # PostgreSQL's MVCC lets writers go on meanwhile, so no keyset paging is needed.
        where, args = _filters(query, "%s")
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY ts, agent, epoch, seq"
        with self._pool.connection() as db, db.transaction(), db.cursor(name="export") as cur:
            cur.itersize = chunk
            cur.execute(sql, args)
            yield from cur

    def delete_older_than(self, cutoff: float, limit: int) -> int:
        with self._pool.connection() as db:
            return db.execute(
                "DELETE FROM readings WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM readings WHERE {EXPIRED.replace('?', '%s')} LIMIT %s))",
                (cutoff, cutoff, limit)).rowcount

    def backfill_rollups(self, limit: int = rollup_tables.BACKFILL_STEP) -> tuple[int, bool]:
        with self._pool.connection() as db:
            try:
                with db.transaction():
                    done = rollup_tables.backfill_step(db, POSTGRES, self._series_ids, limit)
            except BaseException:
                self._series_ids.rolled_back()
                raise
            self._series_ids.committed()
        return done

    def rollups_backfilled(self) -> bool:
        with self._pool.connection() as db:
            return rollup_tables.backfill_state(db, POSTGRES).done

    def delete_rollups_older_than(self, width: int, cutoff: float, limit: int) -> int:
        with self._pool.connection() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM series ORDER BY id")]
            with db.transaction():
                return rollup_tables.delete_older(db, POSTGRES, width, cutoff, limit, ids)

    def series(self, query: SeriesQuery) -> dict[str, Any]:
        plan = rollups.plan(query)
        with self._pool.connection() as db:
            rows = rollup_tables.series_points(db, POSTGRES, query, plan)
        return {"step": plan.step, "series": rollups.group_points(rows)}

    def rollup_rows(self, query: ReadingQuery, tier: str) -> list[dict[str, Any]]:
        with self._pool.connection() as db:
            rows = rollup_tables.newest_rows(db, POSTGRES, query, TIERS[tier])
        return [dict(zip(rollups.ROLLUP_COLUMNS, row)) for row in rows]

    def iter_rollups(self, query: ReadingQuery, tier: str, chunk: int = 5000) -> Iterator[tuple]:
        with self._pool.connection() as db:
            yield from rollup_tables.all_rows(db, POSTGRES, query, TIERS[tier], chunk)

    def agents(self) -> list[dict[str, Any]]:
        with self._pool.connection() as db:
            rows = db.execute("SELECT id, last_seen, readings FROM agents ORDER BY id").fetchall()
        return [{"id": r[0], "last_seen": r[1], "readings": r[2]} for r in rows]

    def alert_states(self) -> list[tuple]:
        with self._pool.connection() as db:
            return alert_state.load(db)

    def alert_transition(self, key: tuple[str, str, str, str], old: str, new: str,
                         since: float, value: float | None, notified: bool) -> bool:
        # READ COMMITTED: a second collector's UPDATE waits for the first's row lock,
        # then finds the state changed and updates nothing.
        with self._pool.connection() as db, db.transaction():
            return alert_state.transition(db, "%s", key, old, new, since, value, notified)

    def alert_notified(self, key: tuple[str, str, str, str], state: str, since: float) -> None:
        with self._pool.connection() as db:
            alert_state.mark_notified(db, "%s", key, state, since)

    def ha_entity_ids(self) -> list[tuple]:
        with self._pool.connection() as db:
            return ha_entity_ids.load(db)

    def claim_ha_entity_ids(self, proposals: list[tuple]) -> list[tuple]:
        # Autocommit: each claim is final once made, so the read right after it sees
        # whichever collector won, and two collectors' claims never deadlock.
        with self._pool.connection() as db:
            return ha_entity_ids.claim(db, "%s", proposals)

    def close(self) -> None:
        self._pool.close()
