"""Group commit: batches from every connection share one transaction.

Connections hand their validated batches to :meth:`Batcher.store` and await
the result; one task takes everything queued, commits it in a single
transaction on the storage thread, then resolves each waiter. While that
commit runs, the next group gathers, so the busier the collector the bigger
(and cheaper per reading) its commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sensor_edge.server.storage import Batch, Storage

log = logging.getLogger("sensor_edge.collector.batcher")

# A group stops growing here, so one commit never holds the line for long.
MAX_GROUP_ROWS = 50_000


class Batcher:
    def __init__(self, storage: Storage, executor: ThreadPoolExecutor,
                 on_commit: Callable[[list[Batch], list[int], float], None] | None = None):
        self._storage = storage
        self._executor = executor
        self._on_commit = on_commit
        self._queue: asyncio.Queue[tuple[Batch, asyncio.Future[int]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    def submit(self, batch: Batch) -> asyncio.Future[int]:
        """Queue a batch for the next commit; the future gives how many readings were new.

        Futures resolve in submission order, so a connection can ack in order.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((batch, future))
        return future

    async def stop(self) -> None:
        """Commit everything already handed over, then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            group = [first]
            rows = len(first[0].rows)
            while rows < MAX_GROUP_ROWS and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                group.append(item)
                rows += len(item[0].rows)
            batches = [batch for batch, _ in group]
            started = time.monotonic()
            try:
                added = await loop.run_in_executor(
                    self._executor, self._storage.store, batches, time.time())
            except Exception as e:  # a full disk, a locked database: fail these, keep serving
                log.error("commit of %d readings failed: %s", rows, e)
                # Everything queued behind them fails too: stored after an earlier batch
                # of its agent that was not, it would leave a gap below the acked seq
                # (the highest stored), and the agent would never resend what is missing.
                while not stopping and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        stopping = True
                    else:
                        group.append(item)
                for _, future in group:
                    if not future.done():
                        future.set_exception(e)
                continue
            if self._on_commit is not None:
                self._on_commit(batches, added, time.monotonic() - started)
            for (_, future), count in zip(group, added):
                if not future.done():
                    future.set_result(count)
