"""Scale benchmark: issue 14's lines, each beside its target, in one invocation.

    python bench/bench_scale.py                      # SQLite, the issue's scenarios (~10 min)
    python bench/bench_scale.py --storage postgres   # on a scratch PostgreSQL database
    python bench/bench_scale.py --storage both       # both, side by side (~20 min)
    python bench/bench_scale.py --quick              # a smoke run, a few seconds a scenario
    python bench/bench_scale.py --only batches --baseline-ref none --profile /tmp/profile

Scenarios (the load generator runs on the same cores as the collector):
  batches  50 agents x batches of 50, window 8, as fast as acks allow
  singles  500 agents x one reading per message, window 8, as fast as acks allow
  latency  50 agents x batches of 50 offered at half the batches figure: ack p99
  fleet    10,000 agents x one reading every 10 s (load generator in 4 processes)
and, on request (--only): steady (1,000 agents x 1 reading/s), idle (5,000
connections, keepalive only), agent (the agent's own RSS and CPU).

For batches and singles the same invocation also runs the stack a user would
assemble instead (mqtt_stack.py: Mosquitto, paho QoS 1 publishers, one paho
subscriber writing SQLite or PostgreSQL) on the same load, the transport
ceiling (null_collector.py: frames parsed and acked, nothing stored) and, once
per storage, the storage ceiling (the same rows through the storage class in
20,000-row transactions). With a baseline (--baseline-ref, default 3e8d824)
every collector scenario runs again against that commit's collector, installed
in a venv of its own, on the same offered load.

Every collector figure carries the collector's CPU per reading: utime + stime
of its process (all threads) from /proc over the measured window, divided by
the readings acked in it (PostgreSQL's own server processes are not counted).
After every run the store must hold seqs exactly 1..N for every agent; the
exit status is 1 when it does not.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from baseline import Baseline  # noqa: E402
from bench_core import bench_agent, proc_stats, storage_ceiling  # noqa: E402
from collector_profile import Profiler  # noqa: E402
from loadgen import Result, raise_open_file_limit, run_load, run_load_in_processes  # noqa: E402
from mqtt_stack import StackResult, run_stack  # noqa: E402
from processes import Collector, PostgresDatabases, free_port  # noqa: E402

T = TypeVar("T")
DEFAULT_BASELINE = "3e8d824"
STORAGE_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


@dataclass(frozen=True)
class Scenario:
    title: str
    agents: int
    batch: int  # 0: idle, keepalive only
    window: int
    rate: float | None = None  # readings/s per agent; None: as fast as acks allow
    seconds: float = 10.0
    warmup: float = 2.0
    processes: int = 1  # load generator processes
    mqtt: bool = False  # also run the MQTT stack on this load
    ceiling: bool = False  # also run the transport ceiling on this load


SCENARIOS = {
    "batches": Scenario("50 agents x batches of 50, as fast as acks allow", 50, 50, 8,
                        mqtt=True, ceiling=True),
    "singles": Scenario("500 agents x one reading per message, as fast as acks allow",
                        500, 1, 8, mqtt=True, ceiling=True),
    # Its rate is set from the batches figure of the same run.
    "latency": Scenario("50 agents x batches of 50 offered at half the batches figure",
                        50, 50, 8, rate=math.nan, warmup=3.0),
    "fleet": Scenario("10,000 agents x one reading every 10 s", 10_000, 1, 8, rate=0.1,
                      seconds=30.0, warmup=10.0, processes=4),
    "steady": Scenario("1,000 agents x 1 reading/s", 1000, 1, 8, rate=1.0, seconds=20.0,
                       warmup=3.0),
    "idle": Scenario("5,000 idle agents (keepalive only)", 5000, 0, 1, seconds=5.0),
}
DEFAULT_SCENARIOS = "batches,singles,latency,fleet"
# --quick: a smoke run; the fleet keeps its 1,000 readings/s on a tenth of the connections.
QUICK = {"seconds": 2.0, "warmup": 1.0}
QUICK_FLEET = {"title": "1,000 agents x one reading a second (quick)", "agents": 1000,
               "rate": 1.0, "processes": 2}
# Targets (issue 14).
BATCHES_VS_MQTT = 2.0
SINGLES_VS_MQTT = 3.0
SINGLES_RATE = 20_000
OF_LOWER_CEILING = 0.7
P99_MS = 50.0
CPU_VS_BASELINE = 0.5


# --- measuring ------------------------------------------------------------------------

def tokens_for(count: int) -> dict[str, str]:
    return {f"bench-{i}": f"bench-token-{i:05d}-abcdefgh" for i in range(count)}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (every thread), from /proc."""
    return sum(proc_stats(pid)[1] for pid in pids)


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


