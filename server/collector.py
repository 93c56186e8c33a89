"""The collector process: wires connection, batcher, storage and HTTP together."""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve

from sensor_edge.config.model import CollectorConfig
from sensor_edge.runtime.tls import server_context
from sensor_edge.server.web import http_api
from sensor_edge.server.ingest.agents import AgentRegistry
from sensor_edge.server.outputs.alerts import Alerts
from sensor_edge.server.ingest.batcher import Batcher
from sensor_edge.server.ingest.connection import serve_agent
from sensor_edge.server.ingest.limits import FailedLogins
from sensor_edge.server.outputs.live import LiveFeed
from sensor_edge.server.outputs.metrics import CollectorMetrics
from sensor_edge.server.outputs.mqtt import MQTTBridge
from sensor_edge.server.storage.backfill import RollupBackfill
from sensor_edge.server.storage.retention import Retention
from sensor_edge.server.storage import Batch, Storage, open_storage, safe_url

log = logging.getLogger("sensor_edge.collector")
T = TypeVar("T")


class Collector:
    def __init__(self, config: CollectorConfig):
        self.config = config
        self.metrics = CollectorMetrics()
        self.storage: Storage | None = None
        self.agents: AgentRegistry | None = None
        self.batcher: Batcher | None = None
        self.live: LiveFeed | None = None
        self.retention: Retention | None = None
        self.backfill: RollupBackfill | None = None
        self.mqtt: MQTTBridge | None = None
        self.alerts = Alerts(config.alerts, config.stale_after, self.metrics.registry)
        self._server: Server | None = None
        # WebSocket connections being served (agents and browsers), for limits.max_connections.
        self.open_connections = 0
        self.failed_logins = FailedLogins(config.limits.bad_token_max_delay)
        # SQLite wants its writer on one thread; readers get a small pool of their own.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="storage-writer")
        self._readers = ThreadPoolExecutor(4, thread_name_prefix="storage-reader")

    async def read(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking storage read off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(function, *args))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.mqtt is not None:  # first: a missing client library stops us here
            self.mqtt = MQTTBridge(self.config.mqtt, self.metrics, self.config.source,
                                   [a.id for a in self.config.agents])
        self.storage = await loop.run_in_executor(self._writer, open_storage, self.config.storage)
        stored = await self.read(self.storage.agents)
        self.agents = AgentRegistry([a.id for a in self.config.agents], stored,
                                    stale_after=self.config.stale_after)
        self.metrics.watch_agents(self.agents)
        self.live = LiveFeed(self.agents, self.metrics)
        self.live.start()
        if self.mqtt is not None:
            self.mqtt.start(self.agents)
        await self.alerts.start(self.storage, self._writer, self.read, self.agents, self.mqtt)
        self.batcher = Batcher(self.storage, self._writer, on_commit=self._committed)
        self.batcher.start()
        self.backfill = RollupBackfill(self.storage, self._writer)
        self.backfill.start()
        if self.config.retention_days is not None:
            self.retention = Retention(self.storage, self._writer, self.config.retention_days,
                                       on_deleted=self.metrics.readings_expired.inc,
                                       rollup_days=self.config.rollup_retention_days,
                                       backfilled=self.backfill.done)
            self.retention.start()
        tls = server_context(self.config.tls) if self.config.tls is not None else None
        _raise_open_file_limit(self.config.limits.max_connections)
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            ssl=tls,
            # Covers the TLS handshake too: a client that connects and stalls is dropped.
            open_timeout=self.config.limits.handshake_timeout,
            process_request=functools.partial(http_api.route, self),
            max_size=self.config.limits.max_frame_bytes,
            # Readings are small JSON; compressing them costs more CPU than it saves.
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            server_header="sensor-collector",
        )
        log.info("listening on %s:%d%s, storing in %s", self.config.host, self.port,
                 "" if tls is None else " (TLS" + (", client certificates required)"
                                                  if self.config.tls.client_ca else ")"),
                 safe_url(self.config.storage))

    @property
    def port(self) -> int:
        """The port actually bound (the config may say 0: any free port)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, close connections, commit what was handed over, close storage."""
        if self._server is not None:
            self._server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._server.wait_closed(), 3)
            except TimeoutError:
                log.warning("some connections did not close in time")
        if self.live is not None:
            await self.live.stop()
        if self.retention is not None:
            await self.retention.stop()
        if self.backfill is not None:
            await self.backfill.stop()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.mqtt is not None:  # after the batcher: its last commits get published too
            await self.mqtt.stop()
        await self.alerts.stop()  # after the batcher too: its last commits are judged
        if self.storage is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self.storage.close)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, ws: ServerConnection) -> None:
        self.open_connections += 1
        try:
            await self._serve(ws)
        finally:
            self.open_connections -= 1

    async def _serve(self, ws: ServerConnection) -> None:
        if getattr(ws, "live", False):  # a browser on /v1/live
            await self.live.serve(ws)
            return
        agent_id = getattr(ws, "agent_id", None)
        if agent_id is None:  # an upgrade on a path other than /v1/stream
            await ws.close(1008, "unknown endpoint")
            return
        self.metrics.agents_connected.inc()
        try:
            await serve_agent(self, ws, agent_id)
        finally:
            self.metrics.agents_connected.dec()

    def _committed(self, batches: list[Batch], added: list[int], seconds: float) -> None:
        now = time.time()
        m = self.metrics
        m.commits.inc()
        m.commit_seconds.observe(seconds)
        for batch, count in zip(batches, added):
            m.readings_stored.inc(count)
            m.readings_duplicate.inc(len(batch.rows) - count)
            self.agents.stored(batch.agent, batch.rows, count, now)
        self.live.publish(batches, added)
        if self.mqtt is not None:
            self.mqtt.stored(batches, added)
        self.alerts.stored(batches, added)


def _raise_open_file_limit(connections: int) -> None:
    """One file per connection: lift the soft limit (often 1024) towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Files besides the connections: the database, its WAL, logs, the listening sockets.
    wanted = connections + 64
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft != resource.RLIM_INFINITY and soft < connections + 64:
        log.warning("limits.max_connections is %d but this process may open only %d files; "
                    "raise its limit (LimitNOFILE= in the systemd unit)", connections, soft)
