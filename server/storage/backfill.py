"""Rolls up the readings stored before the rollups existed, a step at a time.

A database from before schema version 5 has readings and no rollups of them.
Each step (:func:`rollup_tables.backfill_step`) rolls up the next readings by
primary key in one short transaction on the storage writer's thread, so ingest
commits queue behind one step at most and agents keep streaming meanwhile; the
step and its place in the readings commit together, so a restart resumes where
it stopped. Progress goes to the log. Retention waits for :attr:`done`: a reading
deleted before it is rolled up would be missing from its buckets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from sensor_edge.server.storage import Storage
from sensor_edge.server.storage.rollup_tables import BACKFILL_STEP

log = logging.getLogger("sensor_edge.collector.rollups")

# Breathing room between two steps, for the ingest commits queued meanwhile.
STEP_PAUSE = 0.01
PROGRESS_EVERY = 10.0
RETRY_AFTER = 30.0


class RollupBackfill:
    def __init__(self, storage: Storage, writer: ThreadPoolExecutor, step: int = BACKFILL_STEP):
        self._storage = storage
        self._writer = writer
        self._step = step
        self._task: asyncio.Task[None] | None = None
        # Set once every reading stored before the rollups existed is rolled up.
        self.done = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollup-backfill")

    async def stop(self) -> None:
        """Stop after the step in progress, if any (the next start resumes there)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(self) -> int:
        """Backfill to the end; how many readings this call rolled up."""
        loop = asyncio.get_running_loop()
        rows, done = await loop.run_in_executor(self._writer, self._storage.backfill_rollups,
                                                self._step)
        if done and not rows:
            self.done.set()
            return 0
        agents = await loop.run_in_executor(self._writer, self._storage.agents)
        about = sum(a["readings"] for a in agents)
        log.info("rollups: rolling up the readings stored before rollups existed "
                 "(about %d), %d at a time, while ingest goes on", about, self._step)
        began = shown = time.monotonic()
        while not done:
            await asyncio.sleep(STEP_PAUSE)
            step, done = await loop.run_in_executor(self._writer, self._storage.backfill_rollups,
                                                    self._step)
            rows += step
            if time.monotonic() - shown >= PROGRESS_EVERY:
                shown = time.monotonic()
                log.info("rollups: backfilled %d of about %d readings (%.0f %%)", rows, about,
                         100 * rows / max(about, 1))
        log.info("rollups: backfill done, %d readings in %.1f s", rows, time.monotonic() - began)
        self.done.set()
        return rows

    async def _run(self) -> None:
        while True:
            try:
                await self.run()
                return
            except Exception as e:  # a locked or unreachable database: resume later
                log.error("rollups: backfill step failed, retrying in %.0f s: %s", RETRY_AFTER, e)
                await asyncio.sleep(RETRY_AFTER)
