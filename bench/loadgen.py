"""A load generator that speaks the contract as N simulated agents.

Each simulated agent: hello -> welcome -> batches of `batch` readings with up
to `window` unacknowledged -> acks. All agents connect first; then they send
for a warm-up and a measured window. Measures acknowledged readings/s and ack
latency (p50/p99) inside that window. Used by the benchmarks in this folder;
runnable alone:

    python bench/loadgen.py --url ws://127.0.0.1:8765/v1/stream --tokens tokens.yaml \
        --agents 50 --batch 50 --seconds 10

A fleet too large for one process's event loop (or file limit) is spread over
several processes that agree on one measured window (run_load_in_processes).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing
import random
import resource
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from websockets.asyncio.client import connect

# Opening handshakes in progress at once: more would overflow the listen backlog.
CONNECTING_AT_ONCE = 100


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Result:
    sent: int = 0  # readings sent, all told
    acked: int = 0  # readings acked, all told (the exactly-once check uses the last seqs)
    measured: int = 0  # readings acked inside the measured window
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connected: int = 0
    connect_seconds: float = 0.0
    window: tuple[float, float] = (0.0, math.inf)  # loop clock
    cpu_seconds: float = 0.0  # the load generator's own, inside the window

    @property
    def seconds(self) -> float:
        return self.window[1] - self.window[0]

    @property
    def rate(self) -> float:
        return self.measured / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)

    def summary(self) -> str:
        return (f"{self.measured:,} readings acked in {self.seconds:.1f} s = {self.rate:,.0f}/s; "
                f"ack latency p50 {self.percentile(50) * 1000:.1f} ms, "
                f"p99 {self.percentile(99) * 1000:.1f} ms; {self.connected} connected in "
                f"{self.connect_seconds:.1f} s; {self.acked:,} of {self.sent:,} sent acked; "
                f"{len(self.errors)} errors")


def batch_frame(first_seq: int, count: int, now: float) -> str:
    # Built as text: json.dumps of a list of dicts would cost the generator more
    # than the collector spends parsing it.
    readings = ",".join(
        f'{{"seq":{seq},"sensor":"bench","metric":"value","value":{seq % 1000 / 10},'
        f'"unit":"","ts":{now}}}' for seq in range(first_seq, first_seq + count))
    return f'{{"type":"readings","readings":[{readings}]}}'


async def simulated_agent(url: str, agent: str, token: str, epoch: str, batch: int, window: int,
                          result: Result, go: asyncio.Event, until: list[float],
                          connecting: asyncio.Semaphore, rate: float | None = None) -> int:
    """Connect, wait for `go`, stream until `until[0]` (loop clock); return the last seq acked.

    ``rate``: readings per second for this agent (None: as fast as acks allow).
    ``batch`` 0: send nothing, only hold the connection (keepalive) until `until[0]`.
    """
    loop = asyncio.get_running_loop()
    async with connecting:
        ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                           compression=None, open_timeout=120, max_size=None,
                           ping_interval=20, ping_timeout=60)
    async with ws:
        await ws.send(json.dumps({"type": "hello", "agent": agent, "epoch": epoch,
                                  "version": "bench"}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 120))
        result.connected += 1
        await go.wait()
        if batch == 0:
            await asyncio.sleep(max(0.0, until[0] - loop.time()))
            return welcome["acked"]
        next_seq = welcome["acked"] + 1
        in_flight: deque[tuple[int, float]] = deque()
        acked = welcome["acked"]
        room = asyncio.Event()
        room.set()
        start, end = result.window

        async def receive() -> None:
            nonlocal acked
            async for frame in ws:
                message = json.loads(frame)
                if message["type"] != "ack":
                    result.errors.append(str(message))
                    return
                now = loop.time()
                while in_flight and in_flight[0][0] <= message["seq"]:
                    seq, sent = in_flight.popleft()
                    if sent >= start and now <= end:
                        result.latencies.append(now - sent)
                delta = message["seq"] - acked
                result.acked += delta
                if start <= now <= end:
                    result.measured += delta
                acked = message["seq"]
                room.set()

        receiver = asyncio.create_task(receive())
        interval = batch / rate if rate else 0.0
        # Spread the agents over one interval, as real agents' clocks are.
        next_send = loop.time() + random.uniform(0, interval)
        try:
            while loop.time() < until[0] and not receiver.done():
                if len(in_flight) >= window:
                    room.clear()
                    await asyncio.wait_for(room.wait(), 60)
                    continue
                if interval:
                    await asyncio.sleep(max(0.0, next_send - loop.time()))
                    next_send += interval
                await ws.send(batch_frame(next_seq, batch, time.time()))
                next_seq += batch
                result.sent += batch
                in_flight.append((next_seq - 1, loop.time()))
            deadline = loop.time() + 30
            while in_flight and loop.time() < deadline and not receiver.done():
                room.clear()
                try:
                    await asyncio.wait_for(room.wait(), 1)
                except TimeoutError:
                    pass
        finally:
            receiver.cancel()
    return acked


async def run_load(url: str, tokens: dict[str, str], epoch: str, batch: int, window: int,
                   seconds: float, rate: float | None = None, warmup: float = 2.0,
                   at_start: Callable[[], None] | None = None,
                   at_end: Callable[[], None] | None = None,
                   start_when: Callable[[Result], Awaitable[float]] | None = None,
                   ) -> tuple[Result, dict[str, int]]:
    """Every agent connects; then all send for `warmup` + `seconds`, the latter measured.

    ``at_start`` / ``at_end``: called when the measured window opens and closes
    (connections still open), e.g. to read a process's CPU time and RSS.
    ``start_when``: given the result once every agent has connected, returns the
    wall-clock time the measured window opens (how several processes agree on
    one window); by default `warmup` seconds from then.
    Returns the result and each agent's last acked seq.
    """
    loop = asyncio.get_running_loop()
    result = Result()
    go = asyncio.Event()
    until = [math.inf]
    connecting = asyncio.Semaphore(CONNECTING_AT_ONCE)
    began = loop.time()
    tasks = [asyncio.create_task(simulated_agent(url, a, t, epoch, batch, window, result, go,
                                                 until, connecting, rate))
             for a, t in tokens.items()]
    deadline = loop.time() + 300
    # Until every agent has connected (or failed to).
    while sum(t.done() for t in tasks) + result.connected < len(tasks) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    result.connect_seconds = loop.time() - began
    # What the connections hold lives to the end: out of the collector's sight, so a full
    # collection does not walk it (with 2,500 connections a process, pauses of seconds).
    gc.freeze()
    if start_when is not None:
        wall = await start_when(result)
        start = loop.time() + (wall - time.time())
    else:
        start = loop.time() + warmup
    result.window = (start, start + seconds)
    until[0] = start + seconds
    go.set()
    await asyncio.sleep(max(0.0, start - loop.time()))
    cpu = time.process_time()
    if at_start is not None:
        at_start()
    await asyncio.sleep(max(0.0, until[0] - loop.time()))
    result.cpu_seconds = time.process_time() - cpu
    if at_end is not None:
        at_end()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    last: dict[str, int] = {}
    for (agent, _), outcome in zip(tokens.items(), outcomes):
        if isinstance(outcome, BaseException):
            result.errors.append(f"{agent}: {type(outcome).__name__}: {outcome}")
        else:
            last[agent] = outcome
    return result, last


def raise_open_file_limit() -> None:
    """A descriptor per connection: lift this process's soft limit to the hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _load_process(conn: Connection, url: str, tokens: dict[str, str], epoch: str, batch: int,
                  window: int, seconds: float, rate: float | None) -> None:
    """One of run_load_in_processes' children: its share of the agents."""
    raise_open_file_limit()

    async def start_when(result: Result) -> float:
        conn.send(("connected", result.connected, result.connect_seconds))
        return await asyncio.to_thread(conn.recv)

    result, last = asyncio.run(run_load(url, tokens, epoch, batch, window, seconds, rate,
                                        start_when=start_when))
    result.latencies.sort()
    conn.send(("done", result, last))


