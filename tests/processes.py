"""Real collector and agent processes for tests, on loopback, stopped by pid.

Every wait here is bounded; every process started is tracked so the fixture
can stop it whatever the test did.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

HOST = "127.0.0.1"
# Stand-ins for the hardware libraries (adafruit_dht, board) at their boundary.
FAKES = Path(__file__).parent / "fakes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the thing polled may not be up yet
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


def hardware_env(state_dir: Path, **scripts: str) -> dict[str, str]:
    """The environment a program needs to run the hardware backend off a Pi.

    tests/fakes first on the path (adafruit_dht, board), gpiozero's MockFactory for
    digital inputs, the fake DHTs' held pins and access log in ``state_dir`` (so a
    test can look from outside the process), and any FAKE_DHT_SCRIPT* ``scripts``.
    """
    state_dir.mkdir(exist_ok=True)
    return {"PYTHONPATH": os.pathsep.join([str(FAKES),
                                           *filter(None, [os.environ.get("PYTHONPATH")])]),
            "FAKE_DHT_DIR": str(state_dir), "GPIOZERO_PIN_FACTORY": "mock", **scripts}


class Process:
    """A program of ours run as `python -m MODULE`, with its output in a log file."""

    module = ""
    # The interpreter that runs it (a benchmark may point this at a clean venv's).
    executable = sys.executable

    def __init__(self, workdir: Path, config: dict[str, Any], name: str, args: tuple = (),
                 env: dict[str, str] | None = None):
        self.workdir = workdir
        self.name = name
        self.config = config
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.args = args
        self.env = env or {}  # on top of the test's own environment
        self.proc: subprocess.Popen | None = None
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def environment(self) -> dict[str, str]:
        """The environment it runs in (for running its module by hand, too)."""
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}

    def start(self) -> Process:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.executable, "-m", self.module, "--config", str(self.config_path), *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.environment(),
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM, and the exit code once it has stopped."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        if self.running():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Collector(Process):
    module = "sensor_edge.server"
    # Set for a collector serving https:// and wss:// (what the test's clients trust).
    client_tls: ssl.SSLContext | None = None

    def __init__(self, workdir: Path, agents: dict[str, str], name: str = "collector",
                 storage: str | None = None, port: int | None = None, **extra: Any):
        self.port = port or free_port()
        self.storage = storage or str(workdir / f"{name}.db")
        config = {
            "listen": {"host": HOST, "port": self.port},
            "storage": self.storage,
            "agents": [{"id": a, "token": t} for a, t in agents.items()],
            **extra,
        }
        super().__init__(workdir, config, name)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://{HOST}:{self.port}/v1/stream"

    def start(self, timeout: float = 15) -> Collector:
        super().start()
        wait_until(lambda: self.running() and self.get("/healthz")[0] == 200 or self._died(),
                   timeout, what=f"{self.name} to serve /healthz")
        return self

    def _died(self) -> bool:
        if not self.running():
            raise AssertionError(f"{self.name} exited: {self.log()[-2000:]}")
        return False

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.client_tls) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def agent_entry(self, agent_id: str) -> dict[str, Any]:
        """What /api/agents says of one agent (its last status under "status")."""
        return next(a for a in self.json("/api/agents")["agents"] if a["id"] == agent_id)

    def stored_seqs(self, agent: str, epoch: str | None = None) -> list[int]:
        """The seqs in storage for an agent (and epoch), read straight from the file."""
        return stored_seqs(self.storage, agent, epoch)


def stored_seqs(storage: str, agent: str, epoch: str | None = None) -> list[int]:
    if storage.startswith("postgres"):
        import psycopg

        with psycopg.connect(storage) as db:
            rows = db.execute(
                "SELECT seq FROM readings WHERE agent = %s AND (%s::text IS NULL OR epoch = %s) "
                "ORDER BY seq", (agent, epoch, epoch)).fetchall()
        return [r[0] for r in rows]
    with sqlite3.connect(storage, timeout=10) as db:
        rows = db.execute(
            "SELECT seq FROM readings WHERE agent = ? AND (? IS NULL OR epoch = ?) ORDER BY seq",
            (agent, epoch, epoch)).fetchall()
    return [r[0] for r in rows]


# The local server CI starts (trust auth); each test makes and drops its own database there.
POSTGRES_ADMIN_URL = os.environ.get("SENSOR_EDGE_TEST_POSTGRES",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")


class PostgresDatabases:
    """Throwaway databases on the local PostgreSQL server, named for this run."""

    def __init__(self, admin_url: str = POSTGRES_ADMIN_URL):
        self.admin_url = admin_url
        self.prefix = f"sensor_edge_test_{secrets.token_hex(4)}"
        self.made = 0

    def _admin(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as db:
            cursor = db.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def create(self) -> str:
        """A new, empty database; its URL."""
        self.made += 1
        name = f"{self.prefix}_{self.made}"
        self._admin(f'CREATE DATABASE "{name}"')
        return urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()

    def drop(self, url: str) -> None:
        # FORCE: a collector killed with -9 may leave its sessions behind for a moment.
        self._admin(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')

    def drop_all(self) -> None:
        """Drop every database this run made (those a test's own teardown missed)."""
        for (name,) in self._admin("SELECT datname FROM pg_database WHERE datname LIKE "
                                   f"'{self.prefix}%'"):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Agent(Process):
    """An agent on the mock backend, or with ``mock=False`` on the hardware backend's
    code path over the stand-ins of tests/fakes (see hardware_env; its fake DHTs keep
    their state in ``fake_dht_dir``)."""

    module = "sensor_edge.agent"

    def __init__(self, workdir: Path, agent_id: str, token: str, urls: list[str],
                 sensors: list[dict] | None = None, name: str | None = None,
                 mock: bool = True, **extra: Any):
        name = name or agent_id
        self.buffer_path = str(workdir / f"{name}.buffer.db")
        self.fake_dht_dir = None if mock else workdir / f"{name}.dht"
        collector = {"url": urls[0]} if len(urls) == 1 else {"urls": urls}
        config = {
            "agent": {"id": agent_id},
            "collector": {**collector, "token": token},
            "buffer": {"path": self.buffer_path},
            "backend": "mock" if mock else "hardware",
            "sensors": sensors if sensors is not None else FAST_SENSORS,
            **extra,
        }
        super().__init__(workdir, config, name, ("--mock",) if mock else (),
                         None if mock else hardware_env(self.fake_dht_dir))

    def epoch(self) -> str:
        with sqlite3.connect(self.buffer_path, timeout=10) as db:
            return db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]

    def last_seq(self) -> int:
        with sqlite3.connect(self.buffer_path, timeout=10) as db:
            return int(db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])

    def buffered(self) -> int:
        with sqlite3.connect(self.buffer_path, timeout=10) as db:
            return db.execute("SELECT count(*) FROM readings").fetchone()[0]


