"""`retention_days`: old readings go, in small batches, while agents keep streaming."""

from __future__ import annotations

import sqlite3
import time

from processes import wait_until

from sensor_edge.server.storage.retention import DELETE_BATCH
from sensor_edge.server.storage import Batch, ReadingQuery
from sensor_edge.server.storage.sqlite import SCHEMA_VERSION, SQLiteStorage

DAY = 86400.0


def readings(first_seq: int, count: int, ts: float) -> list[tuple]:
    return [(seq, "climate", "temperature", 20.0, "C", ts + seq * 0.001)
            for seq in range(first_seq, first_seq + count)]


def count(path: str, where: str = "1", *args) -> int:
    with sqlite3.connect(path, timeout=10) as db:
        return db.execute(f"SELECT count(*) FROM readings WHERE {where}", args).fetchone()[0]


def test_delete_older_than_takes_at_most_a_batch_and_keeps_the_acked_seq(tmp_path):
    path = str(tmp_path / "r.db")
    storage = SQLiteStorage(path)
    now = time.time()
    storage.store([Batch("pi-1", "e1", readings(1, 250, now - 10 * DAY))], now - 10 * DAY)
    storage.store([Batch("pi-1", "e1", readings(251, 50, now))], now)
    cutoff = now - DAY
    assert storage.delete_older_than(cutoff, 100) == 100
    assert storage.delete_older_than(cutoff, 100) == 100
    assert storage.delete_older_than(cutoff, 100) == 50
    assert storage.delete_older_than(cutoff, 100) == 0
    assert count(path) == 50 and count(path, "ts < ?", cutoff) == 0
    # An agent coming back is still told it need not resend what expired.
    assert storage.acked("pi-1", "e1") == 300
    storage.close()


def test_collector_expires_old_readings_in_the_background(make_collector, make_agent, tmp_path):
    path = str(tmp_path / "collector.db")
    now = time.time()
    old = 2 * DELETE_BATCH + 345  # several delete batches
    seed = SQLiteStorage(path)
    seed.store([Batch("pi-1", "gone", readings(1, old, now - 3 * DAY))], now - 3 * DAY)
    seed.store([Batch("pi-1", "kept", readings(1, 25, now - 0.5 * DAY)),
                # A Pi before time sync: its readings say 1970, but came in just now.
                Batch("pi-3", "unsynced", readings(1, 40, 60.0))], now - 60)
    seed.close()

    collector = make_collector(storage=path, retention_days=1)
    agent = make_agent(collector, "pi-2")
    wait_until(lambda: count(path, "agent = 'pi-1' AND epoch = 'gone'") == 0, 20,
               what="old readings to go")
    assert count(path, "agent = 'pi-1' AND epoch = 'kept'") == 25
    assert count(path, "agent = 'pi-3' AND epoch = 'unsynced'") == 40
    wait_until(lambda: "retention: deleted" in collector.log(), 5, what="the retention log line")
    assert f"retention: deleted {old} readings" in collector.log()
    metrics = collector.get("/metrics")[1].decode()
    assert f"sensor_edge_readings_expired_total {float(old)}" in metrics

    # Ingest went on: the streaming agent's readings are all there, once each.
    wait_until(lambda: len(collector.stored_seqs("pi-2")) > 20, 20, what="pi-2's readings")
    assert agent.terminate() == 0
    stored = collector.stored_seqs("pi-2")
    assert stored == list(range(1, len(stored) + 1))
    assert stored[-1] + agent.buffered() == agent.last_seq()


SCHEMA_V1 = """
CREATE TABLE readings (agent TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    sensor TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL,
    ts REAL NOT NULL, PRIMARY KEY (agent, epoch, seq));
CREATE INDEX readings_by_time ON readings (ts);
CREATE INDEX readings_by_agent_time ON readings (agent, ts);
CREATE TABLE epochs (agent TEXT NOT NULL, epoch TEXT NOT NULL, acked INTEGER NOT NULL,
    PRIMARY KEY (agent, epoch));
CREATE TABLE agents (id TEXT PRIMARY KEY, last_seen REAL NOT NULL, readings INTEGER NOT NULL);
PRAGMA user_version = 1;
"""


def test_a_database_from_before_received_times_is_migrated_and_expires_by_ts(tmp_path):
    """Readings stored before the collector noted when it received them expire by
    their ts alone, as they always did; the rest keep their readings."""
    path = str(tmp_path / "v1.db")
    now = time.time()
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)
        db.executemany("INSERT INTO readings VALUES ('pi-1', 'e', ?, 's', 'm', 1.0, 'C', ?)",
                       [(1, now - 10 * DAY), (2, now - 10 * DAY), (3, now)])
    storage = SQLiteStorage(path)
    try:
        storage.store([Batch("pi-1", "e", readings(4, 2, 50.0))], now)  # 1970, received now
        assert storage.delete_older_than(now - DAY, 100) == 2
        assert sorted(r[2] for r in storage.iter_readings(ReadingQuery())) == [3, 4, 5]
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        storage.close()
    SQLiteStorage(path).close()  # opening it again migrates nothing twice
