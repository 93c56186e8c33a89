"""Operator-side figures: export speed and memory, and what retention costs ingest.

    python bench/bench_operations.py [--rows 1000000]

1. `sensor-collector export` of N and N/10 rows to /dev/null: rows/s and the
   child's peak RSS (flat memory means both peaks are about the same).
2. Retention sweeping N expired rows while a writer commits a 50-reading batch
   every 10 ms on the same storage thread: the worst and 99th-percentile wait
   of those commits, in small batches (the product) and as one big DELETE
   (what the batching avoids).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sensor_edge.server.storage.retention import Retention
from sensor_edge.server.storage import Batch
from sensor_edge.server.storage.sqlite import SQLiteStorage

DAY = 86400.0


def fill(path: str, rows: int, ts0: float) -> None:
    storage = SQLiteStorage(path)
    per = 50_000
    for start in range(1, rows + 1, per):
        batch = [(s, "climate", "temperature", 20.0 + s % 7, "C", ts0 + s * 0.01)
                 for s in range(start, min(rows, start + per - 1) + 1)]
        storage.store([Batch("pi-bench", "e", batch)], time.time())
    storage.close()


def export_run(workdir: Path, rows: int) -> tuple[float, float]:
    """(rows/s, peak RSS in MiB) of one export of `rows` rows."""
    db = workdir / f"export-{rows}.db"
    fill(str(db), rows, time.time() - DAY)
    config = workdir / f"export-{rows}.yaml"
    config.write_text(f"storage: {db}\n")
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        child = subprocess.Popen([sys.executable, "-m", "sensor_edge.server", "export",
                                  "--config", str(config)], stdout=sink)
        _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    assert os.waitstatus_to_exitcode(status) == 0
    return rows / elapsed, usage.ru_maxrss / 1024


async def ingest_while(sweep, storage: SQLiteStorage, writer: ThreadPoolExecutor) -> list[float]:
    """Commit latencies (s) of a steady writer while `sweep` runs."""
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    done = asyncio.Event()
    seq = 10_000_000

    async def writer_loop() -> None:
        nonlocal seq
        while not done.is_set():
            batch = [(seq + i, "live", "v", 1.0, "", time.time()) for i in range(50)]
            seq += 50
            started = time.perf_counter()
            await loop.run_in_executor(writer, storage.store,
                                       [Batch("pi-live", "e", batch)], time.time())
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(writer_loop())
    await asyncio.sleep(0.3)  # steady state first
    await sweep()
    done.set()
    await task
    return waits


async def retention_run(workdir: Path, rows: int, batched: bool) -> tuple[float, float, float]:
    """(sweep seconds, worst commit wait ms, p99 commit wait ms)."""
    db = workdir / f"retention-{batched}.db"
    fill(str(db), rows, time.time() - 10 * DAY)
    writer = ThreadPoolExecutor(1)
    storage = await asyncio.get_running_loop().run_in_executor(writer, SQLiteStorage, str(db))
    retention = Retention(storage, writer, days=1)
    loop = asyncio.get_running_loop()

    async def sweep() -> None:
        if batched:
            await retention.sweep()
        else:
            await loop.run_in_executor(writer, storage.delete_older_than,
                                       time.time() - DAY, rows + 1)

    started = time.perf_counter()
    waits = await ingest_while(sweep, storage, writer)
    took = time.perf_counter() - started
    await loop.run_in_executor(writer, storage.close)
    writer.shutdown()
    p99 = statistics.quantiles(waits, n=100)[98] if len(waits) >= 100 else max(waits)
    return took, max(waits) * 1000, p99 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
        workdir = Path(tmp)
        for rows in (args.rows // 10, args.rows):
            rate, rss = export_run(workdir, rows)
            print(f"export {rows:>10,} rows: {rate:>9,.0f} rows/s, peak RSS {rss:6.1f} MiB")
        for batched in (True, False):
            took, worst, p99 = asyncio.run(retention_run(workdir, args.rows, batched))
            how = "in batches of 2,000" if batched else "as one DELETE      "
            print(f"retention of {args.rows:,} rows {how}: {took:5.1f} s; ingest commit wait "
                  f"worst {worst:7.1f} ms, p99 {p99:6.1f} ms")


if __name__ == "__main__":
    main()
