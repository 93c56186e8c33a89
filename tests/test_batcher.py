"""The group-commit batcher in process, on a real SQLite file: what happens to the
connections' futures when a commit, or what runs after one, goes wrong."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from sensor_edge.server.ingest.batcher import Batcher
from sensor_edge.server.outputs.metrics import CollectorMetrics
from sensor_edge.server.storage import Batch
from sensor_edge.server.storage.sqlite import SQLiteStorage

NOW = 1_700_000_000.0


def rows(first: int, last: int) -> list[tuple]:
    return [(seq, "s", "m", float(seq), "u", NOW + seq) for seq in range(first, last + 1)]


def counter(metrics: CollectorMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def run_batcher(tmp_path, scenario, **kwargs):
    """Run ``scenario(batcher)`` against a started Batcher on a fresh SQLite file."""
    storage = SQLiteStorage(str(tmp_path / "readings.db"))
    writer = ThreadPoolExecutor(1)

    async def main():
        batcher = Batcher(storage, writer, **kwargs)
        batcher.start()
        try:
            return await asyncio.wait_for(scenario(batcher), 30)
        finally:
            await asyncio.wait_for(batcher.stop(), 30)

    try:
        return asyncio.run(main())
    finally:
        writer.shutdown()
        storage.close()


def test_an_on_commit_that_raises_never_stops_the_acks(tmp_path, caplog):
    metrics = CollectorMetrics()
    calls = []

    def on_commit(batches, added, seconds):
        calls.append(added)
        raise RuntimeError("a bug in an output")

    async def scenario(batcher):
        resolved = []
        for first in range(1, 200, 10):  # one commit after another, each calling on_commit
            resolved.append(await batcher.submit(Batch("a", "e", rows(first, first + 9))))
        return resolved

    with caplog.at_level(logging.WARNING, "sensor_edge"):
        resolved = run_batcher(tmp_path, scenario, on_commit=on_commit,
                               on_commit_failed=metrics.commit_hook_failures.inc)
    assert resolved == [10] * 20  # every batch acked: its future resolved with its count
    assert len(calls) == 20
    assert counter(metrics, "sensor_edge_commit_hook_failures_total") == 20
    # Logged once with its traceback, not once per commit.
    failures = [r for r in caplog.records if "a bug in an output" in r.getMessage()
                or (r.exc_info and "a bug in an output" in str(r.exc_info[1]))]
    assert len(failures) == 1 and failures[0].exc_info is not None

