"""The agent's durable buffer on real SQLite files."""

from __future__ import annotations

import shutil
import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_edge.agent.buffer import Buffer, machine_identity
from sensor_edge.agent.buffer_files import inspect


def samples(n: int, start: float = 0.0) -> list[tuple]:
    return [("s", "m", start + i, "", 1_700_000_000.0 + i) for i in range(n)]


def test_seqs_are_assigned_on_commit_and_survive_reopening(tmp_path):
    path = str(tmp_path / "b.db")
    buffer = Buffer(path, 1000)
    epoch = buffer.epoch
    assert buffer.append(samples(3)) == 3
    assert [row[0] for row in buffer.after(0, 10)] == [1, 2, 3]
    buffer.close()
    again = Buffer(path, 1000)
    assert again.epoch == epoch
    assert again.append(samples(2)) == 5
    assert again.depth == 5


def test_ack_deletes_and_seqs_never_restart(tmp_path):
    path = str(tmp_path / "b.db")
    buffer = Buffer(path, 1000)
    buffer.append(samples(5))
    buffer.acknowledged(5)
    assert buffer.depth == 0 and buffer.after(0, 10) == []
    buffer.close()
    again = Buffer(path, 1000)
    assert again.append(samples(1)) == 6


def test_full_buffer_drops_the_oldest_and_counts_them(tmp_path):
    buffer = Buffer(str(tmp_path / "b.db"), max_readings=10)
    buffer.append(samples(8))
    buffer.append(samples(5, start=100))
    assert buffer.depth == 10
    assert buffer.dropped == 3
    assert [row[0] for row in buffer.after(0, 100)] == list(range(4, 14))
    buffer.close()
    assert Buffer(str(tmp_path / "b.db"), 10).dropped == 3


def test_a_new_buffer_is_a_new_epoch(tmp_path):
    assert Buffer(str(tmp_path / "a.db"), 10).epoch != Buffer(str(tmp_path / "b.db"), 10).epoch


def test_reconcile_after_a_lost_ack_forgets_what_the_collector_holds(tmp_path):
    path = str(tmp_path / "b.db")
    sent = Buffer(path, 1000)
    sent.append(samples(10))  # sent; the collector stored 1..6 and its acks were lost
    sent.close()
    buffer = Buffer(path, 1000)  # the agent restarted (no power cut)
    buffer.reconcile(6)
    assert [row[0] for row in buffer.after(0, 100)] == [7, 8, 9, 10]
    assert buffer.last_seq == 10


def test_power_cut_rollback_never_reuses_a_seq_the_collector_holds(tmp_path, runtime_directory):
    path = tmp_path / "b.db"
    buffer = Buffer(str(path), 1000)
    buffer.append(samples(7))
    buffer.close()
    shutil.copytree(path, tmp_path / "snapshot.db")  # the state the power cut rolls back to
    buffer = Buffer(str(path), 1000)
    buffer.append(samples(3, start=7))  # seqs 8..10, sent and stored by the collector
    buffer.close()
    shutil.rmtree(path)
    shutil.copytree(tmp_path / "snapshot.db", path)
    shutil.rmtree(runtime_directory)  # RAM is empty after the cut
    runtime_directory.mkdir()

    # After the reboot: the buffer thinks 7 was the last seq and reads on.
    rebooted = Buffer(str(path), 1000)
    assert rebooted.last_seq == 7
    rebooted.append([("s", "m", 99.0, "", 1_700_000_100.0),
                     ("s", "m", 98.0, "", 1_700_000_101.0)])  # seqs 8, 9: would collide
    rebooted.reconcile(10)  # the collector's welcome: it holds up to 10
    rows = rebooted.after(0, 100)
    assert [(row[0], row[3]) for row in rows] == [(11, 99.0), (12, 98.0)]
    assert rebooted.last_seq == 12
    assert rebooted.append(samples(1)) == 13
    rebooted.close()
    assert Buffer(str(path), 1000).last_seq == 13


