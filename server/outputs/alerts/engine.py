"""The alert rules' state machine: readings and agent silences in, transitions out.

Pure and I/O-free: no asyncio, no database, no clock of its own. The asyncio
stage (:mod:`.stage`) feeds it what each commit stored and a periodic tick of
when each agent was last heard from, stores the transitions it returns and
sends their notifications.

Each (rule, agent, sensor, metric) series is ``ok``, ``pending`` or
``firing``. A threshold series goes ``pending`` when a reading breaches the
threshold and ``firing`` once breaching readings have lasted ``for`` seconds,
measured on the readings' own timestamps: a backlog an agent delivers an hour
late is judged by when it was read, not by when it arrived. It goes back to
``ok`` only once a reading is past the threshold by ``hysteresis``, so a value
wobbling at the threshold fires once and resolves once. Only ``ok -> firing``
and ``firing -> ok`` are transitions (they are stored and notified);
``pending`` lives in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import NamedTuple

from sensor_edge.config.model import AlertRule
from sensor_edge.contract.protocol import Reading

OK, PENDING, FIRING = "ok", "pending", "firing"
# What a notification says happened: a transition to FIRING, or back to OK.
FIRED, RESOLVED = "firing", "resolved"


class SeriesKey(NamedTuple):
    rule: str
    agent: str
    sensor: str  # "" for a stale rule: the whole agent went silent
    metric: str


@dataclass
class Series:
    rule: AlertRule
    key: SeriesKey
    state: str
    since: float  # when the current state began (reading time; the clock for stale)
    value: float | None = None  # the last value judged (a stale rule: seconds silent)
    watch: _Watch | None = None  # a threshold rule's: the series' newest reading

    @property
    def latest(self) -> float | None:
        return self.watch.value if self.watch is not None else self.value


class _Watch:
    """One (agent, sensor, metric) and the series of every rule that watches it.

    Keeps what a reading needs to be passed over in O(1) however many rules
    watch it: every series ok and the value breaching none of the thresholds.
    """

    __slots__ = ("highest_below", "lowest_above", "newest", "series", "unsettled", "value")

    def __init__(self) -> None:
        self.series: list[Series] = []
        self.lowest_above = math.inf
        self.highest_below = -math.inf
        self.unsettled = 0  # series pending or firing
        # The newest reading judged: an older one arriving later cannot rewrite history.
        self.newest = -math.inf
        self.value: float | None = None

    def add(self, series: Series) -> None:
        self.series.append(series)
        if series.rule.above is not None:
            self.lowest_above = min(self.lowest_above, series.rule.above)
        if series.rule.below is not None:
            self.highest_below = max(self.highest_below, series.rule.below)
        self.settle()

    def settle(self) -> None:
        self.unsettled = sum(s.state != OK for s in self.series)


@dataclass(frozen=True)
class Transition:
    """A series went ``old -> new`` (OK -> FIRING or FIRING -> OK) at ``ts``."""

    rule: AlertRule
    key: SeriesKey
    old: str
    new: str
    value: float
    ts: float

    @property
    def event(self) -> str:
        return FIRED if self.new == FIRING else RESOLVED


def breached(rule: AlertRule, value: float) -> bool:
    return ((rule.above is not None and value > rule.above)
            or (rule.below is not None and value < rule.below))


def cleared(rule: AlertRule, value: float) -> bool:
    """Back inside the threshold by at least the rule's hysteresis."""
    return ((rule.above is None or value <= rule.above - rule.hysteresis)
            and (rule.below is None or value >= rule.below + rule.hysteresis))


_UNSEEN = object()


