"""Bus parts read through their well-kept drivers (docs/raspberry-pi.md says why each).

- DS18B20: w1thermsensor, over the kernel's w1 sysfs files (its CRC "YES"
  check, the 85.0 power-on value); the 750 ms conversion happens inside the
  read of w1_slave, which the sampler runs off the event loop.
- BME280, SHT3x, SHT4x, ADS1115: the Adafruit CircuitPython drivers, on an
  :class:`~.i2c.I2CBus` over smbus2.
- MCP3008: gpiozero's own MCP3008 on the backend's pin factory (hardware
  SPI through lgpio on a Pi, gpiozero's MockSPIDevice in the mock).

Each driver is imported when a sensor of its type is opened, never before: an
agent with only a DHT needs none of them. A missing driver or bus stops the
start with the fix; a part that does not answer is a failed read, counted,
and the part is opened afresh on the next read (re-plugged or power-cycled,
it has lost its settings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sensor_edge.config.model import SensorConfig
from sensor_edge.config.sensor_types import MCP3008_VREF, SENSOR_TYPES
from sensor_edge.runtime.service import StartupError
from sensor_edge.agent.backends import BusUnavailable, SensorReadError
from sensor_edge.agent.backends.i2c import I2CBus, is_no_ack

W1_DEVICES = Path("/sys/bus/w1/devices")


def _needs_extra(sensor: SensorConfig, module: str) -> StartupError:
    extra = SENSOR_TYPES[sensor.type].extra
    return StartupError(f"sensor {sensor.name!r}: reading a {sensor.type} needs {module}: "
                        f"pip install 'sensor-edge[{extra}]'")


def w1_devices(devices: Path) -> list[str]:
    """The ids under the kernel's 1-Wire devices folder (not the bus masters)."""
    try:
        names = sorted(entry.name for entry in devices.iterdir())
    except OSError:
        raise BusUnavailable(f"no 1-Wire bus ({devices} is missing): add dtoverlay=w1-gpio "
                             "to /boot/firmware/config.txt and reboot") from None
    return [name for name in names if not name.startswith("w1_bus_master")]


class W1Thermometer:
    """A DS18B20 (or kin) by id, or the only one on the bus; through w1thermsensor."""

    def __init__(self, sensor: SensorConfig, devices: Path = W1_DEVICES):
        # Its import would run modprobe (and wait a second for it) where the bus is
        # missing; the overlay loads the modules at boot, and the agent may not anyway.
        os.environ.setdefault("W1THERMSENSOR_NO_KERNEL_MODULE", "1")
        try:
            import w1thermsensor
        except ImportError:
            raise _needs_extra(sensor, "w1thermsensor") from None
        try:
            w1_devices(devices)
        except BusUnavailable as e:
            raise StartupError(f"sensor {sensor.name!r}: {e}") from None
        self._lib = w1thermsensor
        # w1thermsensor reads its folder from the class, as its own tests point it elsewhere.
        self._driver_class = type("W1ThermSensorHere", (w1thermsensor.W1ThermSensor,),
                                  {"BASE_DIRECTORY": devices})
        self._devices = devices
        self._families = SENSOR_TYPES[sensor.type].w1_families
        self.device_id: str | None = sensor.address
        self._driver: Any = None

    def _open(self) -> Any:
        device_id = self.device_id
        if device_id is None:
            found = [d for d in w1_devices(self._devices) if d[:2] in self._families]
            if not found:
                raise SensorReadError("not_found", f"no thermometer on the 1-Wire bus "
                                                   f"({self._devices} lists none)")
            if len(found) > 1:
                raise SensorReadError("ambiguous", f"{len(found)} thermometers on the 1-Wire "
                                      f"bus ({', '.join(found)}): give this sensor its address")
            device_id = found[0]
        family, serial = device_id.split("-", 1)
        lib = self._lib
        try:
            return self._driver_class(lib.Sensor.from_id_string(family), serial)
        except lib.NoSensorFoundError:
            raise SensorReadError("not_found", f"{device_id} is not on the 1-Wire bus "
                                               "(unplugged, or a wire is loose)") from None

    def read(self) -> dict[str, float]:
        lib = self._lib
        try:
            if self._driver is None:
                self._driver = self._open()
            return {"temperature": self._driver.get_temperature()}
        except lib.ResetValueError:
            raise SensorReadError("reset", "85.0 C is the power-on value: no conversion ran "
                                           "(check the 3.3 V supply and the 4.7 kOhm pull-up)"
                                  ) from None
        except lib.SensorNotReadyError:
            raise SensorReadError("crc", "the 1-Wire CRC check failed (w1_slave says NO)") \
                from None
        except lib.NoSensorFoundError:
            self._driver = None  # the folder went: the kernel dropped an unplugged probe
            raise SensorReadError("not_found", f"{self.device_id or 'the probe'} is gone from "
                                               "the 1-Wire bus (unplugged?)") from None
        except BusUnavailable as e:
            raise SensorReadError("not_found", str(e)) from None
        except (OSError, ValueError, IndexError) as e:  # an unreadable or garbled w1_slave
            self._driver = None
            raise SensorReadError("io", f"cannot read the 1-Wire probe: {e}") from None

    def close(self) -> None:
        pass


