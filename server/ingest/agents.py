"""What the collector knows of each agent right now (connections, latest values)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sensor_edge.config.model import DEFAULT_STALE_AFTER
from sensor_edge.contract.protocol import Hello, Reading, Status
from sensor_edge.contract.status import AgentStatus


@dataclass
class AgentState:
    id: str
    connections: int = 0
    last_seen: float | None = None
    readings: int = 0
    epoch: str | None = None
    version: str | None = None
    # collector clock minus agent clock at hello, when the agent sent its clock
    clock_offset: float | None = None
    status: AgentStatus | None = None
    # The same status as the agent sent it (checked; absent fields stay absent): /api/agents.
    status_fields: dict[str, Any] | None = None
    # Live sessions per epoch: more than one is two machines on one buffer, or a
    # connection that died without the collector noticing yet.
    sessions: dict[str, int] = field(default_factory=dict)
    # (sensor, metric) -> (value, unit, ts)
    latest: dict[tuple[str, str], tuple[float, str, float]] = field(default_factory=dict)


_SENSOR, _METRIC, _TS = itemgetter(1), itemgetter(2), itemgetter(5)


class AgentRegistry:
    def __init__(self, configured: list[str], stored: list[dict[str, Any]],
                 stale_after: float = DEFAULT_STALE_AFTER):
        self._agents: dict[str, AgentState] = {}
        self.stale_after = stale_after
        # Called with (state, True) when an agent's first connection opens and
        # (state, False) when its last one closes (the MQTT bridge's availability).
        self.on_presence: Callable[[AgentState, bool], None] | None = None
        for agent_id in configured:
            self.get(agent_id)
        for row in stored:
            state = self.get(row["id"])
            state.last_seen = row["last_seen"]
            state.readings = row["readings"]

    def get(self, agent_id: str) -> AgentState:
        state = self._agents.get(agent_id)
        if state is None:
            state = self._agents[agent_id] = AgentState(agent_id)
        return state

    def connected(self, hello: Hello, now: float) -> AgentState:
        state = self.get(hello.agent)
        state.connections += 1
        state.sessions[hello.epoch] = state.sessions.get(hello.epoch, 0) + 1
        state.last_seen = now
        state.epoch = hello.epoch
        state.version = hello.version
        if hello.time is not None:
            state.clock_offset = now - hello.time
        if state.connections == 1 and self.on_presence is not None:
            self.on_presence(state, True)
        return state

    def status_received(self, agent_id: str, message: Status, now: float) -> None:
        """A `status` message, checked by the protocol: keep it, count it as a sign of
        life, refresh the clock offset."""
        state = self.get(agent_id)
        state.status = status = message.status
        state.status_fields = message.fields
        state.last_seen = now
        if status.time is not None:  # checked by the protocol: a finite float
            state.clock_offset = now - status.time

    def is_stale(self, state: AgentState, now: float) -> bool:
        """Silent (no hello, status or stored reading) for longer than `stale_after`."""
        return state.last_seen is None or now - state.last_seen > self.stale_after

    def disconnected(self, agent_id: str, epoch: str | None = None) -> None:
        state = self.get(agent_id)
        state.connections = max(0, state.connections - 1)
        if epoch is not None:
            left = state.sessions.get(epoch, 0) - 1
            if left > 0:
                state.sessions[epoch] = left
            else:
                state.sessions.pop(epoch, None)
        if state.connections == 0 and self.on_presence is not None:
            self.on_presence(state, False)

    def stored(self, agent_id: str, rows: list[Reading], added: int, now: float) -> None:
        """A batch of this agent's was committed (``added`` of its rows were new)."""
        state = self.get(agent_id)
        state.readings += added
        state.last_seen = now
        if len(rows) > 1:
            # Only the newest row per (sensor, metric) matters, found in C: a stable sort
            # by ts (one pass: rows come in ts order), then a dict keeps the last of each
            # key, the newest (of equal ts, the later seq). The loop below then steps
            # through a handful of rows, not the whole batch.
            by_ts = sorted(rows, key=_TS)
            rows = dict(zip(zip(map(_SENSOR, by_ts), map(_METRIC, by_ts)), by_ts)).values()
        latest = state.latest
        for _seq, sensor, metric, value, unit, ts in rows:
            known = latest.get((sensor, metric))
            if known is None or ts >= known[2]:
                latest[(sensor, metric)] = (value, unit, ts)

    def all(self) -> list[AgentState]:
        return [self._agents[k] for k in sorted(self._agents)]

    def as_json(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        return [
            {
                "id": s.id,
                "connected": s.connections > 0,
                "last_seen": s.last_seen,
                "readings": s.readings,
                "epoch": s.epoch,
                "version": s.version,
                "clock_offset": s.clock_offset,
                "stale": self.is_stale(s, now),
                "status": s.status_fields,
                # the newest value of each (sensor, metric) since the collector started
                "latest": [{"sensor": sensor, "metric": metric, "value": value, "unit": unit,
                            "ts": ts}
                           for (sensor, metric), (value, unit, ts) in sorted(s.latest.items())],
            }
            for s in self.all()
        ]
