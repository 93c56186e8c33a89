"""The Storage API, the same tests on both backends: a SQLite file and a real
PostgreSQL database made for each test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
from conftest import BOTH_BACKENDS, POSTGRES_ONLY
from rollup_checks import assert_rollups_match, from_readings, rollups_held
from sensor_edge.runtime.service import StartupError
from sensor_edge.server.storage import Batch, ReadingQuery, iter_newest, open_storage

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
def test_resent_readings_with_other_values_are_told_apart_from_plain_resends(storage):
    storage.store([Batch("a", "e", rows(1, 5))], NOW)
    resent = rows(3, 7)
    resent[1] = (4, "s", "m", 99.0, "u", resent[1][5])  # seq 4: another machine's value
    assert storage.store([Batch("a", "e", resent)], NOW) == [2]
    assert storage.differing_duplicates(Batch("a", "e", resent)) == [
        (rows(4, 4)[0], resent[1])]
    assert storage.differing_duplicates(Batch("a", "e", rows(1, 7))) == []
    assert storage.differing_duplicates(Batch("a", "other", resent)) == []


@BOTH_BACKENDS
def test_queries_filter_order_and_keep_the_newest(storage):
    storage.store([Batch("a", "e", rows(1, 10, "t", "temperature")),
                   Batch("b", "e", rows(1, 10, "h", "humidity", ts0=NOW + 0.5))], NOW)
    everything = list(iter_newest(storage, ReadingQuery(limit=100)))
    assert len(everything) == 20
    assert [r[7] for r in everything] == sorted(r[7] for r in everything)
    assert everything[0] == ("a", "e", 1, "t", "temperature", 0.1, "u", NOW)
    by = {
        "agent": ReadingQuery(agent="b", limit=100),
        "sensor": ReadingQuery(sensor="t", limit=100),
        "metric": ReadingQuery(metric="humidity", limit=100),
        "since": ReadingQuery(since=NOW + 8, limit=100),
        "until": ReadingQuery(until=NOW + 1, limit=100),
        "all": ReadingQuery(agent="a", sensor="t", metric="temperature", since=NOW + 2,
                            until=NOW + 4, limit=100),
    }
    found = {name: [(r[0], r[2]) for r in iter_newest(storage, q)] for name, q in by.items()}
    assert found["agent"] == [("b", s) for s in range(1, 11)]
    assert found["sensor"] == [("a", s) for s in range(1, 11)]
    assert found["metric"] == found["agent"]
    assert found["since"] == [("a", 9), ("b", 9), ("a", 10), ("b", 10)]  # ts >= since, inclusive
    assert found["until"] == [("a", 1), ("b", 1), ("a", 2)]  # ts <= until, inclusive
    assert found["all"] == [("a", 3), ("a", 4), ("a", 5)]
    # limit keeps the newest, still handed back oldest first.
    newest = list(iter_newest(storage, ReadingQuery(agent="a", limit=3)))
    assert [r[2] for r in newest] == [8, 9, 10]
    assert list(iter_newest(storage, ReadingQuery(agent="nobody"))) == []


@BOTH_BACKENDS
def test_the_newest_window_cuts_through_readings_that_share_a_time(storage):
    # Five agents, each with readings at the same ten times: 50 readings, 5 per ts.
    storage.store([Batch(agent, "e", rows(1, 10)) for agent in "edcba"], NOW)
    everything = list(storage.iter_readings(ReadingQuery()))
    for limit in (1, 3, 5, 7, 12, 49, 50, 51, 1000):
        # Exactly the last `limit` in (ts, agent, epoch, seq) order, page size aside.
        assert list(iter_newest(storage, ReadingQuery(limit=limit), chunk=4)) \
            == everything[-limit:], limit
    assert storage.newest_window(ReadingQuery(limit=7)) == (NOW + 8, 10)
    assert storage.newest_window(ReadingQuery(limit=50)) == (NOW, 50)
    assert storage.newest_window(ReadingQuery(limit=51)) is None


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
    storage.store([Batch("a", "e", rows(1, 10, ts0=NOW - 1000))], NOW - 1000)
    storage.store([Batch("a", "e", rows(11, 15, ts0=NOW - 10))], NOW - 10)
    cutoff = NOW - 500
    assert storage.delete_older_than(cutoff, 4) == 4
    assert storage.delete_older_than(cutoff, 4) == 4
    assert storage.delete_older_than(cutoff, 4) == 2
    assert storage.delete_older_than(cutoff, 4) == 0
    assert seqs(storage, "a") == list(range(11, 16))
    # An agent coming back is not asked to resend what expired.
    assert storage.acked("a", "e") == 15


@BOTH_BACKENDS
def test_retention_never_deletes_what_was_received_recently_whatever_its_ts(storage):
    cutoff = NOW - 500
    # A Pi before its clock was set: read "in 1970", received just now.
    storage.store([Batch("a", "unsynced", rows(1, 5, ts0=100.0))], NOW)
    # An agent's long backlog: read long ago, received just now.
    storage.store([Batch("a", "backlog", rows(1, 5, ts0=NOW - 90_000))], NOW - 1)
    # Received long ago, but stamped later by a clock running ahead: kept until its
    # ts is past too (a reading goes when both its times are older than the cutoff).
    storage.store([Batch("a", "ahead", rows(1, 5, ts0=NOW + 5000))], NOW - 1000)
    storage.store([Batch("a", "old", rows(1, 5, ts0=NOW - 1000))], NOW - 1000)
    assert storage.delete_older_than(cutoff, 100) == 5
    assert seqs(storage, "a", "old") == []
    for epoch in ("unsynced", "backlog", "ahead"):
        assert seqs(storage, "a", epoch) == [1, 2, 3, 4, 5], epoch
    # Once received long enough ago, the 1970 readings go too.
    assert storage.delete_older_than(NOW + 1, 100) == 10
    assert seqs(storage, "a", "unsynced") == [] and seqs(storage, "a", "backlog") == []


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


def at_once(work: Callable[[int], None]) -> None:
    """Run work(0) and work(1) on two threads at once; fail if either raised."""
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            work(w)
        except BaseException as e:  # reported below; a thread can't fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


@BOTH_BACKENDS
def test_two_writers_racing_with_the_same_batches_store_each_once(storage_url):
    """Two collectors' storages, handed the same batches at once."""
    writers = [open_storage(storage_url) for _ in range(2)]
    added: list[list[int]] = [[], []]

    def write(w: int) -> None:
        for first in range(1, 2001, 100):
            group = [Batch(agent, "e", rows(first, first + 99)) for agent in ("x", "y", "z")]
            if w:
                group.reverse()  # the other collector's group, in another order
            added[w].extend(writers[w].store(group, NOW))

    try:
        at_once(write)
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


