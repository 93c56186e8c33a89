"""Reads every sensor on its own schedule and hands the samples on.

One tick reads every polled sensor that is due together and hands all their
samples on at once (so one buffer write and one frame), not one per sensor.
Quick reads (a CPU temperature from sysfs, a digital input's level) run on
the event loop's timer. Slow ones (a DHT) run on the read thread, which
keeps their time itself and takes along the quick sensors due then: each
tick wakes the agent as few times as it can, and a slow read never holds up
the loop. A sensor without a physical floor may be read up to COALESCE
seconds early or late to share a tick; a DHT never early. Digital edges
arrive on gpiozero's threads and are handed on at once, through
call_soon_threadsafe.

A DHT is never read sooner than its spacing (its floor, and the library's
cache window) after the previous read ended, failed or not; a failing sensor
is retried at that spacing, counted by kind and logged, and never stops the
agent. Every sample passes through admit(), where each sensor's filters
(filters.py) run, before anything is handed on to be buffered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sensor_edge.agent.filters import SensorFilters
from sensor_edge.agent.sensors import DigitalSensor, Sample, Sensor, SensorReadError
from sensor_edge.contract.status import SensorHealth

log = logging.getLogger("sensor_edge.agent.sampler")

# Without a physical floor (CPU temperature, a heartbeat), retry this soon.
DEFAULT_RETRY = 1.0
# Log a sensor that keeps failing at these consecutive-failure counts, then every 1000th.
LOUD_FAILURES = (1, 10, 100)
# How far off its time a sensor without a floor may be read to share a tick
# (at most a quarter of its interval).
COALESCE = 0.05

# On stop, how long a read under way may take to end.
STOP_WAIT = 2.0

Outcome = tuple[list[Sample] | BaseException, float]  # what a read gave, when it ended


@dataclass
class SensorStats:
    good: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    last_error: str | None = None
    filters: SensorFilters | None = None  # counts what they held back

    def health(self, max_error_text: int) -> SensorHealth:
        """For the agent's status; the last error cut to ``max_error_text`` characters."""
        error = self.last_error
        return SensorHealth(
            good=self.good, failed=self.failed, failures=dict(self.failures),
            consecutive_failures=self.consecutive_failures,
            last_error=None if error is None else error[:max_error_text],
            held_back=self.filters.held_back if self.filters is not None else 0)


@dataclass
class _Schedule:
    """When a polled sensor is read next (monotonic clock, the loop's)."""

    sensor: Sensor
    interval: float
    due: float  # the next read, at the earliest
    slot: float  # its place on the sensor's own cadence
    reading: bool = False  # a read is under way

    @property
    def slack(self) -> float:
        """How early it may be read to share a tick: none with a physical floor."""
        return 0.0 if self.sensor.min_spacing else min(COALESCE, self.interval / 4)

    def after(self, outcome: list[Sample] | BaseException, ended: float) -> None:
        """Set the next read from how this one went."""
        interval, spacing = self.interval, self.sensor.min_spacing
        if isinstance(outcome, SensorReadError):
            # Retry soon, but never sooner than the spacing after this read ended.
            self.due = ended + max(spacing, min(interval, DEFAULT_RETRY))
        elif isinstance(outcome, BaseException):
            self.due = ended + max(spacing, interval)
        else:
            # Keep the cadence, but never fall behind by more than one interval.
            self.slot = max(self.slot + interval, ended - interval)
            self.due = max(self.slot, ended + spacing)
        self.reading = False


