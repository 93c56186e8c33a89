"""Ingest: agent connections, their limits, the group-commit batcher, the agent registry."""