def ha_row(agent: str, sensor: str, metric: str, object_id: str) -> tuple:
    """A row of ha_entity_ids: (agent, sensor, metric, object_id, unique_id)."""
    return (agent, sensor, metric, object_id, f"sensor_edge_{agent}_{object_id}")


@BOTH_BACKENDS
def test_a_home_assistant_id_is_given_once_and_a_lost_claim_reads_the_winner(storage_url):
    storage = open_storage(storage_url)
    a_dot_b, a_b = ha_row("pi", "a.b", "t", "a_b_t"), ha_row("pi", "a_b", "t", "a_b_t")
    try:
        assert storage.ha_entity_ids() == []
        assert storage.claim_ha_entity_ids([a_dot_b]) == [a_dot_b]
        # The id is taken: nothing stored for a_b, and the holder comes back.
        assert storage.claim_ha_entity_ids([a_b]) == [a_dot_b]
        hashed = ha_row("pi", "a_b", "t", "a_b_t_0123abcd")
        assert storage.claim_ha_entity_ids([hashed]) == [hashed]
        # The name has an id already: it stays, and comes back instead of the proposal.
        assert storage.claim_ha_entity_ids([ha_row("pi", "a_b", "t", "other")]) == [hashed]
        # One call, several names; one of them known, one meeting a stored id.
        plain = ha_row("pi", "plain", "t", "plain_t")
        assert sorted(storage.claim_ha_entity_ids([plain, a_dot_b, a_b])) == \
            sorted([plain, a_dot_b, hashed])
    finally:
        storage.close()
    again = open_storage(storage_url)
    try:
        assert sorted(again.ha_entity_ids()) == sorted([a_dot_b, hashed, plain])
    finally:
        again.close()


