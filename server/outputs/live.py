"""`/v1/live`: the WebSocket that keeps dashboards up to date.

Browsers connect, get a snapshot of every agent, then every newly stored
reading (one `readings` message per commit) and a fresh agents snapshot
every couple of seconds. Nothing is read from the browser. The handshake is
refused unless its `Origin` is this collector's own page, so another site
open in the same browser cannot read the feed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from sensor_edge.server.storage import READING_COLUMNS, Batch

if TYPE_CHECKING:
    from sensor_edge.server.ingest.agents import AgentRegistry
    from sensor_edge.server.outputs.metrics import CollectorMetrics

log = logging.getLogger("sensor_edge.collector.live")

LIVE_PATH = "/v1/live"
# How often browsers get the agents' state (last seen, stale, status) again.
AGENTS_EVERY = 2.0
# A browser this far behind is cut off; it reconnects and reloads its history.
MAX_UNSENT_BYTES = 4 * 1024 * 1024


def same_origin(origin: str | None, host: str | None) -> bool:
    """May a handshake with this `Origin` use the feed of the server at `Host`?

    No Origin: not a browser (curl, a script), which could forge one anyway.
    A browser always sends it, and it must name this very host and port.
    """
    if origin is None:
        return True
    if not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


class LiveFeed:
    def __init__(self, agents: AgentRegistry, metrics: CollectorMetrics):
        self._agents = agents
        self._metrics = metrics
        self._clients: set[ServerConnection] = set()
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="live-agents")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)

    async def serve(self, ws: ServerConnection) -> None:
        """One browser, from handshake to close."""
        self._clients.add(ws)
        self._metrics.live_clients.inc()
        try:
            await ws.send(self._agents_message())
            async for _ in ws:  # browsers have nothing to say; drain until they leave
                pass
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)
            self._metrics.live_clients.dec()

    def publish(self, batches: Sequence[Batch], added: Sequence[int]) -> None:
        """Push what one commit stored. Runs on the event loop, so it must not block."""
        if not self._clients:
            return
        readings = []
        for batch, count in zip(batches, added):
            for seq, sensor, metric, value, unit, ts in batch.new_rows(count):
                readings.append(dict(zip(READING_COLUMNS, (
                    batch.agent, batch.epoch, seq, sensor, metric, value, unit, ts))))
        if readings:
            self._broadcast(json.dumps({"type": "readings", "readings": readings},
                                       separators=(",", ":")))

    def _agents_message(self) -> str:
        return json.dumps({"type": "agents", "time": time.time(),
                           "agents": self._agents.as_json()}, separators=(",", ":"))

    def _broadcast(self, message: str) -> None:
        ready = []
        for ws in list(self._clients):
            transport = ws.transport
            if transport is not None and transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
                # broadcast() has no backpressure: drop a browser that cannot keep up
                # (a close frame would queue behind the backlog, so cut the socket).
                log.warning("live client %s is too slow; dropping it", ws.remote_address)
                self._clients.discard(ws)
                transport.abort()
                continue
            ready.append(ws)
        broadcast(ready, message)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(AGENTS_EVERY)
            if self._clients:
                self._broadcast(self._agents_message())
