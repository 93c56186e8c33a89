"""Sensor backends: where readings physically come from.

Like gpiozero's pin factories, a backend is chosen once at start and the rest
of the agent never asks which one it has. The hardware backend talks to the
Pi's GPIO, DHT sensors, sysfs, the 1-Wire, I2C and SPI buses through each
part's driver; the mock backend is its peer for laptops and tests: gpiozero's
own MockFactory pins driven on a simulated schedule, simulated parts that
drift and fail like real ones, and a simulated CPU temperature where sysfs
has none.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Protocol

from sensor_edge.config.model import SensorConfig

log = logging.getLogger("sensor_edge.agent.backend")

PI_MODEL_FILE = "/proc/device-tree/model"
CPU_TEMPERATURE_FILE = "/sys/class/thermal/thermal_zone0/temp"
# adafruit_dht answers from its last measurement, good or failed (then the
# previous value or None), until this long after that measurement began.
DHT_CACHE_SECONDS = 2.0


class SensorReadError(Exception):
    """One failed read; ``kind`` groups failures for counting (timeout, checksum, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class BusUnavailable(Exception):
    """A bus that cannot be looked at (turned off, no permission); str() names the fix."""


class Part(Protocol):
    """One sensor on a bus (1-Wire, I2C, SPI), open through its driver.

    ``read()`` blocks (the sampler runs it off the event loop) and returns the
    type's metrics by name, or raises SensorReadError. A part never fails to
    open for want of an answer on the bus: that is a failed read, counted, and
    the part is looked for again on the next one.
    """

    def read(self) -> dict[str, float]: ...

    def close(self) -> None: ...


class DHTDevice(Protocol):
    """What adafruit_dht.DHT11/DHT22 offer, and what the simulated ones imitate.

    Reading a property measures (or answers from the cache, see
    DHT_CACHE_SECONDS); a failed measurement raises RuntimeError. The pin is
    held until exit().
    """

    @property
    def temperature(self) -> float | None: ...

    @property
    def humidity(self) -> float | None: ...

    def exit(self) -> None: ...


class Backend(ABC):
    name: str
    # gpiozero's pin factory for digital inputs; None means gpiozero's default
    # (GPIOZERO_PIN_FACTORY, or the best one it finds on the board).
    pin_factory: Any = None

    @abstractmethod
    def dht(self, sensor: SensorConfig) -> DHTDevice:
        """An open DHT11/DHT22 on the sensor's pin."""

    @abstractmethod
    def cpu_temperature(self) -> float:
        """The SoC temperature in C; raises OSError or ValueError when unreadable."""

    @abstractmethod
    def part(self, sensor: SensorConfig) -> Part:
        """An open 1-Wire, I2C or SPI part; StartupError if its driver or bus is missing."""

    @abstractmethod
    def scan_w1(self) -> list[str]:
        """The ids of the devices on the 1-Wire bus; BusUnavailable if there is none."""

    @abstractmethod
    def scan_i2c(self, bus: int) -> list[int]:
        """The addresses that answer on I2C bus ``bus``; BusUnavailable if it cannot be used."""

    def digital_input(self, sensor: SensorConfig) -> Any:
        """A gpiozero input device on this backend's pin factory: a Button, or for a PIR
        a plain DigitalInputDevice (pulled down, as MotionSensor's default)."""
        from gpiozero import Button, DigitalInputDevice

        if sensor.type == "motion":
            # Not MotionSensor: it polls the pin from a thread at 10 Hz to smooth it,
            # a third of the agent's CPU; a PIR's output is already clean and held,
            # and edges come from the pin factory either way.
            return DigitalInputDevice(sensor.pin, pull_up=False, pin_factory=self.pin_factory)
        return Button(sensor.pin, pin_factory=self.pin_factory)

    def start(self) -> None:
        """Begin any background activity (the mock's simulated world)."""

    def close(self) -> None:
        """Release what start() and the devices took."""


def is_raspberry_pi(model_file: str = PI_MODEL_FILE) -> bool:
    try:
        with open(model_file, "rb") as f:
            return b"Raspberry Pi" in f.read()
    except OSError:
        return False


def choose_backend(name: str, pin_factory: str | None = None) -> Backend:
    """The backend a config's `backend` names; `auto` means hardware on a Pi.

    ``pin_factory`` (the config's) picks gpiozero's pin factory on the hardware.
    """
    if name == "auto":
        name = "hardware" if is_raspberry_pi() else "mock"
        log.info("backend: auto chose %s (%s)", name,
                 "a Raspberry Pi" if name == "hardware" else "not a Raspberry Pi")
    else:
        log.info("backend: %s", name)
    if name == "hardware":
        from sensor_edge.agent.backends.hardware import HardwareBackend

        return HardwareBackend(pin_factory)
    from sensor_edge.agent.backends.mock import MockBackend

    return MockBackend()
