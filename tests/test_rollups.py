"""Rollups: every 1-minute and 1-hour bucket equals min/avg/max/count of the stored
readings in it, however the readings came (duplicates, out of order, late, in
several groups and commits), on both storages; a database from before rollups is
backfilled while agents stream; retention keeps rollups past the raw readings."""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import BOTH_BACKENDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import wait_until
from rollup_checks import (as_before_rollups, assert_rollups_match, empty_database,
                           from_readings, rollups_held)

from sensor_edge.server.storage import Batch, ReadingQuery, open_storage
from sensor_edge.server.storage.retention import DAY, Retention
from sensor_edge.server.storage.rollups import HOUR, MINUTE

NOW = 1_700_000_000.0
examples = itertools.count()
EXAMPLES = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

timestamps = st.one_of(
    st.floats(NOW - 4 * HOUR, NOW + 4 * HOUR),
    # On bucket edges, and just before them.
    st.integers(-240, 240).map(lambda k: NOW + k * MINUTE),
    st.integers(-240, 240).map(lambda k: NOW + k * MINUTE - 1e-6),
)
values = st.one_of(st.floats(-1e6, 1e6), st.integers(-5, 5).map(float))


@st.composite
def batches(draw) -> Batch:
    # Seqs from a small range: resends and overlaps between batches are frequent.
    seqs = sorted(draw(st.sets(st.integers(1, 40), min_size=1, max_size=12)))
    rows = [(seq, draw(st.sampled_from(["s", "t"])), draw(st.sampled_from(["m", "n"])),
             draw(values), "u", draw(timestamps)) for seq in seqs]
    return Batch(draw(st.sampled_from(["a", "b"])), draw(st.sampled_from(["e1", "e2"])), rows)


groups = st.lists(batches(), min_size=1, max_size=4)


@BOTH_BACKENDS
@EXAMPLES
@given(commits=st.lists(groups, min_size=1, max_size=6))
def test_rollups_equal_the_readings_they_summarise(storage_url, tmp_path, commits):
    url = empty_database(storage_url, tmp_path, next(examples))
    storage = open_storage(url)
    try:
        for group in commits:
            storage.store(group, NOW)
            assert_rollups_match(from_readings(storage), rollups_held(storage))
        # Raw readings expire; their rollups stay, unchanged.
        held = rollups_held(storage)
        assert storage.delete_older_than(NOW + 5 * HOUR, 10**6) > 0
        assert list(storage.iter_readings(ReadingQuery())) == []
        assert rollups_held(storage) == held
    finally:
        storage.close()


@BOTH_BACKENDS
@EXAMPLES
@given(before=st.lists(groups, min_size=0, max_size=4),
       actions=st.lists(st.one_of(groups, st.integers(1, 25)), max_size=8))
def test_a_backfill_interleaved_with_commits_counts_every_reading_once(
        storage_url, tmp_path, before, actions):
    url = empty_database(storage_url, tmp_path, next(examples))
    old = open_storage(url)
    for group in before:
        old.store(group, NOW)
    old.close()
    as_before_rollups(url)

    storage = open_storage(url)  # migrates: the tables, and the backfill to do
    try:
        for action in actions:
            if isinstance(action, int):
                storage.backfill_rollups(action)  # a step of that many readings
            else:
                storage.store(action, NOW)
        steps = 0
        while not storage.backfill_rollups(3)[1]:
            steps += 1
            assert steps < 1000
        assert storage.backfill_rollups(3) == (0, True)
        assert_rollups_match(from_readings(storage), rollups_held(storage))
    finally:
        storage.close()