def run_load_in_processes(processes: int, url: str, tokens: dict[str, str], epoch: str,
                          batch: int, window: int, seconds: float, rate: float | None = None,
                          warmup: float = 2.0, at_start: Callable[[], None] | None = None,
                          at_end: Callable[[], None] | None = None,
                          ) -> tuple[Result, dict[str, int]]:
    """run_load with the agents spread over several processes (for a fleet: file
    descriptors, memory, one event loop's latency), one measured window for all."""
    context = multiprocessing.get_context("spawn")
    items = list(tokens.items())
    children = []
    for i in range(processes):
        share = dict(items[i::processes])
        parent, child = context.Pipe()
        process = context.Process(target=_load_process, daemon=True, args=(
            child, url, share, epoch, batch, window, seconds, rate))
        process.start()
        children.append((process, parent))
    merged = Result()
    last: dict[str, int] = {}
    try:
        for process, conn in children:
            if not conn.poll(600):
                raise TimeoutError(f"load process {process.pid}: agents not connected in 600 s")
            _, connected, connect_seconds = conn.recv()
            merged.connected += connected
            merged.connect_seconds = max(merged.connect_seconds, connect_seconds)
        start = time.time() + warmup
        for _, conn in children:
            conn.send(start)
        time.sleep(max(0.0, start - time.time()))
        if at_start is not None:
            at_start()
        time.sleep(max(0.0, start + seconds - time.time()))
        if at_end is not None:
            at_end()
        for process, conn in children:
            if not conn.poll(120):
                raise TimeoutError(f"load process {process.pid}: no result 120 s after the window")
            _, result, agents_last = conn.recv()
            for name in ("sent", "acked", "measured", "cpu_seconds"):
                setattr(merged, name, getattr(merged, name) + getattr(result, name))
            merged.latencies.extend(result.latencies)
            merged.errors.extend(result.errors)
            last.update(agents_last)
    finally:
        for process, _ in children:
            process.join(10)
            if process.is_alive():
                process.kill()
    merged.window = (0.0, seconds)
    return merged, last


def main() -> None:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--tokens", required=True, help="YAML mapping agent id -> token")
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rate", type=float, default=None, help="readings/s per agent")
    p.add_argument("--processes", type=int, default=1, help="spread the agents over N processes")
    args = p.parse_args()
    tokens = dict(list(yaml.safe_load(open(args.tokens)).items())[:args.agents])
    epoch = f"load-{int(time.time())}"
    if args.processes > 1:
        result, _ = run_load_in_processes(args.processes, args.url, tokens, epoch, args.batch,
                                          args.window, args.seconds, args.rate)
    else:
        raise_open_file_limit()
        result, _ = asyncio.run(run_load(args.url, tokens, epoch, args.batch, args.window,
                                         args.seconds, args.rate))
    print(result.summary())


if __name__ == "__main__":
    main()
