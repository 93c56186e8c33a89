"""GET /metrics, read with Prometheus' own text parser, against what really happened."""

from __future__ import annotations

import json
import time

import pytest
from conftest import TOKENS
from processes import wait_until
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


def scrape(collector) -> dict[str, dict]:
    """family name -> {"type": ..., "samples": {(sample name, sorted labels): value}}."""
    status, body, headers = collector.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(body.decode()):
        families[family.name] = {
            "type": family.type,
            "samples": {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for s in family.samples},
        }
    return families


def value(families, family: str, sample: str | None = None, **labels) -> float | None:
    samples = families[family]["samples"]
    return samples.get((sample or family, tuple(sorted(labels.items()))))


def test_counters_match_what_was_stored(make_collector, make_agent):
    collector = make_collector()
    agent = make_agent(collector, "pi-1")
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 50, 20, what="readings")
    assert agent.terminate() == 0  # quiet now: the numbers can be compared exactly
    stored = len(collector.stored_seqs("pi-1"))
    m = scrape(collector)

    expected_types = {
        "sensor_edge_readings_received": "counter", "sensor_edge_readings_stored": "counter",
        "sensor_edge_readings_duplicate": "counter", "sensor_edge_batches": "counter",
        "sensor_edge_acks": "counter", "sensor_edge_commit_seconds": "histogram",
        "sensor_edge_agents_connected": "gauge", "sensor_edge_protocol_errors": "counter",
        "sensor_edge_agent_last_seen_timestamp_seconds": "gauge",
        "sensor_edge_agent_buffer_readings": "gauge", "sensor_edge_agent_stale": "gauge",
        "sensor_edge_sensor_read_failures": "counter", "sensor_edge_sensor_reads": "counter",
    }
    for name, kind in expected_types.items():
        assert m[name]["type"] == kind, name

    assert value(m, "sensor_edge_readings_stored", "sensor_edge_readings_stored_total") == stored
    received = value(m, "sensor_edge_readings_received", "sensor_edge_readings_received_total")
    duplicate = value(m, "sensor_edge_readings_duplicate", "sensor_edge_readings_duplicate_total")
    assert received == stored + duplicate
    batches = value(m, "sensor_edge_batches", "sensor_edge_batches_total")
    assert batches >= 1
    # Every batch was acknowledged before the agent said bye.
    assert value(m, "sensor_edge_acks", "sensor_edge_acks_total") == batches
    assert value(m, "sensor_edge_agents_connected") == 0

    # The commit-latency histogram: one observation per commit, cumulative buckets.
    commits = value(m, "sensor_edge_commits", "sensor_edge_commits_total")
    hist = m["sensor_edge_commit_seconds"]["samples"]
    assert value(m, "sensor_edge_commit_seconds", "sensor_edge_commit_seconds_count") == commits
    assert value(m, "sensor_edge_commit_seconds", "sensor_edge_commit_seconds_sum") > 0
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in hist.items()
                     if name == "sensor_edge_commit_seconds_bucket")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), commits)

    # Per agent, from the registry and the agent's last status.
    entry = collector.agent_entry("pi-1")
    assert value(m, "sensor_edge_agent_last_seen_timestamp_seconds",
                 agent="pi-1") == entry["last_seen"]
    assert value(m, "sensor_edge_agent_connected", agent="pi-1") == 0
    assert value(m, "sensor_edge_agent_stale", agent="pi-1") == 0
    assert value(m, "sensor_edge_agent_stale", agent="pi-5") == 1  # never seen
    assert value(m, "sensor_edge_agent_buffer_readings",
                 agent="pi-1") == entry["status"]["buffer_depth"]
    for sensor in ("climate", "motion", "soc"):
        counts = entry["status"]["sensors"][sensor]
        assert value(m, "sensor_edge_sensor_reads", "sensor_edge_sensor_reads_total",
                     agent="pi-1", sensor=sensor) == counts["good"]
        assert value(m, "sensor_edge_sensor_read_failures",
                     "sensor_edge_sensor_read_failures_total",
                     agent="pi-1", sensor=sensor) == counts["failed"]