@BOTH_BACKENDS
def test_a_group_with_a_duplicate_rolls_up_only_what_it_inserted(storage_url):
    """The slow paths: SQLite's batch with duplicates, PostgreSQL's staging insert."""
    storage = open_storage(storage_url)
    try:
        first = [(seq, "s", "m", 10.0 * seq, "u", NOW + seq) for seq in range(1, 6)]
        storage.store([Batch("a", "e", first)], NOW)
        # A resend with other values (a corrupted resend must not count), new rows
        # around it, and a key twice in one group.
        again = [(seq, "s", "m", -1.0, "u", NOW + seq) for seq in range(3, 9)]
        twice = [(8, "s", "m", 99.0, "u", NOW + 8), (9, "s", "m", 90.0, "u", NOW + 9)]
        assert storage.store([Batch("a", "e", again), Batch("a", "e", twice)], NOW) == [3, 1]
        minute = rollups_held(storage)["1m"][("a", "s", "m", int(NOW // 60 * 60))]
        assert minute == (-1.0, pytest.approx((10 + 20 + 30 + 40 + 50 - 3 + 90) / 9), 90.0, 9)
        assert_rollups_match(from_readings(storage), rollups_held(storage))
    finally:
        storage.close()


@BOTH_BACKENDS
def test_a_timestamp_far_past_any_bucket_is_clamped_not_a_failed_commit(storage_url):
    storage = open_storage(storage_url)
    try:
        rows = [(1, "s", "m", 1.0, "u", 1e300), (2, "s", "m", 2.0, "u", -1e300),
                (3, "s", "m", 3.0, "u", NOW)]
        assert storage.store([Batch("a", "e", rows)], NOW) == [3]
        assert_rollups_match(from_readings(storage), rollups_held(storage))
    finally:
        storage.close()


@BOTH_BACKENDS
def test_two_writers_filling_the_same_new_buckets_at_once_count_both(storage_url):
    """Two collectors store readings of one series (two epochs of an agent) for the same
    new minutes at the same moment: one commit waits for the other (PostgreSQL: the
    agent's row), then adds to the buckets the other made."""
    writers = [open_storage(storage_url) for _ in range(2)]
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def write(w: int) -> None:
        try:
            for round_ in range(30):
                ts0 = NOW + round_ * 600
                rows = [(round_ * 100 + i + 1, "s", "m", float(w * 1000 + i), "u", ts0 + i * 7)
                        for i in range(100)]
                start.wait()
                writers[w].store([Batch("a", f"epoch-{w}", rows)], NOW)
        except BaseException as e:  # reported below; a thread can't fail the test itself
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        held = rollups_held(writers[0])
        assert_rollups_match(from_readings(writers[1]), held)
        assert sum(count for *_, count in held["1h"].values()) == 2 * 30 * 100
    finally:
        for w in writers:
            w.close()


def run_sweep(storage, now: float, days: float, rollup_days: float) -> None:
    with ThreadPoolExecutor(1) as writer:
        retention = Retention(storage, writer, days, rollup_days=rollup_days)
        asyncio.run(retention.sweep(now))


def expected_after(held: dict, cutoff: float) -> dict:
    """The buckets that must survive a rollup cutoff: those that had not ended by it."""
    widths = {"1m": MINUTE, "1h": HOUR}
    return {tier: {k: v for k, v in buckets.items() if k[3] + widths[tier] > cutoff}
            for tier, buckets in held.items()}


@BOTH_BACKENDS
def test_retention_deletes_only_whole_buckets_older_than_both_cutoffs(storage_url):
    storage = open_storage(storage_url)
    try:
        # A reading every 10 minutes over the 30 days before `now`, and one just now.
        now = NOW + 1234.5
        rows = [(seq, "s", "m", float(seq), "u", now - seq * 600) for seq in range(1, 30 * 144)]
        # Received a month ago: retention keeps a reading until it was received long
        # enough ago too (`received`), and here its ts alone decides.
        storage.store([Batch("a", "e", rows), Batch("a", "e2", [(1, "s", "m", 0.0, "u", now - 1)])],
                      now - 30 * DAY)

        def raw_oldest() -> float:
            return min(r[7] for r in storage.iter_readings(ReadingQuery()))

        # Rollups for 2 days, readings for 10: the rollups stay as long as the readings.
        before = rollups_held(storage)
        run_sweep(storage, now, days=10, rollup_days=2)
        assert raw_oldest() >= now - 10 * DAY
        after = rollups_held(storage)
        assert after == expected_after(before, now - 10 * DAY)
        # The hour holding the raw cutoff stays, though part of it is older.
        assert min(k[3] for k in after["1h"]) <= now - 10 * DAY
        assert len(after["1h"]) < len(before["1h"])

        # Rollups for longer than readings: buckets outlive their readings.
        run_sweep(storage, now, days=1, rollup_days=5)
        assert raw_oldest() >= now - DAY
        assert rollups_held(storage) == expected_after(after, now - 5 * DAY)
        assert min(k[3] for k in rollups_held(storage)["1m"]) < now - 4 * DAY

        # However short both periods, the buckets being filled now stay.
        run_sweep(storage, now, days=0.0001, rollup_days=0.0001)
        left = rollups_held(storage)
        assert set(left["1m"]) == {("a", "s", "m", int(now // MINUTE * MINUTE))}
        assert set(left["1h"]) == {("a", "s", "m", int(now // HOUR * HOUR))}
    finally:
        storage.close()


@BOTH_BACKENDS
def test_a_collector_backfills_an_old_database_while_agents_stream(
        storage_url, make_collector, make_agent):
    old = open_storage(storage_url)
    rows = [(seq, "climate", "temperature", 20 + seq % 13, "C", NOW + seq * 2.5)
            for seq in range(1, 12_001)]
    old.store([Batch("pi-1", "before", rows[i:i + 1000]) for i in range(0, len(rows), 1000)], NOW)
    old.close()
    as_before_rollups(storage_url)

    collector = make_collector()
    agent = make_agent(collector, "pi-2")
    wait_until(lambda: "rollups: backfill done" in collector.log(), 60, what="the backfill")
    log = collector.log()
    assert "rolling up the readings stored before rollups existed (about 12000)" in log
    assert "backfill done, 12000 readings" in log
    wait_until(lambda: len(collector.stored_seqs("pi-2")) > 10, 20, what="pi-2's readings")
    assert agent.terminate() == 0
    assert collector.terminate() == 0

    storage = open_storage(storage_url)
    try:
        held = rollups_held(storage)
        assert_rollups_match(from_readings(storage), held)
        assert {key[0] for key in held["1h"]} == {"pi-1", "pi-2"}
    finally:
        storage.close()
