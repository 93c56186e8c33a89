"""Alerts: ingest throughput with 0 and 100 rules loaded, and notification latency.

    python bench/bench_alerts.py [--agents 10] [--batch 50] [--seconds 5] [--probes 10]

One invocation runs the same load (bench/loadgen.py) against three collectors:
no rules; 100 rules of which one matches the load's series (the usual case:
each rule watches its own sensor); and 100 rules that all match every reading
(each reading passed over in one comparison while no rule fires); and 100
rules that all match and all fire (the worst case: every reading judged by
each of the 100 firing series, to see whether it clears). Then the notification
latency: a hand-driven agent sends a reading across a threshold and a real
HTTP receiver (Apprise's json:// scheme) times its arrival, from the batch
sent and from the ack (the reading stored), over several crossings.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from alert_receivers import HandAgent, JSONReceiver  # noqa: E402
from loadgen import run_load  # noqa: E402
from processes import Collector, wait_until  # noqa: E402

# The load's series: loadgen sends sensor "bench", metric "value", values 0..99.9.
NEVER = 1e9


def rules(kind: str, url: str) -> list[dict]:
    if kind == "none":
        return []
    if kind == "one-matching":
        other = [{"name": f"r{i}", "sensor": f"shelf-{i}", "metric": "temperature",
                  "above": 30, "for": 60, "hysteresis": 0.5, "notify": [url]}
                 for i in range(99)]
        return other + [{"name": "bench", "sensor": "bench", "above": NEVER, "notify": [url]}]
    # all-firing: every value (0 or more) is above every threshold, so each series
    # fires once and stays firing.
    above = [NEVER + i if kind == "all-matching" else -1.0 - i for i in range(100)]
    return [{"name": f"r{i}", "agent": "bench-*", "sensor": "b*", "metric": "value",
             "above": above[i], "notify": [url]} for i in range(100)]


def throughput(workdir: Path, kind: str, url: str, args: argparse.Namespace) -> float:
    tokens = {f"bench-{i}": f"bench-token-{i:04d}-abcdefgh" for i in range(args.agents)}
    collector = Collector(workdir, tokens, name=f"collector-{kind}",
                          alerts=rules(kind, url)).start()
    try:
        result, _ = asyncio.run(run_load(collector.stream_url, tokens, "bench", args.batch,
                                         args.window, args.seconds))
    finally:
        collector.terminate()
    print(f"  {kind:>12} ({len(rules(kind, url)):3d} rules): {result.summary()}")
    return result.rate


def latency(workdir: Path, receiver: JSONReceiver, probes: int) -> None:
    collector = Collector(workdir, {"probe": "probe-token-0123456789"}, name="collector-latency",
                          alerts=rules("one-matching", receiver.url)[:-1] + [
                              {"name": "probe", "sensor": "probe", "above": 10,
                               "notify": [receiver.url]}]).start()
    from_sent, from_ack = [], []
    try:
        agent = HandAgent(collector.stream_url, "probe", "probe-token-0123456789")
        for i in range(probes):
            before = len(receiver.received())
            sent = time.perf_counter()
            # Alternately across the threshold and back: each one a notification.
            agent.send((time.time(), 20.0 if i % 2 == 0 else 0.0), sensor="probe")
            acked = time.perf_counter()
            wait_until(lambda before=before: len(receiver.received()) > before, 30,
                       interval=0.0005,
                       what="the notification")
            got = time.perf_counter()
            from_sent.append(got - sent)
            from_ack.append(got - acked)
        agent.close()
    finally:
        collector.terminate()

    def ms(values: list[float]) -> str:
        return (f"median {statistics.median(values) * 1000:.1f} ms, "
                f"max {max(values) * 1000:.1f} ms")

    print(f"  notification latency over {probes} crossings (json:// on loopback):")
    print(f"    reading sent -> receiver has it: {ms(from_sent)}")
    print(f"    reading stored (ack) -> receiver has it: {ms(from_ack)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--probes", type=int, default=10)
    args = p.parse_args()
    receiver = JSONReceiver().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
            workdir = Path(tmp)
            print(f"ingest, {args.agents} agents x batches of {args.batch} "
                  f"(window {args.window}), {args.seconds:g} s each:")
            rates = {kind: throughput(workdir, kind, receiver.url, args)
                     for kind in ("none", "one-matching", "all-matching", "all-firing")}
            for kind in ("one-matching", "all-matching", "all-firing"):
                print(f"  {kind}: {rates[kind] / rates['none']:.2f} of the rate without rules")
            latency(workdir, receiver, args.probes)
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
