"""Rollups: min, max, sum and count of each series per minute and per hour.

A series is one (agent, sensor, metric); the `series` table numbers them, so a
rollup row is a few numbers: (series, bucket, min, max, sum, count), bucket the
start of its minute or hour in Unix seconds. The storage keeps them in the same
transaction as the readings, from the rows that transaction really inserted,
so a rollup always equals min/avg/max/count of the stored readings in its
bucket, however late, out of order or often they arrived.

This module holds what both storages share and does no I/O: the tiers, which
bucket a reading falls in, the per-commit aggregation (the ingest hot path), and
how `/api/series` picks a tier and a step.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

MINUTE = 60
HOUR = 3600
# Tier name -> bucket width in seconds, finest first. "raw" is the readings themselves.
TIERS = {"1m": MINUTE, "1h": HOUR}
TABLES = {MINUTE: "rollup_1m", HOUR: "rollup_1h"}
RAW = "raw"
TIER_NAMES = (RAW, *TIERS)

# Buckets are stored as 64-bit integers; a reading timestamped beyond about 125
# million years (a finite float the protocol lets through) lands in the last
# bucket instead of overflowing the column. A multiple of an hour, so the minute
# and the hour clamp alike.
BUCKET_LIMIT = HOUR * 2**40
_MINUTES_LIMIT = float(BUCKET_LIMIT // MINUTE)

# A rollup row read back: the series' names, the bucket start and its figures.
ROLLUP_COLUMNS = ("agent", "sensor", "metric", "unit", "ts", "min", "avg", "max", "count")

# /api/series: points per series by default, and the most a request may ask for.
DEFAULT_POINTS = 1000
MAX_POINTS = 10_000
MIN_POINTS = 2


def bucket_of(ts: float, width: int) -> int:
    """The start of the `width`-second bucket holding `ts`, clamped to ±BUCKET_LIMIT.

    Floor division of the float, exact for any timestamp short of the clamp: the
    one definition the writers and the tests share."""
    if ts >= BUCKET_LIMIT:
        return BUCKET_LIMIT
    if ts <= -BUCKET_LIMIT:
        return -BUCKET_LIMIT
    return int(ts // width) * width


class CommitRollups:
    """The rollups of one commit's new readings, gathered per (series, minute).

    ``add`` runs once per new row in the commit: one dict lookup and a few
    comparisons, the rollups' whole cost on the ingest path besides one upsert
    per touched bucket. The hours are merged from the minutes.
    """

    __slots__ = ("minutes",)

    def __init__(self) -> None:
        # (agent, sensor, metric, minute number) -> [min, max, sum, count, unit]
        self.minutes: dict[tuple, list] = {}

    def add(self, agent: str, rows: Iterable[tuple]) -> None:
        """Count new readings: (seq, sensor, metric, value, unit, ts) tuples of one agent."""
        minutes = self.minutes
        get = minutes.get
        for _seq, sensor, metric, value, unit, ts in rows:
            key = (agent, sensor, metric, ts // MINUTE)
            entry = get(key)
            if entry is None:
                minutes[key] = [value, value, value, 1, unit]
            else:
                if value < entry[0]:
                    entry[0] = value
                elif value > entry[1]:
                    entry[1] = value
                entry[2] += value
                entry[3] += 1

    def __bool__(self) -> bool:
        return bool(self.minutes)

    def units(self) -> dict[tuple[str, str, str], str]:
        """Each touched series and a unit its new readings carry."""
        return {key[:3]: entry[4] for key, entry in self.minutes.items()}

    def tiers(self, ids: dict[tuple[str, str, str], int]) -> dict[int, list]:
        """Bucket width -> rows (series id, bucket, min, max, sum, count), sorted by
        (series, bucket): every writer upserts in that one order, so two collectors
        on one database lock the same rows in the same order."""
        numbers = [key[3] for key in self.minutes]  # minutes since the epoch, whole floats
        if numbers and (min(numbers) < -_MINUTES_LIMIT or max(numbers) > _MINUTES_LIMIT):
            self._clamp()
        minutes = self.minutes
        minute_rows = sorted([(ids[key[:3]], int(key[3]) * MINUTE, e[0], e[1], e[2], e[3])
                              for key, e in minutes.items()])
        # The hours, from the minutes: in this order an hour's minutes are next to each other.
        hour_rows: list[list] = []
        last = None
        for series, bucket, low, high, total, count in minute_rows:
            hour = (series, bucket // HOUR)
            if hour != last:
                last = hour
                hour_rows.append([series, hour[1] * HOUR, low, high, total, count])
            else:
                figures = hour_rows[-1]
                if low < figures[2]:
                    figures[2] = low
                if high > figures[3]:
                    figures[3] = high
                figures[4] += total
                figures[5] += count
        return {MINUTE: minute_rows, HOUR: hour_rows}

    def _clamp(self) -> None:
        """Merge the buckets of timestamps past BUCKET_LIMIT into the last bucket."""
        clamped: dict[tuple, list] = {}
        for (agent, sensor, metric, number), entry in self.minutes.items():
            number = max(-_MINUTES_LIMIT, min(_MINUTES_LIMIT, number))
            key = (agent, sensor, metric, number)
            merged = clamped.get(key)
            if merged is None:
                clamped[key] = list(entry)
            else:
                merged[0] = min(merged[0], entry[0])
                merged[1] = max(merged[1], entry[1])
                merged[2] += entry[2]
                merged[3] += entry[3]
        self.minutes = clamped


@dataclass(frozen=True)
class SeriesQuery:
    """`/api/series`: which series, which time range, and at most how many points each."""

    agent: str | None = None
    sensor: str | None = None
    metric: str | None = None
    since: float = 0.0
    until: float = 0.0
    points: int = DEFAULT_POINTS
    # The oldest raw readings still kept (now - retention_days); None: all kept.
    raw_since: float | None = None


@dataclass(frozen=True)
class Plan:
    """Where a series query reads from (``width`` 0: raw readings) and its step."""

    width: int
    step: int

    @property
    def table(self) -> str:
        return TABLES[self.width] if self.width else "readings"


def _buckets(since: float, until: float, step: int) -> int:
    return math.floor(until / step) - math.floor(since / step) + 1


def _step(since: float, until: float, points: int, width: int) -> int:
    """The smallest multiple of ``width`` (at most one width off) whose step-aligned
    buckets over [since, until] number at most ``points``."""
    span = until - since
    step = max(1, math.ceil(span / points / width)) * width
    if _buckets(since, until, step) <= points:
        return step
    # span / step < points - 1 leaves room for the two partial buckets at the ends.
    return max(1, math.ceil(span / (points - 1) / width)) * width


def plan(query: SeriesQuery) -> Plan:
    """The source and step for a series query.

    Steps are aligned to the Unix epoch, so a step of whole minutes or hours holds
    whole rollup buckets. Raw readings serve steps under a minute (and only where
    retention has not started deleting them); the 1-hour rollups serve steps of an
    hour or more, and any step they can make nearly as fine (at most half again as
    long) as the 1-minute rollups, reading a sixtieth of the rows; the 1-minute
    rollups the rest.
    """
    since, until = query.since, query.until
    step = _step(since, until, query.points, 1)
    if step < MINUTE and (query.raw_since is None or since >= query.raw_since):
        return Plan(0, step)
    minutes = _step(since, until, query.points, MINUTE)
    hours = _step(since, until, query.points, HOUR)
    if minutes >= HOUR or hours <= minutes * 3 / 2:
        return Plan(HOUR, hours)
    return Plan(MINUTE, minutes)


def group_points(rows: Iterable[tuple]) -> list[dict]:
    """Rows (agent, sensor, metric, unit, ts, min, avg, max, count), sorted by series
    then ts, as the `series` list of `/api/series`."""
    series: list[dict] = []
    current: tuple | None = None
    points: list[list] = []
    for agent, sensor, metric, unit, ts, low, mean, high, count in rows:
        if (agent, sensor, metric) != current:
            current = (agent, sensor, metric)
            points = []
            series.append({"agent": agent, "sensor": sensor, "metric": metric, "unit": unit,
                           "points": points})
        points.append([ts, low, mean, high, count])
    return series


def merge_by_time(per_series: Iterable[Iterator[tuple]]) -> Iterator[tuple]:
    """Rollup rows (ROLLUP_COLUMNS order) of several series, each oldest first, as one
    stream sorted by (ts, agent, sensor, metric): the order an export writes."""
    return heapq.merge(*per_series, key=lambda r: (r[4], r[0], r[1], r[2]))


def newest(per_series: Iterable[list[tuple]], limit: int) -> list[tuple]:
    """The newest ``limit`` rollup rows of several series (each list oldest first,
    already cut to ``limit``), oldest first."""
    rows = list(merge_by_time(iter(rows) for rows in per_series))
    return rows[-limit:] if limit else []


def page_series(fetch: Callable[[int | None], list[tuple]], chunk: int) -> Iterator[tuple]:
    """Every row of one series, a page of ``chunk`` at a time: ``fetch(after)`` gives
    the rows whose bucket is past ``after`` (None: from the first)."""
    after: int | None = None
    while True:
        rows = fetch(after)
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1][4]
