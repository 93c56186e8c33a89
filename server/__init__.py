"""The collector, as its pipeline's stages: ingest -> storage -> outputs, beside the web face.

`ingest/` (agent connections, limits, group commit, the agent registry),
`storage/` (SQLite, PostgreSQL, retention), `outputs/` (live feed, MQTT,
metrics), `web/` (HTTP API, dashboard), `commands/` (the CLI and its
subcommands); `collector.py` wires them together.
"""
