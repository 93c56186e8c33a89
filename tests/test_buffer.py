"""The agent's durable buffer on real SQLite files."""

from __future__ import annotations

import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_edge.agent.buffer import Buffer, machine_identity


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
