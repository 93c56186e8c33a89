"""The mock backend: a simulated world behind the same interface as the hardware.

Digital inputs are real gpiozero devices on gpiozero's own MockFactory, so
the code that runs on a Pi runs here too; a background thread drives their
mock pins high and low on a random schedule. DHT sensors drift plausibly and
fail about as often as real ones do, so the retry path runs in every demo.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from sensor_edge.config.model import SensorConfig
from sensor_edge.agent.backends import CPU_TEMPERATURE_FILE, DHT_CACHE_SECONDS, Backend

log = logging.getLogger("sensor_edge.agent.backend.mock")

# Real DHT reads on a Pi fail this often (checksum errors, missed pulses).
DHT_FAILURE_RATE = 0.15
DHT_ERRORS = (
    "Checksum did not validate. Try again.",
    "A full buffer was not returned. Try again.",
    "Received unplausible data. Try again.",
)


class SimulatedDHT:
    """Behaves as adafruit_dht.DHT11/DHT22 are documented to.

    Each property access measures, unless a measurement began less than
    DHT_CACHE_SECONDS ago: then it answers from the cache, the last good values
    or None before the first one (as the real library does). A failed
    measurement raises RuntimeError.
    """

    def __init__(self, kind: str, seed: int, failure_rate: float = DHT_FAILURE_RATE):
        self.kind = kind
        self._rng = random.Random(seed)
        self._failure_rate = failure_rate
        self._true_temperature = 21.0 + self._rng.uniform(-3, 3)
        self._true_humidity = 45.0 + self._rng.uniform(-10, 10)
        self._temperature: float | None = None
        self._humidity: float | None = None
        self._last_called = 0.0
        self._lock = threading.Lock()
        self.closed = False

    def _measure(self) -> None:
        with self._lock:
            if self.closed:
                raise RuntimeError("the sensor was released with exit()")
            now = time.monotonic()
            if self._last_called and now - self._last_called <= DHT_CACHE_SECONDS:
                return
            self._last_called = now
            if self._rng.random() < self._failure_rate:
                raise RuntimeError(self._rng.choice(DHT_ERRORS))
            # A slow random walk, pulled back towards a comfortable room.
            t = self._true_temperature
            h = self._true_humidity
            t += self._rng.gauss(0, 0.15) + (21.0 - t) * 0.02
            h = min(99.0, max(5.0, h + self._rng.gauss(0, 0.5) + (45.0 - h) * 0.02))
            self._true_temperature, self._true_humidity = t, h
            # The DHT11 reports whole numbers.
            digits = 1 if self.kind == "dht22" else 0
            self._temperature, self._humidity = round(t, digits), round(h, digits)

    @property
    def temperature(self) -> float | None:
        self._measure()
        return self._temperature

    @property
    def humidity(self) -> float | None:
        self._measure()
        return self._humidity

    def exit(self) -> None:
        self.closed = True


class MockBackend(Backend):
    name = "mock"

    def __init__(self, seed: int | None = None, schedule_scale: float = 1.0):
        self._factory = None
        self._seed = seed if seed is not None else random.randrange(1 << 30)
        self._rng = random.Random(self._seed)
        self._scale = schedule_scale
        self._inputs: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu = 48.0

    @property
    def pin_factory(self):
        """gpiozero's MockFactory, made when a digital input first needs it (gpiozero
        costs the agent 2.6 MiB of RSS)."""
        if self._factory is None:
            from gpiozero.pins.mock import MockFactory

            self._factory = MockFactory()
        return self._factory

    def dht(self, sensor: SensorConfig) -> SimulatedDHT:
        return SimulatedDHT(sensor.type, seed=self._seed + (sensor.pin or 0))

    def digital_input(self, sensor: SensorConfig):
        device = super().digital_input(sensor)
        self._inputs.append((sensor.pin, sensor.type))
        return device

    def cpu_temperature(self) -> float:
        if os.path.exists(CPU_TEMPERATURE_FILE):
            with open(CPU_TEMPERATURE_FILE) as f:
                return int(f.read().strip()) / 1000.0
        self._cpu += self._rng.gauss(0, 0.3) + (48.0 - self._cpu) * 0.05
        return round(self._cpu, 1)

    def drive(self, pin: int, active: bool) -> None:
        """Set a digital input as a person or a PIR would: motion high, a button pressed low."""
        kind = dict(self._inputs).get(pin, "motion")
        mock_pin = self.pin_factory.pin(pin)
        if active == (kind == "motion"):
            mock_pin.drive_high()
        else:
            mock_pin.drive_low()

    def start(self) -> None:
        if self._inputs and self._thread is None:
            self._thread = threading.Thread(target=self._simulate, name="mock-inputs", daemon=True)
            self._thread.start()

    def _simulate(self) -> None:
        # Each input alternates between idle and active for random spells.
        due = {pin: time.monotonic() + self._spell(kind, False) for pin, kind in self._inputs}
        active = {pin: False for pin, _ in self._inputs}
        kinds = dict(self._inputs)
        while not self._stop.is_set():
            now = time.monotonic()
            for pin, when in due.items():
                if now >= when:
                    active[pin] = not active[pin]
                    self.drive(pin, active[pin])
                    due[pin] = now + self._spell(kinds[pin], active[pin])
            self._stop.wait(max(0.01, min(due.values()) - time.monotonic()))

    def _spell(self, kind: str, active: bool) -> float:
        if kind == "motion":
            seconds = self._rng.uniform(2, 6) if active else self._rng.uniform(4, 15)
        else:
            seconds = self._rng.uniform(0.2, 0.6) if active else self._rng.uniform(5, 20)
        return seconds * self._scale

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self._factory is not None:
            self._factory.close()
