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

from sensor_edge.contract.protocol import Reading
from sensor_edge.server.storage import Batch, Storage

log = logging.getLogger("sensor_edge.collector.batcher")

# A group stops growing here, so one commit never holds the line for long.
MAX_GROUP_ROWS = 50_000


class Batcher:
    def __init__(self, storage: Storage, executor: ThreadPoolExecutor,
                 on_commit: Callable[[list[Batch], list[int], float], None] | None = None,
                 on_commit_failed: Callable[[], None] | None = None,
                 on_conflicting: Callable[[int], None] | None = None):
        self._storage = storage
        self._executor = executor
        # Told of every commit (counters, the live feed, MQTT): it runs on the event
        # loop between the commit and the acks, so a failure in it is contained here,
        # and counted with on_commit_failed.
        self._on_commit = on_commit
        self._on_commit_failed = on_commit_failed
        self._on_commit_failures = 0
        # Told how many readings a commit's batches resent with other values.
        self._on_conflicting = on_conflicting
        # (agent, epoch) -> batches seen resending readings with other values.
        self._conflicts: dict[tuple[str, str], int] = {}
        self._queue: asyncio.Queue[tuple[Batch, asyncio.Future[int]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    def submit(self, batch: Batch) -> asyncio.Future[int]:
        """Queue a batch for the next commit; the future gives how many readings were new.

        Futures resolve in submission order, so a connection can ack in order.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # A failed commit is logged once, here; its waiters may be gone (their
        # connection closed), and each of their futures would otherwise log a
        # "Future exception was never retrieved" traceback of its own.
        future.add_done_callback(_consider_retrieved)
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
                added, conflicts = await loop.run_in_executor(
                    self._executor, self._store, batches, time.time())
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
            for batch, found in conflicts:
                self._conflicting(batch, found)
            if self._on_commit is not None:
                self._committed(batches, added, time.monotonic() - started)
            for (_, future), count in zip(group, added):
                if not future.done():
                    future.set_result(count)

    def _store(self, batches: list[Batch], now: float
               ) -> tuple[list[int], list[tuple[Batch, list[tuple[Reading, Reading]]]]]:
        """On the writer thread: the commit, then, for a batch that had duplicates
        only (the hot path pays nothing), whether they were the readings stored."""
        added = self._storage.store(batches, now)
        conflicts = []
        for batch, count in zip(batches, added):
            if count < len(batch.rows):
                try:
                    found = self._storage.differing_duplicates(batch)
                except Exception as e:  # the commit stands; only this check is lost
                    log.warning("could not compare resent readings with the stored ones: %s", e)
                    continue
                if found:
                    conflicts.append((batch, found))
        return added, conflicts

    def _conflicting(self, batch: Batch, found: list[tuple[Reading, Reading]]) -> None:
        """Count and log readings resent under a stored seq with other values."""
        if self._on_conflicting is not None:
            self._on_conflicting(len(found))
        key = (batch.agent, batch.epoch)
        seen = self._conflicts[key] = self._conflicts.get(key, 0) + 1
        if seen == 1 or seen % 100 == 0:  # two machines on one buffer keep at it
            stored, received = found[0]
            log.warning("agent %s epoch %s: %d readings resent with values that differ from "
                        "the stored ones, which are kept (seq %d: stored %s, received %s)%s; "
                        "two machines sending with one buffer (a cloned SD card)?",
                        batch.agent, batch.epoch, len(found), stored[0], _describe(stored),
                        _describe(received), "" if seen == 1 else f"; {seen} such batches so far")

    def _committed(self, batches: list[Batch], added: list[int], seconds: float) -> None:
        """Call on_commit; if it raises, the acks still go out (the rows are stored)."""
        try:
            self._on_commit(batches, added, seconds)
        except Exception:
            self._on_commit_failures += 1
            if self._on_commit_failed is not None:
                self._on_commit_failed()
            # Whole the first time; then a line now and then (it would repeat every commit).
            if self._on_commit_failures == 1:
                log.exception("after a commit: a counter, the live feed or an output failed; "
                              "acks go on")
            elif self._on_commit_failures % 1000 == 0:
                log.error("after a commit: failed %d times so far", self._on_commit_failures)


def _describe(row: Reading) -> str:
    _seq, sensor, metric, value, unit, ts = row
    return f"{sensor} {metric} {value!r} {unit} ts {ts!r}"


def _consider_retrieved(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()
