"""Agent health: `status` messages from a real agent, what the collector makes of
them in /api/agents, and the stale flag for an agent that has gone quiet."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest
from conftest import TOKENS
from processes import wait_until
from sensor_edge.agent import agent as agent_process
from sensor_edge.agent.agent import clock_synced
from sensor_edge.agent.uplink import STATUS_EVERY
from sensor_edge.contract import __version__
from websockets.sync.client import connect


def taken(collector, sensor: str, until: float) -> list[tuple[float, float]]:
    """(ts, value) of the stored readings of pi-1's ``sensor`` taken at ``until`` or before."""
    with sqlite3.connect(collector.storage, timeout=10) as db:
        return db.execute("SELECT ts, value FROM readings WHERE agent = 'pi-1' AND sensor = ? "
                          "AND metric = ? AND ts <= ? ORDER BY seq",
                          (sensor, "temperature", until)).fetchall()


def assert_counts_agree(counts: dict) -> None:
    assert set(counts) == {"good", "failed", "failures", "last_error", "consecutive_failures",
                           "held_back"}
    assert counts["held_back"] == 0  # these sensors have no filters to hold a reading back
    assert sum(counts["failures"].values()) == counts["failed"]
    assert 0 <= counts["consecutive_failures"] <= counts["failed"]
    assert (counts["last_error"] is None) == (counts["failed"] == 0)


def test_a_real_agent_reports_its_health(make_collector, make_agent):
    collector = make_collector()
    started = time.monotonic()
    agent = make_agent(collector, "pi-1")
    first = wait_until(lambda: collector.agent_entry("pi-1")["status"], 20,
                       what="pi-1's first status (sent right after welcome)")
    assert first["uptime"] <= time.monotonic() - started
    assert first["version"] == __version__
    assert first["backend"] == "mock"
    assert set(first["sensors"]) == {"climate", "motion", "soc"}
    for counts in first["sensors"].values():
        assert_counts_agree(counts)
    assert first["dropped"] == 0
    # What the agent's own check answers here, on the same kernel (see the test below).
    assert first["clock_synced"] is clock_synced()

    # The next one, STATUS_EVERY later, has moved on.
    later = wait_until(lambda: (s := collector.agent_entry("pi-1")["status"])["uptime"]
                       > first["uptime"] and s, STATUS_EVERY + 5, what="a second status")
    assert later["uptime"] - first["uptime"] >= STATUS_EVERY - 0.1  # rounded to 0.1 s
    # Its wall clock and its uptime moved together (no step here).
    assert abs((later["time"] - first["time"]) - (later["uptime"] - first["uptime"])) < 0.3
    for counts in later["sensors"].values():
        assert_counts_agree(counts)
    # Every reading taken before the status is stored once a later one is.
    wait_until(lambda: taken(collector, "soc", float("inf"))[-1][0] > later["time"] + 1, 10,
               what="the readings taken before the second status to be stored")
    for name in ("soc", "climate"):
        # A good read is one reading of its temperature: counted when it is taken, so
        # every one taken before the status (less any still on its way from the read
        # thread then) and none after.
        good = later["sensors"][name]["good"]
        assert len(taken(collector, name, later["time"] - 2)) <= good
        assert good <= len(taken(collector, name, later["time"]))
        assert good > first["sensors"][name]["good"], name
    # The CPU temperature it reports is the last one its soc sensor read (or the one
    # before, when the last was read on its thread just as the status was built).
    for status in (first, later):
        latest = [value for _, value in taken(collector, "soc", status["time"])[-2:]]
        assert status["cpu_temperature"] in latest, (status["cpu_temperature"], latest)

    entry = collector.agent_entry("pi-1")
    assert entry["connected"] is True and entry["stale"] is False
    assert abs(entry["clock_offset"]) < 1.0  # same machine, same clock
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log() and "Traceback" not in collector.log()
    # Nothing the agent sent upset the protocol (no status after bye, for one).
    assert "closing with" not in collector.log()


