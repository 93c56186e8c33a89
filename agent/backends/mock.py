"""The mock backend: a simulated world behind the same interface as the hardware.

Digital inputs are real gpiozero devices on gpiozero's own MockFactory, so
the code that runs on a Pi runs here too; a background thread drives their
mock pins high and low on a random schedule. The MCP3008 is gpiozero's own
MCP3008 too, talking SPI on those mock pins to a simulated chip. Every other
part drifts plausibly, in its own resolution, and fails about as often and
in the same words as the real one does (config/sensor_types.py says how), so
the retry path runs in every demo. Nothing here needs a driver installed.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from gpiozero.pins.mock import MockSPIDevice

from sensor_edge.config.model import SensorConfig
from sensor_edge.config.sensor_types import ADS1115_FULL_SCALE, MCP3008_VREF, SENSOR_TYPES, Simulation
from sensor_edge.agent.backends import CPU_TEMPERATURE_FILE, DHT_CACHE_SECONDS, Backend, Part, SensorReadError
from sensor_edge.agent.backends.drivers import MCP3008Part

log = logging.getLogger("sensor_edge.agent.backend.mock")

# SPI0's pins, BCM: where gpiozero's MCP3008 (port 0, device 0) talks.
SPI0_CLOCK, SPI0_MOSI, SPI0_MISO, SPI0_CE0 = 11, 10, 9, 8


class Walk:
    """Values that wander like a real room's, as a type's Simulation says."""

    def __init__(self, simulation: Simulation, rng: random.Random):
        self.simulation = simulation
        self._rng = rng
        self.true = {m: c + rng.uniform(-1, 1) * simulation.spread.get(m, 0.0)
                     for m, c in simulation.centre.items()}

    def step(self) -> dict[str, float]:
        """Move every value one step; return them as the part reports them."""
        sim = self.simulation
        for metric, value in self.true.items():
            value += self._rng.gauss(0, sim.walk[metric]) + \
                (sim.centre[metric] - value) * sim.pull
            self.true[metric] = value
        return {m: quantize(v, sim.resolution[m]) for m, v in self.true.items()}

    def failure(self) -> SensorReadError | None:
        """Now and then, one of the part's failures (None: this read goes well)."""
        sim = self.simulation
        if not sim.failures or self._rng.random() >= sim.failure_rate:
            return None
        failure = self._rng.choices(sim.failures, [f.weight for f in sim.failures])[0]
        return SensorReadError(failure.kind, failure.message)


def quantize(value: float, step: float) -> float:
    """``value`` in whole steps of the part's resolution, as its registers hold it."""
    return round(round(value / step) * step, 6)


class SimulatedPart:
    """A 1-Wire or I2C part: drifting values, the part's own failures, its own steps."""

    def __init__(self, sensor: SensorConfig, rng: random.Random):
        self.sensor = sensor
        self._walk = Walk(SENSOR_TYPES[sensor.type].simulation, rng)
        self._lock = threading.Lock()
        if sensor.type == "ads1115":
            # Steps and saturation follow the gain, as the real converter's do.
            self._full_scale = ADS1115_FULL_SCALE[sensor.gain]
            self._walk.simulation = replace(self._walk.simulation,
                                            resolution={"voltage": self._full_scale / 32768})

    def read(self) -> dict[str, float]:
        with self._lock:
            failure = self._walk.failure()
            if failure is not None:
                raise failure
            values = self._walk.step()
        if self.sensor.type == "ads1115":  # saturates at its codes -32768 and 32767
            top = self._full_scale * 32767 / 32768
            values["voltage"] = max(-self._full_scale, min(values["voltage"], top))
        return values

    def close(self) -> None:
        pass