class I2CPart:
    """A part on an I2C bus through its Adafruit driver, opened on the first read."""

    module = ""  # the driver's import name, for the message when it is missing

    def __init__(self, sensor: SensorConfig, bus: I2CBus):
        self.sensor = sensor
        self.bus = bus
        self._driver: Any = None
        try:
            self._import()
        except ImportError:
            raise _needs_extra(sensor, self.module) from None

    def _import(self) -> None:
        raise NotImplementedError

    def _open(self) -> Any:
        raise NotImplementedError

    def _measure(self, driver: Any) -> dict[str, float]:
        raise NotImplementedError

    def read(self) -> dict[str, float]:
        where = f"0x{self.sensor.address:02x} on I2C bus {self.bus.bus}"
        try:
            with self.bus.part_lock(self.sensor.address):
                if self._driver is None:
                    self._driver = self._open()
                return self._measure(self._driver)
        except OSError as e:
            self._driver = None
            if is_no_ack(e):
                raise SensorReadError("no_ack", f"no answer at {where} ({e})") from None
            raise SensorReadError("io", f"I2C error at {where}: {e}") from None
        except ValueError as e:  # adafruit_bus_device: "No I2C device at address: 0x76"
            self._driver = None
            raise SensorReadError("no_ack", f"no answer at {where} ({e})") from None
        except RuntimeError as e:  # the drivers' CRC mismatches, a wrong chip id
            self._driver = None
            text = str(e)
            kind = "crc" if "crc" in text.lower() else \
                "wrong_part" if "chip id" in text.lower() else "error"
            raise SensorReadError(kind, f"{text} (at {where})") from None

    def close(self) -> None:
        self._driver = None


class BME280Part(I2CPart):
    module = "adafruit-circuitpython-bme280"

    def _import(self) -> None:
        from adafruit_bme280 import basic

        self._lib = basic

    def _open(self) -> Any:
        # Left in the driver's forced mode: each read starts a measurement and
        # writes the settings again, so a part that was power-cycled reads right.
        return self._lib.Adafruit_BME280_I2C(self.bus, self.sensor.address)

    def _measure(self, driver: Any) -> dict[str, float]:
        return {"temperature": driver.temperature, "humidity": driver.humidity,
                "pressure": driver.pressure}


class SHT3xPart(I2CPart):
    module = "adafruit-circuitpython-sht31d"

    def _import(self) -> None:
        import adafruit_sht31d

        self._lib = adafruit_sht31d

    def _open(self) -> Any:
        return self._lib.SHT31D(self.bus, self.sensor.address)  # single shot, high repeatability

    def _measure(self, driver: Any) -> dict[str, float]:
        return {"temperature": driver.temperature, "humidity": driver.relative_humidity}


class SHT4xPart(I2CPart):
    module = "adafruit-circuitpython-sht4x"

    def _import(self) -> None:
        import adafruit_sht4x

        self._lib = adafruit_sht4x

    def _open(self) -> Any:
        return self._lib.SHT4x(self.bus, self.sensor.address)  # high precision, no heater

    def _measure(self, driver: Any) -> dict[str, float]:
        temperature, humidity = driver.measurements  # one measurement, both values
        return {"temperature": temperature, "humidity": humidity}


class ADS1115Part(I2CPart):
    module = "adafruit-circuitpython-ads1x15"

    def _import(self) -> None:
        from adafruit_ads1x15.ads1115 import ADS1115
        from adafruit_ads1x15.analog_in import AnalogIn

        self._ads1115, self._analog_in = ADS1115, AnalogIn

    def _open(self) -> Any:
        # Single-shot conversions (the driver's default): each read is a fresh one.
        adc = self._ads1115(self.bus, gain=self.sensor.gain, address=self.sensor.address)
        return self._analog_in(adc, self.sensor.channel)  # the channel against ground

    def _measure(self, driver: Any) -> dict[str, float]:
        return {"voltage": driver.voltage}


I2C_PARTS: dict[str, type[I2CPart]] = {
    "bme280": BME280Part, "sht3x": SHT3xPart, "sht4x": SHT4xPart, "ads1115": ADS1115Part}


class MCP3008Part:
    """One channel of an MCP3008 on SPI0 (CE0), through gpiozero on ``pin_factory``."""

    def __init__(self, sensor: SensorConfig, pin_factory: Any):
        from gpiozero import MCP3008, Device
        from gpiozero.exc import GPIOZeroError

        if pin_factory is not None and Device.pin_factory is None:
            # gpiozero 2.0's software SPI bus (the fallback, and the mock's) asks for the
            # default pin factory even when given one: let that be the one we use.
            Device.pin_factory = pin_factory
        try:
            self._adc = MCP3008(channel=sensor.channel, max_voltage=MCP3008_VREF,
                                pin_factory=pin_factory)
        except (GPIOZeroError, OSError) as e:
            raise StartupError(f"sensor {sensor.name!r}: cannot use SPI for the MCP3008: "
                               f"{type(e).__name__}: {e}") from None

    def read(self) -> dict[str, float]:
        try:
            return {"voltage": self._adc.voltage}
        except OSError as e:
            raise SensorReadError("io", f"SPI error: {e}") from None

    def close(self) -> None:
        self._adc.close()
