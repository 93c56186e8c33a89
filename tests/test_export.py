"""Getting readings out: the storage's keyset iterator, `sensor-collector export`,
and GET /api/readings.csv."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from processes import wait_until

from rollup_checks import as_before_rollups

from sensor_edge.server.storage import READING_COLUMNS, Batch, ReadingQuery
from sensor_edge.server.storage.rollups import ROLLUP_COLUMNS, bucket_of
from sensor_edge.server.storage.sqlite import SQLiteStorage

T0 = 1_700_000_000.0


def fill(path: str) -> list[tuple]:
    """Readings from three agents, many sharing a timestamp, in two epochs for one agent.

    Returns every row as (agent, epoch, seq, sensor, metric, value, unit, ts).
    """
    storage = SQLiteStorage(path)
    rows = []
    batches = []
    for agent, epoch in (("pi-1", "e1"), ("pi-1", "e2"), ("pi-2", "e1"), ("pi-3", "x")):
        readings = []
        for seq in range(1, 301):
            ts = T0 + seq // 4  # four readings per second: ties across and within agents
            value = seq / 10
            readings.append((seq, "climate", "temperature", value, "C", ts))
            rows.append((agent, epoch, seq, "climate", "temperature", value, "C", ts))
        batches.append(Batch(agent, epoch, readings))
    storage.store(batches, time.time())
    storage.close()
    return sorted(rows, key=lambda r: (r[7], r[0], r[1], r[2]))


def export(config: str, *args: str, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor_edge.server", "export", "--config", config, *args],
        stdout=subprocess.PIPE, stderr=stderr, timeout=60, text=True)


@pytest.fixture
def stored(tmp_path):
    db = str(tmp_path / "readings.db")
    rows = fill(db)
    config = tmp_path / "collector.yaml"
    config.write_text(f"storage: {db}\nagents:\n  - id: pi-1\n    token: t-123456789012\n")
    return str(config), db, rows


def test_iterator_pages_through_ties_in_order_and_filters(stored):
    _, db, rows = stored
    storage = SQLiteStorage(db)
    try:
        # A page size that splits runs of equal timestamps: nothing lost, nothing twice.
        assert list(storage.iter_readings(ReadingQuery(), chunk=7)) == rows
        query = ReadingQuery(agent="pi-1", since=T0 + 10, until=T0 + 20.5)
        want = [r for r in rows if r[0] == "pi-1" and T0 + 10 <= r[7] <= T0 + 20.5]
        assert list(storage.iter_readings(query, chunk=5)) == want
        # The same rows the API's query gives, in the same shape.
        api = storage.readings(ReadingQuery(agent="pi-1", since=T0 + 10, until=T0 + 20.5,
                                            limit=10_000))
        assert sorted(tuple(r[c] for c in READING_COLUMNS) for r in api) == sorted(want)
    finally:
        storage.close()


def test_export_command_writes_csv_and_jsonl(stored, tmp_path):
    config, _, rows = stored
    out = tmp_path / "out.csv"
    done = export(config, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not a terminal: no progress bar
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == list(READING_COLUMNS)
    assert [(a, e, int(s), se, m, float(v), u, float(t)) for a, e, s, se, m, v, u, t
            in table[1:]] == rows
    assert not (tmp_path / "out.csv.part").exists()

    since = datetime.fromtimestamp(T0 + 50, timezone.utc).isoformat().replace("+00:00", "Z")
    done = export(config, "--format", "jsonl", "--agent", "pi-2", "--since", since,
                  "--until", str(T0 + 60))
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    want = [dict(zip(READING_COLUMNS, r)) for r in rows
            if r[0] == "pi-2" and T0 + 50 <= r[7] <= T0 + 60]
    assert got == want and len(got) == 44


def test_export_command_writes_a_tier_of_rollups(stored, tmp_path):
    config, db, rows = stored
    buckets: dict[tuple, list[float]] = {}
    for agent, _epoch, _seq, sensor, metric, value, unit, ts in rows:
        buckets.setdefault((bucket_of(ts, 60), agent, sensor, metric, unit), []).append(value)
    want = [(agent, sensor, metric, unit, start, min(v), sum(v) / len(v), max(v), len(v))
            for (start, agent, sensor, metric, unit), v in sorted(buckets.items())]
    assert len(want) == 6  # pi-1's two epochs are one series; 75 s over two minutes

    done = export(config, "--tier", "1m", "--out", str(tmp_path / "minutes.csv"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    with open(tmp_path / "minutes.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == list(ROLLUP_COLUMNS)
    got = [(a, s, m, u, int(t), float(lo), float(avg), float(hi), int(n))
           for a, s, m, u, t, lo, avg, hi, n in table[1:]]
    assert [g[:6] + g[7:] for g in got] == [w[:6] + w[7:] for w in want]
    assert [g[6] for g in got] == pytest.approx([w[6] for w in want])

    done = export(config, "--tier", "1h", "--format", "jsonl", "--agent", "pi-2")
    hours = [json.loads(line) for line in done.stdout.splitlines()]
    assert hours == [{"agent": "pi-2", "sensor": "climate", "metric": "temperature",
                      "unit": "C", "ts": bucket_of(T0, 3600), "min": 0.1,
                      "avg": pytest.approx(15.05), "max": 30.0, "count": 300}]
    assert export(config, "--tier", "5m").returncode == 2

    # A database from before rollups, opened by export before the collector has
    # rolled it up: the export says it is incomplete.
    as_before_rollups(db)
    done = export(config, "--tier", "1h")
    assert done.returncode == 0 and done.stdout.splitlines() == [",".join(ROLLUP_COLUMNS)]
    assert "still rolling up readings stored before rollups existed" in done.stderr


def test_export_mistakes_are_one_line_errors(stored, tmp_path):
    config, _, _ = stored
    for args, words in ((["--since", "yesterday"], "not Unix seconds nor ISO 8601"),
                        (["--out", str(tmp_path / "no" / "such" / "dir.csv")], "cannot write")):
        done = export(config, *args)
        assert done.returncode == 2
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert "Traceback" not in done.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"storage: {tmp_path / 'nothing-here.db'}\n")
    done = export(str(missing))
    assert done.returncode == 2 and "no readings database" in done.stderr
    assert not (tmp_path / "nothing-here.db").exists()  # looking did not create it


def test_progress_bar_only_on_a_terminal(stored, tmp_path):
    config, _, rows = stored
    controller, terminal = pty.openpty()
    try:
        done = export(config, "--out", str(tmp_path / "tty.csv"), stderr=terminal)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert done.returncode == 0
    text = shown.decode()
    assert "100%" in text and f"{len(rows):,} rows" in text


def test_readings_csv_endpoint_matches_the_json_api(make_collector, make_agent):
    collector = make_collector()
    make_agent(collector, "pi-1")
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 30, 20, what="readings")
    until = time.time()
    query = f"agent=pi-1&sensor=soc&until={until}&limit=20"
    status, body, headers = collector.get("/api/readings.csv?" + query)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(body.decode())))
    assert table[0] == list(READING_COLUMNS)
    api = collector.json("/api/readings?" + query)["readings"]
    assert len(api) == 20
    assert [[str(r[c]) if not isinstance(r[c], float) else repr(r[c]) for c in READING_COLUMNS]
            for r in api] == table[1:]
    assert collector.get("/api/readings.csv?since=soon")[0] == 400


def test_export_while_the_collector_is_writing(make_collector, make_agent, tmp_path):
    collector = make_collector()
    make_agent(collector, "pi-1")
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 30, 20, what="readings")
    until = time.time()
    done = export(str(collector.config_path), "--format", "jsonl", "--agent", "pi-1",
                  "--until", str(until))
    assert done.returncode == 0, done.stderr
    seqs = sorted(json.loads(line)["seq"] for line in done.stdout.splitlines())
    # Everything stored by then, once each (readings are stored within a second of being read).
    assert seqs == sorted(set(seqs)) and len(seqs) > 30
    assert set(seqs) <= set(collector.stored_seqs("pi-1"))
