"""Reads every sensor on its own schedule and hands the samples on.

One tick reads every polled sensor that is due together: one job on the
read thread pool, then one hand-off of all their samples (so one buffer
write and one frame), not one per sensor. A sensor without a physical floor
(CPU temperature, a heartbeat) may be read up to COALESCE seconds early or
late to share a tick; a DHT never early. Digital edges arrive on gpiozero's
threads and are handed on at once, through call_soon_threadsafe.

A DHT is never read sooner than its spacing (its floor, and the library's
cache window) after the previous read ended, failed or not; a failing sensor
is retried at that spacing, counted by kind and logged, and never stops the
agent. Every sample passes through admit() on its way out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sensor_edge.agent.sensors import DigitalSensor, Sample, Sensor, SensorReadError

log = logging.getLogger("sensor_edge.agent.sampler")

# Without a physical floor (CPU temperature, a heartbeat), retry this soon.
DEFAULT_RETRY = 1.0
# Log a sensor that keeps failing at these consecutive-failure counts, then every 1000th.
LOUD_FAILURES = (1, 10, 100)
# How far off its time a sensor without a floor may be read to share a tick
# (at most a quarter of its interval).
COALESCE = 0.05


@dataclass
class SensorStats:
    good: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    last_error: str | None = None

    def as_json(self) -> dict:
        return {"good": self.good, "failed": self.failed, "failures": dict(self.failures),
                "consecutive_failures": self.consecutive_failures, "last_error": self.last_error}


@dataclass
class _Schedule:
    """When a polled sensor is read next (loop clock)."""

    sensor: Sensor
    interval: float
    due: float  # the next read, at the earliest
    slot: float  # its place on the sensor's own cadence
    reading: bool = False  # a read is in flight

    @property
    def slack(self) -> float:
        """How early it may be read to share a tick: none with a physical floor."""
        return 0.0 if self.sensor.min_spacing else min(COALESCE, self.interval / 4)


class Sampler:
    def __init__(self, sensors: list[Sensor], emit: Callable[[list[Sample]], None]):
        self.sensors = sensors
        self.stats = {s.name: SensorStats() for s in sensors}
        self._emit = emit
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="sensor-read")
        self._schedules: list[_Schedule] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Future] = set()
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for sensor in self.sensors:
            if isinstance(sensor, DigitalSensor):
                sensor.on_edge(lambda sample, s=sensor: loop.call_soon_threadsafe(
                    self._edge, s, sample))
            if sensor.config.interval is not None:
                self._schedules.append(_Schedule(sensor, sensor.config.interval, now, now))
        self._plan()

    def admit(self, sensor: Sensor, samples: list[Sample]) -> list[Sample]:
        """What of a sensor's read goes on to the buffer (per-sensor filters apply here)."""
        return samples

    def _edge(self, sensor: Sensor, sample: Sample) -> None:
        if self._stopping:
            return
        self.stats[sensor.name].good += 1
        admitted = self.admit(sensor, [sample])
        if admitted:
            self._emit(admitted)

    # --- ticks ----------------------------------------------------------------------

    def _plan(self) -> None:
        """Set the timer for the next tick."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle = [s for s in self._schedules if not s.reading]
        if self._stopping or not idle:
            return
        first = min(s.due for s in idle)
        # A sensor with a floor due soon after: wait for it, and read the others with it.
        at = max([first] + [s.due for s in idle if s.slack == 0 and s.due <= first + COALESCE])
        self._timer = asyncio.get_running_loop().call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [s for s in self._schedules if not s.reading and s.due <= now + s.slack]
        if due:
            for schedule in due:
                schedule.reading = True
            future = loop.run_in_executor(self._executor, _read_all,
                                          [s.sensor for s in due])
            self._in_flight.add(future)
            future.add_done_callback(lambda f, due=due: self._read(due, f))
        self._plan()

    def _read(self, due: list[_Schedule], future: asyncio.Future) -> None:
        """A tick's reads ended: schedule each sensor again, hand on what they read."""
        self._in_flight.discard(future)
        if future.cancelled():
            return
        samples: list[Sample] = []
        for schedule, (outcome, ended) in zip(due, future.result(), strict=True):
            schedule.reading = False
            samples += self._outcome(schedule, outcome, ended)
        if samples and not self._stopping:
            self._emit(samples)
        self._plan()

    def _outcome(self, schedule: _Schedule, outcome: list[Sample] | BaseException,
                 ended: float) -> list[Sample]:
        sensor = schedule.sensor
        stats = self.stats[sensor.name]
        interval, spacing = schedule.interval, sensor.min_spacing
        if isinstance(outcome, SensorReadError):
            self._failed(sensor, stats, outcome.kind, str(outcome))
            # Retry soon, but never sooner than the spacing after this read ended.
            schedule.due = ended + max(spacing, min(interval, DEFAULT_RETRY))
            return []
        if isinstance(outcome, BaseException):  # a driver bug must not take the agent down
            self._failed(sensor, stats, "error", f"{type(outcome).__name__}: {outcome}")
            schedule.due = ended + max(spacing, interval)
            return []
        if stats.consecutive_failures >= LOUD_FAILURES[1]:
            log.info("sensor %s reads again after %d failures", sensor.name,
                     stats.consecutive_failures)
        stats.good += 1
        stats.consecutive_failures = 0
        # Keep the cadence, but never fall behind by more than one interval.
        schedule.slot = max(schedule.slot + interval, ended - interval)
        schedule.due = max(schedule.slot, ended + spacing)
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
        # A read in progress finishes on its thread; then the devices are released.
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        for sensor in self.sensors:
            try:
                sensor.close()
            except Exception as e:
                log.warning("sensor %s: could not release it cleanly: %s", sensor.name, e)


def _read_all(sensors: list[Sensor]) -> list[tuple[list[Sample] | BaseException, float]]:
    """Read each sensor in turn (on a read thread): its samples or error, and when it ended
    on the event loop's clock (time.monotonic)."""
    outcomes = []
    for sensor in sensors:
        try:
            outcome = sensor.read()
        except Exception as e:
            outcome = e
        outcomes.append((outcome, time.monotonic()))
    return outcomes
