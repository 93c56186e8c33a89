"""The real thing: gpiozero's pin factories, adafruit_dht over Blinka, sysfs, and the
1-Wire, I2C and SPI parts through their drivers (drivers.py)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from sensor_edge.config.model import SensorConfig
from sensor_edge.config.sensor_types import SENSOR_TYPES
from sensor_edge.runtime.service import StartupError
from sensor_edge.agent.backends import CPU_TEMPERATURE_FILE, Backend, BusUnavailable, DHTDevice, Part
from sensor_edge.agent.backends.drivers import I2C_PARTS, W1_DEVICES, MCP3008Part, W1Thermometer, w1_devices
from sensor_edge.agent.backends.i2c import I2CBus, i2c_device_path

log = logging.getLogger("sensor_edge.agent.backend.hardware")

PIN_FACTORY_ENV = "GPIOZERO_PIN_FACTORY"


class HardwareBackend(Backend):
    name = "hardware"

    def __init__(self, pin_factory: str | None = None, w1_devices: Path = W1_DEVICES,
                 open_smbus: Callable[[int], Any] | None = None):
        """``w1_devices`` and ``open_smbus`` (bus number -> an smbus2.SMBus) are where the
        1-Wire and I2C buses are; tests point them at fakes."""
        # The config's choice wins; else gpiozero's own variable; else gpiozero
        # tries lgpio first, which is the one that works on a Pi 5.
        self.pin_factory_name = pin_factory or os.environ.get(PIN_FACTORY_ENV) or None
        self._factory_made = False
        self.w1_devices = w1_devices
        self._open_smbus = open_smbus
        self._i2c_buses: dict[int, I2CBus] = {}

    def _factory(self) -> Any:
        if not os.access(".", os.W_OK):
            # lgpio (gpiozero's first choice) makes its notification pipes in
            # $LG_WD, else here: a probe run from a read-only directory needs this.
            os.environ.setdefault("LG_WD", tempfile.gettempdir())
        if self.pin_factory_name is None or self._factory_made:
            return self.pin_factory
        self.pin_factory = load_pin_factory(self.pin_factory_name)
        self._factory_made = True
        log.info("gpiozero pin factory: %s", self.pin_factory_name)
        return self.pin_factory

    def digital_input(self, sensor: SensorConfig) -> Any:
        from gpiozero.exc import GPIOZeroError

        self._factory()
        try:
            return super().digital_input(sensor)
        except GPIOZeroError as e:
            # No pin factory loads (off a Pi, lgpio missing), a pin in use, ...
            raise StartupError(
                f"sensor {sensor.name!r}: cannot use GPIO{sensor.pin}: {type(e).__name__}: {e}"
            ) from None

    def dht(self, sensor: SensorConfig) -> DHTDevice:
        # Imported here, not at the top: off a Pi, Blinka's board detection warns
        # or raises, and on a Pi it costs start-up time when no DHT is configured.
        # Recent Blinka releases replace the SIGTERM handler on import; the service
        # installs its own after start(), so this import must happen during start().
        try:
            import adafruit_dht
            import board
        except ImportError:
            raise StartupError(
                f"sensor {sensor.name!r}: reading a {sensor.type} needs the adafruit DHT "
                "library: pip install 'sensor-edge[dht]'"
            ) from None
        except (NotImplementedError, RuntimeError) as e:
            raise StartupError(f"sensor {sensor.name!r}: no usable GPIO board here: {e}") from None
        pin = getattr(board, f"D{sensor.pin}", None)
        if pin is None:
            raise StartupError(f"sensor {sensor.name!r}: this board has no pin D{sensor.pin}")
        cls = adafruit_dht.DHT22 if sensor.type == "dht22" else adafruit_dht.DHT11
        try:
            return cls(pin)
        except (RuntimeError, OSError) as e:
            # Typically the pin is still held by the libgpiod_pulsein helper of an
            # agent that died without exit(): systemd's cgroup kill ends it.
            raise StartupError(
                f"sensor {sensor.name!r}: cannot open the {sensor.type} on GPIO{sensor.pin}: {e}"
                " (is another program, or a leftover libgpiod_pulsein, using the pin?)"
            ) from None

    def cpu_temperature(self) -> float:
        with open(CPU_TEMPERATURE_FILE) as f:
            return int(f.read().strip()) / 1000.0

    def part(self, sensor: SensorConfig) -> Part:
        interface = SENSOR_TYPES[sensor.type].interface
        if interface == "1-wire":
            return W1Thermometer(sensor, self.w1_devices)
        if interface == "spi":
            return MCP3008Part(sensor, self._factory())
        part_class = I2C_PARTS[sensor.type]
        try:
            bus = self.i2c_bus(sensor.bus)
        except BusUnavailable as e:
            raise StartupError(f"sensor {sensor.name!r}: {e}") from None
        except ImportError:
            raise StartupError(f"sensor {sensor.name!r}: reading a {sensor.type} needs smbus2: "
                               "pip install 'sensor-edge[i2c]'") from None
        return part_class(sensor, bus)

    def i2c_bus(self, number: int) -> I2CBus:
        """The open I2C bus ``number``, shared by its parts; BusUnavailable names the fix."""
        bus = self._i2c_buses.get(number)
        if bus is None:
            try:
                bus = I2CBus(number, self._open_smbus)
            except FileNotFoundError:
                hint = ("turn I2C on: sudo raspi-config nonint do_i2c 0, or dtparam=i2c_arm=on "
                        "in /boot/firmware/config.txt, and reboot") if number == 1 else \
                    "is this bus turned on in /boot/firmware/config.txt?"
                raise BusUnavailable(f"no {i2c_device_path(number)}: {hint}") from None
            except PermissionError:
                raise BusUnavailable(f"no permission on {i2c_device_path(number)}: add the "
                                     "user to the i2c group (the installer does)") from None
            except OSError as e:
                raise BusUnavailable(f"cannot open {i2c_device_path(number)}: {e}") from None
            self._i2c_buses[number] = bus
        return bus

    def scan_w1(self) -> list[str]:
        return w1_devices(self.w1_devices)

    def scan_i2c(self, bus: int) -> list[int]:
        try:
            return self.i2c_bus(bus).scan()
        except ImportError:
            raise BusUnavailable("scanning I2C needs smbus2: pip install 'sensor-edge[i2c]'") \
                from None

    def close(self) -> None:
        for bus in self._i2c_buses.values():
            bus.close()
        self._i2c_buses.clear()
        if self._factory_made and self.pin_factory is not None:
            self.pin_factory.close()


def load_pin_factory(name: str) -> Any:
    """gpiozero's pin factory of this name, as GPIOZERO_PIN_FACTORY would load it."""
    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name == name.lower():
            try:
                return ep.load()()
            except Exception as e:  # ImportError, a missing /dev/gpiochip*, ...
                hint = " (on Raspberry Pi OS: sudo apt install python3-lgpio)" \
                    if name.lower() == "lgpio" else ""
                raise StartupError(
                    f"gpiozero pin factory {name!r} does not work here: {e}{hint}") from None
    known = ", ".join(sorted(ep.name for ep in entry_points(group="gpiozero_pin_factories")))
    raise StartupError(f"unknown gpiozero pin factory {name!r} (installed: {known})")
