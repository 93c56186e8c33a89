"""The collector process: builds the stages and wires them together.

Each stage gets what it needs and nothing more: agents' connections an
:class:`~.ingest.connection.Ingest`, the web face a :class:`~.web.http_api.Web`,
the outputs the commit hook. This is the one module that knows them all.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import resource
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from websockets.asyncio.server import Server, serve
from websockets.http11 import Request, Response

from sensor_edge.config.model import CollectorConfig
from sensor_edge.runtime.tls import server_context
from sensor_edge.server.web import http_api
from sensor_edge.server.ingest.agents import AgentRegistry
from sensor_edge.server.outputs.alerts import Alerts
from sensor_edge.server.ingest.batcher import Batcher
from sensor_edge.server.ingest.connection import Ingest, IngestCounters, serve_agent
from sensor_edge.server.web.hosts import AllowedHosts, own_names
from sensor_edge.server.web.http_server import HTTPFront, SortingConnection, chunks_from_thread
from sensor_edge.server.ingest.limits import ConnectionBudget, FailedLogins
from sensor_edge.server.outputs.live import LiveFeed
from sensor_edge.server.outputs.metrics import CollectorMetrics
from sensor_edge.server.outputs.mqtt import MQTTBridge
from sensor_edge.server.storage.backfill import RollupBackfill
from sensor_edge.server.storage.retention import Retention
from sensor_edge.server.storage import Batch, Storage, open_storage, safe_url

log = logging.getLogger("sensor_edge.collector")
T = TypeVar("T")
SERVER_HEADER = "sensor-collector"


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
        self._front: HTTPFront | None = None
        # The Host names the HTTP side answers to (set at start: finding our own may ask DNS).
        self.hosts = AllowedHosts(config.allowed_hosts)
        limits = config.limits
        # WebSocket connections held, agents and browsers apart (limits.max_connections,
        # max_connections_per_agent, max_live_connections).
        self.connections = ConnectionBudget(limits.max_connections,
                                            limits.max_connections_per_agent,
                                            limits.max_live_connections)
        self.failed_logins = FailedLogins(config.limits.bad_token_max_delay)
        # SQLite wants its writer on one thread; readers get a small pool of their own.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="storage-writer")
        self._readers = ThreadPoolExecutor(4, thread_name_prefix="storage-reader")

    async def read(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking storage read off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(function, *args))

    def stream(self, produce: Callable[[], Iterator[bytes]]) -> AsyncGenerator[bytes, None]:
        """The chunks of a blocking storage read and its encoding, made on a reader thread."""
        return chunks_from_thread(produce, self._readers)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        names = await loop.run_in_executor(None, own_names)
        self.hosts = AllowedHosts([*names, *self.config.allowed_hosts])
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
            await self.mqtt.start(self.agents, self.storage, self._writer)
        await self.alerts.start(self.storage, self._writer, self.read, self.agents, self.mqtt)
        self.batcher = Batcher(self.storage, self._writer, on_commit=self._committed,
                               on_commit_failed=self.metrics.commit_hook_failures.inc,
                               on_conflicting=self.metrics.readings_conflicting.inc)
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
        _raise_open_file_limit(self.config.limits.max_connections
                               + self.config.limits.max_live_connections)
        m = self.metrics
        self._ingest = Ingest(
            limits=self.config.limits, batcher=self.batcher, agents=self.agents,
            acked=functools.partial(self.read, self.storage.acked),
            counters=IngestCounters(
                protocol_errors=m.protocol_errors, batches=m.batches,
                readings_received=m.readings_received,
                rate_limited_seconds=m.rate_limited_seconds,
                status_fields_dropped=m.status_fields_dropped, acks=m.acks))
        self._web = http_api.Web(
            config=self.config, metrics=m, agents=self.agents, alerts=self.alerts,
            storage=self.storage, hosts=self.hosts, failed_logins=self.failed_logins,
            connections=self.connections, stream=self.stream, read=self.read)
        self._front = HTTPFront(http_api.WEBSOCKET_PATHS, functools.partial(http_api.answer,
                                                                            self._web),
                                timeout=self.config.limits.handshake_timeout,
                                server_header=SERVER_HEADER)
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            ssl=tls,
            # Covers the TLS handshake too: a client that connects and stalls is dropped.
            open_timeout=self.config.limits.handshake_timeout,
            # Every connection is sorted first: plain HTTP to the front, WebSocket paths on.
            create_connection=self._front.connection,
            process_request=self._admit,
            max_size=self.config.limits.max_frame_bytes,
            # Readings are small JSON; compressing them costs more CPU than it saves.
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            server_header=SERVER_HEADER,
        )
        _tune_garbage_collector()
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
            self._front.abort_all()  # a download in progress would hold the close up
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

    async def _admit(self, ws: SortingConnection, request: Request) -> Response | None:
        """websockets' `process_request`: a refusal, or None with the route noted on ``ws``."""
        decision = await http_api.admit(self._web, ws, request)
        if isinstance(decision, Response):
            return decision
        ws.route = decision
        return None

    async def _handle(self, ws: SortingConnection) -> None:
        route = ws.route
        if isinstance(route, http_api.LiveStream):
            await self.live.serve(ws)
        elif isinstance(route, http_api.AgentStream):
            self.metrics.agents_connected.inc()
            try:
                await serve_agent(self._ingest, ws, route.agent_id)
            finally:
                self.metrics.agents_connected.dec()
        else:  # pragma: no cover - the front lets only the routes' paths upgrade
            await ws.close(1008, "unknown endpoint")

    def _committed(self, batches: list[Batch], added: list[int], seconds: float) -> None:
        now = time.time()
        m = self.metrics
        m.commits.inc()
        m.commit_seconds.observe(seconds)
        stored = sum(added)
        m.readings_stored.inc(stored)
        m.readings_duplicate.inc(sum(len(batch.rows) for batch in batches) - stored)
        for batch, count in zip(batches, added):
            self.agents.stored(batch.agent, batch.rows, count, now)
        self.live.publish(batches, added)
        if self.mqtt is not None:
            self.mqtt.stored(batches, added)
        self.alerts.stored(batches, added)


# Tracked objects allocated (net of those freed) between two young collections; the
# default is 700. Nearly everything the collector allocates is freed by reference
# counting within a commit or two, but 20,000 readings in flight (50 agents x 8
# batches x 50) kept young collections running every few frames and pushed the
# survivors into full collections: 10-15 % of the CPU, pauses of 30-70 ms. At this
# threshold they start only once that many objects outlive their commit (cycles
# left behind, connections opened): the memory they can hold stays a few MiB.
GC_YOUNG_THRESHOLD = 50_000


def _tune_garbage_collector() -> None:
    """Once started: the heap built so far (modules, config, storage) is never garbage,
    so it moves out of the collector's sight; young collections start less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


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
        log.warning("limits.max_connections and max_live_connections add up to %d but this "
                    "process may open only %d files; raise its limit (LimitNOFILE= in the "
                    "systemd unit)", connections, soft)
