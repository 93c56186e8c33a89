"""Bad frames against a running collector: that connection closes with the contract's
code and reason, nothing from the message is stored, every other agent goes on."""

from __future__ import annotations

import json

import pytest
from conftest import BOTH_BACKENDS, TOKENS
from processes import wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def reading(seq: int, **overrides) -> dict:
    return {"seq": seq, "sensor": "probe", "metric": "m", "value": 1.0, "unit": "",
            "ts": 1_700_000_000.0, **overrides}


def batch(*readings) -> str:
    return json.dumps({"type": "readings", "readings": list(readings)})


HELLO = json.dumps({"type": "hello", "agent": "pi-4", "epoch": "bad-frames", "version": "t"})
NO_HELLO = object()

CASES = [
    # (name, frames after hello (NO_HELLO first: without one), close codes, error code or None)
    ("binary frame", [b"\x00\x01"], {1003}, "binary_frame"),
    ("not JSON", ["{oops"], {1007}, "bad_json"),
    ("wrong types", [batch(reading(1, value="hot"))], {1007}, "bad_message"),
    ("non-finite", ['{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m",'
                    '"value":NaN,"unit":"","ts":1}]}'], {1007}, "not_finite"),
    ("nested too deep", ['{"type":"status","x":' + "[" * 10_000 + "]" * 10_000 + "}"],
     {1007}, "too_deep"),
    ("batch over the limit", [batch(*[reading(i) for i in range(1, 100_001)])], {1009}, None),
    ("frame over the limit", ['{"type":"bye","pad":"' + "x" * (2 * 1024 * 1024) + '"}'],
     {1009}, None),
    ("a message before hello", [NO_HELLO, batch(reading(1))], {1008}, "hello_required"),
    ("hello for another agent", [NO_HELLO, json.dumps({"type": "hello", "agent": "pi-5", "epoch": "e",
                                             "version": "t"})], {1008}, "wrong_agent"),
    ("a bad reading in a good batch", [batch(reading(1), reading(2), reading(3, ts="now"))],
     {1007}, "bad_message"),
]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One collector and one well-behaved agent streaming through every case."""
    from processes import Agent, Collector

    workdir = tmp_path_factory.mktemp("bad-frames")
    collector = Collector(workdir, TOKENS).start()
    agent = Agent(workdir, "pi-1", TOKENS["pi-1"], [collector.stream_url]).start()
    try:
        wait_until(lambda: collector.stored_seqs("pi-1"), 20, what="the good agent's readings")
        yield collector, agent
    finally:
        agent.kill()
        collector.kill()


@pytest.mark.parametrize("name,frames,close_codes,error", CASES, ids=[c[0] for c in CASES])
def test_bad_frame_closes_only_that_connection(running, name, frames, close_codes, error):
    collector, agent = running
    good_before = len(collector.stored_seqs("pi-1"))
    headers = {"Authorization": f"Bearer {TOKENS['pi-4']}"}
    with connect(collector.stream_url, additional_headers=headers, max_size=None,
                 open_timeout=10, close_timeout=5) as ws:
        if frames[0] is NO_HELLO:
            frames = frames[1:]
        else:
            ws.send(HELLO)
            welcome = json.loads(ws.recv(timeout=10))
            assert welcome["type"] == "welcome" and welcome["acked"] == 0
        received = []
        with pytest.raises(ConnectionClosed) as closed:
            for data in frames:
                ws.send(data)
            for _ in range(5):  # bounded: an error, then the close
                received.append(json.loads(ws.recv(timeout=10)))
    code = closed.value.rcvd.code if closed.value.rcvd else None
    assert code in close_codes, (code, received)
    if error is not None:
        assert received and received[-1] == {"type": "error", "error": error,
                                              "detail": received[-1]["detail"]}
        assert closed.value.rcvd.reason == error
    # Nothing from that message was stored...
    assert collector.stored_seqs("pi-4") == []
    # ...and the other agent kept going.
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > good_before, 15,
               what="the good agent to keep storing")
    assert agent.running()


@BOTH_BACKENDS
def test_duplicates_are_acknowledged_and_stored_once(make_collector):
    collector = make_collector()
    headers = {"Authorization": f"Bearer {TOKENS['pi-5']}"}
    hello = json.dumps({"type": "hello", "agent": "pi-5", "epoch": "dup", "version": "t"})
    for attempt in range(2):
        with connect(collector.stream_url, additional_headers=headers, open_timeout=10) as ws:
            ws.send(hello)
            welcome = json.loads(ws.recv(timeout=10))
            assert welcome["acked"] == (0 if attempt == 0 else 3)
            # The second connection resends 1..3 (as after a lost ack) and adds 4.
            ws.send(batch(reading(1), reading(2), reading(3)))
            assert json.loads(ws.recv(timeout=10)) == {"type": "ack", "seq": 3}
            if attempt:
                ws.send(batch(reading(4)))
                assert json.loads(ws.recv(timeout=10)) == {"type": "ack", "seq": 4}
            ws.send('{"type":"bye"}')
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1000
    assert collector.stored_seqs("pi-5", "dup") == [1, 2, 3, 4]
    metrics = collector.get("/metrics")[1].decode()
    assert "sensor_edge_readings_duplicate_total 3.0" in metrics
