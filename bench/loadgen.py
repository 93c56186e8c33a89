"""A load generator that speaks the contract as N simulated agents.

Each simulated agent: hello -> welcome -> batches of `batch` readings with up
to `window` unacknowledged -> acks. Measures acknowledged readings/s and ack
latency (p50/p99). Used by the benchmarks in this folder; runnable alone:

    python bench/loadgen.py --url ws://127.0.0.1:8765/v1/stream --tokens tokens.yaml \
        --agents 50 --batch 50 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from websockets.asyncio.client import connect


@dataclass
class Result:
    acked: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connected: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> str:
        return (f"{self.acked} readings acked in {self.seconds:.1f} s = {self.rate:,.0f}/s; "
                f"ack latency p50 {self.percentile(50) * 1000:.1f} ms, "
                f"p99 {self.percentile(99) * 1000:.1f} ms; {len(self.errors)} errors")


def batch_frame(first_seq: int, count: int, now: float) -> str:
    readings = [{"seq": first_seq + i, "sensor": "bench", "metric": "value",
                 "value": (first_seq + i) % 1000 / 10, "unit": "", "ts": now}
                for i in range(count)]
    return json.dumps({"type": "readings", "readings": readings}, separators=(",", ":"))


async def simulated_agent(url: str, agent: str, token: str, epoch: str, batch: int, window: int,
                          until: float, result: Result, rate: float | None = None,
                          hold_open: float = 0.0) -> int:
    """Stream until `until` (loop clock); returns the last seq acked.

    ``rate``: readings per second for this agent (None: as fast as acks allow).
    """
    loop = asyncio.get_running_loop()
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                       compression=None, open_timeout=60, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "agent": agent, "epoch": epoch,
                                  "version": "bench"}))
        welcome = json.loads(await ws.recv())
        result.connected += 1
        next_seq = welcome["acked"] + 1
        in_flight: deque[tuple[int, float]] = deque()
        acked = welcome["acked"]
        room = asyncio.Event()
        room.set()

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
                    result.latencies.append(now - sent)
                result.acked += message["seq"] - acked
                acked = message["seq"]
                room.set()

        receiver = asyncio.create_task(receive())
        interval = batch / rate if rate else 0.0
        next_send = loop.time()
        try:
            while loop.time() < until and not receiver.done():
                if len(in_flight) >= window:
                    room.clear()
                    await asyncio.wait_for(room.wait(), 30)
                    continue
                if interval:
                    await asyncio.sleep(max(0.0, next_send - loop.time()))
                    next_send += interval
                await ws.send(batch_frame(next_seq, batch, time.time()))
                next_seq += batch
                in_flight.append((next_seq - 1, loop.time()))
            deadline = loop.time() + 30
            while in_flight and loop.time() < deadline and not receiver.done():
                room.clear()
                try:
                    await asyncio.wait_for(room.wait(), 1)
                except TimeoutError:
                    pass
            if hold_open:
                await asyncio.sleep(hold_open)
        finally:
            receiver.cancel()
    return acked


async def run_load(url: str, tokens: dict[str, str], epoch: str, batch: int, window: int,
                   seconds: float, rate: float | None = None, concurrency_ramp: float = 0.0,
                   ) -> tuple[Result, dict[str, int]]:
    """All agents at once; returns the result and each agent's last acked seq."""
    loop = asyncio.get_running_loop()
    result = Result()
    started = loop.time()
    until = started + seconds

    async def one(i: int, agent: str, token: str) -> int:
        if concurrency_ramp:
            await asyncio.sleep(concurrency_ramp * i / len(tokens))
        return await simulated_agent(url, agent, token, epoch, batch, window, until, result, rate)

    outcomes = await asyncio.gather(*(one(i, a, t) for i, (a, t) in enumerate(tokens.items())),
                                    return_exceptions=True)
    result.seconds = loop.time() - started
    last: dict[str, int] = {}
    for (agent, _), outcome in zip(tokens.items(), outcomes):
        if isinstance(outcome, BaseException):
            result.errors.append(f"{agent}: {type(outcome).__name__}: {outcome}")
        else:
            last[agent] = outcome
    return result, last


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
    args = p.parse_args()
    tokens = dict(list(yaml.safe_load(open(args.tokens)).items())[:args.agents])
    result, _ = asyncio.run(run_load(args.url, tokens, f"load-{int(time.time())}", args.batch,
                                     args.window, args.seconds, args.rate))
    print(result.summary())
    if result.latencies:
        print(f"mean latency {statistics.mean(result.latencies) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
