"""Scale benchmarks: the issue's scenarios, each beside the ceilings that bound it.

    python bench/bench_scale.py                      # every scenario on SQLite (~4 min)
    python bench/bench_scale.py --storage postgres   # on a fresh PostgreSQL database
    python bench/bench_scale.py --only throughput,singles --seconds 20

Scenarios (load generator on the same cores as the collector):
  throughput  50 agents x batches of 50, as fast as acks allow
  singles     500 agents x one reading per message, as fast as acks allow
  steady      1,000 agents x 1 reading/s: all acked, p99, collector RSS
  idle        5,000 agents connected, keepalive only: collector RSS
  agent       the agent on 4 mock sensors: peak RSS, CPU per reading

Each collector scenario also measures, in the same invocation, the storage
ceiling (the same rows stored through the storage class in 20,000-row
transactions) and the transport ceiling (the same load against
null_collector.py: frames parsed and acked, nothing stored, no compression),
and prints the product's figure as a fraction of the lower one. After each
run it checks that the store holds seqs exactly 1..N for every agent.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_core import bench_agent, proc_stats, storage_ceiling  # noqa: E402
from loadgen import Result, run_load  # noqa: E402
from processes import Collector, PostgresDatabases, free_port  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    title: str
    agents: int
    batch: int  # 0: idle, keepalive only
    window: int
    rate: float | None = None  # readings/s per agent; None: as fast as acks allow
    seconds: float = 10.0


SCENARIOS = {
    # Window 4: 10,000 readings in flight keep the group commits full while
    # p99 stays near commit time + queueing (Little's law: in flight / rate).
    "throughput": Scenario("50 agents x batches of 50, as fast as acks allow", 50, 50, 2),
    "singles": Scenario("500 agents x one reading per message, as fast as acks allow",
                        500, 1, 8),
    "steady": Scenario("1,000 agents x 1 reading/s", 1000, 1, 8, rate=1.0, seconds=20.0),
    "idle": Scenario("5,000 idle agents (keepalive only)", 5000, 0, 1, seconds=5.0),
}
# The transport ceiling of a rate-limited or idle scenario: the same agents as fast as acks allow.
CEILING_SECONDS = 5.0


def tokens_for(count: int) -> dict[str, str]:
    return {f"bench-{i}": f"bench-token-{i:05d}-abcdefgh" for i in range(count)}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def store_summary(storage: str) -> dict[str, tuple[int, int, int]]:
    """agent -> (rows, lowest seq, highest seq) in one query."""
    sql = "SELECT agent, count(*), min(seq), max(seq) FROM readings GROUP BY agent"
    if storage.startswith("postgres"):
        import psycopg

        with psycopg.connect(storage) as db:
            return {r[0]: r[1:] for r in db.execute(sql)}
    with sqlite3.connect(storage, timeout=30) as db:
        return {r[0]: r[1:] for r in db.execute(sql)}


def exactly_once(storage: str, last: dict[str, int]) -> str:
    """'yes' when every agent's stored seqs are exactly 1..its last acked seq."""
    summary = store_summary(storage)
    # (agent, epoch, seq) is unique, so rows == highest and lowest == 1 means no gap.
    bad = [a for a, seq in last.items() if seq and summary.get(a) != (seq, 1, seq)]
    return "yes" if not bad else f"NO ({len(bad)} agents differ, e.g. {bad[0]})"


class NullCollector:
    """null_collector.py in its own process, as the collector runs in its own."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "null_collector.py"),
                                      "--port", str(self.port)], stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == b"ready"
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def transport_ceiling(scenario: Scenario) -> tuple[Result, float]:
    """The scenario's load (as fast as acks allow) against the null collector; its RSS."""
    null = NullCollector()
    rss: list[float] = []

    async def during() -> None:
        rss.append(rss_mib(null.proc.pid))

    try:
        seconds = scenario.seconds if scenario.batch and not scenario.rate else CEILING_SECONDS
        result, _ = asyncio.run(run_load(
            null.url, tokens_for(scenario.agents), "ceiling", scenario.batch, scenario.window,
            seconds, warmup=1.0, during=during))
    finally:
        null.stop()
    return result, rss[0] if rss else float("nan")