# A power cut rolls the buffer back to what it had committed to the card; the
# collector may hold more than that (it stored what was sent before the cut),
# and the agent may take any number of new readings before it hears `welcome`.
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_power_cut_then_welcome_delivers_every_new_reading_once(tmp_path_factory, data):
    surviving = data.draw(st.integers(0, 40), label="last seq on the card after the cut")
    lost = data.draw(st.integers(0, 40), label="seqs committed, then rolled back")
    stored = data.draw(st.integers(0, surviving + lost), label="collector holds 1..stored")
    forgotten = data.draw(st.integers(0, min(stored, surviving)), label="acked before the cut")
    chunks = data.draw(st.lists(st.integers(1, 12), max_size=8), label="new readings per commit")

    path = str(tmp_path_factory.mktemp("cut") / "b.db")
    before = Buffer(path, 10_000)
    before.append([("s", "m", float(seq), "", 1.0) for seq in range(1, surviving + 1)])
    before.acknowledged(forgotten)
    before.close()

    # The collector's store: (seq -> value), the readings it got before the cut.
    collector = {seq: float(seq) for seq in range(1, stored + 1)}
    rebooted = Buffer(path, 10_000)
    new_values = []
    for size in chunks:
        values = [-1.0 - len(new_values) - i for i in range(size)]  # negative: new readings
        rebooted.append([("s", "m", v, "", 2.0) for v in values])
        new_values += values
    rebooted.reconcile(stored)  # the first welcome
    for seq, _, _, value, _, _ in rebooted.after(stored, 100_000):
        collector.setdefault(seq, value)  # the collector keeps the first of a duplicate
    rebooted.acknowledged(max(collector, default=0))

    assert sorted(collector) == list(range(1, len(collector) + 1)), "a gap in the stored seqs"
    delivered = sorted(v for v in collector.values() if v < 0)
    assert delivered == sorted(new_values), "a reading taken after the restart was lost"
    # Readings of the earlier run that survived on the card and were never stored arrive too.
    kept_old = [float(s) for s in range(max(stored, forgotten) + 1, surviving + 1)]
    assert all(collector.get(int(v)) == v for v in kept_old)
    assert rebooted.depth == 0
    assert rebooted.append([("s", "m", 0.5, "", 3.0)]) == len(collector) + 1
    rebooted.close()


def test_a_second_welcome_in_the_same_run_renumbers_only_past_the_last_seq(tmp_path):
    path = str(tmp_path / "b.db")
    Buffer(path, 1000).append(samples(10))
    buffer = Buffer(path, 1000)
    buffer.reconcile(4)  # first collector: holds 1..4
    buffer.reconcile(7)  # failover: another store that holds 1..7 (same database)
    assert [row[0] for row in buffer.after(0, 100)] == [8, 9, 10]
    assert buffer.last_seq == 10


def test_a_buffer_copied_to_another_machine_gets_a_new_epoch_and_keeps_its_readings(tmp_path):
    path = str(tmp_path / "b.db")
    original = Buffer(path, 1000, machine="pi-a")
    original.append(samples(5))
    original.acknowledged(2)
    epoch = original.epoch
    original.close()
    assert Buffer(path, 1000, machine="pi-a").epoch == epoch  # same machine: same epoch

    clone = Buffer(path, 1000, machine="pi-b")  # the SD card, imaged into another Pi
    assert clone.epoch != epoch
    assert [(row[0], row[3]) for row in clone.after(0, 10)] == [(1, 2.0), (2, 3.0), (3, 4.0)]
    assert clone.append(samples(1)) == 4
    clone.close()
    assert Buffer(path, 1000, machine="pi-b").epoch == clone.epoch


def test_machine_identity_reads_the_machine_id_and_the_board_serial(tmp_path):
    assert machine_identity(str(tmp_path)) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123abcd\n")
    assert machine_identity(str(tmp_path)) == "0123abcd/"
    serial = tmp_path / "sys/firmware/devicetree/base"
    serial.mkdir(parents=True)
    (serial / "serial-number").write_bytes(b"10000000deadbeef\0")
    assert machine_identity(str(tmp_path)) == "0123abcd/10000000deadbeef"


# --- the journal in RAM and the log on the card -------------------------------------


