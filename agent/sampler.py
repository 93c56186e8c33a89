"""Reads every sensor on its own schedule and hands the samples on.

Blocking reads run on a small thread pool; digital edges arrive on
gpiozero's threads and reach the event loop through call_soon_threadsafe.
A DHT is never read sooner than its spacing (its floor, and the library's
cache window) after the previous read ended, failed or not; a failing sensor
is retried at that spacing, counted by kind and logged, and never stops the
agent. Each sensor's filters (filters.py) run here, before anything is
handed on to be buffered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sensor_edge.agent.filters import SensorFilters
from sensor_edge.contract.status import SensorHealth
from sensor_edge.agent.sensors import DigitalSensor, Sample, Sensor, SensorReadError

log = logging.getLogger("sensor_edge.agent.sampler")

# Without a physical floor (CPU temperature, a heartbeat), retry this soon.
DEFAULT_RETRY = 1.0
# Log a sensor that keeps failing at these consecutive-failure counts, then every 1000th.
LOUD_FAILURES = (1, 10, 100)
# Reads at once: a DS18B20 holds a thread for its 750 ms conversion, and the
# others should not queue behind it.
MAX_READ_THREADS = 4


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


class Sampler:
    def __init__(self, sensors: list[Sensor], emit: Callable[[list[Sample]], None]):
        self.sensors = sensors
        self.filters = {s.name: SensorFilters(s.config) for s in sensors}
        self.stats = {s.name: SensorStats(filters=self.filters[s.name]) for s in sensors}
        self._emit = emit
        polled = sum(1 for s in sensors if s.config.interval is not None)
        self._executor = ThreadPoolExecutor(max(2, min(polled, MAX_READ_THREADS)),
                                            thread_name_prefix="sensor-read")
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sensor in self.sensors:
            if isinstance(sensor, DigitalSensor):
                sensor.on_edge(lambda sample, s=sensor: loop.call_soon_threadsafe(
                    self._edge, s, sample))
            if sensor.config.interval is not None:
                self._tasks.append(asyncio.create_task(self._poll(sensor), name=sensor.name))

    def _edge(self, sensor: Sensor, sample: Sample) -> None:
        self.stats[sensor.name].good += 1
        self._hand_on(sensor, [sample])

    def _hand_on(self, sensor: Sensor, samples: list[Sample]) -> None:
        kept = self.filters[sensor.name](samples)
        if kept:
            self._emit(kept)

    async def _poll(self, sensor: Sensor) -> None:
        loop = asyncio.get_running_loop()
        interval = sensor.config.interval
        spacing = sensor.min_spacing
        stats = self.stats[sensor.name]
        next_read = loop.time()
        while True:
            await asyncio.sleep(max(0.0, next_read - loop.time()))
            try:
                samples = await loop.run_in_executor(self._executor, sensor.read)
            except SensorReadError as e:
                self._failed(sensor, stats, e.kind, str(e))
                # Retry soon, but never sooner than the spacing after this read ended.
                next_read = loop.time() + max(spacing, min(interval, DEFAULT_RETRY))
                continue
            except Exception as e:  # a driver bug must not take the agent down
                self._failed(sensor, stats, "error", f"{type(e).__name__}: {e}")
                next_read = loop.time() + max(spacing, interval)
                continue
            if stats.consecutive_failures >= LOUD_FAILURES[1]:
                log.info("sensor %s reads again after %d failures", sensor.name,
                         stats.consecutive_failures)
            stats.good += 1
            stats.consecutive_failures = 0
            self._hand_on(sensor, samples)
            # Keep the cadence, but never fall behind by more than one interval.
            next_read = max(next_read + interval, loop.time() + spacing, loop.time() - interval)

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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        # A read in progress finishes on its thread; then the devices are released.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        for sensor in self.sensors:
            try:
                sensor.close()
            except Exception as e:
                log.warning("sensor %s: could not release it cleanly: %s", sensor.name, e)
