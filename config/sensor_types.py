"""Every sensor type's facts, declared once: the one place to add a type.

A type's metrics (name, unit, Home Assistant class), the range its part can
physically report, its read floor, the config keys it takes with their
defaults, where `sensor-agent probe` finds it on a bus, which optional extra
brings its driver, and how the mock backend simulates it. The loader, the
agent's backends and sensors, the probe (and, later, the collector's MQTT
bridge and dashboard) read these tables; none of them lists types of its own.

Standard library only, so either program can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


SENSOR, BINARY_SENSOR = "sensor", "binary_sensor"  # Home Assistant's entity platforms


@dataclass(frozen=True)
class Metric:
    """One quantity a reading carries, the same whichever part measured it."""

    name: str
    unit: str  # as sent in each reading ("" for a digital input's 1/0)
    ha_device_class: str | None  # Home Assistant's device_class
    # Wire unit -> the unit_of_measurement Home Assistant accepts for ha_device_class:
    # this metric's own unit first, then what another agent may send
    # (tests/test_home_assistant.py checks each against Home Assistant's own table).
    ha_units: tuple[tuple[str, str], ...] = ()
    binary: bool = False  # an input's state (1/0): a binary_sensor in Home Assistant

    @property
    def ha_component(self) -> str:
        return BINARY_SENSOR if self.binary else SENSOR

    def ha_unit(self, unit: str) -> str | None:
        """Home Assistant's spelling of a wire unit, or None if its class has no such unit."""
        return dict(self.ha_units).get(unit)


TEMPERATURE = Metric("temperature", "C", "temperature",
                     (("C", "°C"), ("°C", "°C"), ("F", "°F"), ("°F", "°F"), ("K", "K")))
HUMIDITY = Metric("humidity", "%", "humidity", (("%", "%"),))
# hPa, as weather services quote it; Home Assistant's class for air pressure.
PRESSURE = Metric("pressure", "hPa", "atmospheric_pressure",
                  (("hPa", "hPa"), ("Pa", "Pa"), ("kPa", "kPa"), ("mbar", "mbar")))
VOLTAGE = Metric("voltage", "V", "voltage", (("V", "V"), ("mV", "mV")))
# No type of ours reports it yet; an agent of another make may.
ILLUMINANCE = Metric("illuminance", "lx", "illuminance", (("lx", "lx"),))
MOTION = Metric("motion", "", "motion", binary=True)
PRESSED = Metric("pressed", "", None, binary=True)  # a button has no device class there

METRICS = MappingProxyType({m.name: m for m in (
    TEMPERATURE, HUMIDITY, PRESSURE, VOLTAGE, ILLUMINANCE, MOTION, PRESSED)})


@dataclass(frozen=True)
class Setting:
    """A config key of a sensor type, besides name, type, interval, filters and metrics.

    ``kind`` says how the loader reads it: ``pin`` (a BCM GPIO number),
    ``seconds``, ``bus`` (an I2C bus number, /dev/i2c-N), ``i2c_address``
    (one of ``choices``), ``w1_id`` (a 1-Wire id like 28-0316a2791dff),
    ``channel`` (``low``..``high``), ``gain`` (one of ``choices``).
    """

    key: str
    kind: str
    default: Any = None  # None and not required: absent means off / found on the bus
    required: bool = False
    choices: tuple[Any, ...] = ()
    low: int = 0
    high: int = 0
    hint: str = ""  # what to write, for a missing required key


@dataclass(frozen=True)
class Failure:
    """A way a read fails: the kind it is counted as, and the driver's words for it."""

    kind: str
    message: str
    weight: float = 1.0  # relative to the type's other failures


@dataclass(frozen=True)
class Simulation:
    """How the mock backend makes this part's readings.

    Each metric starts near ``centre`` (+- ``spread``), walks by a gaussian step
    of ``walk`` per read, pulled back towards the centre by ``pull``, and is
    reported in steps of ``resolution`` (the part's own, so a mock DS18B20
    reports sixteenths of a degree). ``failure_rate`` of reads fail, as one of
    ``failures``.
    """

    centre: dict[str, float]
    spread: dict[str, float]
    walk: dict[str, float]
    resolution: dict[str, float]
    pull: float = 0.02
    failure_rate: float = 0.0
    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True)
class SensorType:
    name: str
    summary: str  # one line, for docs and errors
    interface: str  # gpio | digital | sysfs | 1-wire | i2c | spi
    metrics: tuple[Metric, ...]
    # What the part can physically report; a value outside is a corrupted read.
    plausible: dict[str, tuple[float, float]] = field(default_factory=dict)
    read_floor: float | None = None  # seconds: a shorter interval is raised to it
    polled: bool = True  # False: a reading on every edge (interval is a heartbeat)
    settings: tuple[Setting, ...] = ()
    i2c_addresses: tuple[int, ...] = ()  # where the part answers: how probe names it
    w1_families: tuple[str, ...] = ()  # 1-Wire family codes (the id's first two digits)
    extra: str | None = None  # `pip install 'sensor-edge[EXTRA]'` brings its driver
    simulation: Simulation | None = None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def setting(self, key: str) -> Setting | None:
        return next((s for s in self.settings if s.key == key), None)


