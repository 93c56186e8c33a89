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
from sensor_edge.server.storage import READING_COLUMNS, Batch, ReadingQuery, safe_url
from sensor_edge.server.storage.sqlite import _filters

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
_COPY_DIRECT = f"COPY readings ({', '.join(READING_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_COPY_DIRECT_TYPES = _COPY_STAGING_TYPES[1:]
_INSERT = (f"INSERT INTO readings ({', '.join(READING_COLUMNS)}) "
           f"SELECT {', '.join(READING_COLUMNS)} FROM incoming ON CONFLICT DO NOTHING")
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


def _write(copy: Any, batches: list[Batch], order: list[int], with_index: bool) -> None:
    """Every row of the group into a COPY, in `order`; each led by its batch's index
    in the group when ``with_index``."""
    write = copy.write_row
    for i in order:
        batch = batches[i]
        lead = (i, batch.agent, batch.epoch) if with_index else (batch.agent, batch.epoch)
        for row in batch.rows:
            write((*lead, *row))


class PostgresStorage:
    def __init__(self, url: str, pool_size: int = POOL_SIZE):
        psycopg, psycopg_pool = _driver()
        self.url = url
        self._errors = psycopg.errors
        try:
            with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as db:
                migrate(db)
        except psycopg.Error as e:
            raise StartupError(f"PostgreSQL at {safe_url(url)}: {_one_line(e)}") from None

        def prepare(db: Any) -> None:
            db.execute(_STAGING)

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
                with self._pool.connection() as db, db.transaction():
                    return self._store(db, batches, now)
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
        with db.cursor() as cur:
            try:
                # Nearly every group is all new: COPY straight into the table is
                # 1.6x the staging path. A duplicate aborts it (savepoint) and the
                # group takes the staging path, which skips what is stored.
                with db.transaction(), cur.copy(_COPY_DIRECT) as copy:
                    copy.set_types(_COPY_DIRECT_TYPES)
                    _write(copy, batches, order, with_index=False)
                added = [len(b.rows) for b in batches]
            except self._errors.UniqueViolation:
                added = self._store_staged(cur, batches, order)
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
        return added

    def _store_staged(self, cur: Any, batches: list[Batch], order: list[int]) -> list[int]:
        """Stage the group, insert what is new; how many rows each batch added."""
        with cur.copy(_COPY_STAGING) as copy:
            copy.set_types(_COPY_STAGING_TYPES)
            _write(copy, batches, order, with_index=True)
        cur.execute(_INSERT)
        added = [len(b.rows) for b in batches]
        if cur.rowcount != sum(added):
            added = [0] * len(batches)
            for i, count in cur.execute(_ADDED_PER_BATCH):
                added[i] = count
        return added

    def acked(self, agent: str, epoch: str) -> int:
        with self._pool.connection() as db:
            row = db.execute("SELECT acked FROM epochs WHERE agent = %s AND epoch = %s",
                             (agent, epoch)).fetchone()
        return row[0] if row else 0

    def readings(self, query: ReadingQuery) -> list[dict[str, Any]]:
        where, args = _filters(query, "%s")
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        # The newest `limit`, handed back oldest first.
        sql += " ORDER BY ts DESC, seq DESC LIMIT %s"
        with self._pool.connection() as db:
            rows = db.execute(sql, (*args, query.limit)).fetchall()
        return [dict(zip(READING_COLUMNS, row)) for row in reversed(rows)]

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
                "SELECT ctid FROM readings WHERE ts < %s LIMIT %s))", (cutoff, limit)).rowcount

    def agents(self) -> list[dict[str, Any]]:
        with self._pool.connection() as db:
            rows = db.execute("SELECT id, last_seen, readings FROM agents ORDER BY id").fetchall()
        return [{"id": r[0], "last_seen": r[1], "readings": r[2]} for r in rows]

    def close(self) -> None:
        self._pool.close()
