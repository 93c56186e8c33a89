"""Connection budgets on a running collector: browsers on /v1/live have a budget
apart from agents', one agent token cannot take them all, and a browser that stops
reading is dropped, with a reason, before it holds more than a bounded backlog."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import ExitStack

from conftest import TOKENS
from processes import HOST, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


def live(collector, **kwargs):
    return connect(f"ws://{HOST}:{collector.port}/v1/live", open_timeout=10, **kwargs)


def agent(collector, agent_id: str):
    return connect(collector.stream_url, open_timeout=10,
                   additional_headers={"Authorization": f"Bearer {TOKENS[agent_id]}"})


def refused(opener) -> int | None:
    """The HTTP status a handshake is refused with (None: it was let in)."""
    try:
        with opener():
            return None
    except InvalidStatus as e:
        return e.response.status_code


def welcomed(ws, agent_id: str) -> None:
    ws.send(json.dumps({"type": "hello", "agent": agent_id, "epoch": "e", "version": "t"}))
    assert json.loads(ws.recv(timeout=10))["type"] == "welcome"


def metric(collector, series: str) -> float:
    for line in collector.get("/metrics")[1].decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def test_browsers_at_their_limit_never_lock_agents_out(make_collector):
    collector = make_collector(limits={"max_connections": 3, "max_live_connections": 3})
    with ExitStack() as held:
        browsers = [held.enter_context(live(collector)) for _ in range(3)]
        assert json.loads(browsers[0].recv(timeout=10))["type"] == "agents"
        assert refused(lambda: live(collector)) == 503
        # Every agent still gets in, up to the agents' own budget.
        for agent_id in ("pi-1", "pi-2", "pi-3"):
            welcomed(held.enter_context(agent(collector, agent_id)), agent_id)
        assert refused(lambda: agent(collector, "pi-4")) == 503
    metrics = collector.get("/metrics")[1].decode()
    assert 'sensor_edge_connections_refused_total{limit="max_live_connections"} 1.0' in metrics
    assert 'sensor_edge_connections_refused_total{limit="max_connections"} 1.0' in metrics
    # Closed ones give their place back.
    wait_until(lambda: refused(lambda: live(collector)) is None
               and refused(lambda: agent(collector, "pi-4")) is None, 10,
               what="room again once the others closed")


def test_one_agent_token_cannot_take_the_whole_budget(make_collector):
    collector = make_collector(limits={"max_connections": 10})
    with ExitStack() as held:
        for _ in range(2):  # the default: a reconnect may overlap a dying connection
            welcomed(held.enter_context(agent(collector, "pi-1")), "pi-1")
        assert refused(lambda: agent(collector, "pi-1")) == 503
        welcomed(held.enter_context(agent(collector, "pi-2")), "pi-2")
    assert 'sensor_edge_connections_refused_total{limit="max_connections_per_agent"} 1.0' \
        in collector.get("/metrics")[1].decode()
    wait_until(lambda: refused(lambda: agent(collector, "pi-1")) is None, 10,
               what="pi-1 let in again once its connections closed")


def test_a_burst_of_handshakes_on_one_token_gets_exactly_its_share(make_collector):
    """Places are taken when a handshake is answered, not when its handler starts."""
    collector = make_collector(limits={"max_connections_per_agent": 3})
    outcomes: list[object] = []
    start = threading.Barrier(20)
    release = threading.Event()

    def try_once() -> None:
        start.wait(10)
        try:
            with agent(collector, "pi-1"):
                outcomes.append("in")
                release.wait(20)
        except InvalidStatus as e:
            outcomes.append(e.response.status_code)
        except Exception as e:  # reported by the assertion below
            outcomes.append(repr(e))

    threads = [threading.Thread(target=try_once) for _ in range(20)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(outcomes) == 20, 20, what="every handshake answered")
    finally:
        release.set()
        for t in threads:
            t.join(20)
    assert sorted(outcomes, key=str) == [503] * 17 + ["in"] * 3


def test_a_browser_that_stops_reading_is_dropped_with_a_reason(make_collector):
    collector = make_collector(limits={"max_frame_bytes": 2_000_000})
    # A browser that reads nothing: a tiny receive buffer and a client queue of one
    # message, so everything sent to it piles up on the collector.
    sock = socket.create_connection((HOST, collector.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    with live(collector, sock=sock, max_queue=1, max_size=None) as browser, \
            agent(collector, "pi-2") as ws, live(collector, max_size=None) as reader:
        welcomed(ws, "pi-2")
        received: list[int] = []
        dropped = threading.Event()
        close: list[object] = []

        def keep_up() -> None:  # a browser that reads, beside the slow one
            try:
                while True:
                    message = json.loads(reader.recv(timeout=30))
                    if message["type"] == "readings":
                        received.extend(r["seq"] for r in message["readings"])
            except (ConnectionClosed, TimeoutError):
                pass

        def read_at_last() -> None:  # once dropped: its backlog, then a close with a reason
            dropped.wait(60)
            try:
                for _ in range(10_000):
                    browser.recv(timeout=10)
            except ConnectionClosed as e:
                close.append(e.rcvd)
            except TimeoutError as e:
                close.append(e)

        readers = [threading.Thread(target=keep_up), threading.Thread(target=read_at_last)]
        for t in readers:
            t.start()
        sent = 0
        for _ in range(16):  # 144,000 readings, about 20 MB of live messages
            ws.send(json.dumps({"type": "readings", "readings": [
                {"seq": sent + i, "sensor": "s" * 10, "metric": "m", "value": 1.5,
                 "unit": "C", "ts": time.time()} for i in range(1, 9_001)]}))
            sent += 9_000
            while json.loads(ws.recv(timeout=30))["seq"] < sent:
                pass  # every batch acked: the agent goes on as if no browser was there
            if metric(collector, "sensor_edge_live_clients_dropped_total") == 1:
                dropped.set()
        dropped.set()
        wait_until(lambda: received and received[-1] == sent, 30,
                   what="the browser that keeps up to get every reading")
        assert received == list(range(1, sent + 1))
    for t in readers:  # the one that kept up ends with its connection, just closed
        t.join(30)
    assert metric(collector, "sensor_edge_live_clients_dropped_total") == 1
    assert [(c.code, c.reason) for c in close] == [(1013, "too slow: fell behind the live feed")]
    wait_until(lambda: metric(collector, "sensor_edge_live_clients") == 0, 10,
               what="no live client left")
    assert collector.stored_seqs("pi-2") == list(range(1, sent + 1))
    assert "Traceback" not in collector.log()


def test_a_browser_never_has_more_than_the_bound_waiting_on_the_collector():
    """In process, to see the bytes: a real LiveFeed on a loopback server, a browser
    that reads nothing, commits of 5,000 readings; the unsent backlog stays within
    MAX_UNSENT_BYTES all along (a commit's worth was once allowed on top of it)."""
    import asyncio

    from sensor_edge.server.ingest.agents import AgentRegistry
    from sensor_edge.server.outputs.live import MAX_UNSENT_BYTES, LiveFeed
    from sensor_edge.server.outputs.metrics import CollectorMetrics
    from sensor_edge.server.storage import Batch
    from websockets.asyncio.server import serve

    opened, done = threading.Event(), threading.Event()

    def stalled_browser(port: int) -> None:  # in a thread of its own; reads nothing
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        with connect(f"ws://{HOST}:{port}/v1/live", sock=sock, max_queue=1, max_size=None,
                     open_timeout=10, close_timeout=1):
            opened.set()
            done.wait(30)

    def dropped(metrics: CollectorMetrics) -> float:
        return metrics.registry.get_sample_value("sensor_edge_live_clients_dropped_total")

    async def main() -> tuple[int, float]:
        metrics = CollectorMetrics()
        feed = LiveFeed(AgentRegistry(["pi-1"], []), metrics)
        feed.start()
        async with serve(feed.serve, HOST, 0, compression=None) as server:
            browser = threading.Thread(target=stalled_browser,
                                       args=(server.sockets[0].getsockname()[1],))
            browser.start()
            peak = 0
            try:
                assert await asyncio.to_thread(opened.wait, 10)
                for i in range(200):
                    rows = [(seq, "s", "m", 1.5, "C", 1_700_000_000.0 + seq)
                            for seq in range(i * 5000 + 1, (i + 1) * 5000 + 1)]
                    feed.publish([Batch("pi-1", "e", rows)], [5000])
                    for connection in server.connections:
                        peak = max(peak, connection.transport.get_write_buffer_size())
                    if dropped(metrics):
                        break
                    await asyncio.sleep(0.005)  # the loop writes what the socket takes
            finally:
                await feed.stop()  # cuts the dropped browser's socket at once
                done.set()
                await asyncio.to_thread(browser.join, 10)
            return peak, dropped(metrics)

    peak, count = asyncio.run(main())
    assert count == 1
    assert MAX_UNSENT_BYTES / 2 < peak <= MAX_UNSENT_BYTES
