"""What every fault case checks at the end, and how it says what it did."""

from __future__ import annotations

import os
import random
import signal
import time

from processes import Agent, Collector, wait_until


def say(message: str) -> None:
    """Each case prints what it did and what it checked (shown with `pytest -s`, or on failure)."""
    print(f"[faults] {message}", flush=True)


def seeded() -> random.Random:
    """Random moments, reproducible: FAULT_SEED=<the printed seed> replays a run."""
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 2**32))
    say(f"random seed {seed}")
    return random.Random(seed)


def drain(collector: Collector, *agents: Agent, timeout: float = 60) -> dict[str, int]:
    """Stop the agents, then run them once more with no sensors until their buffers are empty.

    Afterwards the collector holds everything the buffers ever held, so the check
    can be exact: 1..N, N being the last seq each buffer handed out. Returns each N.
    """
    for agent in agents:
        if agent.running():
            agent.proc.send_signal(signal.SIGTERM)
    for agent in agents:
        code = agent.proc.wait(10)
        assert code == 0, f"exit {code}: " + agent.log()[-2000:]
    last, logged = {}, {}
    for agent in agents:
        agent.config["sensors"] = []
        agent.write_config()
        logged[agent.name] = len(agent.log())
        agent.start()
        last[agent.name] = agent.last_seq()
    for agent in agents:
        # Connected (so running, its signal handlers in place), and everything delivered.
        wait_until(lambda a=agent: "connected to" in a.log()[logged[a.name]:]
                   and a.buffered() == 0 and _stored_last(collector, a) >= last[a.name],
                   timeout, interval=0.2, what=f"{agent.name} to deliver its whole buffer")
    for agent in agents:
        assert agent.terminate() == 0
        assert agent.last_seq() == last[agent.name], "no new readings while draining"
    say(f"drained {', '.join(a.name for a in agents)}: restarted with no sensors until "
        "every buffer was empty")
    return last


def _stored_last(collector: Collector, agent: Agent) -> int:
    seqs = collector.stored_seqs(agent.name, agent.epoch())
    return seqs[-1] if seqs else 0


def assert_exactly_once(collector: Collector, agent: Agent, last: int,
                        missing: range = range(0)) -> None:
    """Stored seqs of the agent's epoch are exactly 1..last (less `missing`), each once."""
    epoch = agent.epoch()
    stored = collector.stored_seqs(agent.name, epoch)
    expected = [seq for seq in range(1, last + 1) if seq not in missing]
    duplicates = len(stored) - len(set(stored))
    gaps = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    assert duplicates == 0, f"{agent.name}: {duplicates} duplicates"
    assert not gaps, f"{agent.name}: {len(gaps)} seqs lost, first {gaps[:10]}"
    assert not extra, f"{agent.name}: {len(extra)} seqs stored that should not be: {extra[:10]}"
    assert stored == expected
    assert collector.stored_seqs(agent.name) == stored, "one epoch only"
    say(f"checked {agent.name} (epoch {epoch[:8]}): stored seqs are exactly 1..{last}"
        + (f" less the {len(missing)} dropped ({missing.start}..{missing.stop - 1})"
           if missing else "") + ", no gap, no duplicate")


def buffer_meta(agent: Agent, key: str) -> int:
    return getattr(agent.buffer(), key)


def oldest_buffered(agent: Agent) -> int | None:
    return agent.buffer().oldest