@BOTH_BACKENDS
def test_two_collectors_claiming_the_same_ids_at_once_agree_on_the_winners(storage_url):
    """Each name's plain id contested by two names, each claimed by its own collector."""
    claimers = [open_storage(storage_url) for _ in range(2)]
    seen: list[list[tuple]] = [[], []]

    def claim(c: int) -> None:
        for i in range(200):
            name = f"s{i}.x" if c else f"s{i}_x"
            seen[c].extend(claimers[c].claim_ha_entity_ids([ha_row("pi", name, "t",
                                                                   f"s{i}_x_t")]))

    try:
        at_once(claim)
        stored = claimers[0].ha_entity_ids()
        assert len(stored) == 200 and len({row[4] for row in stored}) == 200
        # Whichever lost a race read back the winner: both saw exactly what is stored.
        assert sorted(set(seen[0])) == sorted(set(seen[1])) == sorted(stored)
    finally:
        for c in claimers:
            c.close()


def test_an_older_sqlite_file_gets_the_home_assistant_ids_table(tmp_path):
    import sqlite3
    from sensor_edge.server.storage import sqlite as sqlite_storage

    path = str(tmp_path / "v2.db")
    open_storage(path).close()
    with sqlite3.connect(path) as db:  # as the release before it left the file
        db.execute("DROP TABLE ha_entity_ids")
        db.execute("PRAGMA user_version = 2")
    storage = open_storage(path)
    try:
        assert storage.claim_ha_entity_ids([ha_row("pi", "a", "t", "a_t")])
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == \
                sqlite_storage.SCHEMA_VERSION
    finally:
        storage.close()


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
def test_a_postgres_database_from_before_received_times_is_migrated(storage_url):
    """Version 1 rows have no received time: they expire by ts alone, as before."""
    import psycopg
    from sensor_edge.server.storage import postgres

    with psycopg.connect(storage_url, autocommit=True) as db, db.transaction():
        db.execute(postgres.MIGRATIONS_TABLE)
        version, description, statements = postgres.MIGRATIONS[0]
        for statement in statements:
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                   (version, description))
        db.execute("INSERT INTO readings VALUES ('a', 'e', 1, 's', 'm', 1, 'u', %s), "
                   "('a', 'e', 2, 's', 'm', 1, 'u', %s)", (NOW - 1000, NOW))
    storage = open_storage(storage_url)
    try:
        storage.store([Batch("a", "e", rows(3, 4, ts0=100.0))], NOW)  # 1970, received now
        assert storage.delete_older_than(NOW - 500, 100) == 1
        assert seqs(storage, "a") == [2, 3, 4]
    finally:
        storage.close()


@POSTGRES_ONLY
def test_postgres_sessions_commit_synchronously_whatever_the_server_default(storage_url):
    """An ack promises the batch is on disk: `synchronous_commit = off` on the server
    (or the database) must not apply to the collector's sessions."""
    import psycopg

    name = storage_url.rsplit("/", 1)[1]
    with psycopg.connect(storage_url, autocommit=True) as db:
        db.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        assert db.execute("SHOW synchronous_commit").fetchone()[0] == "on"  # set for new ones
    storage = open_storage(storage_url)
    try:
        storage.store([Batch("a", "e", rows(1, 2))], NOW)
        with storage._pool.connection() as db:  # a session the storage writes with
            assert db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    finally:
        storage.close()


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


def test_a_full_disk_is_the_error_raised_and_the_next_commit_works(tmp_path):
    """SQLite rolls a transaction back by itself on SQLITE_FULL; the error that
    surfaces (and is logged) must be "disk is full", not a failed ROLLBACK."""
    import sqlite3

    from sensor_edge.server.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(str(tmp_path / "full.db"))
    try:
        storage.store([Batch("a", "e", rows(1, 10))], NOW)
        # The writer's own connection (this thread's): cap its file a few pages on.
        db = storage._connection()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 5}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            storage.store([Batch("a", "e", rows(11, 20_000, sensor="s" * 100))], NOW)
        assert seqs(storage, "a") == list(range(1, 11))  # the batch went whole or not at all
        assert storage.acked("a", "e") == 10
        db.execute("PRAGMA max_page_count = 1073741823")  # space again
        assert storage.store([Batch("a", "e", rows(11, 20))], NOW) == [10]
        assert storage.acked("a", "e") == 20
    finally:
        storage.close()
