"""The agent process: sensors -> sampler -> durable buffer -> uplink."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sensor_edge.config.model import AgentConfig
from sensor_edge.runtime.tls import client_context
from sensor_edge.contract import __version__
from sensor_edge.contract.status import AgentStatus
from sensor_edge.agent.backends import Backend, choose_backend
from sensor_edge.agent.buffer import Buffer, machine_identity
from sensor_edge.agent.sampler import Sampler
from sensor_edge.agent.sensors import Sample, open_sensors
from sensor_edge.agent.uplink import LINGER, Uplink

log = logging.getLogger("sensor_edge.agent")
T = TypeVar("T")

# Of the 5 s the contract allows for a clean stop, this much goes to delivering.
FLUSH_SECONDS = 2.5
# Readings held in memory while the buffer cannot take them (its RAM journal
# cannot be written); past it the oldest of them go, counted in the log.
MAX_UNSTORED = 10_000
# After a sync the card refused, try again this much later.
SYNC_RETRY = 5.0
# A failing sensor's last error is cut to this length in a status message.
MAX_ERROR_TEXT = 200


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def clock_synced() -> bool | None:
    """Is the system clock disciplined by NTP (or the like)? None where we cannot tell.

    adjtimex(2) with no mode bits set only reads the kernel's clock state;
    TIME_ERROR (5) means the clock is not synchronised.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        timex = ctypes.create_string_buffer(512)  # larger than struct timex; modes = 0
        state = _libc().adjtimex(timex)
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != 5


