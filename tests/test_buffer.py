"""The agent's durable buffer on real SQLite files."""

from __future__ import annotations

import shutil

from sensor_edge.agent.buffer import Buffer


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
    buffer = Buffer(str(tmp_path / "b.db"), 1000)
    buffer.append(samples(10))
    buffer.reconcile(6)
    assert [row[0] for row in buffer.after(0, 100)] == [7, 8, 9, 10]
    assert buffer.last_seq == 10


def test_power_cut_rollback_never_reuses_a_seq_the_collector_holds(tmp_path):
    path = tmp_path / "b.db"
    buffer = Buffer(str(path), 1000)
    buffer.append(samples(7))
    buffer.close()
    shutil.copy(path, tmp_path / "snapshot.db")  # the state the power cut rolls back to
    buffer = Buffer(str(path), 1000)
    buffer.append(samples(3, start=7))  # seqs 8..10, sent and stored by the collector
    buffer.close()
    shutil.copy(tmp_path / "snapshot.db", path)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"b.db{suffix}").unlink(missing_ok=True)

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
