"""The alerts stage: the engine fed from commits and a tick, transitions stored, sent.

Runs on the event loop and only hands work on: the engine's judging is a dict
lookup per stored reading, the compare-and-set of a transition runs on the
storage writer's thread, and notifications go to the notifier's threads.
Docs: docs/alerts.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from sensor_edge.config.model import AlertRule
from sensor_edge.server.outputs.alerts import metrics
from sensor_edge.server.outputs.alerts.engine import FIRED, FIRING, RESOLVED, AlertEngine, SeriesKey, Transition, message
from sensor_edge.server.outputs.alerts.notifier import Delivery, Notifier

if TYPE_CHECKING:
    from sensor_edge.server.ingest.agents import AgentRegistry
    from sensor_edge.server.outputs.mqtt import MQTTBridge
    from sensor_edge.server.storage import Batch, Storage

log = logging.getLogger("sensor_edge.collector.alerts")

# How often stale rules are judged and the stored states re-read (another collector
# on the same database may have fired or resolved a series meanwhile); more often
# with a short stale_after, so a silence is reported within a quarter of it.
TICK_SECONDS = 5.0
MIN_TICK_SECONDS = 0.25
# A transition that could not be stored is tried again after 1 s, doubling up to this.
STORE_RETRY_MAX = 30.0
# At stop: how long transitions may take to be stored, and sends in progress to finish.
STOP_STORE_SECONDS, STOP_SEND_SECONDS = 1.0, 1.0


class Alerts:
    def __init__(self, rules: Sequence[AlertRule], stale_after: float,
                 registry: CollectorRegistry):
        self.engine = AlertEngine(rules)
        self._stale_after = stale_after
        self._tick_seconds = min(TICK_SECONDS, max(MIN_TICK_SECONDS, stale_after / 4))
        counters = metrics.register(registry, self.engine)
        self._notifier = Notifier(counters)
        self._storage: Storage | None = None
        self._writer: Executor | None = None
        self._read: Callable[..., Awaitable[Any]] | None = None
        self._agents: AgentRegistry | None = None
        self._entities: Any = None  # Home Assistant's view, with mqtt: on
        self._transitions: asyncio.Queue[Transition] = asyncio.Queue()
        self._in_flight: Counter[SeriesKey] = Counter()  # transitions not yet stored
        self._stores = 0  # transitions stored so far: a read older than one is not adopted
        self._tasks: list[asyncio.Task[None]] = []
        self._started = time.time()

    async def start(self, storage: Storage, writer: Executor,
                    read: Callable[..., Awaitable[Any]], agents: AgentRegistry,
                    mqtt: MQTTBridge | None = None) -> None:
        """Load the stored states, send what a previous run left unsent, start judging."""
        if not self.engine.rules:
            return
        self._storage, self._writer, self._read, self._agents = storage, writer, read, agents
        self._started = time.time()
        for row in self._adopt(await read(storage.alert_states)):
            rule, agent, sensor, metric, state, since, value, _notified = row
            key = SeriesKey(rule, agent, sensor, metric)
            log.info("alert %s for %s: sending the %s notification a previous run left "
                     "unsent", rule, agent, state)
            self._deliver(self.engine.rules[rule], key, state, since, value)
        if mqtt is not None:
            from sensor_edge.server.outputs.alerts.home_assistant import AlertEntities

            self._entities = AlertEntities(mqtt, self.engine)
        self._tasks = [asyncio.create_task(self._store_transitions(), name="alerts-store"),
                       asyncio.create_task(self._tick(), name="alerts-tick")]
        log.info("%d alert rules loaded", len(self.engine.rules))

    def stored(self, batches: Sequence[Batch], added: Sequence[int]) -> None:
        """Judge what one commit stored; runs on the event loop and never blocks."""
        if not self.engine.watches_readings or not self._tasks:
            return
        for batch, count in zip(batches, added):
            if count:
                self._queue(self.engine.readings(batch.agent, batch.new_rows(count)))

    def as_json(self) -> list[dict[str, Any]]:
        """`GET /api/alerts`: every series a rule has judged."""
        return [{"name": s.key.rule, "agent": s.key.agent, "sensor": s.key.sensor,
                 "metric": s.key.metric, "state": s.state, "since": s.since, "value": s.latest}
                for s in self.engine.series()]

    async def stop(self) -> None:
        """Store the transitions already judged (briefly), stop sending. Anything unsent
        stays marked so in storage and goes out at the next start."""
        if not self._tasks:
            return
        store, tick = self._tasks
        tick.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_STORE_SECONDS
        while self._in_flight and loop.time() < deadline:
            await asyncio.sleep(0.02)
        store.cancel()
        await asyncio.gather(store, tick, return_exceptions=True)
        self._tasks = []
        unsent = await loop.run_in_executor(None, self._notifier.stop, STOP_SEND_SECONDS)
        if unsent:
            log.warning("%d alert notifications not sent yet; they go out at the next start",
                        unsent)

    # -- on the event loop -------------------------------------------------------------

    def _queue(self, transitions: Iterable[Transition]) -> None:
        for transition in transitions:
            self._in_flight[transition.key] += 1
            self._transitions.put_nowait(transition)

    def _adopt(self, rows: Iterable[tuple]) -> list[tuple]:
        """Take stored states as the engine's (except series with a transition of ours on
        the way to storage); the rows whose notification was never confirmed sent."""
        unsent = []
        for row in rows:
            rule, agent, sensor, metric, state, since, value, notified = row
            key = SeriesKey(rule, agent, sensor, metric)
            if rule not in self.engine.rules or self._in_flight[key]:
                continue
            self.engine.adopt(key, state, since, value)
            if not notified:
                unsent.append(row)
        return unsent

    async def _store_transitions(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = await self._transitions.get()
            delay = 1.0
            while True:
                try:
                    won = await loop.run_in_executor(
                        self._writer, self._storage.alert_transition, t.key, t.old, t.new, t.ts,
                        t.value, not t.rule.notify)
                    break
                except Exception as e:  # the database is down: keep the order, try again
                    log.error("could not store alert %s %s for %s: %s; retrying in %g s",
                              t.rule.name, t.event, t.key.agent, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, STORE_RETRY_MAX)
            self._stores += 1
            self._in_flight[t.key] -= 1
            if self._in_flight[t.key] <= 0:
                del self._in_flight[t.key]
            if won:
                log.info("alert %s %s: %s %s %s = %s", t.rule.name, t.event, t.key.agent,
                         t.key.sensor, t.key.metric, t.value)
                self._deliver(t.rule, t.key, t.new, t.ts, t.value)
            # else: another collector on this database stored (and notifies) it first
            if self._entities is not None:
                self._entities.refresh()

    def _deliver(self, rule: AlertRule, key: SeriesKey, state: str, since: float,
                 value: float | None) -> None:
        event = FIRED if state == FIRING else RESOLVED
        title, body = message(rule, key, event, value, self._stale_after)
        storage, writer = self._storage, self._writer

        def done() -> None:  # on a notifier thread, once every receiver has it
            with contextlib.suppress(RuntimeError):  # the writer shut down: at the next start
                writer.submit(storage.alert_notified, key, state, since)

        if rule.notify:
            self._notifier.send(Delivery(title, body, state == FIRING, rule.notify, done))

    async def _tick(self) -> None:
        while True:
            try:
                if self.engine.watches_agents:
                    await self._judge_silences()
                stores = self._stores
                rows = await self._read(self._storage.alert_states)
                if stores == self._stores:
                    self._adopt(rows)
                if self._entities is not None:
                    self._entities.refresh()
            except Exception as e:  # a database hiccup: next tick
                log.warning("alerts: could not read agents or alert states: %s", e)
            await asyncio.sleep(self._tick_seconds)

    async def _judge_silences(self) -> None:
        # Another collector on the same database may hear an agent this one does not:
        # storage's last_seen counts too.
        last_seen: dict[str, float | None] = {s.id: s.last_seen for s in self._agents.all()}
        for row in await self._read(self._storage.agents):
            mine = last_seen.get(row["id"])
            last_seen[row["id"]] = row["last_seen"] if mine is None else max(mine,
                                                                             row["last_seen"])
        self._queue(self.engine.agents_seen(last_seen, self._stale_after, time.time(),
                                            listening_since=self._started))
