"""Fixtures that start real collectors and agents and always stop them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import Agent, Collector, Process

TOKENS = {f"pi-{i}": f"token-for-pi-{i}-0123456789" for i in range(1, 6)}


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def make_collector(tmp_path: Path, processes: list[Process]):
    """make_collector(**config) -> a started Collector on a free loopback port."""

    def make(agents: dict[str, str] | None = None, start: bool = True, **kwargs) -> Collector:
        collector = Collector(tmp_path, agents if agents is not None else TOKENS, **kwargs)
        processes.append(collector)
        return collector.start() if start else collector

    return make


@pytest.fixture
def make_agent(tmp_path: Path, processes: list[Process]):
    """make_agent(collector, agent_id) -> a started mock Agent streaming to it."""

    def make(collector: Collector | None, agent_id: str = "pi-1", start: bool = True,
             urls: list[str] | None = None, token: str | None = None, **kwargs) -> Agent:
        agent = Agent(tmp_path, agent_id, token or TOKENS[agent_id],
                      urls or [collector.stream_url], **kwargs)
        processes.append(agent)
        return agent.start() if start else agent

    return make
