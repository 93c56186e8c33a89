"""Long-range history: ingest with rollups on against off, database size, and
`/api/series` latency for a day, a month and a year.

    python bench/bench_history.py [--readings 10000000] [--agents 2] [--days 365]
        [--storage sqlite | --storage postgresql://postgres@127.0.0.1/postgres]
        [--requests 100] [--workdir DIR]

Readings are generated straight into storage (no agents): each agent has one
sensor with a temperature and a humidity metric, read in turn over `--days`
days up to now, so there are 2 x agents series and the interval between two
readings of a series follows from `--readings`. They go in in time order, as
batches of `--batch` readings per agent, one batch of each agent per commit.

The same commits go into two fresh databases in the same run: one that keeps
the rollups (the product) and one opened with `maintain_rollups=False` (bench
only), alternately and in alternating order, so the machine's noise falls on
both alike. Only the `store()` calls are timed. Then both databases' sizes, and
a collector process started on the first one answers `GET /api/series` for one
chart (one series, 1000 points) over a day and a month ending at random times,
and over the whole year.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from processes import Collector  # noqa: E402

from sensor_edge.contract.protocol import Reading  # noqa: E402
from sensor_edge.server.storage import Batch, open_storage  # noqa: E402

DAY = 86400
METRICS = (("temperature", "C"), ("humidity", "%"))


def groups(readings: int, agents: int, days: float, batch: int, end: float):
    """Commits in time order: one batch of `batch` readings per agent each."""
    series = agents * len(METRICS)
    per_series = readings // series
    interval = days * DAY / per_series
    start = end - days * DAY
    steps = batch // len(METRICS)
    for first in range(0, per_series, steps):
        group = []
        for a in range(agents):
            rows = []
            seq = first * len(METRICS)
            for i in range(first, min(first + steps, per_series)):
                ts = start + i * interval + a * 0.37
                day = math.sin(2 * math.pi * ts / DAY)
                rows.append(Reading(seq + 1, "climate", "temperature",
                                    round(18 + 6 * day + random.random(), 2), "C", ts))
                rows.append(Reading(seq + 2, "climate", "humidity",
                                    round(55 - 15 * day + random.random() * 3, 1), "%", ts))
                seq += 2
            group.append(Batch(f"bench-{a}", "history", rows))
        yield group


def database_size(url: str) -> int:
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as db:
            db.execute("CHECKPOINT")
            return db.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    import sqlite3

    with sqlite3.connect(url) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return sum(os.path.getsize(url + suffix) for suffix in ("", "-wal")
               if os.path.exists(url + suffix))


def drop_databases(urls: tuple[str, str]) -> None:
    """PostgreSQL: drop the two databases a run made (SQLite files go with the folder)."""
    if not urls[0].startswith("postgresql"):
        return
    import psycopg
    from urllib.parse import urlsplit

    with psycopg.connect(urlsplit(urls[0])._replace(path="/postgres").geturl(),
                         autocommit=True) as db:
        for url in urls:
            db.execute(f"DROP DATABASE IF EXISTS {urlsplit(url).path[1:]}")


def fresh_databases(storage: str, workdir: Path) -> tuple[str, str]:
    if not storage.startswith("postgresql"):
        return str(workdir / "rollups-on.db"), str(workdir / "rollups-off.db")
    import psycopg
    from urllib.parse import urlsplit

    urls = []
    with psycopg.connect(storage, autocommit=True) as db:
        for name in ("bench_history_on", "bench_history_off"):
            db.execute(f"DROP DATABASE IF EXISTS {name}")
            db.execute(f"CREATE DATABASE {name}")
            urls.append(urlsplit(storage)._replace(path="/" + name).geturl())
    return urls[0], urls[1]


def load(on_url: str, off_url: str, args: argparse.Namespace, end: float) -> dict[str, float]:
    on = open_storage(on_url)
    off = open_storage(off_url, maintain_rollups=False)
    seconds = {"on": 0.0, "off": 0.0}
    stored = 0
    shown = time.monotonic()
    try:
        for n, group in enumerate(groups(args.readings, args.agents, args.days, args.batch, end)):
            pair = [("on", on), ("off", off)]
            for name, storage in pair if n % 2 else reversed(pair):
                started = time.perf_counter()
                storage.store(group, time.time())
                seconds[name] += time.perf_counter() - started
            stored += sum(len(b.rows) for b in group)
            if time.monotonic() - shown > 15:
                shown = time.monotonic()
                print(f"  ... {stored:,} readings into each, rollups on "
                      f"{stored / seconds['on']:,.0f}/s, off {stored / seconds['off']:,.0f}/s",
                      file=sys.stderr, flush=True)
    finally:
        on.close()
        off.close()
    return {"stored": stored, **{name: stored / s for name, s in seconds.items()}}


def get_json(url: str) -> tuple[float, dict]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
    return time.perf_counter() - started, json.loads(body)


def series_latency(url: str, args: argparse.Namespace, end: float) -> None:
    workdir = Path(args.workdir)
    collector = Collector(workdir, {"bench-0": "bench-token-0-0123456789"}, name="history",
                          storage=url).start(timeout=60)
    series = [(f"bench-{a}", metric) for a in range(args.agents) for metric, _ in METRICS]
    start = end - args.days * DAY
    try:
        for label, span in (("day", DAY), ("month", 30 * DAY), ("year", 365 * DAY)):
            times, points, steps = [], [], set()
            for _ in range(args.requests):
                agent, metric = random.choice(series)
                until = end if span >= args.days * DAY else random.uniform(start + span, end)
                took, answer = get_json(
                    f"{collector.base}/api/series?agent={agent}&sensor=climate&metric={metric}"
                    f"&since={until - span}&until={until}&points=1000")
                times.append(took)
                points.append(len(answer["series"][0]["points"]) if answer["series"] else 0)
                steps.add(answer["step"])
            times.sort()
            p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
            print(f"  {label:5}: p50 {statistics.median(times) * 1000:6.1f} ms, "
                  f"p99 {p99 * 1000:6.1f} ms, max {times[-1] * 1000:6.1f} ms over "
                  f"{len(times)} requests; {min(points)}-{max(points)} points, step "
                  f"{', '.join(str(s) for s in sorted(steps))} s")
    finally:
        collector.terminate(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=10_000_000)
    p.add_argument("--agents", type=int, default=2)
    p.add_argument("--days", type=float, default=365)
    p.add_argument("--batch", type=int, default=5000, help="readings per batch per agent")
    p.add_argument("--storage", default="sqlite",
                   help="sqlite, or a postgresql:// URL whose server gets two fresh databases")
    p.add_argument("--requests", type=int, default=100, help="per range")
    p.add_argument("--workdir", help="where the SQLite files go (default: a temporary folder)")
    args = p.parse_args()
    end = time.time()
    with tempfile.TemporaryDirectory(prefix="sensor-edge-history-") as tmp:
        args.workdir = args.workdir or tmp
        on_url, off_url = fresh_databases(args.storage, Path(args.workdir))
        series = args.agents * len(METRICS)
        interval = args.days * DAY / (args.readings // series)
        print(f"{args.readings:,} readings: {series} series over {args.days:g} days, one "
              f"reading every {interval:.2f} s per series, {args.batch:,}-reading batches, "
              f"{args.agents} per commit; storage {args.storage.split('://')[0]}")
        try:
            loaded = load(on_url, off_url, args, end)
            cost = 1 - loaded["on"] / loaded["off"]
            print(f"ingest, {loaded['stored']:,} readings into each database, same run: "
                  f"rollups on {loaded['on']:,.0f}/s, off {loaded['off']:,.0f}/s "
                  f"(rollups cost {cost:.1%} of throughput)")
            on_size, off_size = database_size(on_url), database_size(off_url)
            print(f"database size: {on_size / 2**20:,.0f} MiB with rollups, "
                  f"{off_size / 2**20:,.0f} MiB without (+{on_size / off_size - 1:.1%}), "
                  f"{on_size / loaded['stored']:.0f} bytes per reading")
            print("GET /api/series, one chart (one series, points=1000), through a collector:")
            series_latency(on_url, args, end)
        finally:
            drop_databases((on_url, off_url))


if __name__ == "__main__":
    main()