class AlertEngine:
    def __init__(self, rules: Iterable[AlertRule]):
        rules = tuple(rules)
        self.rules = {rule.name: rule for rule in rules}
        self._threshold = tuple(r for r in rules if r.kind == "threshold")
        self._stale = tuple(r for r in rules if r.kind == "stale")
        # agent -> (sensor, metric) -> its watch, None if no rule matches.
        self._watches: dict[str, dict[tuple[str, str], _Watch | None]] = {}
        self._series: dict[SeriesKey, Series] = {}

    @property
    def watches_readings(self) -> bool:
        return bool(self._threshold)

    @property
    def watches_agents(self) -> bool:
        return bool(self._stale)

    def rules_for(self, agent: str, sensor: str, metric: str) -> tuple[AlertRule, ...]:
        """The threshold rules whose globs match this series."""
        return tuple(r for r in self._threshold
                     if fnmatchcase(agent, r.agent) and fnmatchcase(sensor, r.sensor)
                     and fnmatchcase(metric, r.metric))

    def _watch(self, agent: str, sensor: str, metric: str) -> _Watch | None:
        """This series' watch (None: no rule matches), made on first sight: globs are
        matched once per series, not per reading."""
        per_agent = self._watches.setdefault(agent, {})
        if (sensor, metric) in per_agent:
            return per_agent[(sensor, metric)]
        watch = None
        for rule in self.rules_for(agent, sensor, metric):
            if watch is None:
                watch = _Watch()
            key = SeriesKey(rule.name, agent, sensor, metric)
            series = self._series.get(key)  # adopted from storage before any reading
            if series is None:
                series = self._series[key] = Series(rule, key, OK, -math.inf)
            series.watch = watch
            watch.add(series)
            watch.newest = max(watch.newest, series.since)
        per_agent[(sensor, metric)] = watch
        return watch

    def readings(self, agent: str, rows: Iterable[Reading]) -> list[Transition]:
        """Judge newly stored readings of one agent; the transitions they cause, in order."""
        transitions: list[Transition] = []
        if not self._threshold:
            return transitions
        per_agent = self._watches.get(agent)
        if per_agent is None:
            per_agent = self._watches[agent] = {}
        for _seq, sensor, metric, value, _unit, ts in rows:
            watch = per_agent.get((sensor, metric), _UNSEEN)
            if watch is _UNSEEN:
                watch = self._watch(agent, sensor, metric)
                for series in watch.series if watch is not None else ():
                    if series.since == -math.inf:  # ok since first seen
                        series.since = ts
            if watch is None or ts < watch.newest:
                continue
            watch.newest, watch.value = ts, value
            if not watch.unsettled and watch.highest_below <= value <= watch.lowest_above:
                continue  # the usual reading: every rule ok, no threshold crossed
            for series in watch.series:
                transition = self._judge(series, value, ts)
                if transition is not None:
                    transitions.append(transition)
            watch.settle()
        return transitions

    def _judge(self, series: Series, value: float, ts: float) -> Transition | None:
        rule = series.rule
        if series.state == FIRING:
            if cleared(rule, value):
                return self._move(series, OK, value, ts)
            return None
        if breached(rule, value):
            if series.state == OK:
                series.state, series.since = PENDING, ts
            if ts - series.since >= rule.for_seconds:
                return self._move(series, FIRING, value, ts)
        elif series.state == PENDING:  # the condition did not hold for `for`
            series.state, series.since = OK, ts
        return None

    def agents_seen(self, last_seen: Mapping[str, float | None], stale_after: float,
                    now: float, listening_since: float = -math.inf) -> list[Transition]:
        """Judge the stale rules: ``last_seen`` maps each agent to when it was last heard
        from (None: never, which never fires: there is no silence to report yet).

        ``listening_since``: when the collector started. Silence before it is not the
        agent's, so a restarted collector gives agents stale_after to reconnect before
        firing; an alert already firing resolves only when the agent is really heard."""
        transitions: list[Transition] = []
        for rule in self._stale:
            for agent, seen in last_seen.items():
                if seen is None or not fnmatchcase(agent, rule.agent):
                    continue
                key = SeriesKey(rule.name, agent, "", "")
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = Series(rule, key, OK, seen)
                silent = max(0.0, now - seen)
                series.value = silent
                if series.state == FIRING:
                    stale = silent > stale_after
                else:
                    stale = now - max(seen, listening_since) > stale_after
                if stale and series.state != FIRING:
                    transitions.append(self._move(series, FIRING, silent, now))
                elif not stale and series.state == FIRING:
                    transitions.append(self._move(series, OK, silent, now))
        return transitions

    @staticmethod
    def _move(series: Series, new: str, value: float, ts: float) -> Transition:
        old = FIRING if series.state == FIRING else OK
        series.state, series.since = new, ts
        return Transition(series.rule, series.key, old, new, value, ts)

    def adopt(self, key: SeriesKey, state: str, since: float, value: float | None) -> None:
        """Take a stored state as this series' own (at start, or stored by another
        collector meanwhile). Readings older than ``since`` are then ignored."""
        rule = self.rules.get(key.rule)
        if rule is None or state not in (OK, FIRING):
            return  # a rule since removed from the config
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(rule, key, state, since, value)
        elif (series.state == FIRING) == (state == FIRING):
            return  # the same (a pending series counts as ok)
        series.state, series.since = state, since
        if value is not None:
            series.value = value
        if series.watch is not None:
            series.watch.newest = max(series.watch.newest, since)
            if series.watch.value is None:
                series.watch.value = value
            series.watch.settle()

    def in_state(self, key: SeriesKey) -> str | None:
        series = self._series.get(key)
        return None if series is None else series.state

    def series(self) -> list[Series]:
        """Every series a rule watches (seen in a reading or stored), ordered by rule,
        agent, sensor, metric."""
        return [self._series[k] for k in sorted(self._series)]


def message(rule: AlertRule, key: SeriesKey, event: str, value: float | None,
            stale_after: float) -> tuple[str, str]:
    """A notification's title (names the alert) and body (agent, sensor, metric, value,
    state)."""
    if rule.kind == "stale":
        shown = f"{value:.0f} s without a word (stale_after: {stale_after:g} s)" \
            if value is not None else "?"
        sensor = metric = "-"
    else:
        limits = [f"above {rule.above:g}" if rule.above is not None else "",
                  f"below {rule.below:g}" if rule.below is not None else ""]
        shown = f"{value:g}" if value is not None else "?"
        shown += f" (alert when {' or '.join(x for x in limits if x)})"
        sensor, metric = key.sensor, key.metric
    title = f"{rule.name} {event}: {key.agent}" + (f" {sensor}" if rule.kind != "stale" else "")
    body = "\n".join((f"alert: {rule.name}", f"state: {event}", f"agent: {key.agent}",
                      f"sensor: {sensor}", f"metric: {metric}", f"value: {shown}"))
    return title, body