def exactly_once(storage: str, last: dict[str, int]) -> tuple[bool, str]:
    """Whether every agent's stored seqs are exactly 1..its last acked seq, and how not."""
    summary = store_summary(storage)
    # (agent, epoch, seq) is unique, so rows == highest and lowest == 1 means no gap.
    bad = [a for a, seq in last.items() if seq and summary.get(a) != (seq, 1, seq)]
    extra = set(summary) - set(last)
    if bad:
        return False, f"{len(bad)} agents differ, e.g. {bad[0]}: {summary.get(bad[0])} " \
                      f"for 1..{last[bad[0]]}"
    if extra:
        return False, f"{len(extra)} agents stored that never finished, e.g. {min(extra)}"
    return True, f"{len(last)} agents, {sum(last.values()):,} readings"


@dataclass
class Run:
    """One load against one collector (or the null collector)."""

    result: Result
    last: dict[str, int]
    cpu_seconds: float  # the server's, inside the measured window
    peak_mib: float = math.nan  # VmHWM
    rss_mib: float = math.nan  # VmRSS at the end of the window
    connected: float = math.nan  # sensor_edge_agents_connected at the end of the window
    metrics_seconds: float = math.nan  # how long that GET /metrics took
    exact: tuple[bool, str] = (True, "")
    profile: str = ""

    @property
    def rate(self) -> float:
        return self.result.rate

    @property
    def p99_ms(self) -> float:
        return self.result.percentile(99) * 1000

    @property
    def us_per_reading(self) -> float:
        return self.cpu_seconds / max(1, self.result.measured) * 1e6

    @property
    def all_acked(self) -> bool:
        return self.result.acked == self.result.sent and not self.result.errors


def drive(scenario: Scenario, url: str, epoch: str, pids: list[int],
          at_end: Callable[[], None] | None = None,
          at_start: Callable[[], None] | None = None) -> Run:
    """The scenario's load against `url`, with the CPU of `pids` over the measured window."""
    tokens = tokens_for(scenario.agents)
    marks: list[float] = []

    def start() -> None:
        marks.append(cpu_seconds(pids))
        if at_start is not None:
            at_start()

    def end() -> None:
        marks.append(cpu_seconds(pids))
        if at_end is not None:
            at_end()

    args = (url, tokens, epoch, scenario.batch, scenario.window, scenario.seconds, scenario.rate)
    if scenario.processes > 1:
        result, last = run_load_in_processes(scenario.processes, *args, warmup=scenario.warmup,
                                             at_start=start, at_end=end)
    else:
        result, last = asyncio.run(run_load(*args, warmup=scenario.warmup, at_start=start,
                                            at_end=end))
    return Run(result, last, marks[1] - marks[0])


def run_collector(name: str, scenario: Scenario, workdir: Path, storage: str,
                  python: str | None = None, profile: Path | None = None) -> Run:
    """The scenario against a collector (today's, or a baseline's interpreter), checked."""
    tokens = tokens_for(scenario.agents)
    collector = Collector(workdir, tokens, name=f"collector-{name}", storage=storage)
    if python is not None:
        collector.executable = python
    collector.start(60)
    seen: dict[str, float] = {}
    profiler: list[Profiler] = []

    def at_start() -> None:
        if profile is not None:
            profiler.append(Profiler(collector.pid, scenario.seconds, profile))

    def at_end() -> None:  # every agent still connected
        seen["rss"] = rss_mib(collector.pid)
        started = time.monotonic()
        try:
            metrics = collector.get("/metrics")[1].decode()
        except OSError as e:  # a stalled collector: say so, keep the run's figures
            print(f"    GET /metrics failed after {time.monotonic() - started:.1f} s: {e}")
            return
        seen["metrics_seconds"] = time.monotonic() - started
        seen["connected"] = float(next(
            line.split()[1] for line in metrics.splitlines()
            if line.startswith("sensor_edge_agents_connected ")))

    try:
        run = drive(scenario, collector.stream_url, f"{name}-{int(time.time())}",
                       [collector.pid], at_end=at_end, at_start=at_start)
        run.peak_mib = proc_stats(collector.pid)[0] / 1024
        if profiler:
            run.profile = profiler[0].summary()
    finally:
        collector.terminate(30)
    run.rss_mib = seen.get("rss", math.nan)
    run.connected = seen.get("connected", math.nan)
    run.metrics_seconds = seen.get("metrics_seconds", math.nan)
    if scenario.batch:
        run.exact = exactly_once(storage, run.last)
    return run


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


