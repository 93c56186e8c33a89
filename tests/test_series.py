"""`GET /api/series`: at most `points` points per series, from raw readings or the
1-minute or 1-hour rollups as the range needs, each point the exact min/avg/max/count
of the readings in its step; the same checks and auth as `/api/readings`."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from conftest import BOTH_BACKENDS
from hypothesis import given
from hypothesis import strategies as st

from sensor_edge.server.storage import Batch, ReadingQuery, open_storage
from sensor_edge.server.storage.retention import DAY as DAY_SECONDS
from sensor_edge.server.storage.rollups import (
    HOUR, MAX_POINTS, MINUTE, Plan, SeriesQuery, bucket_of, plan)

NOW = 1_700_000_000.0
YEAR = 365 * DAY_SECONDS


def test_the_finest_source_that_fits_the_range_and_points():
    def chosen(span: float, points: int = 1000, raw_since: float | None = None) -> Plan:
        return plan(SeriesQuery(since=NOW - span, until=NOW, points=points, raw_since=raw_since))

    assert chosen(HOUR) == Plan(0, 4)                       # raw readings, 4 s apart
    assert chosen(DAY_SECONDS) == Plan(MINUTE, 120)         # 1-minute rollups
    # 1-hour rollups an hour apart rather than 1-minute ones 44 minutes apart.
    assert chosen(30 * DAY_SECONDS) == Plan(HOUR, 3600)
    assert chosen(15 * DAY_SECONDS) == Plan(MINUTE, 1320)
    assert chosen(YEAR) == Plan(HOUR, 32400)                # 1-hour rollups, 9 h apart
    assert chosen(YEAR, points=MAX_POINTS) == Plan(HOUR, 3600)
    assert chosen(7 * DAY_SECONDS, points=MAX_POINTS) == Plan(MINUTE, 120)
    assert chosen(HOUR, points=100) == Plan(0, 37)  # 36 s would make 101 (two part steps)
    # Raw readings deleted by retention in part of the range: the rollups serve it.
    assert chosen(HOUR, raw_since=NOW - 1800) == Plan(MINUTE, 60)
    assert chosen(HOUR, raw_since=NOW - 7200) == Plan(0, 4)


@given(since=st.floats(-1e12, 1e12), span=st.floats(0, 2e9), points=st.integers(2, 10_000),
       raw=st.booleans())
def test_a_plan_never_gives_more_points_than_asked(since, span, points, raw):
    query = SeriesQuery(since=since, until=since + span, points=points,
                        raw_since=since + 1 if raw else None)
    chosen = plan(query)
    assert chosen.step >= max(chosen.width, 1) and chosen.step % max(chosen.width, 1) == 0
    buckets = math.floor(query.until / chosen.step) - math.floor(query.since / chosen.step) + 1
    assert buckets <= points
    # Not coarser than needed: one width less than the step would not fit `points`
    # evenly over the span (the step is at most a width past span / (points - 1)).
    assert chosen.step <= max(chosen.width, 1) * (math.ceil(span / (points - 1)
                                                             / max(chosen.width, 1)) or 1)


def expected_points(readings: list[tuple], query: SeriesQuery, chosen: Plan) -> dict:
    """(agent, sensor, metric) -> [[ts, min, avg, max, count], ...] straight from the
    raw readings: what the rollups must add up to."""
    step, width = chosen.step, chosen.width
    start = query.since // step * step
    groups: dict[tuple, dict[int, list[float]]] = {}
    for agent, _epoch, _seq, sensor, metric, value, _unit, ts in readings:
        if any(want is not None and want != got for want, got in
               ((query.agent, agent), (query.sensor, sensor), (query.metric, metric))):
            continue
        last = ts if width == 0 else bucket_of(ts, width)  # a rollup bucket is whole
        if ts < start or last > query.until:
            continue
        point = math.floor(ts / step) * step
        groups.setdefault((agent, sensor, metric), {}).setdefault(point, []).append(value)
    return {key: [[t, min(v), math.fsum(v) / len(v), max(v), len(v)]
                  for t, v in sorted(points.items())] for key, points in sorted(groups.items())}


def assert_series_match(answer: dict, expected: dict) -> None:
    got = {(s["agent"], s["sensor"], s["metric"]): s["points"] for s in answer["series"]}
    assert got.keys() == expected.keys()
    for key, points in expected.items():
        assert [p[0] for p in got[key]] == [p[0] for p in points], key
        for mine, theirs in zip(got[key], points):
            assert (mine[1], mine[3], mine[4]) == (theirs[1], theirs[3], theirs[4]), (key, mine)
            assert mine[2] == pytest.approx(theirs[2], rel=1e-9, abs=1e-9)


def seed(url: str) -> None:
    """Two agents over 3 days, a reading every 10 s per metric; a late backlog too."""
    storage = open_storage(url)
    try:
        batches = []
        for agent in ("pi-1", "pi-2"):
            rows = []
            for i in range(3 * 8640):
                ts = NOW - 3 * DAY_SECONDS + i * 10 + (3.3 if agent == "pi-2" else 0)
                rows.append((2 * i + 1, "climate", "temperature",
                             20 + math.sin(i / 300) * 5 + (i % 7) / 10, "C", ts))
                rows.append((2 * i + 2, "climate", "humidity", 50 + (i % 13), "%", ts))
            batches += [Batch(agent, "e", rows[i:i + 5000]) for i in range(0, len(rows), 5000)]
        # A late backlog with older timestamps, after the newer readings.
        late = [(n, "soc", "temperature", 40.0 + n % 5, "C", NOW - 2 * DAY_SECONDS + n * 3)
                for n in range(1, 500)]
        batches.append(Batch("pi-1", "late", late))
        storage.store(batches, NOW)
    finally:
        storage.close()


@BOTH_BACKENDS
def test_series_points_equal_the_readings_they_summarise_at_every_tier(storage_url):
    seed(storage_url)
    storage = open_storage(storage_url)
    try:
        readings = list(storage.iter_readings(ReadingQuery()))
        cases = [
            SeriesQuery(agent="pi-1", since=NOW - HOUR - 7.5, until=NOW - 12.25),      # raw
            SeriesQuery(since=NOW - 2 * HOUR, until=NOW, points=50),                   # 1m
            SeriesQuery(agent="pi-2", metric="humidity", since=NOW - DAY_SECONDS - 31,
                        until=NOW - 1000.5),                                            # 1m
            SeriesQuery(since=NOW - 3 * DAY_SECONDS, until=NOW, points=30),            # 1h
            SeriesQuery(sensor="soc", since=NOW - 10 * DAY_SECONDS, until=NOW + 5 * DAY_SECONDS,
                        points=7),                                                      # 1h
        ]
        widths = set()
        for query in cases:
            chosen = plan(query)
            widths.add(chosen.width)
            answer = storage.series(query)
            assert answer["step"] == chosen.step
            assert all(len(s["points"]) <= query.points for s in answer["series"])
            assert answer["series"], query
            assert_series_match(answer, expected_points(readings, query, chosen))
            units = {(s["metric"], s["unit"]) for s in answer["series"]}
            assert units <= {("temperature", "C"), ("humidity", "%")}
        assert widths == {0, MINUTE, HOUR}

        # Raw readings expire; a long range still draws, from the rollups.
        year = SeriesQuery(since=NOW - YEAR, until=NOW, points=1000)
        before = storage.series(year)
        while storage.delete_older_than(NOW + 1, 100_000):
            pass
        assert storage.series(year) == before
        assert sum(p[4] for s in before["series"] for p in s["points"]) == len(readings)
        assert storage.series(SeriesQuery(since=NOW - HOUR, until=NOW)) == \
            {"step": 4, "series": []}
    finally:
        storage.close()


@BOTH_BACKENDS
def test_series_api_over_http(storage_url, make_collector):
    seed(storage_url)
    collector = make_collector(api={"token": "api-token-0123456789"})
    auth = {"Authorization": "Bearer api-token-0123456789"}

    def get(query: str) -> tuple[int, dict | str]:
        status, body, headers = collector.get("/api/series" + query, auth)
        if headers["Content-Type"].startswith("application/json"):
            return status, json.loads(body)
        return status, body.decode()

    assert collector.get(f"/api/series?since={NOW - DAY_SECONDS}")[0] == 401
    status, year = get(f"?since={NOW - YEAR}&until={NOW}&points=500")
    assert status == 200
    assert year["step"] == plan(SeriesQuery(since=NOW - YEAR, until=NOW, points=500)).step
    assert {(s["agent"], s["sensor"], s["metric"], s["unit"]) for s in year["series"]} == {
        ("pi-1", "climate", "temperature", "C"), ("pi-1", "climate", "humidity", "%"),
        ("pi-1", "soc", "temperature", "C"), ("pi-2", "climate", "temperature", "C"),
        ("pi-2", "climate", "humidity", "%")}
    assert all(len(s["points"]) <= 500 for s in year["series"])
    point = year["series"][0]["points"][0]
    assert len(point) == 5 and point[1] <= point[2] <= point[3] and point[4] > 0

    status, day = get(f"?agent=pi-2&sensor=climate&metric=temperature&until={NOW}")
    assert status == 200 and day["step"] == 120 and len(day["series"]) == 1
    # A day by default: 721 points 2 minutes apart (1000 at most), the first one
    # from the start of the 2 minutes holding `since`.
    assert len(day["series"][0]["points"]) == 721
    # Defaults: the last day up to now (the seed's readings end at NOW, long ago).
    assert get("")[1] == {"step": 120, "series": []}

    for bad, words in [
        ("?points=0", "points must be a whole number from 2 to 10000"),
        ("?points=1", "points must be"), ("?points=10001", "points must be"),
        ("?points=-5", "points must be"), ("?points=ten", "points must be"),
        ("?points=%C2%B2", "points must be"),  # a superscript 2: a digit, not a number
        ("?since=yesterday", "since must be Unix seconds"), ("?until=nan", "until must be finite"),
        (f"?since={NOW}&until={NOW - 1}", "since must not be after until"),
    ]:
        status, body = get(bad)
        assert status == 400 and body["error"] == "bad_request", (bad, body)
        assert words in body["detail"], (bad, body)
    status, body, _ = collector.get("/api/readings?limit=%C2%B2", auth)
    assert status == 400 and b"limit must be a whole number" in body
    # Far times are clamped, not an overflow.
    status, far = get("?since=-1e300&until=1e300&points=2")
    assert status == 200 and len(far["series"]) == 5
    assert all(len(s["points"]) <= 2 for s in far["series"])

    # /api/readings.csv gives a tier's rollups on request.
    status, body, headers = collector.get(
        f"/api/readings.csv?tier=1h&agent=pi-1&sensor=soc&since={NOW - 3 * DAY_SECONDS}", auth)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert list(rows[0]) == ["agent", "sensor", "metric", "unit", "ts", "min", "avg", "max",
                             "count"]
    assert sum(int(r["count"]) for r in rows) == 499 and len(rows) == 1
    status, body, _ = collector.get("/api/readings.csv?tier=5m", auth)
    assert status == 400 and b"tier must be one of raw, 1m, 1h" in body