def test_status_numbers_errors_and_refusals_are_exported(make_collector):
    collector = make_collector()
    headers = {"Authorization": f"Bearer {TOKENS['pi-2']}"}
    with connect(collector.stream_url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "agent": "pi-2", "epoch": "e1", "version": "t"}))
        ws.recv(timeout=10)
        ws.send(json.dumps({
            "type": "status", "time": time.time(), "uptime": "not a number", "buffer_depth": 1234,
            "buffer_oldest_age": 86.5, "dropped": 5,
            "sensors": {"door": {"good": 10, "failed": 7, "consecutive_failures": 3},
                        "odd": "not counts"},
        }))
        m = wait_until(lambda: (m := scrape(collector))["sensor_edge_agent_buffer_readings"]
                       ["samples"] and m, 10, what="the status in /metrics")
        assert value(m, "sensor_edge_agent_buffer_readings", agent="pi-2") == 1234
        assert value(m, "sensor_edge_agent_buffer_oldest_age_seconds", agent="pi-2") == 86.5
        assert value(m, "sensor_edge_agent_readings_dropped",
                     "sensor_edge_agent_readings_dropped_total", agent="pi-2") == 5
        assert value(m, "sensor_edge_sensor_reads", "sensor_edge_sensor_reads_total",
                     agent="pi-2", sensor="door") == 10
        assert value(m, "sensor_edge_sensor_read_failures",
                     "sensor_edge_sensor_read_failures_total", agent="pi-2", sensor="door") == 7
        assert value(m, "sensor_edge_sensor_consecutive_failures", agent="pi-2",
                     sensor="door") == 3
        assert value(m, "sensor_edge_agent_connected", agent="pi-2") == 1
        # What is not a number is left out, not exported as garbage.
        assert m["sensor_edge_agent_uptime_seconds"]["samples"] == {}

    # Errors by code, and handshakes refused.
    with connect(collector.stream_url, additional_headers=headers, open_timeout=10) as ws:
        ws.send("{oops")
        assert json.loads(ws.recv(timeout=10))["error"] == "bad_json"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1007
    with pytest.raises(InvalidStatus) as refused, \
            connect(collector.stream_url, additional_headers={"Authorization": "Bearer nope"},
                    open_timeout=10):
        pass
    assert refused.value.response.status_code == 401
    m = scrape(collector)
    assert value(m, "sensor_edge_protocol_errors", "sensor_edge_protocol_errors_total",
                 code="bad_json") == 1
    assert value(m, "sensor_edge_auth_failures", "sensor_edge_auth_failures_total") == 1


def test_sensor_names_of_any_printable_text_reach_prometheus_labels_intact(make_collector):
    """prometheus_client escapes '\\', '"' and newlines in label values. A name in a
    status is checked like a reading's sensor (printable text, docs/protocol.md): one
    no reading could carry (NUL, a newline, a lone surrogate, valid JSON all) is
    dropped there and counted, and /metrics keeps answering."""
    collector = make_collector()
    names = ['a"b', "c\\d", 'g}h{i="j"', "π ok", "\\n and \\ud800 as text"]
    unprintable = ["e\nf", "\x00nul", "lone \ud800 half"]
    headers = {"Authorization": f"Bearer {TOKENS['pi-2']}"}
    with connect(collector.stream_url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "agent": "pi-2", "epoch": "e1", "version": "t"}))
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "status", "time": time.time(),
                            "sensors": {n: {"good": i + 1}
                                        for i, n in enumerate(names + unprintable)}}))
        m = wait_until(lambda: (m := scrape(collector))["sensor_edge_sensor_reads"]["samples"]
                       and m, 10, what="the status in /metrics")
        got = {dict(labels)["sensor"]: v for (_, labels), v
               in m["sensor_edge_sensor_reads"]["samples"].items()}
        assert got == {n: float(i + 1) for i, n in enumerate(names)}
        for _ in range(3):
            scrape(collector)
    assert value(scrape(collector), "sensor_edge_status_fields_dropped",
                 "sensor_edge_status_fields_dropped_total") == len(unprintable)


def test_a_label_prometheus_cannot_encode_is_escaped_once_and_counted():
    """Should a name that is not UTF-8 ever reach the registry (the protocol keeps
    them out of a status), the scrape escapes it and counts it once."""
    from sensor_edge.contract.protocol import Hello, Status
    from sensor_edge.server.ingest.agents import AgentRegistry
    from sensor_edge.server.outputs.metrics import CollectorMetrics

    agents = AgentRegistry(["pi-1"], [])
    agents.connected(Hello("pi-1", "e", "t"), 1.0)
    agents.status_received(
        "pi-1", Status({"sensors": {"lone \ud800 half": {"good": 7}}}), 1.0)
    metrics = CollectorMetrics()
    metrics.watch_agents(agents)
    for _ in range(3):  # scraped again: counted once, not per scrape
        text = metrics.render().decode()
    assert 'sensor="lone \\\\ud800 half"} 7.0' in text
    assert metrics.registry.get_sample_value("sensor_edge_names_escaped_total",
                                             {"output": "prometheus_label"}) == 1
