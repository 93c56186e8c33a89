"""Alerts: rules from the config judged on every stored reading, sent through Apprise.

- :mod:`.engine`: the pure state machine (ok, pending, firing) and the message text;
- :mod:`.notifier`: Apprise senders, one thread and bounded queue per receiver;
- :mod:`.metrics`: their series on the collector's Prometheus registry;
- :mod:`.stage`: the asyncio layer the collector calls (commit hook, tick, stop).

States are stored in the `alert_state` table (server/storage/alert_state.py).
"""

from sensor_edge.server.outputs.alerts.stage import Alerts

__all__ = ["Alerts"]