PIN = Setting("pin", "pin", required=True, low=0, high=27, hint="its BCM GPIO number")
DEBOUNCE = Setting("debounce", "seconds")
I2C_BUS = Setting("bus", "bus", default=1, low=0, high=255)
# ADS1115 programmable gain -> full-scale range in volts (datasheet table 3).
ADS1115_FULL_SCALE = MappingProxyType({2 / 3: 6.144, 1: 4.096, 2: 2.048, 4: 1.024, 8: 0.512,
                                       16: 0.256})
MCP3008_VREF = 3.3  # its reference pin tied to the Pi's 3.3 V, as every wiring guide shows

_NO_ACK = Failure("no_ack", "[Errno 121] Remote I/O error")
_CLIMATE = {"centre": {"temperature": 21.0, "humidity": 45.0},
            "spread": {"temperature": 3.0, "humidity": 10.0},
            "walk": {"temperature": 0.15, "humidity": 0.5}}

_TYPES = (
    SensorType(
        "dht22", "DHT22/AM2302 on a GPIO pin: temperature C, humidity %", "gpio",
        (TEMPERATURE, HUMIDITY), {"temperature": (-40.0, 80.0), "humidity": (0.0, 100.0)},
        read_floor=2.0, settings=(PIN,), extra="dht",
        simulation=Simulation(**_CLIMATE, resolution={"temperature": 0.1, "humidity": 0.1},
                              failure_rate=0.15, failures=(
            Failure("checksum", "Checksum did not validate. Try again."),
            Failure("timeout", "A full buffer was not returned. Try again."),
            Failure("implausible", "Received unplausible data. Try again."),
        ))),
    SensorType(
        "dht11", "DHT11 on a GPIO pin: temperature C, humidity %", "gpio",
        (TEMPERATURE, HUMIDITY), {"temperature": (0.0, 50.0), "humidity": (20.0, 90.0)},
        read_floor=1.0, settings=(PIN,), extra="dht",
        simulation=Simulation(**_CLIMATE, resolution={"temperature": 1.0, "humidity": 1.0},
                              failure_rate=0.15, failures=(
            Failure("checksum", "Checksum did not validate. Try again."),
            Failure("timeout", "A full buffer was not returned. Try again."),
        ))),
    SensorType(
        "cpu_temperature", "the Pi's SoC temperature, from sysfs: temperature C", "sysfs",
        (TEMPERATURE,), {"temperature": (-40.0, 125.0)},
        simulation=Simulation(centre={"temperature": 48.0}, spread={"temperature": 0.0},
                              walk={"temperature": 0.3}, resolution={"temperature": 0.1},
                              pull=0.05)),
    SensorType(
        "motion", "a PIR on a GPIO pin: motion 1/0 on every edge", "digital", (MOTION,),
        polled=False, settings=(PIN, DEBOUNCE)),
    SensorType(
        "button", "a push button to ground on a GPIO pin: pressed 1/0 on every edge",
        "digital", (PRESSED,), polled=False, settings=(PIN, DEBOUNCE)),
    SensorType(
        "ds18b20", "DS18B20 on the 1-Wire bus: temperature C", "1-wire", (TEMPERATURE,),
        # -127 is what a probe that lost its ground or power mid-read gives.
        {"temperature": (-55.0, 125.0)},
        # A 12-bit conversion takes 750 ms; the kernel's read waits for it.
        read_floor=0.75,
        settings=(Setting("address", "w1_id"),),
        # The DS18B20's family; DS18S20 (10), DS1822 (22) and DS1825 (3b) read the same way.
        w1_families=("28", "10", "22", "3b"), extra="onewire",
        simulation=Simulation(centre={"temperature": 14.0}, spread={"temperature": 6.0},
                              walk={"temperature": 0.03}, resolution={"temperature": 0.0625},
                              failure_rate=0.03, failures=(
            Failure("crc", "the 1-Wire CRC check failed (w1_slave says NO)", 3.0),
            Failure("reset", "85.0 C is the power-on value: no conversion ran "
                             "(check the 3.3 V supply and the 4.7 kOhm pull-up)"),
            Failure("not_found", "the probe is not on the 1-Wire bus", 0.5),
        ))),
    SensorType(
        "bme280", "Bosch BME280 on I2C: temperature C, humidity %, pressure hPa", "i2c",
        (TEMPERATURE, HUMIDITY, PRESSURE),
        {"temperature": (-40.0, 85.0), "humidity": (0.0, 100.0), "pressure": (300.0, 1100.0)},
        settings=(I2C_BUS, Setting("address", "i2c_address", default=0x76,
                                   choices=(0x76, 0x77))),
        i2c_addresses=(0x76, 0x77), extra="i2c",
        simulation=Simulation(
            centre={**_CLIMATE["centre"], "pressure": 1013.0},
            spread={**_CLIMATE["spread"], "pressure": 8.0},
            walk={"temperature": 0.05, "humidity": 0.2, "pressure": 0.05},
            resolution={"temperature": 0.01, "humidity": 0.01, "pressure": 0.01},
            failure_rate=0.005, failures=(_NO_ACK,))),
    SensorType(
        "sht3x", "Sensirion SHT30/31/35 on I2C: temperature C, humidity %", "i2c",
        (TEMPERATURE, HUMIDITY), {"temperature": (-40.0, 125.0), "humidity": (0.0, 100.0)},
        settings=(I2C_BUS, Setting("address", "i2c_address", default=0x44,
                                   choices=(0x44, 0x45))),
        i2c_addresses=(0x44, 0x45), extra="i2c",
        simulation=Simulation(**_CLIMATE, resolution={"temperature": 0.01, "humidity": 0.01},
                              failure_rate=0.01, failures=(
            Failure("crc", "CRC mismatch"), _NO_ACK))),
    SensorType(
        "sht4x", "Sensirion SHT40/41/45 on I2C: temperature C, humidity %", "i2c",
        (TEMPERATURE, HUMIDITY), {"temperature": (-40.0, 125.0), "humidity": (0.0, 100.0)},
        settings=(I2C_BUS, Setting("address", "i2c_address", default=0x44,
                                   choices=(0x44, 0x45, 0x46))),
        i2c_addresses=(0x44, 0x45, 0x46), extra="i2c",
        simulation=Simulation(**_CLIMATE, resolution={"temperature": 0.01, "humidity": 0.01},
                              failure_rate=0.01, failures=(
            Failure("crc", "Invalid CRC calculated"), _NO_ACK))),
    SensorType(
        "mcp3008", "MCP3008 10-bit ADC on SPI0 (CE0): voltage V of one channel", "spi",
        (VOLTAGE,), {"voltage": (0.0, MCP3008_VREF)},
        settings=(Setting("channel", "channel", default=0, low=0, high=7),),
        # An SPI ADC has no acknowledge and no checksum: it cannot tell a failed read.
        simulation=Simulation(centre={"voltage": 1.6}, spread={"voltage": 0.8},
                              walk={"voltage": 0.01}, resolution={"voltage": MCP3008_VREF / 1023},
                              pull=0.01)),
    SensorType(
        "ads1115", "TI ADS1115 16-bit ADC on I2C: voltage V of one channel", "i2c",
        (VOLTAGE,), {"voltage": (-6.144, 6.144)},
        settings=(I2C_BUS,
                  Setting("address", "i2c_address", default=0x48,
                          choices=(0x48, 0x49, 0x4A, 0x4B)),
                  Setting("channel", "channel", default=0, low=0, high=3),
                  Setting("gain", "gain", default=1, choices=tuple(ADS1115_FULL_SCALE))),
        i2c_addresses=(0x48, 0x49, 0x4A, 0x4B), extra="i2c",
        simulation=Simulation(centre={"voltage": 3.7}, spread={"voltage": 0.3},
                              walk={"voltage": 0.002}, resolution={"voltage": 4.096 / 32768},
                              pull=0.01, failure_rate=0.005, failures=(_NO_ACK,))),
)

