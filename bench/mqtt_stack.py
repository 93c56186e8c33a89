"""The stack a user would assemble instead, run on the same load: the reference for issue 14.

Mosquitto, started on a free loopback port from a temporary config that keeps
its defaults (queue of 1,000 messages and 20 in flight per subscriber, no
persistence); one paho client per agent publishing the load generator's own
JSON batches at QoS 1, with at most `window` publishes awaiting their PUBACK
(paho's max_inflight_messages, and the publisher waits for room as the
load generator does); one paho subscriber (QoS 1) writing what it receives
into a `readings` table with the product's columns, primary key and indexes,
in one transaction per wake (WAL and synchronous=FULL on SQLite, as the
product; INSERT ... ON CONFLICT DO NOTHING on PostgreSQL).

Reported: readings stored per second inside the measured window, the latency
from publish to stored (p50/p99), what the broker dropped (PUBACKed minus
stored, and mosquitto's own $SYS counter), the subscriber's and broker's CPU
per stored reading. The subscriber runs in its own process:

    python bench/mqtt_stack.py subscribe --port 1883 --storage /tmp/mqtt.db --stats s.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_core import proc_stats  # noqa: E402
from loadgen import batch_frame, percentile  # noqa: E402
from processes import HOST, free_port, wait_until  # noqa: E402

TOPIC = "sensors/{agent}/readings"
TOPIC_FILTER = "sensors/+/readings"
EPOCH = "mqtt"
# The broker's counters read at the end (messages, not readings).
SYS_COUNTERS = ("received", "sent", "dropped")
# The product's `readings` table (server/storage/*.py at 3e8d824): the same rows
# cost the same to store, so the ratio compares what carries them there.
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    agent TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    sensor TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
    unit TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (agent, epoch, seq)
);
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (ts);
CREATE INDEX IF NOT EXISTS readings_by_agent_time ON readings (agent, ts);
"""
POSTGRES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS readings (
        agent TEXT COLLATE "C" NOT NULL, epoch TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL,
        sensor TEXT COLLATE "C" NOT NULL, metric TEXT COLLATE "C" NOT NULL,
        value DOUBLE PRECISION NOT NULL, unit TEXT COLLATE "C" NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (agent, epoch, seq))""",
    "CREATE INDEX IF NOT EXISTS readings_by_time ON readings (ts)",
    "CREATE INDEX IF NOT EXISTS readings_by_agent_time ON readings (agent, ts)",
)
# The subscriber reads for at most this long before it stores what it read.
READ_SECONDS = 0.05
# After SIGTERM it stops once the broker has sent nothing for this long.
IDLE_SECONDS = 1.0
COLUMNS = "agent, epoch, seq, sensor, metric, value, unit, ts"


class Broker:
    """mosquitto on a free loopback port, from a temporary config with its defaults."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        config = workdir / f"mosquitto-{self.port}.conf"
        # Only the listener (anonymous, as 2.0 requires it said) and $SYS every second
        # instead of 10, so the drop counter read at the end is current.
        config.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\n"
                          "sys_interval 1\n")
        self.log_path = workdir / f"mosquitto-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self._accepting, 10, what="mosquitto to listen")

    def _accepting(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log_path.read_text()[-1000:]}")
        with socket.socket() as s:
            return s.connect_ex((HOST, self.port)) == 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def counters(self, timeout: float = 5.0) -> dict[str, int]:
        """$SYS/broker/publish/messages/{received,sent,dropped}: retained, so read at once."""
        found: dict[str, int] = {}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sys")
        client.on_connect = lambda c, *_: c.subscribe("$SYS/broker/publish/messages/+")
        client.on_message = lambda c, u, m: found.__setitem__(m.topic.rsplit("/", 1)[1],
                                                              int(m.payload))
        client.connect(HOST, self.port)
        deadline = time.monotonic() + timeout
        while not set(SYS_COUNTERS) <= found.keys() and time.monotonic() < deadline:
            client.loop(0.1)
        client.disconnect()
        return found

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- the subscriber (its own process) ---------------------------------------------------

