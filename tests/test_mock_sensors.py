"""Every bus sensor type on the mock backend: drifting in the part's own steps, failing
as the real part does, read by an agent process into a real collector, and probed."""

from __future__ import annotations

import itertools
import math

import pytest
from processes import wait_until
from sensor_edge.agent.backends.mock import MockBackend
from sensor_edge.agent.sensors import SensorReadError, open_sensors
from sensor_edge.config.sensor_types import SENSOR_TYPES
from test_hardware_backend import agent_config
from test_probe import buses, probe, table

SENSORS = [
    {"name": "tank", "type": "ds18b20", "interval": 1},
    {"name": "room", "type": "bme280", "interval": 1},
    {"name": "shelf", "type": "sht3x", "interval": 1},
    {"name": "cellar", "type": "sht4x", "address": 0x45, "interval": 1},
    {"name": "soil", "type": "mcp3008", "channel": 2, "interval": 1},
    {"name": "battery", "type": "ads1115", "channel": 1, "gain": 1, "interval": 1},
]


@pytest.mark.parametrize("sensor", SENSORS, ids=[s["type"] for s in SENSORS])
def test_each_part_drifts_in_its_own_steps_and_fails_in_its_own_words(tmp_path, sensor):
    backend = MockBackend(seed=7)
    config = agent_config(tmp_path, [sensor], backend="mock")
    (opened,) = open_sensors(config.sensors, backend)
    sensor_type = SENSOR_TYPES[sensor["type"]]
    simulation = sensor_type.simulation
    reads, failures = [], []
    try:
        for _ in range(600):
            try:
                reads.append({metric: value for _n, metric, value, _u, _t in opened.read()})
            except SensorReadError as e:
                failures.append((e.kind, str(e)))
    finally:
        opened.close()
        backend.close()
    # Failures as often as the part's, and only its own kinds and messages.
    expected = {(f.kind, f.message) for f in simulation.failures}
    assert set(failures) <= expected
    assert len(failures) == pytest.approx(600 * simulation.failure_rate, abs=20)
    for metric in sensor_type.metric_names:
        series = [r[metric] for r in reads]
        low, high = sensor_type.plausible[metric]
        assert all(low <= v <= high for v in series)
        # It drifts, but by small steps, as a room or a battery does.
        assert len(set(series)) > 5
        steps = [abs(b - a) for a, b in itertools.pairwise(series)]
        assert max(steps) < 10 * simulation.walk[metric] + 0.01
        step = simulation.resolution[metric]
        if sensor["type"] != "mcp3008":  # gpiozero scales the MCP3008's codes itself
            assert all(math.isclose(v / step, round(v / step), abs_tol=1e-3) for v in series)


def test_a_mock_ads1115_saturates_at_its_gains_full_scale(tmp_path):
    backend = MockBackend(seed=5)
    config = agent_config(tmp_path, [{"name": "battery", "type": "ads1115", "gain": 4}],
                          backend="mock")
    (battery,) = open_sensors(config.sensors, backend)
    seen = set()
    for _ in range(50):
        try:
            seen.add(battery.read()[0][2])
        except SensorReadError:
            pass
    assert seen == {1.024 * 32767 / 32768}  # a 3.7 V battery at +-1.024 V: code 32767


def test_the_mock_mcp3008_is_read_by_gpiozero_over_mock_spi(tmp_path):
    backend = MockBackend(seed=3)
    config = agent_config(tmp_path, [{"name": "soil", "type": "mcp3008", "channel": 6}],
                          backend="mock")
    (soil,) = open_sensors(config.sensors, backend)
    try:
        soil.read()
        assert backend._mcp3008.conversions == [(True, 6)]
    finally:
        soil.close()
        backend.close()


def test_a_mock_agent_streams_every_type_with_its_units(tmp_path, make_collector, make_agent):
    collector = make_collector()
    make_agent(collector, "pi-2", sensors=SENSORS)

    def stored():
        rows = collector.json("/api/readings?agent=pi-2&limit=100000")["readings"]
        return {(r["sensor"], r["metric"], r["unit"]) for r in rows}

    want = {(s["name"], m.name, m.unit) for s in SENSORS
            for m in SENSOR_TYPES[s["type"]].metrics}
    got = wait_until(lambda: want <= stored() and stored(), 30, what="every metric stored")
    assert ("room", "pressure", "hPa") in got and ("battery", "voltage", "V") in got


def test_probe_with_mock_lists_the_simulated_buses(tmp_path):
    sensors = [{"name": "tank", "type": "ds18b20", "address": "28-0316a2791dff"},
               {"name": "room", "type": "bme280", "address": 0x77},
               {"name": "soil", "type": "mcp3008"}]
    result = probe(tmp_path, sensors, "--mock", "--reads", "2")
    assert result.returncode in (0, 1), result.stderr  # a mock part may fail both reads
    found = buses(result.stdout)
    assert found["1-Wire"] == "28-0316a2791dff (ds18b20)"
    assert found["I2C bus 1"] == "0x77 (bme280 or bmp180 or bme680)"
    rows = table(result.stdout)
    assert rows["room"][2] == "I2C1 0x77" and rows["soil"][2] == "SPI0 ch0"
    assert rows["soil"][5].endswith(" V")