def test_a_killed_agent_keeps_everything_the_buffer_accepted(tmp_path):
    path = str(tmp_path / "b.db")
    buffer = Buffer(path, 1000)
    buffer.append(samples(5))
    buffer.acknowledged(2)
    buffer.append(samples(3, start=5))
    epoch = buffer.epoch
    # kill -9: no close(), nothing synced to the card; the RAM journal stays.
    again = Buffer(path, 1000)
    assert again.epoch == epoch
    assert [(r.seq, r.value) for r in again.after(0, 100)] == [(s, s - 1.0) for s in range(3, 9)]
    assert again.last_seq == 8 and again.depth == 6
    assert again.append(samples(1)) == 9


def test_readings_acknowledged_within_sync_interval_never_reach_the_card(tmp_path):
    path = tmp_path / "b.db"
    now = [0.0]
    buffer = Buffer(str(path), 1000, sync_interval=10, clock=lambda: now[0])
    card = sorted(p.stat().st_size for p in path.glob("*.log"))
    for i in range(100):  # the collector acknowledges each tick at once
        now[0] += 0.5
        last = buffer.append(samples(4, start=4 * i))
        assert buffer.sync_due() == now[0] + 10 - 1.0
        buffer.acknowledged(last)
        assert buffer.sync_due() is None
    assert sorted(p.stat().st_size for p in path.glob("*.log")) == card
    # The link goes: what is not acknowledged is written within sync_interval.
    buffer.append(samples(4, start=400))
    now[0] += 9
    assert buffer.sync_due() <= now[0]
    assert buffer.sync()
    assert sum(p.stat().st_size for p in path.glob("*.log")) > sum(card)
    assert buffer.sync_due() is None
    assert [r.seq for r in buffer.after(0, 10)] == [401, 402, 403, 404]


def test_a_page_of_unacknowledged_readings_is_written_at_once(tmp_path):
    now = [0.0]
    buffer = Buffer(str(tmp_path / "b.db"), 100_000, sync_interval=60, clock=lambda: now[0])
    buffer.append(samples(100))
    assert buffer.sync_due() > now[0]
    buffer.append(samples(200))
    assert buffer.sync_due() <= now[0]


def test_acknowledged_segments_are_deleted(tmp_path, monkeypatch):
    import sensor_edge.agent.buffer as module

    monkeypatch.setattr(module, "SEGMENT_BYTES", 2048)
    path = tmp_path / "b.db"
    buffer = Buffer(str(path), 100_000)
    for i in range(20):  # an outage: each sync writes what waits
        buffer.append(samples(50, start=50 * i))
        assert buffer.sync()
    assert len(list(path.glob("*.log"))) > 5
    assert [r.seq for r in buffer.after(0, 2000)] == list(range(1, 1001))
    buffer.acknowledged(1000)
    assert buffer.has_dead_segments
    buffer.tidy()
    assert len(list(path.glob("*.log"))) == 1  # the newest holds the state
    buffer.close()
    again = Buffer(str(path), 100_000)
    assert again.depth == 0 and again.last_seq == 1000


def test_an_unfinished_write_at_the_end_of_the_log_counts_for_nothing(tmp_path, caplog):
    path = tmp_path / "b.db"
    buffer = Buffer(str(path), 1000)
    buffer.append(samples(3))
    buffer.close()
    segment = sorted(path.glob("*.log"))[-1]
    good = segment.read_bytes()
    with open(segment, "ab") as f:  # what a power cut mid-write leaves
        f.write(good[-40:-3])
    again = Buffer(str(path), 1000)
    assert [r.seq for r in again.after(0, 10)] == [1, 2, 3]
    assert "unfinished write" in caplog.text
    assert again.append(samples(1)) == 4


def test_inspect_reads_a_live_buffer_without_touching_it(tmp_path):
    path = str(tmp_path / "b.db")
    buffer = Buffer(path, 1000)
    buffer.append(samples(5))
    buffer.acknowledged(2)
    state = inspect(path)
    assert (state.epoch, state.last_seq, state.depth, state.oldest) == (buffer.epoch, 5, 3, 3)
    assert buffer.after(0, 10)[0].seq == 3


