"""Deletes readings older than `retention_days`, and rollups older than
`rollup_retention_days`, a little at a time.

Each pass deletes in small transactions on the storage writer's own thread.
Group commits queue on that thread too, so an ingest commit waits for at
most one small delete, never for the whole sweep.

Which rollups go. A bucket is deleted only when it ended before both cutoffs:
the rollups' and the readings'. So no bucket is deleted while it can still
fill in the ordinary course (the current minute and hour, and every bucket
whose readings are still kept), and the rollups always cover at least what
the readings cover: where both exist they agree. A late reading older than a
cutoff is still stored and rolled up, and goes with the next sweep like any
other expired one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sensor_edge.config.model import DEFAULT_ROLLUP_RETENTION_DAYS
from sensor_edge.server.storage import Storage
from sensor_edge.server.storage.rollups import TIERS

log = logging.getLogger("sensor_edge.collector.retention")

# Rows per delete transaction: a few milliseconds of writer time each.
DELETE_BATCH = 2000
# Breathing room between two deletes, so the disk is not saturated either.
BATCH_PAUSE = 0.02
# How often to look for newly expired readings.
SWEEP_EVERY = 600.0
DAY = 86400.0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class Retention:
    def __init__(self, storage: Storage, writer: ThreadPoolExecutor, days: float,
                 on_deleted: Callable[[int], None] | None = None,
                 sweep_every: float = SWEEP_EVERY,
                 rollup_days: float = DEFAULT_ROLLUP_RETENTION_DAYS,
                 backfilled: asyncio.Event | None = None):
        self._storage = storage
        self._writer = writer
        self.days = days
        self.rollup_days = rollup_days
        self._on_deleted = on_deleted
        self._sweep_every = sweep_every
        # Readings wait for the rollup backfill: none may go before it is rolled up.
        self._backfilled = backfilled
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
        """Delete everything older than the retention periods; return how many readings."""
        if self._backfilled is not None and not self._backfilled.is_set():
            log.info("retention: waiting for the rollup backfill before deleting readings")
            await self._backfilled.wait()
        now = time.time() if now is None else now
        cutoff = now - self.days * DAY
        total = await self._delete(self._storage.delete_older_than, cutoff,
                                   on_deleted=self._on_deleted)
        if total:
            log.info("retention: deleted %d readings older than %s", total, _when(cutoff))
        rollup_cutoff = min(cutoff, now - self.rollup_days * DAY)
        for name, width in TIERS.items():
            buckets = await self._delete(self._storage.delete_rollups_older_than, width,
                                         rollup_cutoff)
            if buckets:
                log.info("retention: deleted %d %s rollups older than %s", buckets, name,
                         _when(rollup_cutoff))
        return total

    async def _delete(self, delete: Callable[..., int], *args: float,
                      on_deleted: Callable[[int], None] | None = None) -> int:
        """Call ``delete(*args, DELETE_BATCH)`` on the writer until it deletes less."""
        loop = asyncio.get_running_loop()
        total = 0
        while True:
            deleted = await loop.run_in_executor(self._writer, delete, *args, DELETE_BATCH)
            total += deleted
            if on_deleted is not None and deleted:
                on_deleted(deleted)
            if deleted < DELETE_BATCH:
                return total
            await asyncio.sleep(BATCH_PAUSE)

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as e:  # a locked or full database: try again next time
                log.error("retention: could not delete old readings: %s", e)
            await asyncio.sleep(self._sweep_every)
