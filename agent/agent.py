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
from sensor_edge.agent.uplink import Uplink

log = logging.getLogger("sensor_edge.agent")
T = TypeVar("T")

# Of the 5 s the contract allows for a clean stop, this much goes to delivering.
FLUSH_SECONDS = 2.5
# Readings held in memory while the buffer cannot take them (a full disk with
# nothing left to drop); past it the oldest of them go, counted in the log.
MAX_UNSTORED = 10_000
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
        # SQLite wants one thread per connection: every buffer call runs here.
        self._buffer_thread = ThreadPoolExecutor(1, thread_name_prefix="buffer")
        self._pending: list[Sample] = []
        self._pending_ready = asyncio.Event()
        self._appender: asyncio.Task[None] | None = None
        self._store_failing = False
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
        self.buffer = await self.on_buffer(Buffer, self.config.buffer_path,
                                           self.config.max_buffered, machine_identity())
        log.info("agent %s, epoch %s, %d readings waiting in %s", self.config.agent_id,
                 self.buffer.epoch, self.buffer.depth, self.config.buffer_path)
        self.backend = self.backend_name if isinstance(self.backend_name, Backend) else \
            choose_backend(self.backend_name, self.config.pin_factory)
        sensors = open_sensors(self.config.sensors, self.backend)
        self.backend.start()
        self.sampler = Sampler(sensors, self._collect)
        self._appender = asyncio.create_task(self._append_forever(), name="appender")
        self.uplink = Uplink(
            agent_id=self.config.agent_id, urls=self.config.urls, token=self.config.token,
            version=__version__, buffer=self.buffer, on_buffer=self.on_buffer,
            batch_size=self.config.batch_size, window=self.config.window,
            status=self.status, tls=tls)
        self.sampler.start()
        self.uplink.start()
        log.info("reading %d sensors: %s", len(sensors),
                 ", ".join(f"{s.name} ({s.type})" for s in self.config.sensors) or "none")

    async def status(self) -> AgentStatus:
        """A `status` message: how this agent is doing."""
        buffer = self.buffer
        depth, oldest = await self.on_buffer(lambda: (buffer.depth, buffer.oldest_age()))
        return AgentStatus(
            time=time.time(),
            uptime=round(time.monotonic() - self.started, 1),
            version=__version__,
            backend=self.backend.name,
            buffer_depth=depth,
            buffer_oldest_age=None if oldest is None else round(oldest, 1),
            dropped=buffer.dropped,
            sent=self.uplink.sent if self.uplink is not None else 0,
            sensors={name: stats.health(MAX_ERROR_TEXT)
                     for name, stats in self.sampler.stats.items()},
            cpu_temperature=self._cpu_temperature,
            clock_synced=clock_synced(),
        )

    def _collect(self, samples: list[Sample]) -> None:
        if self._cpu_sensors:
            for sensor, _metric, value, _unit, _ts in samples:
                if sensor in self._cpu_sensors:
                    self._cpu_temperature = value
        self._pending.extend(samples)
        self._pending_ready.set()

    async def _append_forever(self) -> None:
        while True:
            await self._pending_ready.wait()
            if not await self._append_pending():
                await asyncio.sleep(1.0)  # then try again with whatever came in meanwhile

    async def _append_pending(self) -> bool:
        # Everything gathered while the last commit ran goes into the next one.
        self._pending_ready.clear()
        samples, self._pending = self._pending, []
        if not samples:
            return True
        try:
            await self.on_buffer(self.buffer.append, samples)
        except Exception as e:  # a full disk must not stop the agent
            # Keep them (they have no seq yet) and retry; memory is bounded.
            samples.extend(self._pending)
            lost = max(0, len(samples) - MAX_UNSTORED)
            self._pending = samples[lost:]
            self._pending_ready.set()
            log.log(logging.DEBUG if self._store_failing and not lost else logging.ERROR,
                    "could not store %d readings in the buffer (%s); holding them in memory%s",
                    len(samples), e, f", lost the {lost} oldest" if lost else "")
            self._store_failing = True
            return False
        if self._store_failing:
            self._store_failing = False
            log.info("the buffer takes readings again")
        self.uplink.notify()
        return True

    async def stop(self) -> None:
        if self.sampler is not None:
            await self.sampler.stop()
        if self._appender is not None:
            self._appender.cancel()
            await asyncio.gather(self._appender, return_exceptions=True)
            await self._append_pending()
        if self.uplink is not None:
            await self.uplink.stop(FLUSH_SECONDS)
        if self.backend is not None:
            self.backend.close()
        if self.buffer is not None:
            depth = await self.on_buffer(lambda: self.buffer.depth)
            log.info("%d readings kept in the buffer for next time", depth)
            await self.on_buffer(self.buffer.close)
        self._buffer_thread.shutdown(wait=True)
