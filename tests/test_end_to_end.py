"""The whole path with real processes: mock sensors -> agent -> WebSocket -> collector -> SQLite."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from conftest import BOTH_BACKENDS, TOKENS
from processes import wait_until
from websockets.sync.client import connect


def contiguous(seqs: list[int]) -> bool:
    return bool(seqs) and seqs == list(range(1, len(seqs) + 1))


@BOTH_BACKENDS
def test_readings_flow_from_mock_sensors_to_the_api(make_collector, make_agent):
    collector = make_collector()
    agent = make_agent(collector, "pi-1")
    readings = wait_until(
        lambda: collector.json("/api/readings?agent=pi-1")["readings"], 20,
        what="readings from pi-1")
    first = readings[0]
    assert set(first) == {"agent", "epoch", "seq", "sensor", "metric", "value", "unit", "ts"}
    assert first["agent"] == "pi-1"
    assert first["epoch"] == agent.epoch()
    # Every kind of mock sensor shows up, with the contract's metrics and units.
    wait_until(lambda: {("climate", "temperature", "C"), ("climate", "humidity", "%"),
                        ("soc", "temperature", "C")} <= {
        (r["sensor"], r["metric"], r["unit"])
        for r in collector.json("/api/readings?agent=pi-1&limit=5000")["readings"]},
        20, what="DHT and CPU readings")
    pi1 = collector.agent_entry("pi-1")
    assert pi1["connected"] is True and pi1["readings"] > 0
    assert abs(pi1["last_seen"] - time.time()) < 10

    started = time.monotonic()
    assert agent.terminate() == 0
    assert time.monotonic() - started < 5
    assert "Traceback" not in agent.log()
    # Whatever reached the buffer is stored once or still buffered; nothing is lost.
    stored = collector.stored_seqs("pi-1")
    assert contiguous(stored)
    assert stored[-1] + agent.buffered() == agent.last_seq()
    assert collector.terminate() == 0


@BOTH_BACKENDS
def test_collector_outage_loses_nothing_and_stores_each_reading_once(make_collector, make_agent):
    collector = make_collector()
    agent = make_agent(collector, "pi-1")
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 20, 20, what="first readings")
    collector.kill()  # kill -9 mid-stream
    outage_start = agent.last_seq()
    wait_until(lambda: agent.last_seq() > outage_start + 40, 20,
               what="the agent to keep reading into its buffer")
    collector.start()
    wait_until(lambda: agent.buffered() < 5 and len(collector.stored_seqs("pi-1")) > outage_start + 40,
               30, what="the backlog to drain")
    # A clean restart of the collector, too: it stops in time, the agent rides it out.
    started = time.monotonic()
    assert collector.terminate() == 0
    assert time.monotonic() - started < 5
    restart_at = agent.last_seq()
    wait_until(lambda: agent.last_seq() > restart_at + 10, 20, what="readings while it is down")
    collector.start()
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > restart_at + 10, 30,
               what="delivery after the clean restart")
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log() + collector.log()
    stored = collector.stored_seqs("pi-1", agent.epoch())
    assert contiguous(stored), "a gap or a duplicate in the stored seqs"
    assert stored[-1] + agent.buffered() == agent.last_seq()


@BOTH_BACKENDS
def test_agent_killed_resumes_same_epoch_with_next_seq(make_collector, make_agent):
    collector = make_collector()
    agent = make_agent(collector, "pi-2")
    wait_until(lambda: len(collector.stored_seqs("pi-2")) > 20, 20, what="first readings")
    epoch = agent.epoch()
    agent.kill()
    before = agent.last_seq()
    agent.start()
    wait_until(lambda: len(collector.stored_seqs("pi-2")) > before + 20, 20,
               what="readings after the restart")
    assert agent.epoch() == epoch
    assert agent.terminate() == 0
    stored = collector.stored_seqs("pi-2", epoch)
    assert contiguous(stored)
    assert collector.stored_seqs("pi-2") == stored  # one epoch only


def test_wrong_or_missing_token_is_refused_with_401(make_collector):
    collector = make_collector()
    for headers in ({}, {"Authorization": "Bearer not-a-token"},
                    {"Authorization": "Basic cGk6cGk="}):
        request = urllib.request.Request(
            collector.base + "/v1/stream",
            headers={"Connection": "Upgrade", "Upgrade": "websocket",
                     "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **headers})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 401


def test_an_agent_with_a_wrong_token_keeps_its_readings(make_collector, make_agent):
    collector = make_collector()
    agent = make_agent(collector, "pi-3", token="wrong-token")
    wait_until(lambda: "401" in agent.log(), 15, what="the agent to report the 401")
    wait_until(lambda: agent.last_seq() > 10, 15, what="readings kept in the buffer")
    assert collector.stored_seqs("pi-3") == []
    assert agent.terminate() == 0
    assert agent.buffered() == agent.last_seq()
    assert "wrong-token" not in agent.log() + collector.log()


@BOTH_BACKENDS
def test_several_agents_at_once(make_collector, make_agent):
    collector = make_collector()
    agents = [make_agent(collector, f"pi-{i}") for i in (1, 2, 3)]
    wait_until(lambda: all(len(collector.stored_seqs(a.name)) > 20 for a in agents), 30,
               what="readings from all three agents")
    for agent in agents:
        assert agent.terminate() == 0
    for agent in agents:
        stored = collector.stored_seqs(agent.name, agent.epoch())
        assert contiguous(stored)
        # The registry counts what each one stored and knows it has gone.
        entry = collector.agent_entry(agent.name)
        assert (entry["readings"], entry["connected"]) == (len(stored), False)


def test_batches_stored_by_one_commit_get_one_ack_for_the_last_seq(make_collector):
    """Acks cover every seq up to theirs: batches that commit together get one."""
    collector = make_collector()
    headers = {"Authorization": f"Bearer {TOKENS['pi-2']}"}
    batches = 40
    with connect(collector.stream_url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "agent": "pi-2", "epoch": "acks", "version": "t"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        # All at once: they arrive while the first commit runs, and share the next.
        for b in range(batches):
            ws.send(json.dumps({"type": "readings", "readings": [
                {"seq": b * 5 + i, "sensor": "s", "metric": "m", "value": 1.0, "unit": "",
                 "ts": 1.7e9} for i in range(1, 6)]}))
        acks = [json.loads(ws.recv(timeout=10))["seq"]]
        while acks[-1] < batches * 5:
            acks.append(json.loads(ws.recv(timeout=10))["seq"])
    assert acks == sorted(set(acks)) and all(seq % 5 == 0 for seq in acks)
    assert len(acks) < batches
    assert collector.stored_seqs("pi-2", "acks") == list(range(1, batches * 5 + 1))
    # The counter counts batches acknowledged, however many acks carried them.
    metrics = collector.get("/metrics")[1].decode()
    assert f"sensor_edge_acks_total {batches}.0" in metrics
