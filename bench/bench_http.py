"""The read API under load: /healthz and agents' ack latencies while a million
readings stream out, and the collector's peak memory meanwhile.

    python bench/bench_http.py [--rows 1000000] [--agents 10] [--rate 200] [--seconds 10]

A collector is started on a SQLite file filled straight with ``--rows``
readings. For each phase (quiet; while a client downloads
`/api/readings?limit=1000000` over and over; the same for `.csv`), simulated
agents send ``--rate`` readings/s each and /healthz is asked every 20 ms. It
prints p50/p99/max of both latencies, the download rate, and the collector's
peak RSS (VmHWM). Everything shares this machine's cores, load generator included.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_core import proc_stats  # noqa: E402
from loadgen import run_load  # noqa: E402
from processes import HOST, Collector, fill_sqlite  # noqa: E402

LIMIT = 1_000_000


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)

    def at(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    return f"p50 {at(50):.1f} ms, p99 {at(99):.1f} ms, max {ordered[-1] * 1000:.1f} ms"


async def poll_health(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    while not stop.is_set():
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        answer = await reader.read()  # until the collector closes
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)


class Downloads(threading.Thread):
    """Downloads `path` with curl, again and again until stopped (a process of its
    own, so the client's work does not slow this process's measurements)."""

    def __init__(self, port: int, path: str):
        super().__init__(daemon=True)
        self.url = f"http://{HOST}:{port}{path}"
        self.stopping = threading.Event()
        self.process: subprocess.Popen | None = None
        self.bytes = 0
        self.completed = 0
        self.seconds = 0.0

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.perf_counter()
            self.process = subprocess.Popen(["curl", "-sS", self.url], stdout=subprocess.PIPE)
            while chunk := self.process.stdout.read(1 << 20):
                self.bytes += len(chunk)
            self.completed += self.process.wait() == 0
            self.seconds += time.perf_counter() - started

    def stop(self) -> None:
        self.stopping.set()
        if self.process is not None:
            self.process.terminate()
        self.join(60)


def phase(collector: Collector, tokens: dict[str, str], name: str, path: str | None,
          rate: float, seconds: float) -> None:
    download = Downloads(collector.port, path) if path else None
    if download:
        download.start()
        time.sleep(1)  # under way before the measured window
    health: list[float] = []

    async def measure():
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(collector.port, stop, health))
        try:
            return await run_load(collector.stream_url, tokens, f"{name}-{time.time()}",
                                  batch=10, window=8, seconds=seconds, rate=rate, warmup=1)
        finally:
            stop.set()
            await poller

    result, _ = asyncio.run(measure())
    if download:
        download.stop()
    print(f"{name}:")
    print(f"  /healthz: {percentiles(health)} ({len(health)} requests)")
    print(f"  acks: {percentiles(result.latencies)}; {result.measured:,} readings acked, "
          f"{len(result.errors)} errors")
    if download:
        print(f"  download: {download.completed} complete, {download.bytes / 2**20:,.0f} MiB in "
              f"{download.seconds:.1f} s = {download.bytes / 2**20 / download.seconds:.1f} MiB/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=LIMIT)
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--rate", type=float, default=200, help="readings/s per agent")
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    tokens = {f"bench-{i}": f"bench-token-{i:04d}-abcdefgh" for i in range(args.agents)}
    with tempfile.TemporaryDirectory(prefix="sensor-edge-bench-http-") as tmp:
        storage = str(Path(tmp) / "collector.db")
        started = time.perf_counter()
        fill_sqlite(storage, args.rows)
        print(f"{args.rows:,} readings written in {time.perf_counter() - started:.1f} s; "
              f"{args.agents} agents x {args.rate:g} readings/s in batches of 10")
        collector = Collector(Path(tmp), tokens, storage=storage).start()
        try:
            phase(collector, tokens, "quiet", None, args.rate, args.seconds)
            phase(collector, tokens, "while /api/readings streams",
                  f"/api/readings?limit={LIMIT}", args.rate, args.seconds)
            phase(collector, tokens, "while /api/readings.csv streams",
                  f"/api/readings.csv?limit={LIMIT}", args.rate, args.seconds)
            peak, cpu = proc_stats(collector.pid)
            print(f"collector peak RSS (VmHWM) {peak / 1024:.0f} MiB, CPU {cpu:.1f} s")
        finally:
            collector.terminate()


if __name__ == "__main__":
    main()