def test_the_sqlite_buffer_of_earlier_releases_is_moved_into_the_log(tmp_path):
    path = tmp_path / "buffer.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE readings (seq INTEGER PRIMARY KEY, sensor TEXT NOT NULL,
            metric TEXT NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL, ts REAL NOT NULL);
        INSERT INTO meta VALUES ('epoch', 'e0e0'), ('last_seq', '12'), ('dropped', '3'),
            ('machine', 'pi-a');
    """)
    db.executemany("INSERT INTO readings VALUES (?, 's', 'm', ?, 'C', ?)",
                   [(seq, seq / 2, 1_700_000_000.0 + seq) for seq in range(9, 13)])
    db.commit()
    db.close()
    buffer = Buffer(str(path), 1000, machine="pi-a")
    assert path.is_dir()
    assert (buffer.epoch, buffer.last_seq, buffer.dropped, buffer.depth) == ("e0e0", 12, 3, 4)
    assert [(r.seq, r.value, r.unit) for r in buffer.after(0, 10)] == \
        [(seq, seq / 2, "C") for seq in range(9, 13)]
    assert buffer.append(samples(1)) == 13
    assert not list(tmp_path.glob("buffer.db?*"))  # the old file and its -wal are gone


# A power cut at a random moment: RAM is gone, and the card holds what the last
# sync wrote (a copy of the log taken after each sync). Readings accepted more than
# sync_interval before the cut are on the card or at the collector; after the
# restart every reading the collector holds is held once, under contiguous seqs.
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_power_cut_loses_at_most_the_last_sync_interval(tmp_path_factory, data):
    interval, step = 5.0, 0.25
    phases = data.draw(st.lists(st.tuples(st.integers(1, 80), st.booleans()), min_size=1,
                                max_size=5), label="(steps, link up)")
    cut = data.draw(st.integers(1, sum(n for n, _ in phases)), label="cut after step")
    after_reboot = data.draw(st.integers(0, 30), label="readings before the first welcome")

    root = tmp_path_factory.mktemp("cut")
    path, card, ram = root / "b.db", root / "card", root / "ram"
    ram.mkdir()
    now = [0.0]
    buffer = Buffer(str(path), 100_000, sync_interval=interval, runtime=str(ram),
                    clock=lambda: now[0])

    def snapshot() -> None:
        shutil.rmtree(card, ignore_errors=True)
        shutil.copytree(path, card)

    buffer.after_sync = snapshot
    snapshot()
    collector: dict[int, float] = {}
    taken: list[tuple[float, float]] = []  # (value, when accepted)
    steps = [up for n, up in phases for _ in range(n)][:cut]
    for i, up in enumerate(steps):
        now[0] = i * step
        values = [float(len(taken) + k) for k in range(1 + i % 3)]
        buffer.append([("s", "m", v, "", now[0]) for v in values])
        taken += [(v, now[0]) for v in values]
        if up:  # sent, stored and acknowledged at once
            for reading in buffer.after(max(collector, default=0), 100_000):
                collector.setdefault(reading.seq, reading.value)
            buffer.acknowledged(max(collector))
        due = buffer.sync_due()
        if due is not None and due <= now[0] + step:  # the syncer wakes on time
            now[0] = max(now[0], due)
            assert buffer.sync()
    cut_at = now[0]

    # The cut: the card as the last sync left it; RAM empty.
    shutil.rmtree(path)
    shutil.copytree(card, path)
    shutil.rmtree(ram)
    ram.mkdir()
    rebooted = Buffer(str(path), 100_000, sync_interval=interval, runtime=str(ram))
    kept = {r.value for r in rebooted.after(0, 100_000)}
    stored = set(collector.values())
    old_enough = [v for v, at in taken if at <= cut_at - interval]
    assert all(v in kept or v in stored for v in old_enough), "lost more than sync_interval"

    news = [-1.0 - k for k in range(after_reboot)]
    if news:
        rebooted.append([("s", "m", v, "", 0.0) for v in news])
    rebooted.reconcile(max(collector, default=0))  # the first welcome
    for reading in rebooted.after(max(collector, default=0), 100_000):
        collector.setdefault(reading.seq, reading.value)
    rebooted.acknowledged(max(collector, default=0))
    assert sorted(collector) == list(range(1, len(collector) + 1)), "a gap in the stored seqs"
    values = list(collector.values())
    assert len(values) == len(set(values)), "a reading stored twice"
    assert set(news) <= set(values) and kept <= set(values)
    assert rebooted.depth == 0
