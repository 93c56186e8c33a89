"""Per-sensor filters: what a sensor's `filters:` and `metrics:` make of its readings.

Applied by the sampler before a reading is buffered, so what they drop is
never written to the SD card, sent or stored. Each metric of a sensor runs
through its own chain of steps, in the order of the config's list.

Every reading passes through every step, carrying a flag: kept or held back.
`offset`, `multiply` and `round` change the value; `delta` holds back a kept
value within its amount of the last one it kept; `heartbeat` keeps again a
reading an earlier step held back once nothing has been kept for its period
("drop small changes, but send at least every 300 s"); `throttle_average`
holds back every kept reading and, once per window, keeps their mean. Only
readings still kept at the end are buffered. No I/O, no clock: a reading's
own timestamp is the time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from sensor_edge.config.model import FilterConfig, SensorConfig
from sensor_edge.agent.sensors import Sample

# One step: (ts, value, kept) in, (ts, value, kept) out.
Step = Callable[[float, float, bool], tuple[float, float, bool]]


def offset(amount: float) -> Step:
    return lambda ts, value, kept: (ts, value + amount, kept)


def multiply(factor: float) -> Step:
    return lambda ts, value, kept: (ts, value * factor, kept)


def round_to(decimals: int) -> Step:
    return lambda ts, value, kept: (ts, round(value, decimals), kept)


def within(difference: float, amount: float) -> bool:
    """Is ``difference`` at most ``amount``? With float slack: readings 1.1 and 0.8 differ
    by 0.30000000000000004, which an operator's `delta: 0.3` means to hold back."""
    return difference <= amount or math.isclose(difference, amount, rel_tol=1e-9, abs_tol=1e-12)


class Delta:
    """Keeps a value only if it differs by more than ``amount`` from the last one kept."""

    def __init__(self, amount: float):
        self.amount = amount
        self.last: float | None = None

    def __call__(self, ts: float, value: float, kept: bool) -> tuple[float, float, bool]:
        if not kept:
            return ts, value, False
        if self.last is not None and within(abs(value - self.last), self.amount):
            return ts, value, False
        self.last = value
        return ts, value, True


class Heartbeat:
    """Keeps a held-back reading if nothing has left this step for ``period`` seconds."""

    def __init__(self, period: float):
        self.period = period
        self.last: float | None = None  # ts of the last reading that left kept

    def __call__(self, ts: float, value: float, kept: bool) -> tuple[float, float, bool]:
        if kept or self.last is None or ts - self.last >= self.period:
            self.last = ts
            return ts, value, True
        return ts, value, False


class ThrottleAverage:
    """One reading per ``period``: the mean of the kept readings of each window.

    Windows lie on a grid from the first reading ([t0, t0 + period), ...). A
    window is closed by the first reading past it, which starts the next one;
    its mean carries the time of its last reading. A window still open when the
    agent stops is not sent.
    """

    def __init__(self, period: float):
        self.period = period
        self.origin: float | None = None  # the first reading's time: the grid's zero
        self.window = 0.0  # the index of the open window on the grid
        self.total = 0.0
        self.count = 0
        self.last_ts = 0.0

    def __call__(self, ts: float, value: float, kept: bool) -> tuple[float, float, bool]:
        if not kept:
            return ts, value, False
        if self.origin is None:
            self.origin = ts
        window = (ts - self.origin) // self.period
        result = (ts, value, False)
        if window > self.window:  # ts is past the open window: close it
            if self.count:
                result = (self.last_ts, self.total / self.count, True)
            self.window, self.total, self.count = window, 0.0, 0
        self.total += value
        self.count += 1
        self.last_ts = ts
        return result


def make_step(config: FilterConfig) -> Step:
    kind, amount = config.kind, config.value
    if kind == "offset":
        return offset(amount)
    if kind == "multiply":
        return multiply(amount)
    if kind == "round":
        return round_to(int(amount))
    if kind == "delta":
        return Delta(amount)
    if kind == "heartbeat":
        return Heartbeat(amount)
    if kind == "throttle_average":
        return ThrottleAverage(amount)
    raise ValueError(f"unknown filter {kind!r}")


class Chain:
    """One metric's steps, in order."""

    def __init__(self, configs: Iterable[FilterConfig]):
        self.steps = [make_step(c) for c in configs]

    def __call__(self, ts: float, value: float) -> tuple[float, float] | None:
        """The reading to buffer, or None if a step held it back."""
        kept = True
        for step in self.steps:
            ts, value, kept = step(ts, value, kept)
        return (ts, value) if kept else None


class SensorFilters:
    """A sensor's `metrics:` and `filters:`, each metric with its own chain."""

    def __init__(self, config: SensorConfig):
        self.configs = config.filters
        self.metrics = frozenset(config.metrics) if config.metrics is not None else None
        self._chains: dict[str, Chain] = {}
        self.held_back = 0  # readings the filters did not let through, for status

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        if self.metrics is None and not self.configs:
            return samples
        out = []
        for sensor, metric, value, unit, ts in samples:
            if self.metrics is not None and metric not in self.metrics:
                continue
            chain = self._chains.get(metric)
            if chain is None:
                chain = self._chains[metric] = Chain(self.configs)
            result = chain(ts, value)
            if result is None:
                self.held_back += 1
            else:
                out.append((sensor, metric, result[1], unit, result[0]))
        return out
