"""What the rollup tests compare: the rollups a storage holds against the same
figures computed here from its raw readings, and a database as it was before
rollups existed (schema version 2)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

from sensor_edge.server.storage import ReadingQuery, Storage
from sensor_edge.server.storage.rollups import TIERS, bucket_of

ROLLUP_TABLES = ("series", "rollup_1m", "rollup_1h", "rollup_backfill")


def from_readings(storage: Storage) -> dict[str, dict[tuple, tuple]]:
    """Per tier: (agent, sensor, metric, bucket) -> (min, avg, max, count, unit) of the
    stored readings."""
    rows = list(storage.iter_readings(ReadingQuery()))
    expected: dict[str, dict[tuple, tuple]] = {}
    for tier, width in TIERS.items():
        groups: dict[tuple, list] = {}
        for agent, _epoch, _seq, sensor, metric, value, unit, ts in rows:
            groups.setdefault((agent, sensor, metric, bucket_of(ts, width)), []).append(value)
        expected[tier] = {key: (min(v), math.fsum(v) / len(v), max(v), len(v))
                          for key, v in groups.items()}
    return expected


def rollups_held(storage: Storage) -> dict[str, dict[tuple, tuple]]:
    """Per tier: (agent, sensor, metric, bucket) -> (min, avg, max, count) as stored."""
    return {tier: {(a, s, m, ts): (low, mean, high, count)
                   for a, s, m, _unit, ts, low, mean, high, count
                   in storage.iter_rollups(ReadingQuery(), tier, chunk=7)}
            for tier in TIERS}


def assert_rollups_match(expected: dict, held: dict) -> None:
    """Same buckets; min, max and count exact; the mean to float rounding."""
    for tier in TIERS:
        assert held[tier].keys() == expected[tier].keys(), tier
        for key, (low, mean, high, count) in expected[tier].items():
            got = held[tier][key]
            assert (got[0], got[2], got[3]) == (low, high, count), (tier, key, got)
            assert math.isclose(got[1], mean, rel_tol=1e-9, abs_tol=1e-6), (tier, key, got, mean)


def as_before_rollups(url: str) -> None:
    """Make a database what a release before rollups left: no rollup tables, version 4."""
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as db:
            db.execute(f"DROP TABLE {', '.join(ROLLUP_TABLES)}")
            db.execute("DELETE FROM schema_migrations WHERE version >= 5")
        return
    with sqlite3.connect(url, isolation_level=None) as db:
        for table in ROLLUP_TABLES:
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 4")
    db.close()


def empty_database(url: str, tmp: Path, n: int) -> str:
    """A database with nothing in it: a new SQLite file, or the PostgreSQL one emptied."""
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as db:
            db.execute("DROP SCHEMA public CASCADE")
            db.execute("CREATE SCHEMA public")
        return url
    return str(tmp / f"example-{n}.db")