def run_transport_ceiling(scenario: Scenario) -> Run:
    """The scenario's load, as fast as acks allow, against the null collector."""
    null = NullCollector()
    seen: dict[str, float] = {}
    try:
        run = drive(replace(scenario, rate=None), null.url, "ceiling", [null.proc.pid],
                       at_end=lambda: seen.__setitem__("rss", rss_mib(null.proc.pid)))
    finally:
        null.stop()
    run.rss_mib = seen.get("rss", math.nan)
    return run


def middle(items: list[T], key: Callable[[T], float]) -> T:
    """The median item by `key` (of two middle ones, the lower)."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


@dataclass
class Measured:
    """One scenario's runs, every side of the comparison, one per round."""

    product: list[Run] = field(default_factory=list)
    baseline: list[Run] = field(default_factory=list)
    stacks: list[StackResult] = field(default_factory=list)
    ceilings: list[Run] = field(default_factory=list)
    by_rate: bool = True  # as fast as acks allow: the median by rate; else by ack p99

    def _key(self, run: Run) -> float:
        return run.rate if self.by_rate else run.p99_ms

    @property
    def run(self) -> Run:
        return middle(self.product, self._key)

    @property
    def old(self) -> Run:
        return middle(self.baseline, self._key)

    @property
    def stack(self) -> StackResult:
        return middle(self.stacks, lambda s: s.rate)

    @property
    def ceiling(self) -> Run:
        return middle(self.ceilings, lambda r: r.rate)


# --- reporting ------------------------------------------------------------------------

@dataclass
class Line:
    scenario: str
    what: str
    target: str
    values: dict[str, tuple[str, bool | None]] = field(default_factory=dict)


class Report:
    """Lines with a target, filled per storage; printed side by side at the end."""

    def __init__(self):
        self.lines: dict[tuple[str, str], Line] = {}
        self.storages: list[str] = []

    def add(self, storage: str, scenario: str, what: str, value: str, target: str = "",
            met: bool | None = None) -> None:
        if storage not in self.storages:
            self.storages.append(storage)
        line = self.lines.setdefault((scenario, what), Line(scenario, what, target))
        line.values[storage] = (value, met)
        print(f"  {what}: {value}" + (f"  [target {target}: {verdict(met)}]" if target else ""))

    def misses(self) -> list[str]:
        return [f"{line.scenario} {STORAGE_NAMES[s]}: {line.what} = {value} "
                f"(target {line.target})"
                for line in self.lines.values() for s, (value, met) in line.values.items()
                if met is False]

    def targets(self) -> int:
        return sum(met is not None for line in self.lines.values() if line.target
                   for _, met in line.values.values())

    def print(self) -> None:
        names = [STORAGE_NAMES[s] for s in self.storages]
        lines = self.lines.values()
        width = {s: max([len(STORAGE_NAMES[s])] + [len(line.values.get(s, ("",))[0])
                                                    for line in lines])
                 for s in self.storages}
        what_width = max(len(line.what) for line in lines)
        target_width = max(len("target"), *(len(line.target) for line in lines))
        print("\n" + "=" * 20 + " issue 14: every line with its target " + "=" * 20)
        header = f"{'scenario':<9} {'':<{what_width}} {'target':<{target_width}}"
        for s, name in zip(self.storages, names):
            header += f" | {name:<{width[s]}}     "
        print(header)
        for line in self.lines.values():
            row = f"{line.scenario:<9} {line.what:<{what_width}} {line.target:<{target_width}}"
            for s in self.storages:
                value, met = line.values.get(s, ("-", None))
                row += f" | {value:<{width[s]}} {verdict(met) if line.target else '':4}"
            print(row.rstrip())


def verdict(met: bool | None) -> str:
    return {True: "PASS", False: "MISS", None: "-"}[met]


def per_reading(run: Run) -> str:
    return f"{run.us_per_reading:.1f} us CPU/reading"


