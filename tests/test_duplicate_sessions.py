"""Two machines sending with one buffer (a cloned SD card): the same (agent, epoch)
from two live sessions. The collector says so, and a resent reading whose values
differ from the stored one is counted and logged, on both storages."""

from __future__ import annotations

import json
from contextlib import contextmanager

from conftest import BOTH_BACKENDS, TOKENS
from processes import wait_until
from websockets.sync.client import connect


@contextmanager
def session(collector, epoch: str):
    with connect(collector.stream_url, open_timeout=10,
                 additional_headers={"Authorization": f"Bearer {TOKENS['pi-1']}"}) as ws:
        ws.send(json.dumps({"type": "hello", "agent": "pi-1", "epoch": epoch,
                            "version": "t"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        yield ws


def send(ws, first: int, last: int, value: float) -> None:
    """Readings first..last, all with ``value``; returns once they are acked."""
    ws.send(json.dumps({"type": "readings", "readings": [
        {"seq": seq, "sensor": "climate", "metric": "temperature", "value": value,
         "unit": "C", "ts": 1_700_000_000.0 + seq} for seq in range(first, last + 1)]}))
    assert json.loads(ws.recv(timeout=10)) == {"type": "ack", "seq": last}


def metric(collector, series: str) -> float:
    for line in collector.get("/metrics")[1].decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {series}")


@BOTH_BACKENDS
def test_a_cloned_buffer_is_warned_about_and_its_differing_resends_counted(make_collector):
    collector = make_collector()
    with session(collector, "cloned") as original, session(collector, "cloned") as clone:
        wait_until(lambda: "second session" in collector.log(), 5,
                   what="a warning about the second live session on one epoch")
        send(original, 1, 10, 21.5)
        # The same values again (a resend after a lost ack) are plain duplicates...
        send(original, 1, 10, 21.5)
        send(clone, 1, 5, 21.5)
        assert metric(collector, "sensor_edge_readings_conflicting_total") == 0
        # ...but other values under the same seqs are another machine's readings.
        send(clone, 4, 12, 30.0)  # 4..10 differ from what is stored; 11, 12 are new
        assert metric(collector, "sensor_edge_readings_conflicting_total") == 7
        assert metric(collector, "sensor_edge_readings_duplicate_total") == 10 + 5 + 7
    log = collector.log()
    assert log.count("second session") == 1
    assert "7 readings resent with values that differ from the stored ones" in log
    assert ("seq 4: stored climate temperature 21.5 C ts 1700000004.0, "
            "received climate temperature 30.0 C ts 1700000004.0") in log
    assert collector.stored_seqs("pi-1", "cloned") == list(range(1, 13))


def test_sessions_on_other_epochs_or_one_after_another_are_not_warned_about(make_collector):
    collector = make_collector()

    def gone() -> None:
        wait_until(lambda: not next(a for a in collector.json("/api/agents")["agents"]
                                    if a["id"] == "pi-1")["connected"], 5, what="pi-1 gone")

    with session(collector, "a"), session(collector, "b"):
        pass
    gone()
    with session(collector, "a"):
        pass
    gone()
    with session(collector, "a") as ws:
        send(ws, 1, 3, 1.0)
    assert "second session" not in collector.log()
