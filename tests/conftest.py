"""Fixtures that start real collectors and agents and always stop them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import Agent, Collector, PostgresDatabases, Process

TOKENS = {f"pi-{i}": f"token-for-pi-{i}-0123456789" for i in range(1, 6)}

# Runs a test once per storage backend: make_collector (and the `storage_url`
# fixture) then use a SQLite file, or a fresh PostgreSQL database.
BOTH_BACKENDS = pytest.mark.parametrize("storage_backend", ["sqlite", "postgres"], indirect=True)
POSTGRES_ONLY = pytest.mark.parametrize("storage_backend", ["postgres"], indirect=True)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture
def storage_backend(request) -> str:
    """"sqlite" unless the test is parametrised with BOTH_BACKENDS."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def storage_url(request, storage_backend: str, tmp_path: Path) -> Iterator[str]:
    """Where this test's collectors store: a SQLite file, or a database made for the test."""
    if storage_backend == "sqlite":
        yield str(tmp_path / "collector.db")
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create()
    try:
        yield url
    finally:
        databases.drop(url)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def make_collector(storage_url: str, storage_backend: str, tmp_path: Path,
                   processes: list[Process]):
    """make_collector(**config) -> a started Collector on a free loopback port.

    With BOTH_BACKENDS, the postgres run's collectors share the test's database
    (set up before `processes`, so it is dropped only after they are stopped).
    """

    def make(agents: dict[str, str] | None = None, start: bool = True, **kwargs) -> Collector:
        if storage_backend != "sqlite":
            kwargs.setdefault("storage", storage_url)
        collector = Collector(tmp_path, agents if agents is not None else TOKENS, **kwargs)
        processes.append(collector)
        return collector.start() if start else collector

    return make


@pytest.fixture
def make_agent(tmp_path: Path, processes: list[Process]):
    """make_agent(collector, agent_id) -> a started Agent streaming to it (the mock
    backend; mock=False for the hardware backend over tests/fakes)."""

    def make(collector: Collector | None, agent_id: str = "pi-1", start: bool = True,
             urls: list[str] | None = None, token: str | None = None, **kwargs) -> Agent:
        agent = Agent(tmp_path, agent_id, token or TOKENS[agent_id],
                      urls or [collector.stream_url], **kwargs)
        processes.append(agent)
        return agent.start() if start else agent

    return make
