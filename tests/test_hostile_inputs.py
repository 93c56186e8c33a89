"""The contract's bad inputs and worse, thrown at one running collector while a
well-behaved agent streams to it: that agent must keep getting acks throughout."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib

import pytest
from conftest import TOKENS
from processes import HOST, Agent, Collector, wait_until
from sensor_edge.contract.protocol import ProtocolError, parse_agent_message
from sensor_edge.contract.session import CollectorSession
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

HANDSHAKE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    collector = Collector(workdir, TOKENS, limits={"handshake_timeout": HANDSHAKE_TIMEOUT,
                                                  "max_readings_per_second": 4000,
                                                  "max_batch_readings": 1000}).start()
    agent = Agent(workdir, "pi-1", TOKENS["pi-1"], [collector.stream_url]).start()
    try:
        wait_until(lambda: len(collector.stored_seqs("pi-1")) > 10, 20,
                   what="the good agent's first readings")
        yield collector, agent
    finally:
        agent.kill()
        collector.kill()


def keeps_storing(collector: Collector, agent: Agent, before: int) -> None:
    """The good agent's readings keep being stored (so acked), with no gap or duplicate."""
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > before + 10, 20,
               what="the good agent to keep getting acks")
    seqs = collector.stored_seqs("pi-1", agent.epoch())
    assert seqs == list(range(1, len(seqs) + 1))
    assert agent.running()


def hello(ws, agent: str = "pi-4", epoch: str = "hostile") -> None:
    ws.send(json.dumps({"type": "hello", "agent": agent, "epoch": epoch, "version": "t"}))
    assert json.loads(ws.recv(timeout=10))["type"] == "welcome"


def close_code(ws, frame) -> int | None:
    """Send a frame and read until the collector closes; its close code."""
    try:
        ws.send(frame)
        for _ in range(5):  # bounded: an error message, then the close
            ws.recv(timeout=15)
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None
    raise AssertionError("the collector did not close the connection")


def test_json_nested_10000_deep_in_every_message_type(running):
    collector, agent = running
    before = len(collector.stored_seqs("pi-1"))
    deep = "[" * 10_000 + "]" * 10_000
    frames = [
        '{"type":"hello","agent":"pi-4","epoch":"e","version":"t","x":' + deep + "}",
        '{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m","value":1,'
        '"unit":"","ts":1,"extra":' + deep + "}]}",
        '{"type":"status","nested":' + "{\"a\":" * 10_000 + "1" + "}" * 10_000 + "}",
        deep,
    ]
    for i, frame in enumerate(frames):
        with connect(collector.stream_url, open_timeout=10, max_size=None,
                     additional_headers={"Authorization": f"Bearer {TOKENS['pi-4']}"}) as ws:
            if i in (1, 2):
                hello(ws)
            assert close_code(ws, frame) == 1007
    assert collector.stored_seqs("pi-4") == []
    keeps_storing(collector, agent, before)


def test_a_100000_reading_batch_is_refused_whole(running):
    collector, agent = running
    before = len(collector.stored_seqs("pi-1"))
    readings = [{"seq": i, "sensor": "s", "metric": "m", "value": 1.0, "unit": "", "ts": 1.0}
                for i in range(1, 100_001)]
    with connect(collector.stream_url, open_timeout=10, max_size=None,
                 additional_headers={"Authorization": f"Bearer {TOKENS['pi-4']}"}) as ws:
        hello(ws, epoch="big")
        assert close_code(ws, json.dumps({"type": "readings", "readings": readings})) == 1009
    assert collector.stored_seqs("pi-4", "big") == []
    keeps_storing(collector, agent, before)


def test_text_no_storage_takes_is_refused_before_it_can_fail_a_group_commit(running):
    collector, agent = running
    before = len(collector.stored_seqs("pi-1"))
    for i, sensor in enumerate(["s\\ud800", "s\\u0000"]):
        with connect(collector.stream_url, open_timeout=10,
                     additional_headers={"Authorization": f"Bearer {TOKENS['pi-4']}"}) as ws:
            hello(ws, epoch=f"text-{i}")
            frame = ('{"type":"readings","readings":[{"seq":1,"sensor":"' + sensor
                     + '","metric":"m","value":1,"unit":"","ts":1}]}')
            assert close_code(ws, frame) == 1007
    assert collector.stored_seqs("pi-4") == []
    keeps_storing(collector, agent, before)
    assert "storage failure" not in collector.log() and "commit of" not in collector.log()


