"""The agent process: sensors -> sampler -> durable buffer -> uplink."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..config.model import AgentConfig
from . import __version__
from .backends import Backend, choose_backend
from .buffer import Buffer
from .sampler import Sampler
from .sensors import Sample, open_sensor
from .uplink import Uplink

log = logging.getLogger("sensor_edge.agent")
T = TypeVar("T")

# Of the 5 s the contract allows for a clean stop, this much goes to delivering.
FLUSH_SECONDS = 2.5


class Agent:
    def __init__(self, config: AgentConfig, backend: str | None = None):
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

    async def on_buffer(self, method: Callable[..., T], *args: Any) -> T:
        """Run a blocking buffer method on the buffer's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._buffer_thread, functools.partial(method, *args))

    async def start(self) -> None:
        for warning in self.config.warnings:
            log.warning("%s", warning)
        self.buffer = await self.on_buffer(Buffer, self.config.buffer_path,
                                           self.config.max_buffered)
        log.info("agent %s, epoch %s, %d readings waiting in %s", self.config.agent_id,
                 self.buffer.epoch, self.buffer.depth, self.config.buffer_path)
        self.backend = choose_backend(self.backend_name)
        sensors = [open_sensor(s, self.backend) for s in self.config.sensors]
        self.backend.start()
        self.sampler = Sampler(sensors, self._collect)
        self._appender = asyncio.create_task(self._append_forever(), name="appender")
        self.uplink = Uplink(
            agent_id=self.config.agent_id, urls=self.config.urls, token=self.config.token,
            version=__version__, buffer=self.buffer, on_buffer=self.on_buffer,
            batch_size=self.config.batch_size, window=self.config.window)
        self.sampler.start()
        self.uplink.start()
        log.info("reading %d sensors: %s", len(sensors),
                 ", ".join(f"{s.name} ({s.type})" for s in self.config.sensors) or "none")

    def _collect(self, samples: list[Sample]) -> None:
        self._pending.extend(samples)
        self._pending_ready.set()

    async def _append_forever(self) -> None:
        while True:
            await self._pending_ready.wait()
            await self._append_pending()

    async def _append_pending(self) -> None:
        # Everything gathered while the last commit ran goes into the next one.
        self._pending_ready.clear()
        samples, self._pending = self._pending, []
        if not samples:
            return
        try:
            await self.on_buffer(self.buffer.append, samples)
        except Exception as e:  # a full disk must not stop the agent
            log.error("could not store %d readings in the buffer: %s", len(samples), e)
            return
        self.uplink.notify()

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
