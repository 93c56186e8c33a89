"""The collector's Prometheus metrics, one registry per collector.

Counters and the commit histogram are updated as things happen. Per-agent
and per-sensor series are read from the agent registry at scrape time (an
:class:`AgentsCollector`), so they always match `/api/agents` and vanish
with nothing to clean up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from sensor_edge.server.ingest.agents import AgentRegistry

# `_created` series double the output and no dashboard or alert uses them.
disable_created_metrics()


class CollectorMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.readings_received = Counter(
            "sensor_edge_readings_received", "Readings received in valid batches", registry=r)
        self.readings_stored = Counter(
            "sensor_edge_readings_stored", "Readings newly stored", registry=r)
        self.readings_duplicate = Counter(
            "sensor_edge_readings_duplicate", "Readings received again and not stored twice",
            registry=r)
        self.readings_expired = Counter(
            "sensor_edge_readings_expired", "Readings deleted by retention", registry=r)
        self.batches = Counter("sensor_edge_batches", "Readings batches received", registry=r)
        self.acks = Counter("sensor_edge_acks", "Acks sent", registry=r)
        self.commits = Counter("sensor_edge_commits", "Storage transactions", registry=r)
        self.commit_seconds = Histogram(
            "sensor_edge_commit_seconds", "Time to commit one group of batches", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.agents_connected = Gauge(
            "sensor_edge_agents_connected", "Agent connections open now", registry=r)
        self.live_clients = Gauge(
            "sensor_edge_live_clients", "Browsers connected to /v1/live now", registry=r)
        self.protocol_errors = Counter(
            "sensor_edge_protocol_errors", "Connections closed for bad input, by error code",
            ["code"], registry=r)
        self.auth_failures = Counter(
            "sensor_edge_auth_failures", "Handshakes refused for a missing or unknown token",
            registry=r)
        self.connections_refused = Counter(
            "sensor_edge_connections_refused", "Handshakes refused at limits.max_connections",
            registry=r)
        self.rate_limited_seconds = Counter(
            "sensor_edge_rate_limited_seconds",
            "Time agent connections were paused for limits.max_readings_per_second", registry=r)
        # The MQTT bridge (server/mqtt.py); they stay at 0 when `mqtt:` is off.
        self.mqtt_connected = Gauge(
            "sensor_edge_mqtt_connected", "1 while the MQTT broker connection is up", registry=r)
        self.mqtt_published = Counter(
            "sensor_edge_mqtt_published", "Stored readings the MQTT broker accepted", registry=r)
        self.mqtt_dropped = Counter(
            "sensor_edge_mqtt_dropped",
            "Stored readings never queued for MQTT: the queue was full (broker down or slow)",
            registry=r)
        self.mqtt_unpublished = Counter(
            "sensor_edge_mqtt_unpublished",
            "Queued readings given up unpublished (at stop, or lost with a QoS 0 connection)",
            registry=r)
        self.mqtt_pending = Gauge(
            "sensor_edge_mqtt_pending", "Stored readings queued or in flight to the MQTT broker",
            registry=r)

    def watch_agents(self, agents: AgentRegistry) -> None:
        """Expose per-agent and per-sensor series from this registry."""
        self.registry.register(AgentsCollector(agents))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class AgentsCollector:
    """Per-agent series from the registry, and per-sensor ones from each agent's last status."""

    def __init__(self, agents: AgentRegistry):
        self._agents = agents

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        agent = ["agent"]
        up = GaugeMetricFamily("sensor_edge_agent_connected",
                               "1 if the agent has a connection open now", labels=agent)
        stale = GaugeMetricFamily("sensor_edge_agent_stale",
                                  "1 if the agent has been silent longer than stale_after",
                                  labels=agent)
        seen = GaugeMetricFamily("sensor_edge_agent_last_seen_timestamp_seconds",
                                 "When the agent was last heard from (Unix seconds)",
                                 labels=agent)
        offset = GaugeMetricFamily("sensor_edge_agent_clock_offset_seconds",
                                   "Collector clock minus agent clock", labels=agent)
        backlog = GaugeMetricFamily("sensor_edge_agent_buffer_readings",
                                    "Readings waiting in the agent's buffer (last status)",
                                    labels=agent)
        oldest = GaugeMetricFamily("sensor_edge_agent_buffer_oldest_age_seconds",
                                   "Age of the oldest reading in the agent's buffer (last status)",
                                   labels=agent)
        dropped = CounterMetricFamily("sensor_edge_agent_readings_dropped",
                                      "Readings the agent dropped from a full buffer",
                                      labels=agent)
        uptime = GaugeMetricFamily("sensor_edge_agent_uptime_seconds",
                                   "Seconds since the agent started (last status)", labels=agent)
        sensor = ["agent", "sensor"]
        reads = CounterMetricFamily("sensor_edge_sensor_reads",
                                    "Good sensor reads since the agent started", labels=sensor)
        failures = CounterMetricFamily("sensor_edge_sensor_read_failures",
                                       "Failed sensor reads since the agent started",
                                       labels=sensor)
        failing = GaugeMetricFamily("sensor_edge_sensor_consecutive_failures",
                                    "Failed reads in a row, as of the agent's last status",
                                    labels=sensor)
        for state in self._agents.all():
            labels = [state.id]
            up.add_metric(labels, 1.0 if state.connections else 0.0)
            stale.add_metric(labels, 1.0 if self._agents.is_stale(state, now) else 0.0)
            if state.last_seen is not None:
                seen.add_metric(labels, state.last_seen)
            if state.clock_offset is not None:
                offset.add_metric(labels, state.clock_offset)
            status = state.status or {}
            # A status is the agent's word: export only the numbers that are numbers.
            for family, key in ((backlog, "buffer_depth"), (oldest, "buffer_oldest_age"),
                                (dropped, "dropped"), (uptime, "uptime")):
                value = _number(status.get(key))
                if value is not None:
                    family.add_metric(labels, value)
            sensors = status.get("sensors")
            if isinstance(sensors, dict):
                for name, counts in sorted(sensors.items()):
                    if not isinstance(counts, dict):
                        continue
                    for family, key in ((reads, "good"), (failures, "failed"),
                                        (failing, "consecutive_failures")):
                        value = _number(counts.get(key))
                        if value is not None:
                            family.add_metric([state.id, str(name)], value)
        yield from (up, stale, seen, offset, backlog, oldest, dropped, uptime, reads, failures,
                    failing)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
