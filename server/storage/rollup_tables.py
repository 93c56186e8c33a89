"""The rollup tables (`series`, `rollup_1m`, `rollup_1h`, `rollup_backfill`): the SQL
both storages run on them, written once with each database's few differences in a
:class:`Dialect`. What a rollup is, and the per-commit aggregation: rollups.py.

Every function takes an open connection (sqlite3's or psycopg's: both have
``execute``) and runs inside the caller's transaction.

The backfill. A database from before rollups has readings and empty rollup
tables. ``rollup_backfill`` holds a cursor over the readings' primary key
(agent, epoch, seq): readings up to it are rolled up, by the backfill or by the
commit that stored them; readings past it are the backfill's, and a commit
storing one leaves it to the backfill. Each backfill step advances the cursor
and adds its readings' rollups in one transaction, so it is exact however it is
interleaved with ingest, and resumes after a restart. PostgreSQL: a step holds
the cursor row FOR UPDATE and a commit FOR SHARE, so with several collectors a
commit never reads a cursor a running step is moving.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sensor_edge.server.storage.rollups import (
    BUCKET_LIMIT, HOUR, MINUTE, TABLES, CommitRollups, Plan, SeriesQuery, merge_by_time, newest,
    page_series)

SeriesKey = tuple[str, str, str]  # (agent, sensor, metric)


@dataclass(frozen=True)
class Dialect:
    mark: str  # the driver's placeholder
    least: str  # the two-argument minimum and maximum
    greatest: str
    lock_share: str  # appended to the backfill cursor's SELECT
    lock_update: str
    modulo: str  # `%`, doubled where the driver's placeholders use it
    arrays: bool  # whole columns bind as arrays (PostgreSQL's unnest)

    def query(self, db: Any, sql: str, args: Any) -> Any:
        """Run a query whose best plan depends on how big the tables are now.

        psycopg prepares a statement run five times on a connection, and PostgreSQL
        may then keep a generic plan made while a table was small: a rollup table
        scanned whole at every commit once it has grown. Planned each time instead."""
        if self.arrays:
            return db.execute(sql, args, prepare=False)
        return db.execute(sql, args)

    def floor_bucket(self, column: str, step: int) -> str:
        """SQL for the start of the `step`-second bucket a float column falls in."""
        if self.mark == "%s":
            return f"(floor({column} / {step}) * {step})::bigint"
        # SQLite may be built without floor(); CAST truncates towards zero.
        whole = f"CAST({column} / {step} AS INTEGER)"
        return f"(({whole} - ({column} < {whole} * {step})) * {step})"


SQLITE = Dialect("?", "min", "max", "", "", "%", False)
POSTGRES = Dialect("%s", "LEAST", "GREATEST", " FOR SHARE", " FOR UPDATE", "%%", True)

# How many readings one backfill step rolls up: a transaction of about ten
# milliseconds, so an ingest commit queued behind it waits that long at most.
BACKFILL_STEP = 5000


# SQLite: rows per INSERT. One statement of many rows costs half as much per row as
# a statement a row; 900 placeholders stay under the oldest SQLite's limit (999).
ROWS_PER_STATEMENT = 150


def _upsert_sql(d: Dialect, table: str, rows: int = 1) -> str:
    m = d.mark
    if d.arrays:  # each column one array
        source = ("SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::float8[], "
                  "%s::float8[], %s::float8[], %s::bigint[])")
    else:
        source = "VALUES " + ", ".join([f"({m}, {m}, {m}, {m}, {m}, {m})"] * rows)
    return (f"INSERT INTO {table} (series, bucket, min, max, sum, count) {source} "
            f"ON CONFLICT (series, bucket) DO UPDATE SET "
            f"min = {d.least}({table}.min, excluded.min), "
            f"max = {d.greatest}({table}.max, excluded.max), "
            f"sum = {table}.sum + excluded.sum, count = {table}.count + excluded.count")


class SeriesIds:
    """The `series` table's ids, cached: a commit looks up only the series it has not
    met. Ids found inside a transaction count only once it commits (a rolled-back
    insert's id would name nothing)."""

    def __init__(self, dialect: Dialect):
        self._d = dialect
        self._known: dict[SeriesKey, tuple[int, str]] = {}
        self._pending: dict[SeriesKey, tuple[int, str]] = {}

    def resolve(self, db: Any, units: dict[SeriesKey, str]) -> dict[SeriesKey, int]:
        """Each series' id, made if new; a changed unit is stored as the series' unit."""
        m = self._d.mark
        ids: dict[SeriesKey, int] = {}
        for key, unit in sorted(units.items()):  # one lock order for every writer
            known = self._known.get(key) or self._pending.get(key)
            if known is not None and known[1] == unit:
                ids[key] = known[0]
                continue
            db.execute("INSERT INTO series (agent, sensor, metric, unit) "
                       f"VALUES ({m}, {m}, {m}, {m}) "
                       "ON CONFLICT (agent, sensor, metric) DO UPDATE SET unit = excluded.unit",
                       (*key, unit))
            (ident,) = db.execute(
                f"SELECT id FROM series WHERE agent = {m} AND sensor = {m} AND metric = {m}",
                key).fetchone()
            ids[key] = ident
            self._pending[key] = (ident, unit)
        return ids

    def committed(self) -> None:
        self._known.update(self._pending)
        self._pending.clear()

    def rolled_back(self) -> None:
        self._pending.clear()


def upsert(db: Any, d: Dialect, ids: SeriesIds, rollups: CommitRollups) -> None:
    """Add one commit's rollups to the tables: one row written per touched bucket."""
    if not rollups:
        return
    tiers = rollups.tiers(ids.resolve(db, rollups.units()))
    if d.arrays:
        _write_postgres(db, d, tiers)
        return
    for width, rows in tiers.items():
        table = TABLES[width]
        whole = len(rows) - len(rows) % ROWS_PER_STATEMENT
        if whole:
            db.executemany(_upsert_sql(d, table, ROWS_PER_STATEMENT), [
                list(itertools.chain.from_iterable(rows[i:i + ROWS_PER_STATEMENT]))
                for i in range(0, whole, ROWS_PER_STATEMENT)])
        db.executemany(_upsert_sql(d, table), rows[whole:])


# Per tier and series, the buckets of a range that are stored already.
_STORED_BUCKETS = " UNION ALL ".join(
    f"SELECT {width}, r.series, r.bucket "
    "FROM unnest(%s::integer[], %s::bigint[], %s::bigint[]) AS q(series, lo, hi) "
    f"JOIN {table} r ON r.series = q.series AND r.bucket BETWEEN q.lo AND q.hi"
    for width, table in TABLES.items())
_COPY_ROLLUPS = "COPY {table} (series, bucket, min, max, sum, count) FROM STDIN (FORMAT BINARY)"
_COPY_ROLLUP_TYPES = ("int4", "int8", "float8", "float8", "float8", "int8")


def _write_postgres(db: Any, d: Dialect, tiers: dict[int, list]) -> None:
    """PostgreSQL: buckets already stored get an upsert; the new ones (in time-ordered
    ingest, all but the first of each series) a COPY, a third of an upsert's cost.
    Four round trips a commit at most: which buckets are stored, one upsert of both
    tiers' stored ones, a COPY a tier.

    No other writer adds a bucket of these series meanwhile: a commit has updated its
    agents' rows in `agents` before it gets here, and a backfill step holds the
    cursor row, so writers of one series take turns. (Were one to, the COPY would
    fail the commit, and the agents' resend would find the bucket stored.)"""
    ranges = []
    for rows in tiers.values():
        first_last: dict[int, list[int]] = {}
        for series, bucket, *_ in rows:  # sorted: the first and last bucket of each series
            first_last.setdefault(series, [bucket, bucket])[1] = bucket
        ranges += [list(first_last), [b[0] for b in first_last.values()],
                   [b[1] for b in first_last.values()]]
    stored = set(d.query(db, _STORED_BUCKETS, ranges))
    old: dict[int, list] = {}
    for width, rows in tiers.items():
        old[width] = [r for r in rows if (width, r[0], r[1]) in stored] if stored else []
        if old[width]:
            tiers[width] = [r for r in rows if (width, r[0], r[1]) not in stored]
    if any(old.values()):
        minutes, hours = (_upsert_sql(d, TABLES[w]) for w in TABLES)
        db.execute(f"WITH minutes AS ({minutes}) {hours}",
                   [*_columns(old[MINUTE]), *_columns(old[HOUR])])
    with db.cursor() as cur:
        for width, rows in tiers.items():
            if rows:
                with cur.copy(_COPY_ROLLUPS.format(table=TABLES[width])) as copy:
                    copy.set_types(_COPY_ROLLUP_TYPES)
                    for row in rows:
                        copy.write_row(row)


def _columns(rows: list) -> list[list]:
    """Rows as the six arrays an unnest() upsert takes."""
    if not rows:
        return [[] for _ in range(6)]
    series, buckets, *figures, counts = zip(*rows)
    # An array is of one type: a value stored as an int (not from the wire) as a float.
    return [list(series), list(buckets), *([float(v) for v in f] for f in figures),
            list(counts)]


# ---- the backfill -----------------------------------------------------------

@dataclass(frozen=True)
class Backfill:
    """Where the backfill is: done, or the last reading key it has rolled up (None:
    none yet)."""

    done: bool
    after: tuple[str, str, int] | None

    def rolled_up_by_commit(self, agent: str, epoch: str, rows: list) -> list:
        """Of a commit's new rows (seq first), those the commit must roll up itself:
        all once the backfill is done, else those at or before its cursor."""
        if self.done:
            return rows
        if self.after is None or (agent, epoch) > self.after[:2]:
            return []
        if (agent, epoch) < self.after[:2]:
            return rows
        last = self.after[2]
        return [row for row in rows if row[0] <= last]


DONE = Backfill(True, None)


def backfill_state(db: Any, d: Dialect, lock: str = "") -> Backfill:
    row = db.execute(f"SELECT done, agent, epoch, seq FROM rollup_backfill WHERE id = 1{lock}"
                     ).fetchone()
    if row is None:  # pragma: no cover - the schema inserts it
        return Backfill(True, None)
    done, agent, epoch, seq = row
    return Backfill(bool(done), None if agent is None else (agent, epoch, seq))


def backfill_step(db: Any, d: Dialect, ids: SeriesIds, limit: int = BACKFILL_STEP
                  ) -> tuple[int, bool]:
    """Roll up the next ``limit`` readings past the cursor; (how many, whether done)."""
    m = d.mark
    state = backfill_state(db, d, d.lock_update)
    if state.done:
        return 0, True
    where, args = "", ()
    if state.after is not None:
        where, args = f"WHERE (agent, epoch, seq) > ({m}, {m}, {m}) ", state.after
    rows = db.execute(
        "SELECT agent, epoch, seq, sensor, metric, value, unit, ts FROM readings "
        f"{where}ORDER BY agent, epoch, seq LIMIT {m}", (*args, limit)).fetchall()
    rollups = CommitRollups()
    start = 0
    for i in range(1, len(rows) + 1):  # one add() per run of an agent's rows
        if i == len(rows) or rows[i][0] != rows[start][0]:
            rollups.add(rows[start][0], (r[2:] for r in rows[start:i]))
            start = i
    upsert(db, d, ids, rollups)
    done = len(rows) < limit
    last = rows[-1][:3] if rows else (state.after or (None, None, None))
    db.execute(f"UPDATE rollup_backfill SET done = {m}, agent = {m}, epoch = {m}, seq = {m} "
               "WHERE id = 1", (int(done), *last))
    return len(rows), done


# ---- reading them -----------------------------------------------------------

def _name_filters(query: Any, d: Dialect, prefix: str = "") -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column in ("agent", "sensor", "metric"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{prefix}{column} = {d.mark}")
            args.append(value)
    return where, args


def _clamp(ts: float) -> float:
    return max(-BUCKET_LIMIT, min(BUCKET_LIMIT, ts))


def series_points(db: Any, d: Dialect, query: SeriesQuery, plan: Plan) -> list[tuple]:
    """Rows (agent, sensor, metric, unit, ts, min, avg, max, count), one per series
    and step, sorted by series then ts, from the plan's source."""
    m, step = d.mark, plan.step
    since, until = _clamp(query.since), _clamp(query.until)
    # From the start of the step holding `since`: the first point is a whole one.
    start = since // step * step
    if plan.width == 0:
        where, args = _name_filters(query, d)
        bucket = d.floor_bucket("ts", step)
        sql = (f"SELECT agent, sensor, metric, max(unit), {bucket} AS t, min(value), "
               f"avg(value), max(value), count(*) FROM readings "
               f"WHERE {' AND '.join([*where, f'ts >= {m}', f'ts <= {m}'])} "
               "GROUP BY agent, sensor, metric, t ORDER BY agent, sensor, metric, t")
        return d.query(db, sql, (*args, start, until)).fetchall()
    where, args = _name_filters(query, d, "s.")
    mod = d.modulo
    bucket = f"(r.bucket - ((r.bucket {mod} {step}) + {step}) {mod} {step})"
    sql = (f"SELECT s.agent, s.sensor, s.metric, s.unit, {bucket} AS t, min(r.min), "
           f"sum(r.sum) / sum(r.count), max(r.max), CAST(sum(r.count) AS BIGINT) "
           f"FROM series s JOIN {plan.table} r ON r.series = s.id "
           f"WHERE {' AND '.join([*where, f'r.bucket >= {m}', f'r.bucket <= {m}'])} "
           "GROUP BY s.agent, s.sensor, s.metric, s.unit, t "
           "ORDER BY s.agent, s.sensor, s.metric, t")
    return d.query(db, sql, (*args, int(start), int(until // 1))).fetchall()


def matching_series(db: Any, d: Dialect, query: Any) -> list[tuple]:
    """(id, agent, sensor, metric, unit) of every series the query's names match."""
    where, args = _name_filters(query, d)
    sql = "SELECT id, agent, sensor, metric, unit FROM series"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return db.execute(sql + " ORDER BY agent, sensor, metric", args).fetchall()


def rollup_page(db: Any, d: Dialect, table: str, series: tuple, since: float | None,
                until: float | None, after: int | None, limit: int,
                newest: bool = False) -> list[tuple]:
    """Up to ``limit`` rows (ROLLUP_COLUMNS order) of one series, oldest first: its
    buckets past ``after`` (paging), or its newest ones when ``newest``."""
    m = d.mark
    ident, agent, sensor, metric, unit = series
    where, args = [f"series = {m}"], [ident]
    if since is not None:
        where.append(f"bucket >= {m}")
        args.append(int(_clamp(since) // 1))
    if until is not None:
        where.append(f"bucket <= {m}")
        args.append(int(_clamp(until) // 1))
    if after is not None:
        where.append(f"bucket > {m}")
        args.append(after)
    rows = d.query(
        db, f"SELECT bucket, min, sum / count, max, count FROM {table} "
        f"WHERE {' AND '.join(where)} ORDER BY bucket {'DESC' if newest else ''} LIMIT {m}",
        (*args, limit)).fetchall()
    if newest:
        rows.reverse()
    return [(agent, sensor, metric, unit, *row) for row in rows]


def newest_rows(db: Any, d: Dialect, query: Any, width: int) -> list[tuple]:
    """The newest ``query.limit`` rollup rows that match a ReadingQuery, oldest first."""
    table = TABLES[width]
    return newest(
        (rollup_page(db, d, table, s, query.since, query.until, None, query.limit, newest=True)
         for s in matching_series(db, d, query)), query.limit)


def all_rows(db: Any, d: Dialect, query: Any, width: int, chunk: int) -> Iterator[tuple]:
    """Every rollup row that matches a ReadingQuery, sorted by (ts, agent, sensor,
    metric); each series is read a page of ``chunk`` at a time."""
    table = TABLES[width]

    def pages(series: tuple) -> Iterator[tuple]:
        return page_series(lambda after: rollup_page(
            db, d, table, series, query.since, query.until, after, chunk), chunk)

    return merge_by_time([pages(s) for s in matching_series(db, d, query)])


def delete_older(db: Any, d: Dialect, width: int, cutoff: float, limit: int,
                 series_ids: list[int]) -> int:
    """Delete up to ``limit`` buckets that ended at or before ``cutoff``."""
    m = d.mark
    table = TABLES[width]
    last_start = int(_clamp(cutoff) // 1) - width
    total = 0
    for ident in series_ids:
        total += db.execute(
            f"DELETE FROM {table} WHERE series = {m} AND bucket IN (SELECT bucket FROM {table} "
            f"WHERE series = {m} AND bucket <= {m} ORDER BY bucket LIMIT {m})",
            (ident, ident, last_start, limit - total)).rowcount
        if total >= limit:
            break
    return total