class SQLiteSink:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(SQLITE_SCHEMA)

    def store(self, rows: list[tuple]) -> int:
        before = self.db.total_changes
        self.db.execute("BEGIN")
        self.db.executemany(f"INSERT OR IGNORE INTO readings ({COLUMNS}) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.execute("COMMIT")
        return self.db.total_changes - before


class PostgresSink:
    def __init__(self, url: str):
        import psycopg

        self.db = psycopg.connect(url)
        for statement in POSTGRES_SCHEMA:
            self.db.execute(statement)
        self.db.commit()

    def store(self, rows: list[tuple]) -> int:
        with self.db.cursor() as cursor:
            cursor.executemany(f"INSERT INTO readings ({COLUMNS}) VALUES "
                               "(%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)
            stored = cursor.rowcount
        self.db.commit()
        return stored


def open_sink(storage: str) -> SQLiteSink | PostgresSink:
    return PostgresSink(storage) if storage.startswith("postgres") else SQLiteSink(storage)


def subscribe(port: int, storage: str, stats_path: str) -> None:
    """Store every message until SIGTERM, and what the broker still holds for us after it;
    then write when what was stored to `stats_path`.

    One thread: read what the socket holds (for at most READ_SECONDS), store it in
    one transaction, repeat. While it commits it reads nothing, so TCP pushes back
    on the broker, whose queue limit then decides what is dropped. (paho's network
    thread feeding a writer thread through a bounded queue stored as many rows
    here, with higher latency; through an unbounded one, 5x fewer: the threads
    fight for the GIL, which sqlite3 releases and takes back for every row.)
    """
    pending: list[list[tuple]] = []
    last_message = [time.monotonic()]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_message(client, userdata, message) -> None:
        agent = message.topic.split("/")[1]
        pending.append([(agent, EPOCH, r["seq"], r["sensor"], r["metric"], r["value"], r["unit"],
                         r["ts"]) for r in json.loads(message.payload)["readings"]])
        last_message[0] = time.monotonic()

    sink = open_sink(storage)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
    client.on_connect = lambda c, *_: c.subscribe(TOPIC_FILTER, qos=1)
    client.on_subscribe = lambda *_: print("ready", flush=True)
    client.on_message = on_message
    client.connect(HOST, port)
    sock = client.socket()
    commits: list[tuple[float, int]] = []  # (wall time, rows stored)
    latencies: list[tuple[float, float]] = []  # per message: (published, published to stored)
    next_misc = time.monotonic()
    while not (stop.is_set() and time.monotonic() - last_message[0] > IDLE_SECONDS):
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            until = time.monotonic() + READ_SECONDS
            while time.monotonic() < until:
                before = len(pending)
                client.loop_read()  # one packet at most
                # Its PUBACK now: the broker sends at most 20 messages awaiting one.
                client.loop_write()
                if len(pending) == before and not _has_data(sock):
                    break
        if time.monotonic() >= next_misc:
            client.loop_misc()  # keepalive
            next_misc = time.monotonic() + 1
        if not pending:
            continue
        stored = sink.store([row for rows in pending for row in rows])
        now = time.time()
        commits.append((now, stored))
        # A batch's readings carry the time it was built and published.
        latencies.extend((rows[0][7], now - rows[0][7]) for rows in pending)
        pending.clear()
    client.disconnect()
    Path(stats_path).write_text(json.dumps({"commits": commits, "latencies": latencies}))


def _has_data(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


class Subscriber:
    """`mqtt_stack.py subscribe` in its own process, as the collector runs in its own."""

    def __init__(self, workdir: Path, port: int, storage: str):
        self.stats_path = workdir / f"subscriber-{port}.json"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "subscribe", "--port", str(port),
             "--storage", storage, "--stats", str(self.stats_path)], stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().strip()
        if line != b"ready":
            self.proc.kill()
            raise RuntimeError(f"the MQTT subscriber did not start ({line!r})")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 120) -> dict:
        """Stop it once it has stored what it still receives; its commits and latencies."""
        self.proc.terminate()
        self.proc.wait(timeout)
        return json.loads(self.stats_path.read_text())


# --- the publishers (the load generator's process) --------------------------------------

@dataclass
class Published:
    sent: int = 0  # readings handed to paho
    acked: int = 0  # readings PUBACKed by the broker
    connected: int = 0
    last: dict[str, int] = field(default_factory=dict)  # agent -> highest seq PUBACKed


class Publisher:
    """One agent's paho client, driven by the asyncio loop (paho's external-loop API)."""

    def __init__(self, agent: str, port: int, batch: int, window: int, totals: Published):
        self.agent, self.batch, self.window, self.totals = agent, batch, window, totals
        self.topic = TOPIC.format(agent=agent)
        self.in_flight: dict[int, int] = {}  # mid -> the batch's last seq
        self.next_seq = 1
        self.sending = False
        self.writing = False
        self.loop = asyncio.get_running_loop()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agent)
        self.client.max_inflight_messages_set(window)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect(HOST, port, keepalive=60)
        self.sock = self.client.socket()
        self.loop.add_reader(self.sock, self._readable)

    def _on_connect(self, *_) -> None:
        self.totals.connected += 1

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        last = self.in_flight.pop(mid, None)
        if last is not None:
            self.totals.acked += self.batch
            self.totals.last[self.agent] = max(last, self.totals.last.get(self.agent, 0))

    def _readable(self) -> None:
        self.client.loop_read()
        self.pump()

    def _writable(self) -> None:
        self.client.loop_write()
        if not self.client.want_write():
            self.loop.remove_writer(self.sock)
            self.writing = False

    def pump(self) -> None:
        """Publish until `window` batches await their PUBACK, then write them out."""
        while self.sending and len(self.in_flight) < self.window:
            info = self.client.publish(
                self.topic, batch_frame(self.next_seq, self.batch, time.time()), qos=1)
            self.next_seq += self.batch
            self.in_flight[info.mid] = self.next_seq - 1
            self.totals.sent += self.batch
        if self.client.want_write():
            self.client.loop_write()
        if self.client.want_write() and not self.writing:
            self.loop.add_writer(self.sock, self._writable)
            self.writing = True

    def close(self) -> None:
        self.client.disconnect()
        self.loop.remove_reader(self.sock)
        if self.writing:
            self.loop.remove_writer(self.sock)


