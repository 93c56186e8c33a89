"""A power cut on the agent's Pi: RAM is gone, and the card holds only what the buffer
had fsync'd. The buffer copies its log after each fsync (a test hook); the cut is a
kill -9 at a random moment, then that copy replaces the buffer and the RAM journal
goes. The agent then takes readings while the collector is still away, so its seqs
collide with stored ones until the first welcome renumbers them."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from checks import assert_exactly_once, drain, say, seeded
from processes import wait_until

from sensor_edge.agent.buffer import SNAPSHOTS_ENV
from sensor_edge.agent.buffer_files import journal_directory

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

SYNC_INTERVAL = 1.0
READ_EVERY = 0.1
SENSORS = [{"name": "soc", "type": "cpu_temperature", "interval": READ_EVERY}]


def stored_readings(storage: str, agent: str) -> list[tuple[int, float, float]]:
    """(seq, ts, value) of what the collector holds for the agent, in ts order."""
    with sqlite3.connect(storage, timeout=10) as db:
        return db.execute("SELECT seq, ts, value FROM readings WHERE agent = ? ORDER BY ts",
                          (agent,)).fetchall()


def latest_snapshot(directory: Path) -> Path:
    complete = sorted(p for p in directory.iterdir() if p.suffix != ".partial")
    assert complete, "the buffer never synced"
    return complete[-1]


@pytest.mark.parametrize("cut_during", ["delivery", "outage"])
def test_power_cut_loses_at_most_sync_interval(cut_during, make_collector, make_agent,
                                               runtime_directory, tmp_path, monkeypatch):
    """During delivery every reading is acknowledged at once and none is written to the
    card, so the card lags what the collector holds: the agent must renumber. During an
    outage the card takes the waiting readings every sync_interval: only the last ones
    may go."""
    rng = seeded()
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    monkeypatch.setenv(SNAPSHOTS_ENV, str(snapshots))
    collector = make_collector()
    agent = make_agent(collector, "pi-1", start=False, sensors=SENSORS)
    agent.config["buffer"]["sync_interval"] = SYNC_INTERVAL
    agent.write_config()
    agent.start()
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 30, 30, what="first readings")
    if cut_during == "outage":
        collector.kill()
    up = rng.uniform(2.0, 5.0)
    time.sleep(up)
    stored_before = collector.stored_seqs("pi-1")
    last_before = agent.last_seq()
    agent.kill()
    cut_at = time.time()

    snapshot = latest_snapshot(snapshots)
    shutil.rmtree(agent.buffer_path)
    shutil.copytree(snapshot, agent.buffer_path)
    shutil.rmtree(journal_directory(agent.buffer_path, str(runtime_directory)))
    on_card = agent.last_seq()
    say(f"power cut {up:.1f} s into the {cut_during} at seq {last_before}; the collector "
        f"holds up to {stored_before[-1]}, the card up to {on_card}")
    if cut_during == "delivery":
        assert on_card < stored_before[-1], "the card lags what the collector holds"
        collector.kill()
    else:
        assert on_card > stored_before[-1], "the card holds what waited in the outage"

    monkeypatch.delenv(SNAPSHOTS_ENV)
    time.sleep(1.0)  # the reboot
    logged = len(agent.log())
    agent.start()  # it reads on while the collector is away
    wait_until(lambda: agent.last_seq() > max(stored_before[-1], on_card) + 5, 20,
               what="readings taken before the collector is back")
    restarted_at = time.time()
    collector.start()
    if cut_during == "delivery":  # those readings took seqs the collector holds
        wait_until(lambda: "a power cut?" in agent.log()[logged:], 30,
                   what="the agent to renumber past what the collector holds")
    last = drain(collector, agent)["pi-1"]
    assert_exactly_once(collector, agent, last)

    rows = stored_readings(collector.storage, "pi-1")
    assert len({ts for _, ts, _ in rows}) == len(rows), "a reading stored twice"
    # A reading every READ_EVERY s but for one hole: from at most SYNC_INTERVAL before
    # the cut (plus a read's jitter) to the restart.
    holes = [(a, b) for (_, a, _), (_, b, _) in zip(rows, rows[1:]) if b - a > 0.5]
    say("holes in the stored readings (seconds from the cut): "
        f"{[(round(a - cut_at, 2), round(b - cut_at, 2)) for a, b in holes]}")
    assert len(holes) == 1
    lost_from, lost_to = holes[0]
    assert lost_from >= cut_at - SYNC_INTERVAL - 0.3, "lost more than sync_interval"
    assert lost_to <= restarted_at
    assert "Traceback" not in agent.log() + collector.log()
