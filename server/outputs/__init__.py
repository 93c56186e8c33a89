"""Outputs fed by each commit: the live feed for browsers, the MQTT bridge, Prometheus metrics."""
