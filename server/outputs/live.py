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
# The most a browser may have waiting unsent on the collector: a message that
# would take it past this is not queued; the browser is dropped instead (it
# reconnects and reloads its history). One that has read everything always gets
# the next message.
MAX_UNSENT_BYTES = 4 * 1024 * 1024
# One commit's readings go out in messages of at most this many (about 150 KB),
# so no single message comes near that bound.
READINGS_PER_MESSAGE = 1000
# A dropped browser gets this long to read its backlog and the close frame that
# says why, before its socket (and whatever it still holds) is cut.
DROP_GRACE = 5.0


class LiveFeed:
    def __init__(self, agents: AgentRegistry, metrics: CollectorMetrics):
        self._agents = agents
        self._metrics = metrics
        self._clients: set[ServerConnection] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._dropping: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="live-agents")

    async def stop(self) -> None:
        tasks = [*self._dropping, *([self._ticker] if self._ticker is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
        for start in range(0, len(readings), READINGS_PER_MESSAGE):
            self._broadcast(json.dumps(
                {"type": "readings", "readings": readings[start:start + READINGS_PER_MESSAGE]},
                separators=(",", ":")))

    def _agents_message(self) -> str:
        return json.dumps({"type": "agents", "time": time.time(),
                           "agents": self._agents.as_json()}, separators=(",", ":"))

    def _broadcast(self, message: str) -> None:
        # broadcast() has no backpressure: a browser that does not read would hold
        # every message. It gets this one only if its backlog stays within the bound,
        # or if it has none (an agents snapshot of a very large fleet may be bigger).
        size = len(message)  # JSON with ensure_ascii: one byte a character
        ready = []
        for ws in list(self._clients):
            waiting = ws.transport.get_write_buffer_size() if ws.transport is not None else 0
            if waiting and waiting + size > MAX_UNSENT_BYTES:
                self._drop(ws)
            else:
                ready.append(ws)
        broadcast(ready, message)

    def _drop(self, ws: ServerConnection) -> None:
        """Send a browser that fell behind nothing more, and close it with a reason."""
        self._clients.discard(ws)
        self._metrics.live_clients_dropped.inc()
        log.warning("live client %s fell more than %d MiB behind; dropping it",
                    ws.remote_address, MAX_UNSENT_BYTES // (1024 * 1024))
        task = asyncio.create_task(self._close_slow(ws), name="live-drop")
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _close_slow(self, ws: ServerConnection) -> None:
        try:
            # 1013 "try again later": the close frame queues behind the backlog.
            async with asyncio.timeout(DROP_GRACE):
                await ws.close(1013, "too slow: fell behind the live feed")
        except TimeoutError:
            pass
        finally:
            if ws.transport is not None:
                ws.transport.abort()  # frees the backlog, if the close did not

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(AGENTS_EVERY)
            if self._clients:
                self._broadcast(self._agents_message())
