"""`retention_days`: old readings go, in small batches, while agents keep streaming."""

from __future__ import annotations

import sqlite3
import time

from processes import wait_until

from sensor_edge.server.storage.retention import DELETE_BATCH
from sensor_edge.server.storage import Batch
from sensor_edge.server.storage.sqlite import SQLiteStorage

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
    storage.store([Batch("pi-1", "e1", readings(1, 250, now - 10 * DAY)),
                   Batch("pi-1", "e1", readings(251, 50, now))], now)
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
    seed.store([Batch("pi-1", "gone", readings(1, old, now - 3 * DAY)),
                Batch("pi-1", "kept", readings(1, 25, now - 0.5 * DAY))], now)
    seed.close()

    collector = make_collector(storage=path, retention_days=1)
    agent = make_agent(collector, "pi-2")
    wait_until(lambda: count(path, "ts < ?", now - DAY) == 0, 20, what="old readings to go")
    assert count(path, "agent = 'pi-1' AND epoch = 'kept'") == 25
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
