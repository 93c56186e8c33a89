"""Each alert rule as a Home Assistant `problem` binary sensor, over the MQTT bridge.

The state topic is ``<prefix>/collector/alerts/<rule>`` (under the collector's
own node, which no agent may be named after), retained JSON:
``{"state": "ON"|"OFF", "firing": [{agent, sensor, metric, value, since}, ...]}``;
ON while any series of the rule fires. The entity belongs to one
"sensor-edge collector" device and follows the collector's availability.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sensor_edge.server.outputs.mqtt import COLLECTOR_NODE, availability_topic
from sensor_edge.server.outputs.alerts.engine import FIRING, AlertEngine

if TYPE_CHECKING:
    from sensor_edge.server.outputs.mqtt import MQTTBridge


def alert_topic(prefix: str, rule: str) -> str:
    return f"{prefix}/{COLLECTOR_NODE}/alerts/{rule}"


def discovery_config(prefix: str, discovery_prefix: str, rule: str) -> tuple[str, dict[str, Any]]:
    """Home Assistant's discovery message for one rule: topic, payload."""
    state = alert_topic(prefix, rule)
    object_id = f"alert_{rule}".replace(".", "_")
    return f"{discovery_prefix}/binary_sensor/sensor_edge_collector/{object_id}/config", {
        "name": f"alert {rule}",
        # Under the collector's node: no agent may be called "collector" with MQTT on,
        # so no sensor of an agent can meet this id (config/home_assistant.py).
        "unique_id": f"sensor_edge_collector_alert_{rule}",
        "device_class": "problem",
        "state_topic": state,
        "value_template": "{{ value_json.state }}",
        "json_attributes_topic": state,
        "availability_topic": availability_topic(prefix, COLLECTOR_NODE),
        "device": {"identifiers": ["sensor_edge_collector"], "name": "sensor-edge collector",
                   "manufacturer": "sensor-edge"},
    }


class AlertEntities:
    def __init__(self, bridge: MQTTBridge, engine: AlertEngine):
        self._bridge = bridge
        self._engine = engine
        self._published: dict[str, str] = {}
        bridge.on_connected.append(self.announce)
        self.announce()  # if the bridge is connected already

    def announce(self) -> None:
        """Every rule's discovery config and state (on each connect to the broker)."""
        c = self._bridge.config
        for rule in self._engine.rules:
            topic, payload = discovery_config(c.prefix, c.discovery_prefix, rule)
            self._bridge.publish(topic, json.dumps(payload))
        self._published.clear()
        self.refresh()

    def refresh(self) -> None:
        """Publish each rule's state that changed since last published."""
        firing: dict[str, list[dict[str, Any]]] = {name: [] for name in self._engine.rules}
        for s in self._engine.series():
            if s.state == FIRING and s.key.rule in firing:
                firing[s.key.rule].append({"agent": s.key.agent, "sensor": s.key.sensor,
                                           "metric": s.key.metric, "value": s.latest,
                                           "since": s.since})
        for rule, series in firing.items():
            payload = json.dumps({"state": "ON" if series else "OFF", "firing": series},
                                 separators=(",", ":"))
            if self._published.get(rule) != payload and self._bridge.publish(
                    alert_topic(self._bridge.config.prefix, rule), payload):
                self._published[rule] = payload
