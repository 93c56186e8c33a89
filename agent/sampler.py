"""Reads every sensor on its own schedule and hands the samples on.

One tick reads every polled sensor that is due together and hands all their
samples on at once (so one buffer write and one frame), not one per sensor.
A tick of quick reads (a CPU temperature from sysfs, a digital input's state)
runs on the event loop's timer; a tick with a slow read (a DHT) goes to a
read thread, which waits for the tick's time itself, so each tick wakes the
agent as few times as it can. A sensor without a physical floor may be read
up to COALESCE seconds early or late to share a tick; a DHT never early.
Digital edges arrive on gpiozero's threads and are handed on at once,
through call_soon_threadsafe.

A DHT is never read sooner than its spacing (its floor, and the library's
cache window) after the previous read ended, failed or not; a failing sensor
is retried at that spacing, counted by kind and logged, and never stops the
agent. Every sample passes through admit() on its way out.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
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
# Threads that read sensors: a slow read holds up only the sensors of its own tick.
READ_THREADS = 2


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
    def __init__(self, sensors: list[Sensor], emit: Callable[[list[Sample]], None],
                 emit_edge: Callable[[list[Sample]], None] | None = None):
        """``emit`` takes each tick's samples; ``emit_edge`` (default: emit) an edge's,
        which must go out at once."""
        self.sensors = sensors
        self.stats = {s.name: SensorStats() for s in sensors}
        self._emit = emit
        self._emit_edge = emit_edge or emit
        # Each job: (when, a tick's schedules); None stops a thread.
        self._jobs: queue.SimpleQueue[tuple[float, list[_Schedule]] | None] = \
            queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._schedules: list[_Schedule] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0  # ticks handed to the read threads
        self._idle = asyncio.Event()  # set when none is
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
            for i in range(READ_THREADS):
                thread = threading.Thread(target=self._reader, name=f"sensor-read-{i}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
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
            self._emit_edge(admitted)

    # --- ticks ----------------------------------------------------------------------

    def _plan(self) -> None:
        """Plan the next ticks: a tick of quick reads on the loop's timer; a tick with a
        slow read goes to a read thread, which waits for its time itself."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while not self._stopping:
            idle = [s for s in self._schedules if not s.reading]
            if not idle:
                return
            first = min(s.due for s in idle)
            # A sensor with a floor due soon after: wait for it, and read the others with it.
            at = max([first] + [s.due for s in idle
                                if s.slack == 0 and s.due <= first + COALESCE])
            tick = [s for s in idle if s.due <= at + s.slack]
            if all(s.sensor.reads_quickly for s in tick):
                self._timer = self._loop.call_at(at, self._tick)
                return
            for schedule in tick:
                schedule.reading = True
            self._in_flight += 1
            self._idle.clear()
            self._jobs.put((at, tick))

    def _tick(self) -> None:
        """The loop's timer: read the quick sensors that are due, here and now."""
        self._timer = None
        now = self._loop.time()
        due = [s for s in self._schedules if not s.reading and s.due <= now + s.slack
               and s.sensor.reads_quickly]
        self._finish(due, [_read(s.sensor) for s in due])

    def _reader(self) -> None:
        """A read thread: at each tick's time, read its sensors in turn and hand the
        outcomes to the loop at once."""
        while (job := self._jobs.get()) is not None:
            at, due = job
            stopped = self._stop.wait(max(0.0, at - time.monotonic()))  # the loop's clock
            outcomes = None if stopped else [_read(s.sensor) for s in due]
            try:
                self._loop.call_soon_threadsafe(self._read, due, outcomes)
            except RuntimeError:  # the loop is closed: the agent is gone
                return

    def _read(self, due: list[_Schedule],
              outcomes: list[tuple[list[Sample] | BaseException, float]] | None) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()
        if outcomes is not None:
            self._finish(due, outcomes)

    def _finish(self, due: list[_Schedule],
                outcomes: list[tuple[list[Sample] | BaseException, float]]) -> None:
        """A tick's reads ended: schedule each sensor again, hand on what they read."""
        samples: list[Sample] = []
        for schedule, (outcome, ended) in zip(due, outcomes, strict=True):
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
        self._stop.set()
        for _ in self._threads:
            self._jobs.put(None)
        if self._in_flight:
            await self._idle.wait()
        for sensor in self.sensors:
            try:
                sensor.close()
            except Exception as e:
                log.warning("sensor %s: could not release it cleanly: %s", sensor.name, e)



def _read(sensor: Sensor) -> tuple[list[Sample] | BaseException, float]:
    """One read: its samples or what it raised, and when it ended (the loop's clock)."""
    try:
        outcome = sensor.read()
    except Exception as e:
        outcome = e
    return outcome, time.monotonic()
