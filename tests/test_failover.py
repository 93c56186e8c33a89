"""Several collectors on one PostgreSQL database: agents fail over through
`collector.urls`, and the store holds every seq exactly once."""

from __future__ import annotations

import json
import re
import threading

from conftest import POSTGRES_ONLY, TOKENS
from processes import Collector, wait_until
from websockets.sync.client import connect

pytestmark = POSTGRES_ONLY


def contiguous(seqs: list[int]) -> bool:
    return bool(seqs) and seqs == list(range(1, len(seqs) + 1))


def connected(collector: Collector) -> set[str]:
    return {a["id"] for a in collector.json("/api/agents")["agents"] if a["connected"]}


def counter(collector: Collector, name: str) -> float:
    text = collector.get("/metrics")[1].decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def test_agents_of_a_killed_collector_move_to_the_other_and_lose_nothing(
        make_collector, make_agent):
    a = make_collector(name="collector-a")
    b = make_collector(name="collector-b")
    on_a = [make_agent(None, f"pi-{i}", urls=[a.stream_url, b.stream_url]) for i in (1, 2)]
    on_b = [make_agent(None, f"pi-{i}", urls=[b.stream_url, a.stream_url]) for i in (3, 4)]
    agents = on_a + on_b
    wait_until(lambda: all(len(a.stored_seqs(x.name)) > 20 for x in agents), 30,
               what="readings from all four agents")
    assert connected(a) == {"pi-1", "pi-2"} and connected(b) == {"pi-3", "pi-4"}

    a.kill()  # kill -9 mid-stream: acks in flight are lost, commits may or may not be done
    marks = {x.name: x.last_seq() for x in on_a}
    wait_until(lambda: connected(b) == {"pi-1", "pi-2", "pi-3", "pi-4"}, 30,
               what="pi-1 and pi-2 to fail over to collector-b")
    wait_until(lambda: all(len(b.stored_seqs(x.name)) > marks[x.name] + 20 for x in on_a), 30,
               what="pi-1 and pi-2 to go on storing through collector-b")

    for x in agents:
        assert x.terminate() == 0
    for x in agents:
        stored = b.stored_seqs(x.name, x.epoch())
        assert contiguous(stored), f"{x.name}: a gap or a duplicate in the stored seqs"
        assert stored[-1] + x.buffered() == x.last_seq()
        assert b.stored_seqs(x.name) == stored  # one epoch: nothing was started over
    assert "Traceback" not in "".join(x.log() for x in agents) + b.log()


def test_the_same_batches_through_two_collectors_at_once_are_stored_once(make_collector,
                                                                        storage_url):
    # (The server trusts 127.0.0.1, so a password is accepted and ignored: never logged.)
    with_password = storage_url.replace("postgres@", "postgres:hunter2-secret@", 1)
    assert with_password != storage_url
    collectors = [make_collector(name="collector-a"),
                  make_collector(name="collector-b", storage=with_password)]
    headers = {"Authorization": f"Bearer {TOKENS['pi-5']}"}
    hello = json.dumps({"type": "hello", "agent": "pi-5", "epoch": "twice", "version": "t"})
    frames = [json.dumps({"type": "readings", "readings": [
        {"seq": seq, "sensor": "s", "metric": "m", "value": seq, "unit": "", "ts": 1.7e9 + seq}
        for seq in range(first, first + 100)]}) for first in range(1, 2001, 100)]
    last_acks: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=20)

    def send(collector: Collector) -> None:
        try:
            with connect(collector.stream_url, additional_headers=headers,
                         open_timeout=10) as ws:
                ws.send(hello)
                assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
                start.wait()
                for frame in frames:
                    ws.send(frame)
                acked = 0
                while acked < 2000:
                    acked = json.loads(ws.recv(timeout=20))["seq"]
                last_acks.append(acked)
        except BaseException as e:  # reported below; a thread can't fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=send, args=(c,)) for c in collectors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert last_acks == [2000, 2000]  # both acknowledged everything...
    assert collectors[0].stored_seqs("pi-5") == list(range(1, 2001))  # ...stored once
    stored = sum(counter(c, "sensor_edge_readings_stored_total") for c in collectors)
    duplicate = sum(counter(c, "sensor_edge_readings_duplicate_total") for c in collectors)
    assert (stored, duplicate) == (2000, 2000)
    assert "postgres:***@" in collectors[1].log() and "hunter2" not in collectors[1].log()


def test_database_connections_cut_under_a_running_collector_cost_no_reading(
        make_collector, make_agent, storage_url):
    import psycopg

    collector = make_collector()
    agent = make_agent(collector, "pi-1")
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 20, 20, what="first readings")
    with psycopg.connect(storage_url, autocommit=True) as db:
        cut = db.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                         ).fetchone()[0]
    assert cut >= 1  # the collector's pooled connections
    mark = agent.last_seq()
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > mark + 20, 30,
               what="storing to go on over new connections")
    assert agent.terminate() == 0
    stored = collector.stored_seqs("pi-1", agent.epoch())
    assert contiguous(stored)
    assert stored[-1] + agent.buffered() == agent.last_seq()
    assert "Traceback" not in collector.log() + agent.log()


def test_a_database_outage_loses_nothing(make_collector, make_agent, storage_url,
                                         postgres_databases):
    collector = make_collector()
    agent = make_agent(collector, "pi-1")
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 20, 20, what="first readings")
    name = storage_url.rsplit("/", 1)[1]
    postgres_databases._admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    postgres_databases._admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              f"WHERE datname = '{name}'")
    try:
        mark = agent.last_seq()
        # Past the pool's wait for a connection, commits fail; nothing is acked.
        wait_until(lambda: "failed: couldn't get a connection" in collector.log()
                   and agent.last_seq() > mark + 30, 30,
                   what="commits to fail while the agent buffers")
        assert collector.running()
    finally:
        postgres_databases._admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    back = agent.last_seq()
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > back + 10, 60,
               what="delivery once the database is back")
    assert agent.terminate() == 0
    stored = collector.stored_seqs("pi-1", agent.epoch())
    gaps = [(a, b) for a, b in zip(stored, stored[1:]) if b != a + 1]
    assert contiguous(stored), (gaps, len(stored), agent.last_seq(), agent.buffered())
    assert stored[-1] + agent.buffered() == agent.last_seq()
    assert "Traceback" not in collector.log() + agent.log()
