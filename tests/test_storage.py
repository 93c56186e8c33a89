"""The Storage API, the same tests on both backends: a SQLite file and a real
PostgreSQL database made for each test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from conftest import BOTH_BACKENDS, POSTGRES_ONLY
from rollup_checks import assert_rollups_match, from_readings, rollups_held
from sensor_edge.runtime.service import StartupError
from sensor_edge.server.storage import Batch, ReadingQuery, open_storage

NOW = 1_700_000_000.0


def rows(first: int, last: int, sensor: str = "s", metric: str = "m", ts0: float = NOW,
         step: float = 1.0) -> list[tuple]:
    """Readings first..last, one a `step` apart from ts0 + (seq - 1) * step."""
    return [(seq, sensor, metric, seq / 10, "u", ts0 + (seq - 1) * step)
            for seq in range(first, last + 1)]


@pytest.fixture
def storage(storage_url):
    store = open_storage(storage_url)
    yield store
    store.close()


def seqs(storage, agent: str, epoch: str | None = None) -> list[int]:
    found = storage.iter_readings(ReadingQuery(agent=agent))
    return sorted(r[2] for r in found if epoch is None or r[1] == epoch)


@BOTH_BACKENDS
def test_a_batch_is_stored_once_however_often_it_comes(storage):
    assert storage.store([Batch("a", "e1", rows(1, 5))], NOW) == [5]
    # A resend after a lost ack, overlapping what is stored, plus new readings.
    assert storage.store([Batch("a", "e1", rows(3, 8))], NOW) == [3]
    assert storage.store([Batch("a", "e1", rows(1, 8))], NOW) == [0]
    assert seqs(storage, "a") == list(range(1, 9))
    assert storage.acked("a", "e1") == 8


@BOTH_BACKENDS
def test_one_group_counts_each_batch_and_a_key_twice_only_once(storage):
    storage.store([Batch("a", "e1", rows(1, 2))], NOW)
    group = [Batch("a", "e1", rows(1, 4)),   # 1-2 stored before: adds 3, 4
             Batch("b", "e1", rows(1, 3)),
             Batch("a", "e1", rows(3, 6)),   # 3-4 also in this group's first batch
             Batch("a", "e2", rows(1, 1))]
    assert storage.store(group, NOW + 1) == [2, 3, 2, 1]
    assert seqs(storage, "a", "e1") == [1, 2, 3, 4, 5, 6]
    assert seqs(storage, "b") == [1, 2, 3]
    assert (storage.acked("a", "e1"), storage.acked("a", "e2"), storage.acked("b", "e1")) == (6, 1, 3)
    assert storage.acked("a", "unknown") == 0 and storage.acked("nobody", "e1") == 0
    agents = {a["id"]: a for a in storage.agents()}
    assert [a["id"] for a in storage.agents()] == ["a", "b"]
    assert agents["a"]["readings"] == 2 + 2 + 2 + 1 and agents["b"]["readings"] == 3
    assert agents["a"]["last_seen"] == NOW + 1


@BOTH_BACKENDS
def test_queries_filter_order_and_keep_the_newest(storage):
    storage.store([Batch("a", "e", rows(1, 10, "t", "temperature")),
                   Batch("b", "e", rows(1, 10, "h", "humidity", ts0=NOW + 0.5))], NOW)
    everything = storage.readings(ReadingQuery(limit=100))
    assert len(everything) == 20
    assert [r["ts"] for r in everything] == sorted(r["ts"] for r in everything)
    assert set(everything[0]) == {"agent", "epoch", "seq", "sensor", "metric", "value", "unit",
                                  "ts"}
    assert everything[0] == {"agent": "a", "epoch": "e", "seq": 1, "sensor": "t",
                             "metric": "temperature", "value": 0.1, "unit": "u", "ts": NOW}
    by = {
        "agent": ReadingQuery(agent="b", limit=100),
        "sensor": ReadingQuery(sensor="t", limit=100),
        "metric": ReadingQuery(metric="humidity", limit=100),
        "since": ReadingQuery(since=NOW + 8, limit=100),
        "until": ReadingQuery(until=NOW + 1, limit=100),
        "all": ReadingQuery(agent="a", sensor="t", metric="temperature", since=NOW + 2,
                            until=NOW + 4, limit=100),
    }
    found = {name: [(r["agent"], r["seq"]) for r in storage.readings(q)] for name, q in by.items()}
    assert found["agent"] == [("b", s) for s in range(1, 11)]
    assert found["sensor"] == [("a", s) for s in range(1, 11)]
    assert found["metric"] == found["agent"]
    assert found["since"] == [("a", 9), ("b", 9), ("a", 10), ("b", 10)]  # ts >= since, inclusive
    assert found["until"] == [("a", 1), ("b", 1), ("a", 2)]  # ts <= until, inclusive
    assert found["all"] == [("a", 3), ("a", 4), ("a", 5)]
    # limit keeps the newest, still handed back oldest first.
    newest = storage.readings(ReadingQuery(agent="a", limit=3))
    assert [r["seq"] for r in newest] == [8, 9, 10]
    assert storage.readings(ReadingQuery(agent="nobody")) == []


@BOTH_BACKENDS
def test_iter_readings_pages_through_everything_oldest_first(storage):
    storage.store([Batch("b", "e", rows(1, 30, ts0=NOW)),
                   Batch("a", "e", rows(1, 30, ts0=NOW)),  # same times: agent breaks the tie
                   Batch("a", "f", rows(1, 5, ts0=NOW + 100))], NOW)
    # A small chunk crosses many page boundaries; limit is ignored.
    found = list(storage.iter_readings(ReadingQuery(limit=1), chunk=7))
    assert len(found) == 65
    assert [tuple(r[:3]) for r in found[:4]] == [("a", "e", 1), ("b", "e", 1), ("a", "e", 2),
                                                 ("b", "e", 2)]
    keys = [(r[7], r[0], r[1], r[2]) for r in found]
    assert keys == sorted(keys)
    assert len(set(keys)) == 65
    filtered = list(storage.iter_readings(ReadingQuery(agent="a", since=NOW + 50), chunk=2))
    assert [(r[1], r[2]) for r in filtered] == [("f", s) for s in range(1, 6)]


@BOTH_BACKENDS
def test_old_readings_go_in_small_deletes_and_the_acked_seq_stays(storage):
    storage.store([Batch("a", "e", rows(1, 10, ts0=NOW - 1000)),
                   Batch("a", "e", rows(11, 15, ts0=NOW - 10))], NOW)
    cutoff = NOW - 500
    assert storage.delete_older_than(cutoff, 4) == 4
    assert storage.delete_older_than(cutoff, 4) == 4
    assert storage.delete_older_than(cutoff, 4) == 2
    assert storage.delete_older_than(cutoff, 4) == 0
    assert seqs(storage, "a") == list(range(11, 16))
    # An agent coming back is not asked to resend what expired.
    assert storage.acked("a", "e") == 15


@BOTH_BACKENDS
def test_what_is_stored_survives_a_reopen(storage_url):
    first = open_storage(storage_url)
    first.store([Batch("a", "e", rows(1, 3))], NOW)
    first.close()
    again = open_storage(storage_url)  # runs no migration twice, keeps the rows
    try:
        assert again.acked("a", "e") == 3
        assert seqs(again, "a") == [1, 2, 3]
    finally:
        again.close()


@BOTH_BACKENDS
def test_two_writers_racing_with_the_same_batches_store_each_once(storage_url):
    """Two collectors' storages, handed the same batches at once."""
    writers = [open_storage(storage_url) for _ in range(2)]
    added: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for first in range(1, 2001, 100):
                group = [Batch(agent, "e", rows(first, first + 99)) for agent in ("x", "y", "z")]
                if w:
                    group.reverse()  # the other collector's group, in another order
                added[w].extend(writers[w].store(group, NOW))
        except BaseException as e:  # reported below; a thread can't fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert sum(added[0]) + sum(added[1]) == 3 * 2000
        for agent in ("x", "y", "z"):
            assert seqs(writers[0], agent) == list(range(1, 2001))
            assert writers[1].acked(agent, "e") == 2000
        assert sum(a["readings"] for a in writers[1].agents()) == 3 * 2000
        # Each reading counted once in the rollups, whichever writer stored it.
        assert_rollups_match(from_readings(writers[0]), rollups_held(writers[1]))
    finally:
        for w in writers:
            w.close()