SENSOR_TYPES = MappingProxyType({t.name: t for t in _TYPES})

# Parts often found on a Pi's I2C bus, by address, beyond those above: the probe
# names them so an operator can tell a wiring fault from another board's chip.
OTHER_I2C_PARTS = MappingProxyType({
    0x0E: ("mag3110",), 0x1D: ("adxl345",), 0x20: ("mcp23017", "pcf8574"),
    0x23: ("bh1750",), 0x27: ("pcf8574 LCD backpack",), 0x29: ("vl53l0x", "tsl2591"),
    0x38: ("aht20",), 0x39: ("tsl2561", "apds9960"), 0x3C: ("ssd1306 OLED",),
    0x3D: ("ssd1306 OLED",), 0x40: ("htu21d", "si7021", "ina219"), 0x53: ("adxl345",),
    0x57: ("at24 EEPROM",), 0x5A: ("mlx90614", "ccs811"), 0x5C: ("am2320",),
    0x60: ("mcp4725",), 0x61: ("scd30",), 0x62: ("scd40",), 0x68: ("ds3231 RTC", "mpu6050"),
    0x69: ("sps30",), 0x70: ("tca9548a multiplexer",), 0x77: ("bmp180", "bme680"),
})


def likely_i2c_parts(address: int) -> tuple[str, ...]:
    """The parts that answer at ``address``: ours first, then other common ones."""
    ours = tuple(t.name for t in _TYPES if address in t.i2c_addresses)
    return ours + tuple(p for p in OTHER_I2C_PARTS.get(address, ()) if p not in ours)


def w1_part(device_id: str) -> str | None:
    """The sensor type a 1-Wire id (e.g. 28-0316a2791dff) belongs to, if we read it."""
    family = device_id.split("-", 1)[0].lower()
    return next((t.name for t in _TYPES if family in t.w1_families), None)
