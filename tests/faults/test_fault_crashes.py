"""kill -9, again and again: the collector while three agents stream, then an agent.
Stored seqs must come out exactly 1..N for every agent's epoch."""

from __future__ import annotations

import time

import pytest
from checks import assert_exactly_once, drain, say, seeded
from processes import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]
ROUNDS = 10


def test_collector_killed_10_times_while_3_agents_stream(make_collector, make_agent):
    rng = seeded()
    collector = make_collector()
    agents = [make_agent(collector, f"pi-{i}") for i in (1, 2, 3)]
    wait_until(lambda: all(collector.stored_seqs(a.name) for a in agents), 30,
               what="readings from all three agents")
    for round_ in range(1, ROUNDS + 1):
        # Every agent back and streaming, then a kill at a random moment of the stream.
        before = {a.name: len(collector.stored_seqs(a.name)) for a in agents}
        wait_until(lambda b=before: all(len(collector.stored_seqs(a.name)) > b[a.name]
                                        for a in agents), 30, interval=0.02,
                   what="all three agents to stream again")
        up, down = rng.uniform(0.0, 1.5), rng.uniform(0.1, 1.5)
        time.sleep(up)
        stored = sum(len(collector.stored_seqs(a.name)) for a in agents)
        collector.kill()
        time.sleep(down)
        collector.start()
        say(f"round {round_}: all 3 agents streaming, {up:.2f} s later kill -9 "
            f"({stored} readings stored so far), down {down:.2f} s, restarted")
    assert all(a.running() for a in agents), "the agents rode every crash out"
    progress = {a.name: len(collector.stored_seqs(a.name)) for a in agents}
    wait_until(lambda: all(len(collector.stored_seqs(a.name)) > progress[a.name] + 10
                           for a in agents), 30, what="delivery after the last restart")
    last = drain(collector, *agents)
    for agent in agents:
        assert_exactly_once(collector, agent, last[agent.name])
    assert "Traceback" not in collector.log() + "".join(a.log() for a in agents)


def test_agent_killed_10_times(make_collector, make_agent):
    rng = seeded()
    collector = make_collector()
    agent = make_agent(collector, "pi-1")
    wait_until(lambda: collector.stored_seqs("pi-1"), 20, what="first readings")
    epoch = agent.epoch()
    for round_ in range(1, ROUNDS + 1):
        up = rng.uniform(0.2, 2.0)  # a kill may land while it starts, reads, commits or sends
        time.sleep(up)
        last = agent.last_seq()
        agent.kill()
        agent.start()
        say(f"round {round_}: agent up {up:.2f} s (buffer at seq {last}), kill -9, restarted")
    restarted_at = agent.last_seq()
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > restarted_at + 10, 30,
               what="delivery after the last restart")
    last = drain(collector, agent)["pi-1"]
    assert agent.epoch() == epoch, "the epoch survives every kill"
    assert_exactly_once(collector, agent, last)
    assert "Traceback" not in agent.log() + collector.log()