class Sampler:
    def __init__(self, sensors: list[Sensor], emit: Callable[[list[Sample]], None],
                 emit_edge: Callable[[list[Sample]], None] | None = None):
        """``emit`` takes each tick's samples; ``emit_edge`` (default: emit) an edge's,
        which must go out at once."""
        self.sensors = sensors
        self.filters = {s.name: SensorFilters(s.config) for s in sensors}
        self.stats = {s.name: SensorStats(filters=self.filters[s.name]) for s in sensors}
        self._emit = emit
        self._emit_edge = emit_edge or emit
        self._schedules: list[_Schedule] = []
        # Guards the schedules: the loop and the read thread both claim sensors to read.
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._thread_next: float | None = None  # when the read thread reads next
        self._stop = threading.Event()
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        now = loop.time()
        for sensor in self.sensors:
            if isinstance(sensor, DigitalSensor):
                sensor.on_edge(lambda sample, s=sensor: loop.call_soon_threadsafe(
                    self._edge, s, sample))
            if sensor.config.interval is not None:
                self._schedules.append(_Schedule(sensor, sensor.config.interval, now, now))
        if any(not s.sensor.reads_quickly for s in self._schedules):
            self._thread = threading.Thread(target=self._read_slowly, name="sensor-read",
                                            daemon=True)
            self._thread.start()
        self._plan()

    def admit(self, sensor: Sensor, samples: list[Sample]) -> list[Sample]:
        """What of a sensor's read goes on to the buffer: its filters' say."""
        return self.filters[sensor.name](samples)

    def _edge(self, sensor: Sensor, sample: Sample) -> None:
        if self._stopping:
            return
        self.stats[sensor.name].good += 1
        admitted = self.admit(sensor, [sample])
        if admitted:
            self._emit_edge(admitted)

    # --- ticks ----------------------------------------------------------------------

    def _claim(self, now: float, quick_only: bool) -> list[_Schedule]:
        """Under the lock: the idle sensors due now (quick ones a little early too)."""
        due = [s for s in self._schedules if not s.reading and s.due <= now + s.slack
               and (s.sensor.reads_quickly or not quick_only)]
        for schedule in due:
            schedule.reading = True
        return due

    def _plan(self) -> None:
        """Set the loop's timer for the next tick of quick reads the read thread will not
        take along."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stopping:
            return
        with self._lock:
            then = self._thread_next
            dues = [s.due for s in self._schedules if s.sensor.reads_quickly and not s.reading
                    and (then is None or not then - COALESCE <= s.due <= then + s.slack)]
        if dues:
            self._timer = self._loop.call_at(min(dues), self._tick)

    def _tick(self) -> None:
        """The loop's timer: read the quick sensors that are due, here and now."""
        self._timer = None
        with self._lock:
            due = self._claim(self._loop.time(), quick_only=True)
        outcomes = [_read(s.sensor) for s in due]
        with self._lock:
            for schedule, (outcome, ended) in zip(due, outcomes, strict=True):
                schedule.after(outcome, ended)
        self._hand_on(due, outcomes)

    def _read_slowly(self) -> None:
        """The read thread: at each slow sensor's time, read it and every sensor due with
        it, then hand the outcomes to the loop at once."""
        while True:
            with self._lock:
                dues = [s.due for s in self._schedules
                        if not s.sensor.reads_quickly and not s.reading]
                self._thread_next = at = min(dues) if dues else None
            if at is None or self._stop.wait(max(0.0, at - time.monotonic())):
                return  # (a slow sensor is always either idle or being read here)
            with self._lock:
                due = self._claim(time.monotonic(), quick_only=False)
                self._thread_next = None
            outcomes = [_read(s.sensor) for s in due]
            with self._lock:
                for schedule, (outcome, ended) in zip(due, outcomes, strict=True):
                    schedule.after(outcome, ended)
            try:
                self._loop.call_soon_threadsafe(self._read, due, outcomes)
            except RuntimeError:  # the loop is closed: the agent is gone
                return

    def _read(self, due: list[_Schedule], outcomes: list[Outcome]) -> None:
        """The read thread's outcomes, on the loop."""
        self._hand_on(due, outcomes)

    def _hand_on(self, due: list[_Schedule], outcomes: list[Outcome]) -> None:
        """Count a tick's reads and hand on what they read, at once; plan the next tick."""
        samples: list[Sample] = []
        for schedule, (outcome, _) in zip(due, outcomes, strict=True):
            samples += self._account(schedule.sensor, outcome)
        if samples and not self._stopping:
            self._emit(samples)
        self._plan()

    def _account(self, sensor: Sensor, outcome: list[Sample] | BaseException) -> list[Sample]:
        stats = self.stats[sensor.name]
        if isinstance(outcome, SensorReadError):
            self._failed(sensor, stats, outcome.kind, str(outcome))
            return []
        if isinstance(outcome, BaseException):  # a driver bug must not take the agent down
            self._failed(sensor, stats, "error", f"{type(outcome).__name__}: {outcome}")
            return []
        if stats.consecutive_failures >= LOUD_FAILURES[1]:
            log.info("sensor %s reads again after %d failures", sensor.name,
                     stats.consecutive_failures)
        stats.good += 1
        stats.consecutive_failures = 0
        return self.admit(sensor, outcome)

    def _failed(self, sensor: Sensor, stats: SensorStats, kind: str, message: str) -> None:
        stats.failed += 1
        stats.failures[kind] = stats.failures.get(kind, 0) + 1
        stats.consecutive_failures += 1
        stats.last_error = message
        n = stats.consecutive_failures
        if n in LOUD_FAILURES or n % 1000 == 0:
            level = logging.DEBUG if n == 1 else logging.WARNING
            log.log(level, "sensor %s: read failed (%s)%s", sensor.name, message,
                    "" if n == 1 else f"; {n} failures in a row")

    async def stop(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A read under way finishes on its thread; then the devices are released.
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_WAIT)
            if self._thread.is_alive():
                log.warning("a sensor read did not end within %g s; stopping anyway", STOP_WAIT)
        for sensor in self.sensors:
            try:
                sensor.close()
            except Exception as e:
                log.warning("sensor %s: could not release it cleanly: %s", sensor.name, e)

def _read(sensor: Sensor) -> Outcome:
    """One read: its samples or what it raised, and when it ended (the loop's clock)."""
    try:
        outcome = sensor.read()
    except Exception as e:
        outcome = e
    return outcome, time.monotonic()