async def publish_load(port: int, agents: list[str], batch: int, window: int, seconds: float,
                       warmup: float, at_start: Callable[[], None],
                       at_end: Callable[[], None]) -> tuple[Published, tuple[float, float]]:
    """Every agent connects, then publishes for `warmup` + `seconds`; the measured
    window in wall-clock time (the subscriber's clock is the same machine's)."""
    loop = asyncio.get_running_loop()
    totals = Published()
    publishers = [Publisher(a, port, batch, window, totals) for a in agents]

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(1)
            for p in publishers:
                p.client.loop_misc()

    pinger = asyncio.create_task(keepalive())
    try:
        deadline = loop.time() + 60
        while totals.connected < len(publishers) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for p in publishers:
            p.sending = True
            p.pump()
        start = time.time() + warmup
        await asyncio.sleep(warmup)
        at_start()
        await asyncio.sleep(max(0.0, start + seconds - time.time()))
        at_end()
        for p in publishers:
            p.sending = False
        deadline = loop.time() + 30
        while any(p.in_flight for p in publishers) and loop.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        pinger.cancel()
        for p in publishers:
            p.close()
    return totals, (start, start + seconds)


@dataclass
class StackResult:
    published: Published
    stored: int  # rows stored, all told
    measured: int  # rows stored inside the window
    seconds: float
    latencies: list[float]  # publish to stored, of messages published inside the window
    broker: dict[str, int]
    cpu_seconds: float  # subscriber + broker, inside the window
    publisher_seconds: float  # the publishers' (the load generator's) CPU, inside the window

    @property
    def rate(self) -> float:
        return self.measured / self.seconds

    @property
    def lost(self) -> int:
        return self.published.acked - self.stored

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)

    def us_per_reading(self) -> float:
        return self.cpu_seconds / max(1, self.measured) * 1e6

    def summary(self) -> str:
        return (f"{self.measured:,} readings stored in {self.seconds:.1f} s = {self.rate:,.0f}/s; "
                f"publish to stored p50 {self.percentile(50) * 1000:.1f} ms, "
                f"p99 {self.percentile(99) * 1000:.1f} ms; {self.published.acked:,} of "
                f"{self.published.sent:,} sent PUBACKed, {self.stored:,} stored, "
                f"{self.lost:,} lost")


def stored_rows(storage: str) -> int:
    sql = "SELECT count(*) FROM readings"
    if storage.startswith("postgres"):
        import psycopg

        with psycopg.connect(storage) as db:
            return db.execute(sql).fetchone()[0]
    with sqlite3.connect(storage, timeout=30) as db:
        return db.execute(sql).fetchone()[0]


def run_stack(workdir: Path, storage: str, agents: list[str], batch: int, window: int,
              seconds: float, warmup: float) -> StackResult:
    """Broker, subscriber and publishers on this load; stopped before returning."""
    broker = Broker(workdir)
    subscriber = None
    try:
        subscriber = Subscriber(workdir, broker.port, storage)
        pids = [subscriber.pid, broker.pid]
        # (subscriber + broker, the publishers: this process) at the window's start and end
        cpu: list[tuple[float, float]] = []

        def mark() -> None:
            cpu.append((sum(proc_stats(pid)[1] for pid in pids), proc_stats(os.getpid())[1]))

        published, (start, end) = asyncio.run(publish_load(
            broker.port, agents, batch, window, seconds, warmup, at_start=mark, at_end=mark))
        stats = subscriber.stop()  # once the broker has nothing more for it
        subscriber = None
        broker_counters = broker.counters()
    finally:
        if subscriber is not None:
            subscriber.proc.kill()
        broker.stop()
    measured = sum(n for t, n in stats["commits"] if start <= t <= end)
    latencies = [lat for published_at, lat in stats["latencies"] if start <= published_at <= end]
    return StackResult(published, stored_rows(storage), measured, end - start, latencies,
                       broker_counters, cpu[1][0] - cpu[0][0], cpu[1][1] - cpu[0][1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subscribe", help="the subscriber: store what the broker delivers")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--storage", required=True, help="a SQLite path or a postgresql:// URL")
    s.add_argument("--stats", required=True, help="where to write commits and latencies at exit")
    args = p.parse_args()
    subscribe(args.port, args.storage, args.stats)


if __name__ == "__main__":
    main()
