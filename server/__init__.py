"""The collector: connection -> protocol -> batcher -> storage -> HTTP API.

Importing this package imports nothing else, so the agent can use
:mod:`sensor_edge.server.protocol` without pulling in the collector's runtime.
"""
