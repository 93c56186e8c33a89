"""What one peer may cost the collector: a reading rate, and failed logins.

Plain objects with the clock passed in, so they are tested with function
calls; the connection and HTTP code decide what to do with their answers
(slow a stream down, delay a 401).
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