class Agent:
    def __init__(self, config: AgentConfig, backend: str | Backend | None = None):
        """``backend``: a backend's name (--mock gives "mock"; None: the config's), or one
        already made (tests hand in a hardware backend on fake buses)."""
        self.config = config
        self.backend_name = backend or config.backend
        self.backend: Backend | None = None
        self.buffer: Buffer | None = None
        self.sampler: Sampler | None = None
        self.uplink: Uplink | None = None
        self.started = time.monotonic()
        # The buffer's calls that touch the card (syncs, reading a backlog) run here.
        self._buffer_thread = ThreadPoolExecutor(1, thread_name_prefix="buffer")
        self._unstored: list[Sample] = []  # taken, but the buffer could not accept them yet
        self._retrying: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._sync_wake = asyncio.Event()
        self._sync_at = 0.0  # when the syncer wakes next, at the latest (monotonic)
        self._cpu_sensors = {s.name for s in config.sensors if s.type == "cpu_temperature"}
        self._cpu_temperature: float | None = None

    async def on_buffer(self, method: Callable[..., T], *args: Any) -> T:
        """Run a blocking buffer method on the buffer's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._buffer_thread, functools.partial(method, *args))

    async def start(self) -> None:
        for warning in self.config.warnings:
            log.warning("%s", warning)
        # First: a certificate that cannot be used stops the start before anything opens.
        wss = any(url.startswith("wss://") for url in self.config.urls)
        tls = client_context(self.config) if wss else None
        self.buffer = await self.on_buffer(
            functools.partial(Buffer, sync_interval=self.config.sync_interval),
            self.config.buffer_path, self.config.max_buffered, machine_identity())
        log.info("agent %s, epoch %s, %d readings waiting in %s", self.config.agent_id,
                 self.buffer.epoch, self.buffer.depth, self.config.buffer_path)
        self.backend = self.backend_name if isinstance(self.backend_name, Backend) else \
            choose_backend(self.backend_name, self.config.pin_factory)
        sensors = open_sensors(self.config.sensors, self.backend)
        self.backend.start()
        self.sampler = Sampler(sensors, self._collect, self._collect_edge)
        self._syncer = asyncio.create_task(self._sync_forever(), name="syncer")
        self.uplink = Uplink(
            agent_id=self.config.agent_id, urls=self.config.urls, token=self.config.token,
            version=__version__, buffer=self.buffer, on_buffer=self.on_buffer,
            batch_size=self.config.batch_size, window=self.config.window,
            status=self.status, tls=tls,
            # Lingering readings wait unacknowledged: never long enough to be synced.
            linger=min(LINGER, self.config.sync_interval / 4))
        self.sampler.start()
        self.uplink.start()
        log.info("reading %d sensors: %s", len(sensors),
                 ", ".join(f"{s.name} ({s.type})" for s in self.config.sensors) or "none")

    async def status(self) -> AgentStatus:
        """A `status` message: how this agent is doing."""
        buffer = self.buffer
        if buffer.backlog_on_card:
            oldest = await self.on_buffer(buffer.oldest_age)
        else:
            oldest = buffer.oldest_age()
        return AgentStatus(
            time=time.time(),
            uptime=round(time.monotonic() - self.started, 1),
            version=__version__,
            backend=self.backend.name,
            buffer_depth=buffer.depth,
            buffer_oldest_age=None if oldest is None else round(oldest, 1),
            dropped=buffer.dropped,
            sent=self.uplink.sent if self.uplink is not None else 0,
            sensors={name: stats.health(MAX_ERROR_TEXT)
                     for name, stats in self.sampler.stats.items()},
            cpu_temperature=self._cpu_temperature,
            clock_synced=clock_synced(),
        )

    def _collect_edge(self, samples: list[Sample]) -> None:
        """An edge's samples: on the wire at once."""
        self._collect(samples, urgent=True)

    def _collect(self, samples: list[Sample], urgent: bool = False) -> None:
        """A tick's samples: into the buffer's journal, then on the wire within LINGER."""
        if self._cpu_sensors:
            for sensor, _metric, value, _unit, _ts in samples:
                if sensor in self._cpu_sensors:
                    self._cpu_temperature = value
        if self._unstored:  # the buffer refused lately: these queue behind those
            self._hold(samples)
            return
        try:
            self.buffer.append(samples)
        except OSError as e:  # its RAM journal cannot be written
            self._hold(samples, e)
            return
        self.uplink.notify(urgent)
        due = self.buffer.sync_due()
        if due is not None and due < self._sync_at:
            self._sync_wake.set()  # a page's worth waits, or sooner than the syncer looks

    def _hold(self, samples: list[Sample], error: OSError | None = None) -> None:
        """Keep samples the buffer could not take (memory is bounded) and retry."""
        self._unstored.extend(samples)
        lost = max(0, len(self._unstored) - MAX_UNSTORED)
        del self._unstored[:lost]
        if error is not None or lost:
            log.log(logging.DEBUG if self._retrying and not lost else logging.ERROR,
                    "could not store %d readings in the buffer (%s); holding them in memory%s",
                    len(samples), error or "still failing", f", lost the {lost} oldest"
                    if lost else "")
        if self._retrying is None:
            self._retrying = asyncio.create_task(self._store_later(), name="store-retry")

    async def _store_later(self) -> None:
        try:
            while self._unstored:
                await asyncio.sleep(1.0)
                try:
                    self.buffer.append(self._unstored)
                except OSError:
                    continue
                self._unstored = []
                log.info("the buffer takes readings again")
                self.uplink.notify()
        finally:
            self._retrying = None

    async def _sync_forever(self) -> None:
        """Write to the card what only RAM holds, before sync_interval runs out."""
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        # With nothing due, look again this often (a new reading is due sync_interval later).
        idle = max(0.05, min(buffer.sync_interval / 2, 30.0))
        while True:
            due = buffer.sync_due()
            now = time.monotonic()
            if due is not None and due <= now:
                if not await self.on_buffer(buffer.sync):
                    await asyncio.sleep(SYNC_RETRY)
                continue
            if buffer.has_dead_segments:
                await self.on_buffer(buffer.tidy)
            self._sync_at = now + idle if due is None else min(due, now + idle)
            self._sync_wake.clear()
            timer = loop.call_at(self._sync_at, self._sync_wake.set)
            await self._sync_wake.wait()
            timer.cancel()

    async def stop(self) -> None:
        if self.sampler is not None:
            await self.sampler.stop()
        for task in (self._retrying, self._syncer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._unstored and self.buffer is not None:
            try:
                self.buffer.append(self._unstored)
            except OSError as e:
                log.error("lost %d readings the buffer could not take: %s", len(self._unstored), e)
        if self.uplink is not None:
            await self.uplink.stop(FLUSH_SECONDS)
        if self.backend is not None:
            self.backend.close()
        if self.buffer is not None:
            depth = await self.on_buffer(lambda: self.buffer.depth)
            log.info("%d readings kept in the buffer for next time", depth)
            await self.on_buffer(self.buffer.close)
        self._buffer_thread.shutdown(wait=True)