class SimulatedMCP3008(MockSPIDevice):
    """An MCP3008 on gpiozero's mock SPI pins, answering as its datasheet says.

    The master sends a start bit (after any leading zeros), the single-ended
    (1) or differential (0) bit and three channel bits; the chip then clocks
    out a null bit and ten result bits, MSB first: 1024 * Vin / Vref, at most
    1023. ``voltage(channel)`` gives each channel's input. Modelled on the
    MockMCP3xxx of gpiozero's own tests.
    """

    def __init__(self, pin_factory, voltage: Callable[[int], float],
                 vref: float = MCP3008_VREF):
        super().__init__(SPI0_CLOCK, SPI0_MOSI, SPI0_MISO, SPI0_CE0, pin_factory=pin_factory)
        self.voltage = voltage
        self.vref = vref
        self.state = "idle"
        self.conversions: list[tuple[bool, int]] = []  # (single-ended, channel), for tests

    def on_start(self) -> None:
        super().on_start()
        self.state = "idle"

    def on_bit(self) -> None:
        if self.state == "idle":
            if self.rx_buf[-1]:  # the start bit
                self.state, self.rx_buf = "mode", []
        elif self.state == "mode":
            self.state = "single" if self.rx_buf[-1] else "diff"
            self.rx_buf = []
        elif self.state in ("single", "diff"):
            if len(self.rx_buf) == 3:
                self._convert(self.state == "single", self.rx_word())
                self.state = "result"
        elif self.state == "result" and not self.tx_buf:
            self.state, self.rx_buf = "idle", []

    def _convert(self, single: bool, channel: int) -> None:
        self.conversions.append((single, channel))
        vin = self.voltage(channel) if single else \
            self.voltage(channel) - self.voltage(channel ^ 1)
        code = min(1023, max(0, int(1024 * vin / self.vref)))
        self.tx_word(code, 12)  # a sample bit, the null bit, then B9..B0


class SimulatedDHT:
    """Behaves as adafruit_dht.DHT11/DHT22 are documented to.

    Each property access measures, unless a measurement began less than
    DHT_CACHE_SECONDS ago: then it answers from the cache, the last good values
    or None before the first one (as the real library does). A failed
    measurement raises RuntimeError.
    """

    def __init__(self, kind: str, seed: int):
        self.kind = kind
        self._walk = Walk(SENSOR_TYPES[kind].simulation, random.Random(seed))
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
            failure = self._walk.failure()
            if failure is not None:
                raise RuntimeError(str(failure))  # as adafruit_dht reports every failure
            values = self._walk.step()  # a DHT11 reports whole numbers, a DHT22 tenths
            self._temperature = values["temperature"]
            self._humidity = min(99.0, max(5.0, values["humidity"]))

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
        from gpiozero.pins.mock import MockFactory

        self.pin_factory = MockFactory()
        self._seed = seed if seed is not None else random.randrange(1 << 30)
        self._rng = random.Random(self._seed)
        self._scale = schedule_scale
        self._inputs: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu = Walk(SENSOR_TYPES["cpu_temperature"].simulation, self._rng)
        # What a scan of the simulated buses finds: the parts opened so far.
        self._w1_ids: list[str] = []
        self._i2c: dict[int, list[int]] = {}
        self._mcp3008: SimulatedMCP3008 | None = None
        self._mcp3008_inputs: dict[int, Walk] = {}

    def dht(self, sensor: SensorConfig) -> SimulatedDHT:
        return SimulatedDHT(sensor.type, seed=self._seed + (sensor.pin or 0))

    def part(self, sensor: SensorConfig) -> Part:
        rng = random.Random(f"{self._seed}:{sensor.name}")
        interface = SENSOR_TYPES[sensor.type].interface
        if interface == "spi":
            self._mcp3008_inputs[sensor.channel] = Walk(SENSOR_TYPES["mcp3008"].simulation, rng)
            if self._mcp3008 is None:  # before gpiozero takes the pins, as its tests do
                self._mcp3008 = SimulatedMCP3008(self.pin_factory, self._mcp3008_input)
            return MCP3008Part(sensor, self.pin_factory)
        if interface == "1-wire":
            self._w1_ids.append(sensor.address or f"28-{rng.getrandbits(48):012x}")
        else:
            self._i2c.setdefault(sensor.bus, []).append(sensor.address)
        return SimulatedPart(sensor, rng)

    def _mcp3008_input(self, channel: int) -> float:
        walk = self._mcp3008_inputs.get(channel)
        if walk is None:
            return 0.0  # an input tied to ground
        return min(MCP3008_VREF, max(0.0, walk.step()["voltage"]))

    def scan_w1(self) -> list[str]:
        return sorted(self._w1_ids)

    def scan_i2c(self, bus: int) -> list[int]:
        return sorted(self._i2c.get(bus, []))

    def digital_input(self, sensor: SensorConfig):
        device = super().digital_input(sensor)
        self._inputs.append((sensor.pin, sensor.type))
        return device

    def cpu_temperature(self) -> float:
        if os.path.exists(CPU_TEMPERATURE_FILE):
            with open(CPU_TEMPERATURE_FILE) as f:
                return int(f.read().strip()) / 1000.0
        return self._cpu.step()["temperature"]

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
        if self._mcp3008 is not None:
            self._mcp3008.close()
        self.pin_factory.close()
