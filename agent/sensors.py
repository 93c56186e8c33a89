"""Configured sensors, each reading through whichever backend the agent has.

A polled sensor (`read()`, blocking, run off the event loop) returns samples or
raises :class:`SensorReadError`. A digital sensor calls back on every edge,
from gpiozero's own threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config.model import SensorConfig
from .backends import Backend

# (sensor, metric, value, unit, ts)
Sample = tuple[str, str, float, str, float]

# What a DHT can physically report; anything else is a corrupted read.
PLAUSIBLE = {
    "dht22": {"temperature": (-40.0, 80.0), "humidity": (0.0, 100.0)},
    "dht11": {"temperature": (0.0, 50.0), "humidity": (20.0, 90.0)},
}
DIGITAL_METRIC = {"motion": "motion", "button": "pressed"}


class SensorReadError(Exception):
    """One failed read; ``kind`` groups failures for counting (timeout, checksum, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Sensor:
    def __init__(self, config: SensorConfig):
        self.config = config
        self.name = config.name

    def read(self) -> list[Sample]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DHTSensor(Sensor):
    def __init__(self, config: SensorConfig, backend: Backend):
        super().__init__(config)
        self.device = backend.dht(config)

    def read(self) -> list[Sample]:
        try:
            temperature = self.device.temperature
            humidity = self.device.humidity
        except RuntimeError as e:
            # adafruit_dht reports checksum errors, timeouts and missed pulses this way.
            raise SensorReadError(_dht_failure_kind(str(e)), str(e)) from None
        except OSError as e:
            raise SensorReadError("io", str(e)) from None
        if temperature is None or humidity is None:
            # A read retried too soon after a failure gives None: never report it as new.
            raise SensorReadError("no_data", "the sensor returned no value")
        ts = time.time()
        bounds = PLAUSIBLE[self.config.type]
        for metric, value in (("temperature", temperature), ("humidity", humidity)):
            low, high = bounds[metric]
            if not low <= value <= high:
                raise SensorReadError("implausible",
                                      f"{metric} {value} is outside {low:g}..{high:g}")
        return [
            (self.name, "temperature", float(temperature), "C", ts),
            (self.name, "humidity", float(humidity), "%", ts),
        ]

    def close(self) -> None:
        # Frees the pin, so the next start of the agent can take it again.
        try:
            self.device.exit()
        except Exception:  # already released, or the library's own teardown failed
            pass


def _dht_failure_kind(message: str) -> str:
    text = message.lower()
    if "checksum" in text:
        return "checksum"
    if "timed out" in text or "timeout" in text or "full buffer" in text:
        return "timeout"
    return "error"


class CpuTemperatureSensor(Sensor):
    def __init__(self, config: SensorConfig, backend: Backend):
        super().__init__(config)
        self._backend = backend

    def read(self) -> list[Sample]:
        try:
            value = self._backend.cpu_temperature()
        except (OSError, ValueError) as e:
            raise SensorReadError("io", f"cannot read the CPU temperature: {e}") from None
        return [(self.name, "temperature", value, "C", time.time())]


class DigitalSensor(Sensor):
    """A button or PIR: a reading on every edge (1 active, 0 idle), and on `interval`."""

    def __init__(self, config: SensorConfig, backend: Backend):
        super().__init__(config)
        self.metric = DIGITAL_METRIC[config.type]
        self.device = backend.digital_input(config)

    def on_edge(self, callback: Callable[[Sample], None]) -> None:
        """Call ``callback`` with a sample on every edge (from gpiozero's thread)."""
        self.device.when_activated = lambda: callback(self._sample(1.0))
        self.device.when_deactivated = lambda: callback(self._sample(0.0))

    def read(self) -> list[Sample]:
        return [self._sample(1.0 if self.device.is_active else 0.0)]

    def _sample(self, value: float) -> Sample:
        return (self.name, self.metric, value, "", time.time())

    def close(self) -> None:
        self.device.when_activated = None
        self.device.when_deactivated = None
        self.device.close()


def open_sensor(config: SensorConfig, backend: Backend) -> Sensor:
    if config.type in ("dht11", "dht22"):
        return DHTSensor(config, backend)
    if config.type == "cpu_temperature":
        return CpuTemperatureSensor(config, backend)
    return DigitalSensor(config, backend)
