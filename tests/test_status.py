"""Agent health: `status` messages from a real agent, what the collector makes of
them in /api/agents, and the stale flag for an agent that has gone quiet."""

from __future__ import annotations

import json
import os
import signal
import time

from conftest import TOKENS
from processes import wait_until
from websockets.sync.client import connect


def agent_entry(collector, agent_id: str) -> dict:
    return next(a for a in collector.json("/api/agents")["agents"] if a["id"] == agent_id)


def test_a_real_agent_reports_its_health(make_collector, make_agent):
    collector = make_collector()
    agent = make_agent(collector, "pi-1")
    first = wait_until(lambda: agent_entry(collector, "pi-1")["status"], 20,
                       what="pi-1's first status (sent right after welcome)")
    assert first["version"] == "0.1.0"
    assert first["backend"] == "mock"
    assert set(first["sensors"]) == {"climate", "motion", "soc"}
    for counts in first["sensors"].values():
        assert {"good", "failed", "failures", "last_error", "consecutive_failures"} <= set(counts)
    assert isinstance(first["buffer_depth"], int) and first["buffer_depth"] >= 0
    assert first["dropped"] == 0
    assert first["clock_synced"] in (True, False, None)

    # The next one, STATUS_EVERY (10 s) later, has moved on.
    later = wait_until(lambda: (s := agent_entry(collector, "pi-1")["status"])["uptime"]
                       > first["uptime"] and s, 15, what="a second status")
    assert later["uptime"] - first["uptime"] >= 9
    soc = later["sensors"]["soc"]
    assert soc["good"] > first["sensors"]["soc"]["good"]
    assert isinstance(later["cpu_temperature"], float) and 20 < later["cpu_temperature"] < 100
    climate = later["sensors"]["climate"]
    assert climate["good"] + climate["failed"] >= 3  # a DHT22 read every 2 s
    # The buffer it reports is the buffer it has: it drains as acks arrive.
    assert later["buffer_depth"] <= agent.last_seq()

    entry = agent_entry(collector, "pi-1")
    assert entry["connected"] is True and entry["stale"] is False
    assert abs(entry["clock_offset"]) < 1.0  # same machine, same clock
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log() and "Traceback" not in collector.log()
    # Nothing the agent sent upset the protocol (no status after bye, for one).
    assert "closing with" not in collector.log()


def test_an_agent_silent_for_longer_than_stale_after_is_flagged(make_collector, make_agent):
    collector = make_collector(stale_after=1.5)
    agent = make_agent(collector, "pi-1")
    wait_until(lambda: agent_entry(collector, "pi-1")["connected"], 20, what="pi-1 to connect")
    assert agent_entry(collector, "pi-1")["stale"] is False
    # Configured but never seen: stale from the start.
    never = agent_entry(collector, "pi-3")
    assert never["stale"] is True and never["last_seen"] is None

    # Frozen: still connected (the socket stays open), but silent.
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        frozen = wait_until(lambda: (e := agent_entry(collector, "pi-1"))["stale"] and e, 10,
                            what="pi-1 to be flagged stale")
        assert frozen["connected"] is True
        assert time.time() - frozen["last_seen"] > 1.5
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    wait_until(lambda: not agent_entry(collector, "pi-1")["stale"], 10,
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
        entry = wait_until(lambda: (e := agent_entry(collector, "pi-2"))["status"] and e, 10,
                           what="the status to arrive")
        assert entry["status"]["buffer_depth"] == 42
        # Only what the protocol knows and checked is kept (protocol.STATUS_FIELDS).
        assert "future_field" not in entry["status"]
        assert entry["status"]["uptime"] == 5
        assert 99.0 < entry["clock_offset"] < 102.0  # the collector is 100 s ahead of this clock
        assert entry["stale"] is False