def run_scenario(name: str, scenario: Scenario, workdir: Path, storage: str,
                 storage_rate: float) -> dict[str, float]:
    tokens = tokens_for(scenario.agents)
    collector = Collector(workdir, tokens, name=f"collector-{name}", storage=storage).start(60)
    seen: dict[str, float] = {}

    async def during() -> None:  # every agent still connected
        seen["rss"] = rss_mib(collector.pid)
        metrics = collector.get("/metrics")[1].decode()
        seen["connected"] = float(next(
            line.split()[1] for line in metrics.splitlines()
            if line.startswith("sensor_edge_agents_connected ")))

    try:
        result, last = asyncio.run(run_load(
            collector.stream_url, tokens, f"{name}-{int(time.time())}", scenario.batch,
            scenario.window, scenario.seconds, scenario.rate,
            warmup=3.0 if scenario.rate else 2.0, during=during))
        peak, cpu = proc_stats(collector.pid)
    finally:
        collector.terminate(30)
    print(f"\n{name}: {scenario.title}, window {scenario.window}, storage "
          f"{'PostgreSQL' if storage.startswith('postgres') else 'SQLite'}")
    if scenario.batch:
        print(f"  product: {result.summary()}")
    else:
        print(f"  product: {result.connected} connected in {result.connect_seconds:.1f} s, held "
              f"{scenario.seconds:g} s; {len(result.errors)} errors")
    print(f"  agents connected at the end: {seen.get('connected', 0):.0f}/{scenario.agents}; "
          f"collector RSS {seen.get('rss', float('nan')):.0f} MiB (peak {peak / 1024:.0f} MiB), "
          f"CPU {cpu:.1f} s")
    if scenario.batch:
        print(f"  store holds seqs exactly 1..N for every agent: "
              f"{exactly_once(storage, last)} ({len(last)}/{scenario.agents} agents finished)")
    transport, null_rss = transport_ceiling(scenario)
    if scenario.batch:
        lower = min(storage_rate, transport.rate)
        print(f"  transport ceiling (same agents, frames parsed and acked, nothing stored): "
              f"{transport.rate:,.0f}/s, p99 {transport.percentile(99) * 1000:.1f} ms")
        print(f"  storage ceiling (same rows, 20,000-row transactions): {storage_rate:,.0f}/s")
        print(f"  product = {result.rate / lower:.2f} of the lower ceiling "
              f"({'storage' if storage_rate <= transport.rate else 'transport'})")
    else:
        print(f"  transport ceiling: the null server holds the same {transport.connected} "
              f"connections in {null_rss:.0f} MiB; product = {seen.get('rss', 0) / null_rss:.1f}x "
              "that memory (no storage ceiling: nothing is stored)")
    return {"rate": result.rate, "p99_ms": result.percentile(99) * 1000,
            "rss": seen.get("rss", float("nan"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--only", default="throughput,singles,steady,idle,agent",
                   help="comma-separated scenarios")
    p.add_argument("--seconds", type=float, default=None,
                   help="measured seconds per collector scenario (default: its own)")
    p.add_argument("--agent-seconds", type=float, default=60.0)
    p.add_argument("--agent-python", default=None,
                   help="interpreter for the agent, e.g. a venv made by `pip install .` "
                        "(default: this one)")
    args = p.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS) - {"agent"}
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    databases = PostgresDatabases() if args.storage == "postgres" else None
    with tempfile.TemporaryDirectory(prefix="sensor-edge-bench-") as tmp:
        workdir = Path(tmp)
        try:
            ceiling_store = (databases.create() if databases
                             else str(workdir / "ceiling.db"))
            storage_rate = storage_ceiling(ceiling_store)
            for name in chosen:
                if name == "agent":
                    print()
                    bench_agent(workdir, args.agent_seconds, args.agent_python)
                    continue
                scenario = SCENARIOS[name]
                if args.seconds:
                    scenario = Scenario(**{**scenario.__dict__, "seconds": args.seconds})
                storage = databases.create() if databases else str(workdir / f"{name}.db")
                run_scenario(name, scenario, workdir, storage, storage_rate)
        finally:
            if databases is not None:
                databases.drop_all()


if __name__ == "__main__":
    main()