def test_200_half_open_connections_are_dropped_after_the_handshake_timeout(running):
    collector, agent = running
    before = len(collector.stored_seqs("pi-1"))
    sockets = []
    try:
        for _ in range(200):
            s = socket.create_connection((HOST, collector.port), timeout=10)
            sockets.append(s)
        # Half of them start a request and never finish it.
        for s in sockets[::2]:
            s.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        opened = time.monotonic()
        # Meanwhile the good agent, and a new agent connecting now, are served.
        keeps_storing(collector, agent, before)
        with connect(collector.stream_url, open_timeout=10,
                     additional_headers={"Authorization": f"Bearer {TOKENS['pi-5']}"}) as ws:
            hello(ws, "pi-5", "during-the-flood")
        # Each stalled connection is closed by the collector (EOF or reset), not left open.
        for s in sockets:
            s.settimeout(max(0.1, opened + HANDSHAKE_TIMEOUT + 10 - time.monotonic()))
            try:
                assert s.recv(1024) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - opened >= HANDSHAKE_TIMEOUT - 0.5
    finally:
        for s in sockets:
            s.close()
    keeps_storing(collector, agent, before)


def test_compression_is_never_negotiated_so_no_frame_can_be_a_bomb(running):
    collector, agent = running
    before = len(collector.stored_seqs("pi-1"))
    with socket.create_connection((HOST, collector.port), timeout=10) as s:
        s.sendall(("GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                   f"Authorization: Bearer {TOKENS['pi-4']}\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = s.recv(4096)
            assert chunk, "the collector closed during the handshake"
            response += chunk
        head = response.split(b"\r\n\r\n")[0].decode().lower()
        assert head.startswith("http/1.1 101") and "sec-websocket-extensions" not in head
        # 64 MiB of zeros deflate to about 64 KiB: a bomb, sent with RSV1 as if compression
        # were on. Without the extension RSV1 is a protocol error: the collector closes
        # (1002) without ever inflating it.
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = bomb.compress(b"\0" * (64 * 1024 * 1024)) + bomb.flush(zlib.Z_SYNC_FLUSH)[:-4]
        mask = os.urandom(4)
        header = bytes([0x80 | 0x40 | 0x1, 0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        s.sendall(header + mask + masked)
        reply = b""
        while len(reply) < 4:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply[0] & 0x0F == 0x8, "a close frame"
    assert struct.unpack("!H", reply[2:4])[0] == 1002
    assert collector.stored_seqs("pi-4", "bomb") == []
    keeps_storing(collector, agent, before)


def test_a_fast_agent_is_slowed_to_the_reading_rate_not_refused(running):
    collector, agent = running
    before = len(collector.stored_seqs("pi-1"))
    paused_before = metric(collector, "sensor_edge_rate_limited_seconds_total")
    batches = 12  # 12,000 readings at 4,000/s with a burst of 4,000: about 2 s of pauses
    started = time.monotonic()
    with connect(collector.stream_url, open_timeout=10,
                 additional_headers={"Authorization": f"Bearer {TOKENS['pi-3']}"}) as ws:
        hello(ws, "pi-3", "fast")
        for b in range(batches):
            ws.send(json.dumps({"type": "readings", "readings": [
                {"seq": b * 1000 + i, "sensor": "s", "metric": "m", "value": 1.0, "unit": "",
                 "ts": 1.0} for i in range(1, 1000)]}))
        acked = 0
        while acked < batches * 1000 - 1:
            acked = json.loads(ws.recv(timeout=20))["seq"]
    elapsed = time.monotonic() - started
    assert collector.stored_seqs("pi-3", "fast") == [
        b * 1000 + i for b in range(batches) for i in range(1, 1000)]
    # Slowed, not refused: every reading is in, and the pauses add up to the rate's worth.
    assert elapsed >= 1.5
    assert metric(collector, "sensor_edge_rate_limited_seconds_total") - paused_before >= 1.5
    keeps_storing(collector, agent, before)


def test_unauthenticated_floods_do_not_touch_storage(running):
    collector, agent = running
    before = len(collector.stored_seqs("pi-1"))
    failures_before = metric(collector, "sensor_edge_auth_failures_total")
    for _ in range(8):  # the collector slows these down (tests/test_security.py)
        with pytest.raises(InvalidStatus) as refused, \
                connect(collector.stream_url, open_timeout=10,
                        additional_headers={"Authorization": "Bearer guess"}):
            pass
        assert refused.value.response.status_code == 401
    assert metric(collector, "sensor_edge_auth_failures_total") - failures_before == 8
    keeps_storing(collector, agent, before)


def metric(collector: Collector, name: str) -> float:
    for line in collector.get("/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


HUGE = "9" * 400  # a JSON integer no float holds
# Values of every JSON shape, each wrong for some status field: huge integers, nested
# objects and lists, NaN-ish strings, booleans, null, an over-long string.
WRONG_VALUES = [HUGE, "-" + HUGE, "1e999", '"NaN"', '"Infinity"', '"12"', "true", "null",
                "-1", "1.5", '{"a":{"b":[1,{"c":' + HUGE + "}]}}", "[" + HUGE + "]", "[]", "{}",
                '"' + "x" * 5000 + '"']
STATUS_KEYS = ["time", "uptime", "version", "backend", "buffer_depth", "buffer_oldest_age",
               "dropped", "sent", "cpu_temperature", "clock_synced", "sensors"]
SENSOR_KEYS = ["good", "failed", "consecutive_failures", "failures", "last_error", "held_back"]


def hostile_statuses() -> list[str]:
    frames = []
    for value in WRONG_VALUES:
        for key in STATUS_KEYS:
            frames.append('{"type":"status","buffer_depth":5,"' + key + '":' + value + "}")
        for key in SENSOR_KEYS:
            frames.append('{"type":"status","sensors":{"s":{"good":1,"' + key + '":' + value
                          + '}}}')
        frames.append('{"type":"status","sensors":{"s":{"failures":{"k":' + value + "}}}}")
        frames.append('{"type":"status","sensors":{"s":' + value + "}}")
    return frames


def hostile_hellos() -> list[str]:
    frames = []
    for value in [*WRONG_VALUES, "NaN", "-Infinity"]:
        frames.append('{"type":"hello","agent":"pi-4","epoch":"e","version":"v","time":'
                      + value + "}")
        for key in ("agent", "epoch", "version"):
            body = {"agent": '"pi-4"', "epoch": '"e"', "version": '"v"', key: value}
            frames.append('{"type":"hello",' + ",".join(f'"{k}":{v}' for k, v in body.items())
                          + "}")
    return frames


def every_endpoint_answers(collector: Collector) -> None:
    for path in ("/healthz", "/metrics", "/api/agents", "/api/readings?limit=5", "/"):
        status, body, _ = collector.get(path)
        assert status == 200, (path, status, body[:300])


def test_no_status_or_hello_shape_makes_any_endpoint_fail(running):
    collector, agent = running
    before = len(collector.stored_seqs("pi-1"))
    statuses = hostile_statuses()
    with connect(collector.stream_url, open_timeout=10, max_size=None,
                 additional_headers={"Authorization": f"Bearer {TOKENS['pi-4']}"}) as ws:
        hello(ws, epoch="statuses")
        for i, frame in enumerate(statuses):
            ws.send(frame)
            if i % 10 == 0:  # while that status is the one kept
                every_endpoint_answers(collector)
        # A status is the agent's word, not a reason to drop it: the connection is still
        # up and its readings still stored and acked.
        ws.send(json.dumps({"type": "readings", "readings": [
            {"seq": 1, "sensor": "s", "metric": "m", "value": 1.0, "unit": "", "ts": 1.0}]}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "ack", "seq": 1}
        ws.send('{"type":"status","uptime":' + HUGE + ',"buffer_depth":7}')
        entry = wait_until(
            lambda: next(a for a in collector.json("/api/agents")["agents"]
                         if a["id"] == "pi-4" and a["status"] == {"buffer_depth": 7}), 10,
            what="the last status, its bad field dropped")
        assert entry["connected"] is True
    every_endpoint_answers(collector)
    # Each dropped field is counted (the connection's log names them once).
    dropped = sum(len(parse_agent_message(f).dropped) for f in statuses) + 1
    assert dropped > len(statuses) / 2
    assert metric(collector, "sensor_edge_status_fields_dropped_total") == dropped
    assert collector.log().count("status fields of the wrong type") == 1
    for frame in hostile_hellos():
        frame = frame.replace('"pi-4"', '"pi-5"')
        with connect(collector.stream_url, open_timeout=10, max_size=None,
                     additional_headers={"Authorization": f"Bearer {TOKENS['pi-5']}"}) as ws:
            try:  # some shapes are fine for some fields: "NaN" is a good epoch name
                CollectorSession("pi-5").receive(frame)
            except ProtocolError:
                assert close_code(ws, frame) in (1007, 1008), frame[:80]
            else:
                ws.send(frame)
                assert json.loads(ws.recv(timeout=10))["type"] == "welcome", frame[:80]
    every_endpoint_answers(collector)
    assert collector.stored_seqs("pi-5") == []
    keeps_storing(collector, agent, before)
    assert "Traceback" not in collector.log()
