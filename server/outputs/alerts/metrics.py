"""The alerts' series in /metrics, registered on the collector's own registry."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from sensor_edge.server.outputs.alerts.engine import FIRING, AlertEngine
from sensor_edge.server.outputs.alerts.notifier import NotificationCounters


def register(registry: CollectorRegistry, engine: AlertEngine) -> NotificationCounters:
    """Add the notification counters and the firing gauge; the counters, for the notifier."""
    registry.register(_FiringCollector(engine))
    return NotificationCounters(
        sent=Counter("sensor_edge_alert_notifications_sent",
                     "Alert notifications a receiver accepted", registry=registry),
        failed=Counter("sensor_edge_alert_notifications_failed",
                       "Attempts to send an alert notification that failed (each is retried)",
                       registry=registry),
        dropped=Counter("sensor_edge_alert_notifications_dropped",
                        "Alert notifications given up: a receiver's queue was full",
                        registry=registry),
    )


class _FiringCollector:
    """sensor_edge_alert_firing, read from the engine at scrape time."""

    def __init__(self, engine: AlertEngine):
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        firing = GaugeMetricFamily("sensor_edge_alert_firing",
                                   "1 while the alert fires for this series, else 0",
                                   labels=["alert", "agent", "sensor", "metric"])
        for series in self._engine.series():
            firing.add_metric(list(series.key), 1.0 if series.state == FIRING else 0.0)
        yield firing
