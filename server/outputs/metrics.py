"""The collector's Prometheus metrics, one registry per collector.

Counters and the commit histogram are updated as things happen. Per-agent
and per-sensor series are read from the agent registry at scrape time (an
:class:`AgentsCollector`), so they always match `/api/agents` and vanish
with nothing to clean up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

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

from sensor_edge.contract.status import AgentStatus

if TYPE_CHECKING:
    from sensor_edge.server.ingest.agents import AgentRegistry

log = logging.getLogger("sensor_edge.collector")

# `_created` series double the output and no dashboard or alert uses them.
disable_created_metrics()

# The outputs that name things, as `sensor_edge_names_escaped_total{output=...}` counts them.
NAME_OUTPUTS = {
    "mqtt_topic": "MQTT topic level",
    "home_assistant_id": "Home Assistant id",
    "home_assistant_unit": "Home Assistant unit",
    "csv": "CSV cell",
    "prometheus_label": "Prometheus label",
}


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
        self.readings_conflicting = Counter(
            "sensor_edge_readings_conflicting",
            "Duplicates whose values differ from the stored reading (the stored one is kept)",
            registry=r)
        self.readings_expired = Counter(
            "sensor_edge_readings_expired", "Readings deleted by retention", registry=r)
        self.batches = Counter("sensor_edge_batches", "Readings batches received", registry=r)
        self.acks = Counter("sensor_edge_acks", "Batches acknowledged (one ack may cover "
                            "several batches stored together)", registry=r)
        self.commits = Counter("sensor_edge_commits", "Storage transactions", registry=r)
        self.commit_hook_failures = Counter(
            "sensor_edge_commit_hook_failures",
            "Commits after which updating counters, the live feed or an output failed "
            "(acks still went out)", registry=r)
        self.commit_seconds = Histogram(
            "sensor_edge_commit_seconds", "Time to commit one group of batches", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.agents_connected = Gauge(
            "sensor_edge_agents_connected", "Agent connections open now", registry=r)
        self.live_clients = Gauge(
            "sensor_edge_live_clients", "Browsers connected to /v1/live now", registry=r)
        self.live_clients_dropped = Counter(
            "sensor_edge_live_clients_dropped",
            "Browsers dropped from /v1/live for falling too far behind", registry=r)
        self.status_fields_dropped = Counter(
            "sensor_edge_status_fields_dropped",
            "Agent status fields ignored for a wrong type or a value out of range", registry=r)
        self.protocol_errors = Counter(
            "sensor_edge_protocol_errors", "Connections closed for bad input, by error code",
            ["code"], registry=r)
        self.auth_failures = Counter(
            "sensor_edge_auth_failures", "Handshakes refused for a missing or unknown token",
            registry=r)
        self.connections_refused = Counter(
            "sensor_edge_connections_refused",
            "WebSocket handshakes refused with 503, by the limit they would have passed",
            ["limit"], registry=r)
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
        self.mqtt_publish_errors = Counter(
            "sensor_edge_mqtt_publish_errors",
            "MQTT publishes that raised or were refused by the client; the bridge goes on",
            registry=r)
        names_escaped = Counter(
            "sensor_edge_names_escaped",
            "Names an output could not carry as they are and escaped or mapped, each counted "
            "once, by output", ["output"], registry=r)
        self.escaped_names = EscapedNames(names_escaped)

    def watch_agents(self, agents: AgentRegistry) -> None:
        """Expose per-agent and per-sensor series from this registry."""
        self.registry.register(AgentsCollector(agents, self.escaped_names))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EscapedNames:
    """Names an output could not carry as they are: each counted and logged once, not per use."""

    # Names remembered as already counted; past this the memory starts afresh, so a
    # flood of distinct names costs bounded memory (and an old name may be logged again).
    REMEMBERED = 10_000

    def __init__(self, counter: Counter):
        self._counter = counter
        self._seen: set[tuple[str, str]] = set()
        for output in NAME_OUTPUTS:  # so every output's count shows, 0 included
            counter.labels(output)

    def record(self, output: str, name: str, what: str) -> None:
        """Count and log ``name`` for ``output`` (a NAME_OUTPUTS key) unless already done.

        ``what`` ends the log line: what was done instead, e.g. "escaped as 'a%2Bb'".
        """
        if (output, name) in self._seen:
            return
        if len(self._seen) >= self.REMEMBERED:
            self._seen.clear()
        self._seen.add((output, name))
        self._counter.labels(output).inc()
        log.warning("%s cannot carry the name %s as it is: %s", NAME_OUTPUTS[output],
                    ascii(name), what)


class AgentsCollector:
    """Per-agent series from the registry, and per-sensor ones from each agent's last status."""

    def __init__(self, agents: AgentRegistry, escaped: EscapedNames):
        self._agents = agents
        self._escaped = escaped

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
            # The protocol checked every field kept (protocol.STATUS_FIELDS): numbers
            # are finite floats or counts that fit a float, names printable text.
            status = state.status or AgentStatus()
            for family, value in ((backlog, status.buffer_depth),
                                  (oldest, status.buffer_oldest_age),
                                  (dropped, status.dropped), (uptime, status.uptime)):
                if value is not None:
                    family.add_metric(labels, float(value))
            for name, health in sorted(status.sensors.items()):
                for family, value in ((reads, health.good), (failures, health.failed),
                                      (failing, health.consecutive_failures)):
                    if value is not None:
                        family.add_metric([state.id, self._label(name)], float(value))
        yield from (up, stale, seen, offset, backlog, oldest, dropped, uptime, reads, failures,
                    failing)

    def _label(self, name: str) -> str:
        """A label value the exposition can encode: prometheus_client escapes backslash,
        quote and newline itself; only text that is not UTF-8 (lone surrogates) is left."""
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            escaped = name.encode("utf-8", "backslashreplace").decode("utf-8")
            self._escaped.record("prometheus_label", name, f"escaped as {escaped!r}")
            return escaped
        return name
