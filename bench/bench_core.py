"""Core figures: readings/s through one collector with N agents, and the agent's peak RSS.

    python bench/bench_core.py [--agents 10] [--batch 50] [--seconds 10] [--agent-seconds 30]

Everything runs on this machine, load generator included. Besides the
product's rate it measures, in the same invocation, the storage ceiling (the
same rows stored straight through the storage class in large transactions),
so the figure can be read as a fraction of what the disk and SQLite allow
on this (shared, noisy) machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from loadgen import run_load  # noqa: E402
from processes import Agent, Collector, stored_seqs, wait_until  # noqa: E402

from sensor_edge.server.storage import Batch, open_storage  # noqa: E402


def storage_ceiling(url: str, rows: int = 200_000, per_transaction: int = 20_000) -> float:
    """Rows/s stored straight through the storage class (a SQLite path or a
    postgresql:// URL), in large transactions: the rows the benchmarks send."""
    storage = open_storage(url)
    now = time.time()
    started = time.perf_counter()
    seq = 1
    while seq <= rows:
        batch = [(s, "bench", "value", 1.0, "", now) for s in range(seq, seq + per_transaction)]
        storage.store([Batch("ceiling", "e", batch)], now)
        seq += per_transaction
    elapsed = time.perf_counter() - started
    storage.close()
    return rows / elapsed


def proc_stats(pid: int) -> tuple[int, float]:
    """Peak RSS in KiB and CPU seconds used so far."""
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak, (int(fields[11]) + int(fields[12])) / ticks


def bench_collector(workdir: Path, agents: int, batch: int, window: int, seconds: float) -> None:
    tokens = {f"bench-{i}": f"bench-token-{i:04d}-abcdefgh" for i in range(agents)}
    collector = Collector(workdir, tokens).start()
    try:
        result, last = asyncio.run(run_load(collector.stream_url, tokens, "bench", batch,
                                            window, seconds))
        exact = all(stored_seqs(collector.storage, a, "bench") == list(range(1, last[a] + 1))
                    for a in last)
        peak, cpu = proc_stats(collector.pid)
    finally:
        collector.terminate()
    ceiling = storage_ceiling(str(workdir / "ceiling.db"))
    print(f"collector, {agents} agents x batches of {batch} (window {window}), {seconds:g} s:")
    print(f"  {result.summary()}")
    print(f"  store holds seqs exactly 1..N for every agent: {exact} "
          f"({len(last)}/{agents} agents finished)")
    print(f"  collector peak RSS {peak / 1024:.0f} MiB, CPU {cpu:.1f} s")
    print(f"  storage ceiling (same rows, 20k-row transactions): {ceiling:,.0f}/s; "
          f"product = {result.rate / ceiling:.2f} of it")


def interpreter_rss(python: str) -> float:
    """RSS (MiB) of `python -c pass`: what the interpreter and its site (.pth files) cost."""
    code = ("print(next(int(l.split()[1]) for l in open('/proc/self/status') "
            "if l.startswith('VmRSS')))")
    return int(subprocess.run([python, "-c", code], capture_output=True, text=True,
                              check=True).stdout) / 1024


def bench_agent(workdir: Path, seconds: float, python: str | None = None) -> dict[str, float]:
    """The agent on 4 mock sensors: readings, peak RSS (MiB) and CPU per reading (us).

    ``python``: the interpreter to run the agent with (default: this one).
    """
    tokens = {"rss-agent": "rss-agent-token-0123456789"}
    collector = Collector(workdir, tokens, name="rss-collector").start()
    sensors = [
        {"name": "climate", "type": "dht22", "pin": 4, "interval": 2},
        {"name": "soc", "type": "cpu_temperature", "interval": 0.5},
        {"name": "soc2", "type": "cpu_temperature", "interval": 0.5},
        {"name": "motion", "type": "motion", "pin": 17, "interval": 0.5},
    ]
    agent = Agent(workdir, "rss-agent", tokens["rss-agent"], [collector.stream_url],
                  sensors=sensors)
    agent.executable = python or sys.executable
    agent.start()
    try:
        wait_until(lambda: stored_seqs(collector.storage, "rss-agent"), 20, what="first readings")
        _, cpu_start = proc_stats(agent.pid)
        seq_start = agent.last_seq()
        time.sleep(seconds)
        peak, cpu_end = proc_stats(agent.pid)
        readings = agent.last_seq() - seq_start
    finally:
        agent.terminate()
        collector.terminate()
    per_reading = (cpu_end - cpu_start) / max(1, readings) * 1e6
    print(f"agent, 4 mock sensors (~0.5 s), {seconds:g} s: {readings} readings, "
          f"peak RSS {peak / 1024:.1f} MiB, CPU {per_reading:.0f} us per reading")
    print(f"  ({agent.executable} alone, `-c pass`: RSS {interpreter_rss(agent.executable):.1f}"
          " MiB)")
    return {"readings": readings, "peak_mib": peak / 1024, "us_per_reading": per_reading}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--agent-seconds", type=float, default=30)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="sensor-edge-bench-") as tmp:
        bench_collector(Path(tmp), args.agents, args.batch, args.window, args.seconds)
        bench_agent(Path(tmp), args.agent_seconds)


if __name__ == "__main__":
    main()
