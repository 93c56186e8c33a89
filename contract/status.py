"""The agent's `status` message, typed: what the agent writes and the collector reads.

The agent builds an :class:`AgentStatus` every few seconds; on the wire it is
the fields of a `status` message, which the collector's protocol checks
against :data:`~.protocol.STATUS_FIELDS` (a field of the wrong type is
dropped, an unknown one ignored) and turns back into an :class:`AgentStatus`.
A field the agent did not send, or that was dropped, is None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class SensorHealth:
    """How one sensor's reads are going."""

    good: int | None = None
    failed: int | None = None
    consecutive_failures: int | None = None
    failures: dict[str, int] | None = None  # failed reads by kind ("checksum", "no_ack", ...)
    last_error: str | None = None
    held_back: int | None = None  # readings its filters kept from the buffer


@dataclass(frozen=True)
class AgentStatus:
    """How an agent is doing (docs/operations.md lists the fields)."""

    time: float | None = None  # the agent's clock, Unix seconds
    uptime: float | None = None
    version: str | None = None
    backend: str | None = None
    buffer_depth: int | None = None
    buffer_oldest_age: float | None = None
    dropped: int | None = None
    sent: int | None = None
    cpu_temperature: float | None = None
    clock_synced: bool | None = None
    sensors: dict[str, SensorHealth] = field(default_factory=dict)

    def to_fields(self) -> dict[str, Any]:
        """The fields of a `status` message (and of `status` in `/api/agents`)."""
        return asdict(self)

    @classmethod
    def from_fields(cls, checked: dict[str, Any]) -> AgentStatus:
        """From fields the protocol has checked; missing ones are None."""
        known = {f.name for f in fields(cls)} - {"sensors"}
        sensors = {name: SensorHealth(**counts)
                   for name, counts in (checked.get("sensors") or {}).items()}
        return cls(**{k: v for k, v in checked.items() if k in known}, sensors=sensors)
