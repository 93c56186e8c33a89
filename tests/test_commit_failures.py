"""Commits that fail while agents stream, against a running collector on both
storages: the database is locked (commits wait), then it refuses the writes (a
trigger that raises, as a full or broken database would)."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from conftest import BOTH_BACKENDS, TOKENS
from processes import wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


class LockedDatabase:
    """Hold the write lock on the collector's database, then make its writes fail."""

    def __init__(self, storage: str):
        self.storage = storage
        if storage.startswith("postgres"):
            import psycopg

            self.db = psycopg.connect(storage, autocommit=False)
            # Inserts (and COPY) wait behind this; reads go on.
            self.db.execute("LOCK TABLE readings IN EXCLUSIVE MODE")
        else:
            self.db = sqlite3.connect(storage, timeout=10, isolation_level=None)
            self.db.execute("BEGIN IMMEDIATE")

    def fail_writes_and_release(self) -> None:
        """Refuse every insert from now on, and let the waiting commit run into that."""
        if self.storage.startswith("postgres"):
            self.db.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                            "$$ BEGIN RAISE EXCEPTION 'simulated storage failure'; END $$")
            self.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON readings "
                            "FOR EACH ROW EXECUTE FUNCTION refuse()")
        else:
            self.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON readings BEGIN "
                            "SELECT RAISE(ABORT, 'simulated storage failure'); END")
        self.db.execute("COMMIT")
        self.db.close()


def metric(collector, name: str) -> float:
    for line in collector.get("/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def agent_entry(collector, agent_id: str) -> dict:
    return next(a for a in collector.json("/api/agents")["agents"] if a["id"] == agent_id)


@BOTH_BACKENDS
def test_a_failed_commit_frees_its_connection_logs_once_and_sigterm_is_prompt(make_collector):
    collector = make_collector()
    headers = {"Authorization": f"Bearer {TOKENS['pi-2']}"}
    with connect(collector.stream_url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "agent": "pi-2", "epoch": "e", "version": "t"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        lock = LockedDatabase(collector.storage)
        # More batches than a connection may have awaiting their commit (64): the
        # collector stops reading this one, as it should while its database is stuck.
        for b in range(100):
            ws.send(json.dumps({"type": "readings", "readings": [
                {"seq": b * 10 + i, "sensor": "s", "metric": "m", "value": 1.0, "unit": "",
                 "ts": time.time()} for i in range(1, 11)]}))
        wait_until(lambda: metric(collector, "sensor_edge_batches_total") >= 66, 10,
                   what="the collector to read as many batches as it holds at once")
        lock.fail_writes_and_release()
        # The agent is told (1011) and may come back later; it is no longer connected.
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(200):  # bounded: any acks, then the close
                ws.recv(timeout=15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    wait_until(lambda: not agent_entry(collector, "pi-2")["connected"], 5,
               what="pi-2 shown disconnected")
    assert metric(collector, "sensor_edge_agents_connected") == 0
    started = time.monotonic()
    assert collector.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5
    log = collector.log()
    assert "simulated storage failure" in log
    # One failed commit, told once: no traceback per batch that was waiting behind it.
    assert "never retrieved" not in log and "Traceback" not in log
    assert log.count("simulated storage failure") <= 3, log[-3000:]
    assert collector.stored_seqs("pi-2") == []
