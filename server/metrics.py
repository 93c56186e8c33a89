"""The collector's Prometheus metrics, one registry per collector."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self.batches = Counter("sensor_edge_batches", "Readings batches received", registry=r)
        self.acks = Counter("sensor_edge_acks", "Acks sent", registry=r)
        self.commits = Counter("sensor_edge_commits", "Storage transactions", registry=r)
        self.commit_seconds = Histogram(
            "sensor_edge_commit_seconds", "Time to commit one group of batches", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.agents_connected = Gauge(
            "sensor_edge_agents_connected", "Agent connections open now", registry=r)
        self.protocol_errors = Counter(
            "sensor_edge_protocol_errors", "Connections closed for bad input, by error code",
            ["code"], registry=r)
        self.auth_failures = Counter(
            "sensor_edge_auth_failures", "Handshakes refused for a missing or unknown token",
            registry=r)
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
        self.agent_last_seen = Gauge(
            "sensor_edge_agent_last_seen_timestamp_seconds",
            "When the agent last stored a reading (Unix seconds)", ["agent"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
