"""Deletes readings older than `retention_days`, a little at a time.

Each pass deletes in small transactions on the storage writer's own thread.
Group commits queue on that thread too, so an ingest commit waits for at
most one small delete, never for the whole sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sensor_edge.server.storage import Storage

log = logging.getLogger("sensor_edge.collector.retention")

# Rows per delete transaction: a few milliseconds of writer time each.
DELETE_BATCH = 2000
# Breathing room between two deletes, so the disk is not saturated either.
BATCH_PAUSE = 0.02
# How often to look for newly expired readings.
SWEEP_EVERY = 600.0
DAY = 86400.0


class Retention:
    def __init__(self, storage: Storage, writer: ThreadPoolExecutor, days: float,
                 on_deleted: Callable[[int], None] | None = None,
                 sweep_every: float = SWEEP_EVERY):
        self._storage = storage
        self._writer = writer
        self.days = days
        self._on_deleted = on_deleted
        self._sweep_every = sweep_every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        """Stop after the delete in progress, if any."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep(self, now: float | None = None) -> int:
        """Delete everything older than the retention period; return how many."""
        cutoff = (time.time() if now is None else now) - self.days * DAY
        loop = asyncio.get_running_loop()
        total = 0
        while True:
            deleted = await loop.run_in_executor(
                self._writer, self._storage.delete_older_than, cutoff, DELETE_BATCH)
            total += deleted
            if self._on_deleted is not None and deleted:
                self._on_deleted(deleted)
            if deleted < DELETE_BATCH:
                break
            await asyncio.sleep(BATCH_PAUSE)
        if total:
            log.info("retention: deleted %d readings older than %s", total,
                     time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cutoff)))
        return total

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as e:  # a locked or full database: try again next time
                log.error("retention: could not delete old readings: %s", e)
            await asyncio.sleep(self._sweep_every)