def test_buffer_depth_is_what_waits_for_an_ack(make_collector, make_agent):
    # Readings taken while the collector is not there, then an agent with no sensors:
    # what it reports is exactly what it holds.
    collector = make_collector(start=False)
    agent = make_agent(collector, "pi-1", sensors=[
        {"name": "soc", "type": "cpu_temperature", "interval": 0.05}])
    wait_until(lambda: agent.last_seq() >= 40, 20, what="readings in pi-1's buffer")
    assert agent.terminate() == 0
    waiting = agent.buffered()
    assert waiting == agent.last_seq()  # never acknowledged
    with sqlite3.connect(agent.buffer_path) as db:
        oldest_ts = db.execute("SELECT ts FROM readings ORDER BY seq LIMIT 1").fetchone()[0]
    agent.config["sensors"] = []
    agent.write_config()
    collector.start()
    agent.start()

    # The first status is built right after welcome, before any ack can have come.
    first = wait_until(lambda: collector.agent_entry("pi-1")["status"], 20,
                       what="pi-1's first status")
    assert first["buffer_depth"] == waiting
    # (Its age and its time are taken a moment apart, on two threads.)
    assert abs(first["buffer_oldest_age"] - (first["time"] - oldest_ts)) < 0.5
    assert first["sensors"] == {} and first["cpu_temperature"] is None
    assert first["dropped"] == 0

    later = wait_until(lambda: (s := collector.agent_entry("pi-1")["status"])["uptime"]
                       > first["uptime"] and s, STATUS_EVERY + 5, what="a second status")
    assert collector.stored_seqs("pi-1") == list(range(1, waiting + 1))
    assert later["buffer_depth"] == 0 and later["buffer_oldest_age"] is None
    assert later["sent"] == waiting and later["dropped"] == 0
    assert agent.terminate() == 0


@pytest.mark.parametrize(("state", "synced"), [
    (0, True),  # TIME_OK
    (1, True),  # TIME_INS: a leap second coming, synchronised
    (4, True),  # TIME_WAIT
    (5, False),  # TIME_ERROR: not synchronised
    (-1, None),  # the call failed (a seccomp filter, say)
])
def test_clock_synced_is_the_kernels_answer_read_without_changing_anything(
        monkeypatch, state, synced):
    calls = []

    class Libc:
        def adjtimex(self, timex):
            calls.append(bytes(timex))
            return state

    monkeypatch.setattr(agent_process, "_libc", Libc)
    assert clock_synced() is synced
    # modes (struct timex's first field) 0: a read; the agent never sets the clock.
    assert len(calls) == 1 and calls[0][:4] == bytes(4)


def test_clock_synced_is_unknown_where_adjtimex_is_not(monkeypatch):
    class Libc:
        def adjtimex(self, timex):
            return 0

    monkeypatch.setattr(agent_process, "_libc", Libc)
    monkeypatch.setattr(agent_process.sys, "platform", "darwin")
    assert clock_synced() is None  # not asked off Linux
    monkeypatch.setattr(agent_process.sys, "platform", "linux")
    assert clock_synced() is True
    monkeypatch.setattr(agent_process, "_libc", object)  # a C library without it
    assert clock_synced() is None


def test_an_agent_silent_for_longer_than_stale_after_is_flagged(make_collector, make_agent):
    collector = make_collector(stale_after=1.5)
    agent = make_agent(collector, "pi-1")
    wait_until(lambda: collector.agent_entry("pi-1")["connected"], 20, what="pi-1 to connect")
    assert collector.agent_entry("pi-1")["stale"] is False
    # Configured but never seen: stale from the start.
    never = collector.agent_entry("pi-3")
    assert never["stale"] is True and never["last_seen"] is None

    # Frozen: still connected (the socket stays open), but silent.
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        frozen = wait_until(lambda: (e := collector.agent_entry("pi-1"))["stale"] and e, 10,
                            what="pi-1 to be flagged stale")
        assert frozen["connected"] is True
        assert time.time() - frozen["last_seen"] > 1.5
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    wait_until(lambda: not collector.agent_entry("pi-1")["stale"], 10,
               what="pi-1 to be fresh again once it speaks")


def test_known_status_fields_are_kept_others_ignored_and_the_clock_offset_refreshed(
        make_collector):
    collector = make_collector()
    headers = {"Authorization": f"Bearer {TOKENS['pi-2']}"}
    with connect(collector.stream_url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "agent": "pi-2", "epoch": "e1", "version": "9.9",
                            "time": time.time()}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        status = {"type": "status", "time": time.time() - 100.0, "uptime": 5,
                  "buffer_depth": 42, "future_field": {"nested": [1, 2]}}
        ws.send(json.dumps(status))
        entry = wait_until(lambda: (e := collector.agent_entry("pi-2"))["status"] and e, 10,
                           what="the status to arrive")
        assert entry["status"]["buffer_depth"] == 42
        # Only what the protocol knows and checked is kept (protocol.STATUS_FIELDS).
        assert "future_field" not in entry["status"]
        assert entry["status"]["uptime"] == 5
        assert 99.0 < entry["clock_offset"] < 102.0  # the collector is 100 s ahead of this clock
        assert entry["stale"] is False
