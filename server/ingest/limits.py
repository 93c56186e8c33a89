"""What one peer may cost the collector: a reading rate, failed logins, connections.

Plain objects with the clock passed in, so they are tested with function
calls; the connection and HTTP code decide what to do with their answers
(slow a stream down, delay a 401, refuse a handshake with 503).
"""

from __future__ import annotations

from collections import OrderedDict


class ReadingRate:
    """A token bucket of readings for one connection.

    A batch always goes through; what it takes beyond the bucket becomes a
    delay before the next frame is read, so a fast agent is slowed by
    backpressure rather than refused (refusing would only make it resend).
    """

    def __init__(self, per_second: float, burst: float, now: float):
        self.per_second = per_second
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, readings: int, now: float) -> float:
        """Spend ``readings``; return the seconds to wait before reading more (0: none)."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        self._tokens -= readings
        return 0.0 if self._tokens >= 0 else -self._tokens / self.per_second


class FailedLogins:
    """Bad tokens per address, to slow down whoever keeps guessing.

    The first ``free`` failures within ``forget_after`` seconds cost nothing (a
    typo, an agent retrying once); each one after that doubles the delay
    before the 401, up to ``max_delay``. The table is bounded: past
    ``max_addresses`` the least recently seen address is forgotten.
    """

    def __init__(self, max_delay: float, *, free: int = 5, first_delay: float = 0.25,
                 forget_after: float = 600.0, max_addresses: int = 4096):
        self.max_delay = max_delay
        self.free = free
        self.first_delay = first_delay
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failed(self, address: str, now: float) -> float:
        """Count a bad token from ``address``; return the seconds to wait before answering."""
        count, last = self._failures.pop(address, (0, now))
        if now - last > self.forget_after:
            count = 0
        count += 1
        self._failures[address] = (count, now)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
        if count <= self.free or self.max_delay <= 0:
            return 0.0
        return min(self.max_delay, self.first_delay * 2 ** min(count - self.free - 1, 32))

    def __len__(self) -> int:
        return len(self._failures)


class ConnectionBudget:
    """Open WebSocket connections, counted in two budgets that never mix.

    Agents (``/v1/stream``) may hold ``max_agents`` in all and ``per_agent`` each;
    browsers (``/v1/live``) ``max_live``. Browsers need no token by default, so
    they get a budget of their own: however many there are, agents still get in.
    A handshake takes its place before it is answered and gives it back when its
    connection ends, so a burst of handshakes cannot overshoot.
    """

    def __init__(self, max_agents: int, per_agent: int, max_live: int):
        self.max_agents = max_agents
        self.per_agent = per_agent
        self.max_live = max_live
        self.agents = 0
        self.live = 0
        self._held: dict[str, int] = {}

    def take_agent(self, agent_id: str) -> str | None:
        """Count one more connection of this agent; None, or the limit it would pass."""
        if self.agents >= self.max_agents:
            return "max_connections"
        held = self._held.get(agent_id, 0)
        if held >= self.per_agent:
            return "max_connections_per_agent"
        self._held[agent_id] = held + 1
        self.agents += 1
        return None

    def release_agent(self, agent_id: str) -> None:
        held = self._held.get(agent_id, 0) - 1
        if held > 0:
            self._held[agent_id] = held
        else:
            self._held.pop(agent_id, None)
        self.agents = max(0, self.agents - 1)

    def held(self, agent_id: str) -> int:
        return self._held.get(agent_id, 0)

    def take_live(self) -> str | None:
        """Count one more browser; None, or the limit it would pass."""
        if self.live >= self.max_live:
            return "max_live_connections"
        self.live += 1
        return None

    def release_live(self) -> None:
        self.live = max(0, self.live - 1)