# --- the scenarios --------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, report: Report,
                 baseline: Baseline | None, databases: PostgresDatabases | None):
        self.args, self.workdir, self.report = args, workdir, report
        self.baseline, self.databases = baseline, databases
        self.made = 0
        self.failed = False

    def new_store(self, storage: str) -> str:
        self.made += 1
        if storage == "postgres":
            return self.databases.create()
        return str(self.workdir / f"store-{self.made}.db")

    def drop(self, url: str) -> None:
        if url.startswith("postgres"):
            self.databases.drop(url)

    def scenario(self, name: str) -> Scenario:
        scenario = SCENARIOS[name]
        if self.args.quick:
            scenario = replace(scenario, **QUICK, **(QUICK_FLEET if name == "fleet" else {}))
        if self.args.seconds:
            scenario = replace(scenario, seconds=self.args.seconds)
        if self.args.window and scenario.batch:
            scenario = replace(scenario, window=self.args.window)
        return scenario

    def collector(self, name: str, scenario: Scenario, storage: str, python: str | None = None,
                  label: str = "product") -> Run:
        url = self.new_store(storage)
        profile = None
        if self.args.profile and python is None:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            profile = self.args.profile / f"{name}-{storage}.txt"
        try:
            run = run_collector(f"{name}-{label}", scenario, self.workdir, url, python, profile)
        finally:
            self.drop(url)
        r = run.result
        print(f"  {label}: {r.summary()}")
        print(f"    collector {per_reading(run)} ({run.cpu_seconds / r.seconds:.2f} cores), "
              f"load generator {r.cpu_seconds / r.seconds:.2f} cores; RSS {run.rss_mib:.0f} MiB, "
              f"peak {run.peak_mib:.0f} MiB; "
              f"{run.connected:.0f}/{scenario.agents} agents connected at the end (GET /metrics "
              f"in {run.metrics_seconds * 1000:.0f} ms)")
        if run.profile:
            print("    profile: " + run.profile.replace("\n", "\n    "))
        return run

    def exactly_once(self, storage: str, name: str, label: str, runs: list[Run]) -> None:
        failed = [run.exact[1] for run in runs if not run.exact[0]]
        value = failed[0] if failed else runs[-1].exact[1]
        if len(runs) > 1:
            value = f"{len(runs) - len(failed)} of {len(runs)} runs; {value}"
        self.report.add(storage, name, f"{label}: stored seqs exactly 1..N per agent", value,
                        "yes", not failed)
        self.failed |= bool(failed)

    def mqtt(self, storage: str, scenario: Scenario) -> StackResult:
        url = self.new_store(storage)
        try:
            stack = run_stack(self.workdir, url, list(tokens_for(scenario.agents)),
                              scenario.batch, scenario.window, scenario.seconds, scenario.warmup)
        finally:
            self.drop(url)
        broker = stack.broker
        print(f"  MQTT stack: {stack.summary()}")
        print(f"    subscriber + broker {stack.us_per_reading():.1f} us CPU/reading stored "
              f"({stack.cpu_seconds / stack.seconds:.2f} cores); publishers "
              f"{stack.publisher_seconds / stack.seconds:.2f} cores; mosquitto $SYS: "
              f"{broker.get('received', 0):,} messages received, {broker.get('sent', 0):,} sent, "
              f"{broker.get('dropped', 0):,} dropped")
        return stack

    def transport(self, scenario: Scenario) -> Run:
        transport = run_transport_ceiling(scenario)
        print(f"  transport ceiling (null collector): {transport.result.summary()}")
        print(f"    null collector {per_reading(transport)}, load generator "
              f"{transport.result.cpu_seconds / transport.result.seconds:.2f} cores")
        return transport

    def measure(self, storage: str, name: str, scenario: Scenario) -> Measured:
        """Every side of the comparison, `--repeat` times, one after the other each round
        (on shared cores, what else runs moves the figures; rounds spread that over all)."""
        m = Measured()
        for round_ in range(self.args.repeat):
            if self.args.repeat > 1:
                print(f" round {round_ + 1} of {self.args.repeat}")
            m.product.append(self.collector(name, scenario, storage))
            if self.baseline is not None and scenario.batch:
                m.baseline.append(self.collector(name, scenario, storage, self.baseline.python,
                                                 label=f"baseline {self.baseline.commit}"))
            if scenario.mqtt:
                m.stacks.append(self.mqtt(storage, scenario))
            if scenario.ceiling:
                m.ceilings.append(self.transport(scenario))
        return m

    def run(self, storage: str, chosen: list[str]) -> None:
        print(f"\n##### {STORAGE_NAMES[storage]} #####")
        rows = 60_000 if self.args.quick else 200_000
        ceiling_url = self.new_store(storage)
        try:
            storage_rate = storage_ceiling(ceiling_url, rows=rows)
        finally:
            self.drop(ceiling_url)
        print(f"storage ceiling (the same rows through the storage class, 20,000-row "
              f"transactions): {storage_rate:,.0f} rows/s")
        batches_rate = None
        for name in chosen:
            if name == "agent":
                print()
                bench_agent(self.workdir, 5.0 if self.args.quick else self.args.agent_seconds,
                            self.args.agent_python)
                continue
            scenario = self.scenario(name)
            if name == "latency":
                scenario = replace(scenario, rate=batches_rate / 2 / scenario.agents)
            print(f"\n{name}: {scenario.title}, window {scenario.window}, "
                  f"{scenario.seconds:g} s measured, {STORAGE_NAMES[storage]}")
            m = self.measure(storage, name, scenario)
            m.by_rate = scenario.rate is None
            if name == "batches":
                batches_rate = m.run.rate
            getattr(self, f"lines_{name}", self.lines_other)(storage, name, scenario, m,
                                                             storage_rate)
            if scenario.batch:
                self.exactly_once(storage, name, "product", m.product)
                self.versus_baseline(storage, name, scenario, m)

    def versus_baseline(self, storage: str, name: str, scenario: Scenario, m: Measured) -> None:
        if not m.baseline:
            return
        run, old, commit = m.run, m.old, self.baseline.commit
        self.exactly_once(storage, name, f"baseline {commit}", m.baseline)
        ratio = run.us_per_reading / old.us_per_reading
        self.report.add(storage, name, f"CPU/reading vs {commit}",
                        f"{ratio:.2f} ({run.us_per_reading:.1f} vs {old.us_per_reading:.1f} us)",
                        f"<= {CPU_VS_BASELINE:.2f}", ratio <= CPU_VS_BASELINE)
        if m.by_rate:
            self.report.add(storage, name, f"readings/s vs {commit}",
                            f"{run.rate / old.rate:.2f}x ({old.rate:,.0f}/s)")
        else:
            self.report.add(storage, name, f"ack p99 of {commit}",
                            f"{old.p99_ms:.1f} ms ({'all' if old.all_acked else 'NOT all'} acked)")

    def lines_vs_mqtt_and_ceilings(self, storage: str, name: str, m: Measured,
                                   storage_rate: float, versus_mqtt: float) -> None:
        add, run, stack = self.report.add, m.run, m.stack
        add(storage, name, "product: readings/s acked", f"{run.rate:,.0f}/s ({per_reading(run)})")
        add(storage, name, "MQTT stack: readings/s stored",
            f"{stack.rate:,.0f}/s ({stack.us_per_reading():.1f} us CPU/reading)")
        ratio = run.rate / stack.rate if stack.rate else math.inf
        add(storage, name, "product / MQTT stack", f"{ratio:.2f}x", f">= {versus_mqtt:g}x",
            ratio >= versus_mqtt)
        mqtt_p99 = stack.percentile(99) * 1000  # nan: none published in the window was stored
        add(storage, name, "ack p99 / MQTT publish-to-stored p99",
            f"{run.p99_ms:,.0f} ms / " + ("none stored" if math.isnan(mqtt_p99) else
                                          f"{mqtt_p99:,.0f} ms"), "lower",
            math.isnan(mqtt_p99) or run.p99_ms < mqtt_p99)
        share = stack.lost / stack.published.acked if stack.published.acked else 0.0
        add(storage, name, "MQTT stack: PUBACKed but not stored",
            f"{stack.lost:,} ({share:.0%}; broker dropped {stack.broker.get('dropped', 0):,} "
            "messages)")
        transport = m.ceiling
        lower, which = min((storage_rate, "storage"), (transport.rate, "transport"))
        add(storage, name, "ceilings: storage, transport",
            f"{storage_rate:,.0f}/s, {transport.rate:,.0f}/s ({per_reading(transport)})")
        add(storage, name, "product / lower ceiling", f"{run.rate / lower:.2f} ({which})",
            f">= {OF_LOWER_CEILING:g}", run.rate / lower >= OF_LOWER_CEILING)

    def lines_batches(self, storage: str, name: str, scenario: Scenario, m: Measured,
                      storage_rate: float) -> None:
        self.lines_vs_mqtt_and_ceilings(storage, name, m, storage_rate, BATCHES_VS_MQTT)

    def lines_singles(self, storage: str, name: str, scenario: Scenario, m: Measured,
                      storage_rate: float) -> None:
        run = m.run
        self.report.add(storage, name, "product: readings/s, none lost",
                        f"{run.rate:,.0f}/s, {run.result.sent - run.result.acked:,} unacked",
                        f">= {SINGLES_RATE:,}/s", run.rate >= SINGLES_RATE and run.all_acked)
        self.lines_vs_mqtt_and_ceilings(storage, name, m, storage_rate, SINGLES_VS_MQTT)

    def lines_latency(self, storage: str, name: str, scenario: Scenario, m: Measured,
                      storage_rate: float) -> None:
        run = m.run
        self.report.add(storage, name, "ack p99 at half the batches figure",
                        f"{run.p99_ms:.1f} ms at {scenario.rate * scenario.agents:,.0f}/s "
                        f"({per_reading(run)}, {'all' if run.all_acked else 'NOT all'} acked)",
                        f"<= {P99_MS:g} ms", run.p99_ms <= P99_MS and run.all_acked)

    def lines_fleet(self, storage: str, name: str, scenario: Scenario, m: Measured,
                    storage_rate: float) -> None:
        run = m.run
        self.report.add(storage, name, f"{scenario.agents:,} agents: ack p99",
                        f"{run.p99_ms:.1f} ms ({per_reading(run)}, {run.result.connected:,} "
                        f"connected, {'all' if run.all_acked else 'NOT all'} acked)",
                        f"<= {P99_MS:g} ms", run.p99_ms <= P99_MS and run.all_acked
                        and run.result.connected == scenario.agents)
        self.report.add(storage, name, "collector RSS (VmHWM)", f"{run.peak_mib:,.0f} MiB")

    def lines_other(self, storage: str, name: str, scenario: Scenario, m: Measured,
                    storage_rate: float) -> None:
        """steady and idle: reported, without a target of the issue's."""
        if scenario.batch:
            self.report.add(storage, name, "ack p99",
                            f"{m.run.p99_ms:.1f} ms ({per_reading(m.run)})")
        self.report.add(storage, name, "collector RSS (VmHWM)", f"{m.run.peak_mib:,.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", choices=("sqlite", "postgres", "both"), default="sqlite")
    p.add_argument("--only", default=DEFAULT_SCENARIOS,
                   help=f"comma-separated, of {', '.join(SCENARIOS)}, agent "
                        f"(default {DEFAULT_SCENARIOS})")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2 s per scenario, a fleet of 1,000")
    p.add_argument("--seconds", type=float, default=None,
                   help="measured seconds per scenario (default: its own)")
    p.add_argument("--window", type=int, default=None,
                   help="unacknowledged batches per agent, every scenario (default: its own, 8)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run every side of each scenario N times, in rounds, and report the "
                        "median run (default 1)")
    p.add_argument("--baseline-ref", default=DEFAULT_BASELINE,
                   help="commit whose collector runs the same scenarios for the CPU ratio "
                        f"(default {DEFAULT_BASELINE}; 'none' to skip)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="py-spy the collector over each measured window (slows it: the "
                        "figures are not the benchmark's); raw stacks into DIR")
    p.add_argument("--agent-seconds", type=float, default=60.0)
    p.add_argument("--agent-python", default=None,
                   help="interpreter for the agent, e.g. a venv made by `pip install .` "
                        "(default: this one)")
    args = p.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS) - {"agent"}
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if "latency" in chosen and "batches" not in chosen[:chosen.index("latency")]:
        p.error("latency offers half the batches figure: list batches before it")
    storages = ["sqlite", "postgres"] if args.storage == "both" else [args.storage]
    raise_open_file_limit()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="sensor-edge-bench-") as tmp:
        workdir = Path(tmp)
        databases = PostgresDatabases() if "postgres" in storages else None
        baseline = None
        try:
            if args.baseline_ref.lower() not in ("", "none"):
                started = time.monotonic()
                baseline = Baseline(args.baseline_ref, workdir)
                print(f"baseline {baseline.commit}: worktree and venv in "
                      f"{time.monotonic() - started:.0f} s")
            bench = Bench(args, workdir, report, baseline, databases)
            for storage in storages:
                bench.run(storage, chosen)
        finally:
            if baseline is not None:
                baseline.remove()
            if databases is not None:
                databases.drop_all()
    if report.lines:
        report.print()
        misses = report.misses()
        print(f"\n{len(misses)} of {report.targets()} targets missed" + (":" if misses else ""))
        for miss in misses:
            print(f"  {miss}")
    if args.quick:
        print("(--quick: a smoke run; its figures are not the benchmark's)")
    sys.exit(1 if bench.failed else 0)


if __name__ == "__main__":
    main()
