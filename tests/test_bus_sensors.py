"""1-Wire, I2C and SPI sensors on the hardware backend, through their real drivers.

w1thermsensor reads a fake w1 sysfs tree; the Adafruit drivers run on
agent/backends/i2c.py over a fake smbus2 bus whose parts answer as their
datasheets say (tests/fakes/sensor_buses.py); gpiozero's MCP3008 talks
software SPI on its MockFactory to a simulated chip. A wrong register, a
wrong command or a bad conversion anywhere in that stack fails here.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import sys
import time

import pytest
from fakes.sensor_buses import (
    ADS1115,
    BME280,
    FakeSMBus,
    SHT3x,
    SHT4x,
    W1Tree,
    bme280_calibration,
    dallas_crc8,
    scratchpad,
    sensirion_crc8,
)
from sensor_edge.agent.backends.hardware import HardwareBackend
from sensor_edge.agent.backends.mock import SimulatedMCP3008
from sensor_edge.agent.probe import run_probe
from sensor_edge.agent.sampler import Sampler
from sensor_edge.agent.sensors import SensorReadError, open_sensors
from sensor_edge.runtime.service import StartupError
from test_hardware_backend import agent_config

# The BMP280/BME280 datasheet's worked example (BMP280 datasheet 3.12, the same
# compensation as the BME280's): these give 25.08 C and 100653.27 Pa.
DATASHEET_T = (27504, 26435, -1000)
DATASHEET_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
DATASHEET_ADC_T, DATASHEET_ADC_P = 519888, 415148
# Humidity has no worked example: a typical part's calibration, checked below
# against the datasheet's own integer formula.
HUMIDITY_CAL = (75, 362, 0, 313, 50, 30)
ADC_H = 30000


def datasheet_bme280(adc_t, adc_p, adc_h, t, p, h):
    """The datasheet's integer compensation (BME280 datasheet 4.2.3, 8.2): C, hPa, %."""
    t1, t2, t3 = t
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
    t_fine = var1 + var2
    celsius = ((t_fine * 5 + 128) >> 8) / 100
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = p
    v1 = t_fine - 128000
    v2 = v1 * v1 * p6 + ((v1 * p5) << 17) + (p4 << 35)
    v1 = ((v1 * v1 * p3) >> 8) + ((v1 * p2) << 12)
    v1 = (((1 << 47) + v1) * p1) >> 33
    pa = 1048576 - adc_p
    pa = (((pa << 31) - v2) * 3125) // v1
    v1 = (p9 * (pa >> 13) * (pa >> 13)) >> 25
    v2 = (p8 * pa) >> 19
    pa = ((pa + v1 + v2) >> 8) + (p7 << 4)
    h1, h2, h3, h4, h5, h6 = h
    v = t_fine - 76800
    v = ((((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15) * \
        (((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    v = max(0, min(v, 419430400))
    return celsius, pa / 256 / 100, (v >> 12) / 1024


def datasheet_part() -> BME280:
    return BME280(bme280_calibration(DATASHEET_T, DATASHEET_P, HUMIDITY_CAL),
                  DATASHEET_ADC_T, DATASHEET_ADC_P, ADC_H)


def backend_with(tmp_path, parts=None, w1=None) -> tuple[HardwareBackend, dict[int, FakeSMBus]]:
    buses: dict[int, FakeSMBus] = {}

    def open_smbus(number: int) -> FakeSMBus:
        buses[number] = FakeSMBus(parts.get(number, {}) if parts else {})
        return buses[number]

    w1_devices = w1.devices if w1 is not None else tmp_path / "no-w1"
    return HardwareBackend("mock", w1_devices=w1_devices, open_smbus=open_smbus), buses


def open_one(tmp_path, backend, sensor: dict):
    config = agent_config(tmp_path, [sensor], backend="hardware")
    return open_sensors(config.sensors, backend)[0]


def values(samples) -> dict[str, tuple[float, str]]:
    return {metric: (value, unit) for _name, metric, value, unit, _ts in samples}


# --- the fakes themselves, against the datasheets' own examples ------------------------

def test_the_fakes_checksums_match_the_datasheets_examples():
    # SHT3x datasheet table 20: CRC of 0xBEEF is 0x92 (SHT4x: the same).
    assert sensirion_crc8(b"\xbe\xef") == 0x92
    # A scratchpad's CRC byte makes the CRC of all nine bytes zero (Maxim AN27).
    assert dallas_crc8(scratchpad(23.125)) == 0
    # DS18B20 datasheet table 1: +25.0625 C is 0x0191, -10.125 C is 0xFF5E.
    assert scratchpad(25.0625)[:2] == b"\x91\x01" and scratchpad(-10.125)[:2] == b"\x5e\xff"
    assert datasheet_bme280(DATASHEET_ADC_T, DATASHEET_ADC_P, ADC_H, DATASHEET_T, DATASHEET_P,
                            HUMIDITY_CAL)[:2] == (25.08, pytest.approx(1006.5327, abs=1e-3))


# --- DS18B20 through w1thermsensor -----------------------------------------------------

def test_ds18b20_reads_by_id_and_each_failure_is_counted_by_kind(tmp_path):
    tree = W1Tree(tmp_path / "w1")
    tree.plug("28-0316a2791dff", 23.125)
    tree.plug("28-0417b1234567", -10.125)
    backend, _ = backend_with(tmp_path, w1=tree)
    tank = open_one(tmp_path, backend, {"name": "tank", "type": "ds18b20",
                                        "address": "28-0316A2791DFF"})
    assert values(tank.read()) == {"temperature": (23.125, "C")}
    assert tank.min_spacing == 0.75  # the 12-bit conversion

    def failure() -> str:
        with pytest.raises(SensorReadError) as e:
            tank.read()
        return f"{e.value.kind}: {e.value}"

    tree.plug("28-0316a2791dff", 23.125, crc_ok=False)
    assert failure().startswith("crc: ")
    tree.plug("28-0316a2791dff", 85.0)  # the power-on value: no conversion ran
    assert failure().startswith("reset: 85.0 C is the power-on value")
    tree.plug("28-0316a2791dff", -127.0)
    assert failure() == "implausible: temperature -127.0 is outside -55..125"
    tree.unplug("28-0316a2791dff")
    assert failure().startswith("not_found: ")
    tree.plug("28-0316a2791dff", 24.5)  # plugged back in: read again
    assert values(tank.read()) == {"temperature": (24.5, "C")}


def test_ds18b20_without_an_address_reads_the_only_probe_and_refuses_to_guess(tmp_path):
    tree = W1Tree(tmp_path / "w1")
    backend, _ = backend_with(tmp_path, w1=tree)
    only = open_one(tmp_path, backend, {"name": "tank", "type": "ds18b20"})
    with pytest.raises(SensorReadError, match="no thermometer on the 1-Wire bus"):
        only.read()
    tree.plug("28-0316a2791dff", 18.5)
    assert values(only.read()) == {"temperature": (18.5, "C")}
    tree.plug("28-0417b1234567", 19.0)
    tree.unplug("28-0316a2791dff")  # the one it had: it looks again, finds another
    with pytest.raises(SensorReadError) as e:
        only.read()
    assert e.value.kind == "not_found"
    tree.plug("28-0316a2791dff", 18.5)
    with pytest.raises(SensorReadError) as e:
        only.read()
    assert e.value.kind == "ambiguous" and "give this sensor its address" in str(e.value)


def test_ds18b20_without_a_1wire_bus_is_a_startup_error_with_the_fix(tmp_path):
    backend, _ = backend_with(tmp_path)
    with pytest.raises(StartupError, match="dtoverlay=w1-gpio"):
        open_one(tmp_path, backend, {"name": "tank", "type": "ds18b20"})


def test_the_750ms_conversion_runs_off_the_event_loop(tmp_path):
    tree = W1Tree(tmp_path / "w1")
    tree.plug("28-0316a2791dff", 21.0)
    backend, _ = backend_with(tmp_path, w1=tree)
    config = agent_config(tmp_path, [{"name": "tank", "type": "ds18b20", "interval": 5}],
                          backend="hardware")
    sensors = open_sensors(config.sensors, backend)
    tree.slow("28-0316a2791dff", 21.5, 0.75)  # the first read blocks as the kernel's does
    ticks: list[float] = []

    async def run():
        async def tick():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        emitted: list = []
        sampler = Sampler(sensors, emitted.extend)
        sampler.start()
        try:
            await _until(lambda: emitted)
        finally:
            await sampler.stop()
            ticker.cancel()
        return emitted, time.monotonic() - started

    emitted, elapsed = asyncio.run(run())
    assert emitted[0][1:4] == ("temperature", 21.5, "C")
    assert elapsed >= 0.7
    # The loop went on ticking all through the read.
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 20 and max(gaps) < 0.2


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# --- BME280 through adafruit_bme280 ----------------------------------------------------

def test_bme280_gives_the_datasheets_figures(tmp_path):
    part = datasheet_part()
    backend, buses = backend_with(tmp_path, parts={1: {0x76: part}})
    room = open_one(tmp_path, backend, {"name": "room", "type": "bme280"})  # 0x76, bus 1
    got = values(room.read())
    _t, _p, h = datasheet_bme280(DATASHEET_ADC_T, DATASHEET_ADC_P, ADC_H, DATASHEET_T,
                               DATASHEET_P, HUMIDITY_CAL)
    assert got["temperature"] == (pytest.approx(25.08, abs=0.005), "C")
    assert got["pressure"] == (pytest.approx(1006.5327, abs=0.005), "hPa")
    assert got["humidity"] == (pytest.approx(h, abs=0.05), "%")
    assert 54 < h < 56  # and the independent figure is itself sane
    assert list(got) == ["temperature", "humidity", "pressure"]
    # Each read started measurements in forced mode; the part was reset once.
    assert part.measurements >= 1 and part.resets == 1
    room.close()
    backend.close()
    assert buses[1].closed


def test_bme280_unplugged_mid_run_is_counted_and_read_again_once_back(tmp_path):
    part = datasheet_part()
    backend, _ = backend_with(tmp_path, parts={1: {0x77: part}})
    config = agent_config(tmp_path, [
        {"name": "room", "type": "bme280", "address": 0x77, "interval": 0.05}],
        backend="hardware")
    sensors = open_sensors(config.sensors, backend)

    async def run():
        emitted: list = []
        sampler = Sampler(sensors, emitted.extend)
        sampler.start()
        try:
            await _until(lambda: part.measurements >= 3)
            part.plugged = False
            await _until(lambda: sampler.stats["room"].failures.get("no_ack", 0) >= 2)
            part.plugged = True
            part._power_on()  # power-cycled: settings lost, the driver must set them again
            before = len(emitted)
            await _until(lambda: any(s[1] == "pressure" for s in emitted[before:]))
        finally:
            await sampler.stop()
        return emitted, sampler

    emitted, sampler = asyncio.run(run())
    room = sampler.stats["room"]
    assert room.failures["no_ack"] >= 2 and "no answer at 0x77 on I2C bus 1" in room.last_error
    assert room.consecutive_failures == 0
    # Opened afresh after the failure: a second soft reset, and right values again.
    assert part.resets >= 2
    assert emitted[-1][1:3] == ("pressure", pytest.approx(1006.5327, abs=0.005))


def test_a_bmp280_where_a_bme280_should_be_is_named(tmp_path):
    part = BME280(bme280_calibration(DATASHEET_T, DATASHEET_P, HUMIDITY_CAL),
                  DATASHEET_ADC_T, DATASHEET_ADC_P, ADC_H, chip_id=0x58)
    backend, _ = backend_with(tmp_path, parts={1: {0x76: part}})
    room = open_one(tmp_path, backend, {"name": "room", "type": "bme280"})
    with pytest.raises(SensorReadError) as e:
        room.read()
    assert e.value.kind == "wrong_part" and "0x58" in str(e.value)


# --- SHT3x, SHT4x through the Adafruit drivers ------------------------------------------

@pytest.mark.parametrize("kind,part_class", [("sht3x", SHT3x), ("sht4x", SHT4x)])
def test_sht_reads_converted_values_and_counts_a_bad_crc(tmp_path, kind, part_class):
    part = part_class(temperature=22.5, humidity=41.0)
    backend, _ = backend_with(tmp_path, parts={3: {0x45: part}})
    shelf = open_one(tmp_path, backend, {"name": "shelf", "type": kind, "bus": 3,
                                         "address": 0x45})
    got = values(shelf.read())
    # 16-bit raw values: within one step of what the part measured.
    assert got["temperature"] == (pytest.approx(22.5, abs=175 / 65535), "C")
    assert got["humidity"] == (pytest.approx(41.0, abs=125 / 65535), "%")
    part.corrupt_next = True
    with pytest.raises(SensorReadError) as e:
        shelf.read()
    assert e.value.kind == "crc"
    part.plugged = False
    with pytest.raises(SensorReadError) as e:
        shelf.read()
    assert e.value.kind == "no_ack" and "no answer at 0x45 on I2C bus 3" in str(e.value)
    part.plugged = True
    assert values(shelf.read())["humidity"][0] == pytest.approx(41.0, abs=0.01)
    if kind == "sht3x":  # single shot, high repeatability, no clock stretching
        assert 0x2400 in part.commands and 0x30A2 in part.commands
    else:  # high precision, no heater
        assert 0xFD in part.commands and 0x94 in part.commands


# --- ADS1115 through adafruit_ads1x15 -------------------------------------------------

def test_ads1115_reads_its_channel_at_its_gain(tmp_path):
    part = ADS1115((0.5, 1.25, 2.0, 3.3))
    backend, _ = backend_with(tmp_path, parts={1: {0x49: part}})
    config = agent_config(tmp_path, [
        {"name": "a2", "type": "ads1115", "address": 0x49, "channel": 2, "gain": 1},
        {"name": "a3", "type": "ads1115", "address": 0x49, "channel": 3, "gain": 2},
    ], backend="hardware")
    a2, a3 = open_sensors(config.sensors, backend)
    assert values(a2.read()) == {"voltage": (pytest.approx(2.0, abs=4.096 / 32768), "V")}
    # At gain 2 the range is +-2.048 V: 3.3 V saturates, as the real converter does.
    assert values(a3.read())["voltage"][0] == pytest.approx(2.048, abs=2.048 / 32768)
    # Single-ended AIN2 (MUX 110) at PGA 001, then AIN3 (111) at PGA 010.
    assert part.conversions[-2:] == [(0b110, 0b001), (0b111, 0b010)]


# --- MCP3008 through gpiozero ---------------------------------------------------------

def test_mcp3008_reads_its_channel_over_gpiozeros_mock_spi(tmp_path):
    backend, _ = backend_with(tmp_path)
    inputs = {0: 0.0, 3: 1.2345, 5: 3.3}
    chip = SimulatedMCP3008(backend._factory(), lambda channel: inputs.get(channel, 0.6))
    config = agent_config(tmp_path, [
        {"name": "soil", "type": "mcp3008", "channel": 3},
        {"name": "light", "type": "mcp3008", "channel": 5},
    ], backend="hardware")
    soil, light = open_sensors(config.sensors, backend)
    try:
        # Within one step (Vref / 1024) of the input: the chip's code is 1024 * Vin / Vref.
        lsb = 3.3 / 1024
        assert values(soil.read()) == {"voltage": (pytest.approx(1.2345, abs=lsb), "V")}
        assert values(light.read()) == {"voltage": (pytest.approx(3.3, abs=lsb), "V")}
        assert chip.conversions == [(True, 3), (True, 5)]  # single-ended, the right channels
    finally:
        soil.close()
        light.close()
        chip.close()
        backend.close()


# --- what is missing ---------------------------------------------------------------------

def test_a_missing_driver_or_bus_stops_the_start_with_the_fix(tmp_path, monkeypatch):
    backend, _ = backend_with(tmp_path, parts={1: {}})
    monkeypatch.setitem(sys.modules, "adafruit_sht4x", None)  # not installed
    with pytest.raises(StartupError) as e:
        open_one(tmp_path, backend, {"name": "c", "type": "sht4x"})
    assert "pip install 'sensor-edge[i2c]'" in str(e.value)

    def no_bus(number):
        raise FileNotFoundError(2, "No such file or directory")

    off = HardwareBackend("mock", w1_devices=tmp_path / "none", open_smbus=no_bus)
    with pytest.raises(StartupError) as e:
        open_one(tmp_path, off, {"name": "c", "type": "bme280"})
    assert "no /dev/i2c-1" in str(e.value) and "raspi-config nonint do_i2c 0" in str(e.value)


# --- the probe lists what answers on the buses ---------------------------------------------

def test_probe_lists_the_buses_and_names_the_parts(tmp_path):
    tree = W1Tree(tmp_path / "w1")
    tree.plug("28-0316a2791dff", 7.5)
    tree.plug("10-000802b4c3d2", 8.0)  # a DS18S20: the same reader
    tree.plug("3a-00000012ab34", 0.0)  # a DS2413 switch: not a thermometer
    parts = {1: {0x76: datasheet_part(), 0x44: SHT4x(), 0x3C: SHT3x()},
             3: {0x48: ADS1115((0.1, 0.2, 0.3, 0.4))}}
    backend, _ = backend_with(tmp_path, parts=parts, w1=tree)
    config = agent_config(tmp_path, [
        {"name": "room", "type": "bme280"},
        {"name": "cellar", "type": "sht4x"},
        {"name": "battery", "type": "ads1115", "bus": 3, "channel": 1},
        {"name": "tank", "type": "ds18b20", "address": "28-0316a2791dff"},
        {"name": "gone", "type": "sht3x", "address": 0x45},
    ], backend="hardware")
    out = io.StringIO()
    code = run_probe(config, backend, 2, out)
    text = out.getvalue()
    assert code == 1, text  # "gone" never answered
    lines = text.splitlines()
    assert lines[0] == ("1-Wire: 10-000802b4c3d2 (ds18b20), 28-0316a2791dff (ds18b20), "
                        "3a-00000012ab34 (not a part sensor-edge reads)")
    assert lines[1] == ("I2C bus 1: 0x3c (ssd1306 OLED), 0x44 (sht3x or sht4x), "
                        "0x76 (bme280)")
    assert lines[2] == "I2C bus 3: 0x48 (ads1115)"
    rows = {line.split()[0]: line for line in lines[4:-1]}
    assert "I2C1 0x76" in rows["room"] and "25.0824 C, 55.0007 %, 1006.53 hPa" in rows["room"]
    assert "1-Wire 28-0316a2791dff" in rows["tank"] and "7.5 C" in rows["tank"]
    assert "0.2 V" in rows["battery"]
    assert "2/2 100%" in rows["gone"] and "no_ack: no answer at 0x45" in rows["gone"]


# --- an agent with no bus sensors needs none of their drivers ----------------------------

BLOCK_DRIVERS = """
import sys
BLOCKED = {"smbus2", "w1thermsensor", "adafruit_bme280", "adafruit_sht31d", "adafruit_sht4x",
           "adafruit_ads1x15", "adafruit_bus_device", "micropython", "busio", "board"}

class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Uninstalled())
from sensor_edge.agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_bus_drivers_the_mock_and_other_sensors_still_work(tmp_path):
    import subprocess

    import yaml

    def probe_with_drivers_gone(backend: str, sensors: list[dict]):
        config = tmp_path / f"{backend}.yaml"
        config.write_text(yaml.safe_dump({
            "agent": {"id": "pi-1"}, "collector": {"url": "ws://127.0.0.1:9/v1/stream",
                                                   "token": "t"},
            "backend": backend, "sensors": sensors}))
        return subprocess.run([sys.executable, "-c", BLOCK_DRIVERS, "probe", "--config",
                               str(config), "--reads", "1"],
                              capture_output=True, text=True, timeout=60, check=False)

    # The mock simulates every type without any driver.
    mock = probe_with_drivers_gone("mock", [
        {"name": "room", "type": "bme280"}, {"name": "tank", "type": "ds18b20"},
        {"name": "soil", "type": "mcp3008"}, {"name": "soc", "type": "cpu_temperature"}])
    assert "Traceback" not in mock.stderr and "soil" in mock.stdout, mock.stderr
    # On the hardware, a sensor that needs no driver reads; the bus scan says what is missing.
    hardware = probe_with_drivers_gone("hardware", [{"name": "soc", "type": "cpu_temperature"}])
    assert "Traceback" not in hardware.stderr, hardware.stderr
    assert "I2C bus 1: not available: scanning I2C needs smbus2" in hardware.stdout
    # And a bus sensor whose driver is missing names the extra to install, in one line.
    missing = probe_with_drivers_gone("hardware", [{"name": "room", "type": "bme280"}])
    assert "Traceback" not in missing.stderr, missing.stderr
    assert "pip install 'sensor-edge[i2c]'" in missing.stdout