@POSTGRES_ONLY
def test_postgres_schema_is_versioned(storage_url):
    import psycopg
    from sensor_edge.server.storage import postgres

    open_storage(storage_url).close()
    open_storage(storage_url).close()
    with psycopg.connect(storage_url, autocommit=True) as db:
        versions = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [v for (v,) in versions] == [m[0] for m in postgres.MIGRATIONS]
        plan = " ".join(r[0] for r in db.execute(
            "EXPLAIN SELECT * FROM readings WHERE agent = 'a' AND ts >= 0 "
            "ORDER BY ts DESC LIMIT 10"))
        assert "readings_by_agent_time" in plan
        # A database from a newer release is refused, not mangled.
        db.execute("INSERT INTO schema_migrations (version, description) VALUES (999, 'x')")
    with pytest.raises(StartupError, match="version 999, newer"):
        open_storage(storage_url)


@POSTGRES_ONLY
def test_postgres_errors_are_one_line_without_the_password(storage_backend, tmp_path):
    from processes import free_port

    url = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StartupError) as caught:
        open_storage(url)
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message
    assert "someone:***@127.0.0.1" in message
    # Without the driver installed, the collector says how to get it, in one line.
    (tmp_path / "psycopg.py").write_text("raise ImportError('not installed')\n")
    config = tmp_path / "collector.yaml"
    config.write_text(f"listen: {{host: 127.0.0.1, port: {free_port()}}}\n"
                      "storage: postgresql://postgres@127.0.0.1/x\n"
                      "agents: [{id: a, token: a-token-0123456789}]\n")
    done = subprocess.run(
        [sys.executable, "-m", "sensor_edge.server", "--config", str(config)],
        check=False, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode != 0
    assert "pip install 'sensor-edge[postgres]'" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr
