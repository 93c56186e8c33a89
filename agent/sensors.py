"""Configured sensors, each reading through whichever backend the agent has.

A polled sensor (`read()`, blocking, run off the event loop) returns samples or
raises :class:`SensorReadError`. A digital sensor calls back on every edge,
from gpiozero's own threads. What each type measures, in which units and
within which bounds comes from config/sensor_types.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from sensor_edge.config.model import SensorConfig
from sensor_edge.config.sensor_types import METRICS, SENSOR_TYPES
from sensor_edge.agent.backends import DHT_CACHE_SECONDS, Backend, SensorReadError

__all__ = ["Sample", "Sensor", "SensorReadError", "open_sensor", "open_sensors"]

# (sensor, metric, value, unit, ts)
Sample = tuple[str, str, float, str, float]


def samples(config: SensorConfig, values: dict[str, float]) -> list[Sample]:
    """One read's values as samples, each metric with its unit, in the type's order.

    A value outside what the part can physically report is a corrupted read
    (a DHT's bad bits, a DS18B20's -127): the whole read is refused.
    """
    sensor_type = SENSOR_TYPES[config.type]
    for metric, value in values.items():
        low, high = sensor_type.plausible.get(metric, (float("-inf"), float("inf")))
        if not low <= value <= high:
            raise SensorReadError("implausible",
                                  f"{metric} {value} is outside {low:g}..{high:g}")
    ts = time.time()
    return [(config.name, m.name, float(values[m.name]), m.unit, ts)
            for m in sensor_type.metrics]


class Sensor:
    # Seconds from the end of one read to the start of the next, at the least.
    min_spacing = 0.0

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
        # Sooner than the library's cache window, a read would repeat an old
        # measurement (or None) as if it were new: the DHT11's 1 s floor included.
        self.min_spacing = max(SENSOR_TYPES[config.type].read_floor, DHT_CACHE_SECONDS)
        self._last_read_end: float | None = None
        self.device = backend.dht(config)

    def read(self) -> list[Sample]:
        # The sampler already spaces reads; this is the guarantee for any caller.
        if self._last_read_end is not None:
            wait = self._last_read_end + self.min_spacing - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        try:
            return self._measure()
        finally:
            self._last_read_end = time.monotonic()

    def _measure(self) -> list[Sample]:
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
        return samples(self.config, {"temperature": temperature, "humidity": humidity})

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
    if "not found" in text:  # "DHT sensor not found, check wiring"
        return "not_found"
    if "unplausible" in text or "implausible" in text:
        return "implausible"
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
        return samples(self.config, {"temperature": value})


class BusSensor(Sensor):
    """A part on the 1-Wire, I2C or SPI bus: a DS18B20, BME280, SHT3x, SHT4x, ADC channel."""

    def __init__(self, config: SensorConfig, backend: Backend):
        super().__init__(config)
        # The part's floor (a DS18B20's 750 ms conversion); none for the others.
        self.min_spacing = SENSOR_TYPES[config.type].read_floor or 0.0
        self.part = backend.part(config)

    def read(self) -> list[Sample]:
        return samples(self.config, self.part.read())

    def close(self) -> None:
        self.part.close()


class DigitalSensor(Sensor):
    """A button or PIR: a reading on every edge (1 active, 0 idle), and on `interval`.

    With ``debounce``, a change within that many seconds of the last reported
    one is contact bounce: it is not reported, but the input is looked at again
    when the window ends and its settled state reported if it differs. So the
    readings always alternate and always end on the input's real state. Done
    here rather than by the pin factory's bounce_time: gpiozero's MockPin
    ignores that, and lgpio and RPi.GPIO each mean something else by it.
    """

    def __init__(self, config: SensorConfig, backend: Backend):
        super().__init__(config)
        self.metric = SENSOR_TYPES[config.type].metrics[0].name
        self.debounce = config.debounce or 0.0
        self.device = backend.digital_input(config)
        self._lock = threading.Lock()
        self._callback: Callable[[Sample], None] | None = None
        self._reported = self._state()
        self._reported_at = float("-inf")
        self._settle: threading.Timer | None = None
        self._closed = False

    def on_edge(self, callback: Callable[[Sample], None]) -> None:
        """Call ``callback`` with a sample on every edge (from gpiozero's thread)."""
        self._callback = callback
        self.device.when_activated = lambda: self._changed(1.0)
        self.device.when_deactivated = lambda: self._changed(0.0)

    def _state(self) -> float:
        return 1.0 if self.device.is_active else 0.0

    def _changed(self, value: float) -> None:
        with self._lock:
            if self._closed or value == self._reported:
                return
            now = time.monotonic()
            wait = self._reported_at + self.debounce - now
            if wait > 0:
                if self._settle is None:
                    self._settle = threading.Timer(wait, self._settled)
                    self._settle.daemon = True
                    self._settle.start()
                return
            self._report(value, now)

    def _settled(self) -> None:
        with self._lock:
            if threading.current_thread() is not self._settle:
                return  # armed in a window that has ended, and ran late
            self._settle = None
            if self._closed:
                return
            value = self._state()
            if value != self._reported:
                self._report(value, time.monotonic())

    def _report(self, value: float, now: float) -> None:
        # Under the lock: edges reach the callback in the order they happened.
        self._reported, self._reported_at = value, now
        if self._settle is not None:  # a new window: the last one's timer has no say in it
            self._settle.cancel()
            self._settle = None
        if self._callback is not None:
            self._callback(self._sample(value))

    def read(self) -> list[Sample]:
        return [self._sample(self._state())]

    def _sample(self, value: float) -> Sample:
        return (self.name, self.metric, value, METRICS[self.metric].unit, time.time())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._settle is not None:
                self._settle.cancel()
        if self._callback is not None:  # gpiozero warns when clearing an unset callback
            self.device.when_activated = None
            self.device.when_deactivated = None
        self.device.close()


SENSOR_CLASSES: dict[str, type[Sensor]] = {
    "gpio": DHTSensor, "sysfs": CpuTemperatureSensor, "digital": DigitalSensor,
    "1-wire": BusSensor, "i2c": BusSensor, "spi": BusSensor,
}


def open_sensor(config: SensorConfig, backend: Backend) -> Sensor:
    return SENSOR_CLASSES[SENSOR_TYPES[config.type].interface](config, backend)


def open_sensors(configs: Iterable[SensorConfig], backend: Backend) -> list[Sensor]:
    """Open every configured sensor; if one fails, release those already open."""
    sensors: list[Sensor] = []
    try:
        for config in configs:
            sensors.append(open_sensor(config, backend))
    except BaseException:
        # A DHT holds its pin until exit(): the next start must find it free.
        for sensor in sensors:
            try:
                sensor.close()
            except Exception:
                pass
        raise
    return sensors