# Fast mock sensors: about 25 readings a second, failures included.
FAST_SENSORS = [
    {"name": "climate", "type": "dht22", "pin": 4, "interval": 2},
    {"name": "motion", "type": "motion", "pin": 17},
    {"name": "soc", "type": "cpu_temperature", "interval": 0.05},
]


def fill_sqlite(path: str, count: int, agent: str = "pi-1", epoch: str = "filled",
                t0: float = 1_700_000_000.0, step: float = 0.01) -> None:
    """`count` readings written straight into a collector's SQLite file (seq 1..count,
    ts t0 + seq * step), far faster than any agent could send them."""
    from sensor_edge.server.storage.sqlite import SQLiteStorage

    SQLiteStorage(path).close()  # the schema
    with sqlite3.connect(path, timeout=10) as db:
        db.executemany(
            "INSERT INTO readings (agent, epoch, seq, sensor, metric, value, unit, ts) "
            "VALUES (?, ?, ?, 'climate', 'temperature', ?, 'C', ?)",
            ((agent, epoch, seq, 20 + seq % 100 / 10, t0 + seq * step)
             for seq in range(1, count + 1)))
        db.execute("INSERT INTO epochs VALUES (?, ?, ?)", (agent, epoch, count))


def http_request(path: str, headers: list[tuple[str, str]], method: str = "GET",
                 version: str = "HTTP/1.1", body: bytes = b"") -> bytes:
    """A request's bytes, headers exactly as given (duplicates and all)."""
    lines = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def http_exchange(port: int, request: bytes, timeout: float = 15) -> tuple[int, dict, bytes]:
    """Send raw request bytes; read until the collector closes (or, after a 101, the head).
    Returns status, headers (names lowercased, last copy wins) and the raw body."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if data.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in data:
                break  # a WebSocket now: the answer was the head
    assert data.startswith(b"HTTP/1.1 "), f"no HTTP answer, got {data[:100]!r}"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), headers, body
