"""Per-sensor filters: each step as a plain function, their chain, the config keys, and an
agent with filters against a real collector (fewer readings stored, values transformed)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import yaml
from conftest import TOKENS
from fakes.sensor_buses import FakeSMBus, SHT4x
from hypothesis import given
from hypothesis import strategies as st
from sensor_edge.agent.agent import Agent
from sensor_edge.agent.backends.hardware import HardwareBackend
from sensor_edge.agent.filters import (
    Chain,
    Delta,
    Heartbeat,
    SensorFilters,
    ThrottleAverage,
    within,
)
from sensor_edge.config import ConfigError, load_agent_config
from sensor_edge.config.model import FilterConfig, SensorConfig

values = st.floats(-1e6, 1e6, allow_nan=False)
# Readings as (seconds since the previous one, value): increasing timestamps.
series = st.lists(st.tuples(st.floats(0.01, 100), values), max_size=200)


def run(steps, readings):
    """Feed (ts, value) readings through a chain of steps; return what is kept."""
    chain = Chain(FilterConfig(kind, amount) for kind, amount in steps)
    kept = []
    for ts, value in readings:
        out = chain(ts, value)
        if out is not None:
            kept.append(out)
    return kept


def timed(gaps_and_values):
    ts, out = 1000.0, []
    for gap, value in gaps_and_values:
        ts += gap
        out.append((ts, value))
    return out


# --- each step -----------------------------------------------------------------------------

@given(values, st.floats(-100, 100), st.floats(-10, 10), st.integers(0, 4))
def test_offset_multiply_round_transform_every_reading_in_order(value, add, scale, decimals):
    kept = run([("offset", add), ("multiply", scale), ("round", decimals)], [(1.0, value)])
    assert kept == [(1.0, round((value + add) * scale, decimals))]
    # The order of the list is the order of the steps.
    assert run([("multiply", scale), ("offset", add)], [(1.0, value)]) == \
        [(1.0, value * scale + add)]


@given(series, st.floats(0, 1000))
def test_delta_keeps_only_changes_larger_than_its_amount(readings, amount):
    readings = timed(readings)
    kept = run([("delta", amount)], readings)
    kept_values = [v for _, v in kept]
    if readings:
        assert kept[0] == readings[0]  # the first reading always passes
    for a, b in itertools.pairwise(kept_values):
        assert abs(b - a) > amount and not within(abs(b - a), amount)
    # Every reading held back was within the amount of the last one kept before it.
    last = None
    kept_iter = iter(kept)
    next_kept = next(kept_iter, None)
    for reading in readings:
        if reading == next_kept:
            last, next_kept = reading[1], next(kept_iter, None)
        else:
            assert within(abs(reading[1] - last), amount)
            assert abs(reading[1] - last) <= amount * (1 + 1e-9) + 1e-12


def test_delta_holds_back_a_change_of_exactly_its_amount_despite_float_rounding():
    assert 1.1 - 0.8 > 0.3  # what floats make of it
    assert run([("delta", 0.3)], [(0, 0.8), (1, 1.1), (2, 1.2)]) == [(0, 0.8), (2, 1.2)]


@given(series, st.floats(0, 1000), st.floats(1, 500))
def test_heartbeat_after_delta_sends_at_least_every_period(readings, amount, period):
    readings = timed(readings)
    kept = run([("delta", amount), ("heartbeat", period)], readings)
    kept_ts = {ts for ts, _ in kept}
    last = None
    for ts, _value in readings:
        if ts in kept_ts:
            last = ts
        else:  # held back only while something was sent within the period
            assert last is not None and ts - last < period
    # And it adds only readings delta held back: never more than were read.
    assert len(kept) <= len(readings)


def test_heartbeat_sends_the_current_reading_not_an_old_one():
    readings = [(0.0, 20.0), (100.0, 20.1), (200.0, 20.1), (299.0, 20.15), (301.0, 20.12)]
    assert run([("delta", 0.2), ("heartbeat", 300)], readings) == [(0.0, 20.0), (301.0, 20.12)]


@given(series, st.floats(0.5, 300))
def test_throttle_average_sends_one_mean_per_window(readings, period):
    readings = timed(readings)
    kept = run([("throttle_average", period)], readings)
    start = readings[0][0] if readings else 0.0
    # Group the readings by window on the grid from the first one.
    windows: dict[int, list[tuple[float, float]]] = {}
    for ts, value in readings:
        windows.setdefault(int((ts - start) // period), []).append((ts, value))
    closed = sorted(windows)[:-1]  # the last window is still open
    assert len(kept) == len(closed)
    for (ts, mean), index in zip(kept, closed):
        group = windows[index]
        assert ts == group[-1][0]  # stamped with its last reading
        assert mean == pytest.approx(sum(v for _, v in group) / len(group), rel=1e-9, abs=1e-6)


def test_throttle_average_by_hand():
    readings = [(0, 1.0), (5, 2.0), (9, 3.0), (10, 10.0), (19, 20.0), (35, 7.0)]
    assert run([("throttle_average", 10)], readings) == [(9, 2.0), (19, 15.0)]


def test_steps_see_held_back_readings_only_to_revive_them():
    # A reading held back by delta is not averaged; heartbeat after it may send it.
    assert Delta(1.0)(0.0, 5.0, False) == (0.0, 5.0, False)
    assert ThrottleAverage(10)(0.0, 5.0, False) == (0.0, 5.0, False)
    beat = Heartbeat(10)
    assert beat(0.0, 1.0, True) == (0.0, 1.0, True)
    assert beat(5.0, 2.0, False) == (5.0, 2.0, False)
    assert beat(10.0, 3.0, False) == (10.0, 3.0, True)


def test_metrics_keeps_only_the_chosen_ones_and_each_metric_has_its_own_chain():
    config = SensorConfig("room", "bme280", metrics=("temperature", "pressure"),
                          filters=(FilterConfig("delta", 0.5),))
    filters = SensorFilters(config)
    first = filters([("room", "temperature", 20.0, "C", 1.0), ("room", "humidity", 40.0, "%", 1.0),
                     ("room", "pressure", 1000.0, "hPa", 1.0)])
    assert [s[1] for s in first] == ["temperature", "pressure"]
    # 20.3 is within delta of 20.0; 1000.9 is not within it of 1000.0 (pressure's own chain).
    second = filters([("room", "temperature", 20.3, "C", 2.0),
                      ("room", "pressure", 1000.9, "hPa", 2.0)])
    assert second == [("room", "pressure", 1000.9, "hPa", 2.0)]
    assert filters.held_back == 1


# --- the config keys -------------------------------------------------------------------------

HEAD = """\
agent: {id: pi-1}
collector: {url: "ws://127.0.0.1:9/v1/stream", token: t}
sensors:
"""


def load(tmp_path, sensors: str):
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + sensors)
    return load_agent_config(str(path))


def test_the_contracts_second_round_keys_load_with_their_defaults(tmp_path):
    config = load(tmp_path, """\
  - {name: tank, type: ds18b20, address: 28-0316a2791dff, interval: 10}
  - {name: room, type: bme280, bus: 1, address: 0x76, interval: 10}
  - {name: shelf, type: sht3x, address: 0x44, interval: 5}
  - {name: cellar, type: sht4x, address: 0x44, bus: 3, interval: 5}
  - {name: soil, type: mcp3008, channel: 0, interval: 5}
  - {name: battery, type: ads1115, address: 0x48, channel: 0, gain: 1, interval: 5}
  - name: outside
    type: bme280
    address: "0x77"
    filters:
      - offset: -0.4
      - multiply: 1.02
      - round: 1
      - delta: 0.2
      - heartbeat: 300
      - throttle_average: 60
    metrics: [temperature]
  - {name: probe, type: ads1115, channel: 3, gain: "2/3"}
  - {name: only, type: ds18b20}
""".replace("  - {name: only, type: ds18b20}\n", ""))
    by_name = {s.name: s for s in config.sensors}
    assert (by_name["room"].bus, by_name["room"].address) == (1, 0x76)
    assert (by_name["shelf"].bus, by_name["shelf"].address) == (1, 0x44)  # bus defaults to 1
    assert by_name["tank"].address == "28-0316a2791dff"
    assert (by_name["soil"].channel, by_name["soil"].bus) == (0, None)
    assert (by_name["battery"].gain, by_name["probe"].gain) == (1, 2 / 3)
    assert by_name["probe"].address == 0x48  # the default
    outside = by_name["outside"]
    assert outside.address == 0x77 and outside.metrics == ("temperature",)
    assert outside.filters == (
        FilterConfig("offset", -0.4), FilterConfig("multiply", 1.02), FilterConfig("round", 1),
        FilterConfig("delta", 0.2), FilterConfig("heartbeat", 300),
        FilterConfig("throttle_average", 60))
    assert by_name["tank"].interval == 10 and by_name["soil"].interval == 5
    assert load(tmp_path, "  - {name: t, type: ds18b20}\n").sensors[0].address is None


BAD = [
    ("a key of another type", "  - {name: a, type: sht3x, channel: 1}",
     "sensors[0].channel: channel applies to mcp3008 and ads1115 sensors, not sht3x"),
    ("an address the part cannot have", "  - {name: a, type: bme280, address: 0x44}",
     "sensors[0].address: a bme280 answers at 0x76, 0x77, not 0x44"),
    ("a channel out of range", "  - {name: a, type: ads1115, channel: 4}",
     "sensors[0].channel: 4 is out of range 0..3"),
    ("a gain the ADS1115 lacks", "  - {name: a, type: ads1115, gain: 3}",
     "sensors[0].gain: expected a gain of 2/3, 1, 2, 4, 8, 16, got 3"),
    ("a bad 1-Wire id", "  - {name: a, type: ds18b20, address: 0x28}",
     "sensors[0].address: expected a 1-Wire id like 28-0316a2791dff"),
    ("a 1-Wire id of another family", "  - {name: a, type: ds18b20, address: 3a-00000012ab34}",
     "sensors[0].address: 3a-00000012ab34 is not a ds18b20"),
    ("two probes without ids", "  - {name: a, type: ds18b20}\n  - {name: b, type: ds18b20}",
     "sensors[0]: with 2 1-Wire sensors, each needs its 'address'"),
    ("one address twice", "  - {name: a, type: sht3x}\n  - {name: b, type: sht4x}",
     "sensors[1]: address 0x44 on I2C bus 1 is already used by sensor 'a'"),
    ("one ADC channel twice",
     "  - {name: a, type: mcp3008, channel: 2}\n  - {name: b, type: mcp3008, channel: 2}",
     "sensors[1]: MCP3008 channel 2 is already used by sensor 'a'"),
    ("a pin of the I2C bus", "  - {name: a, type: bme280}\n  - {name: b, type: button, pin: 3}",
     "sensors[1]: GPIO3 belongs to I2C bus 1, which sensor 'a' uses"),
    ("a pin SPI needs", "  - {name: b, type: motion, pin: 10}\n  - {name: a, type: mcp3008}",
     "sensors[1]: SPI0 needs GPIO10, which sensor 'b' uses"),
    ("a misspelt filter", "  - {name: a, type: sht4x, filters: [{ofset: 1}]}",
     "sensors[0].filters[0].ofset: unknown key"),
    ("two filters in one item", "  - {name: a, type: sht4x, filters: [{offset: 1, round: 1}]}",
     "sensors[0].filters[0]: each list item is one filter"),
    ("a negative delta", "  - {name: a, type: sht4x, filters: [{delta: -1}]}",
     "sensors[0].filters[0].delta: -1 is out of range 0.."),
    ("a heartbeat of no time", "  - {name: a, type: sht4x, filters: [{heartbeat: 0}]}",
     "sensors[0].filters[0].heartbeat: expected a positive number of seconds"),
    ("round to a fraction", "  - {name: a, type: sht4x, filters: [{round: 0.5}]}",
     "sensors[0].filters[0].round: expected a whole number"),
    ("a metric the type lacks", "  - {name: a, type: sht4x, metrics: [pressure]}",
     "sensors[0].metrics[0]: expected one of temperature, humidity, got 'pressure'"),
    ("no metrics at all", "  - {name: a, type: sht4x, metrics: []}",
     "sensors[0].metrics: an empty list keeps nothing"),
]


@pytest.mark.parametrize("what,sensors,message", BAD, ids=[b[0] for b in BAD])
def test_bad_sensor_keys_name_file_line_and_key(tmp_path, what, sensors, message):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, sensors + "\n")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / 'agent.yaml'}:")


# --- an agent with filters, against a real collector ---------------------------------------

class Ramp(SHT4x):
    """An SHT4x whose k-th measurement reads 20 + 0.05 k C until ``plateau``, then stays."""

    def __init__(self, plateau: int):
        super().__init__()
        self.count = 0
        self.plateau = plateau

    def raw(self):
        self.temperature = 20.0 + 0.05 * min(self.count, self.plateau)
        self.count += 1
        return super().raw()


def test_an_agent_with_filters_stores_fewer_transformed_readings(tmp_path, make_collector):
    collector = make_collector()
    raw_part, filtered_part = Ramp(plateau=60), Ramp(plateau=60)
    bus = FakeSMBus({0x44: raw_part, 0x45: filtered_part})
    backend = HardwareBackend("mock", w1_devices=tmp_path / "no-w1", open_smbus=lambda n: bus)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({
        "agent": {"id": "pi-1"},
        "collector": {"url": collector.stream_url, "token": TOKENS["pi-1"]},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "sensors": [
            {"name": "plain", "type": "sht4x", "address": 0x44, "interval": 0.05},
            {"name": "tuned", "type": "sht4x", "address": 0x45, "interval": 0.05,
             "metrics": ["temperature"],
             "filters": [{"offset": -0.4}, {"multiply": 2}, {"round": 1}, {"delta": 0.5},
                         {"heartbeat": 1}]},
        ]}))
    config = load_agent_config(str(path))

    def rows(sensor):
        return collector.json(f"/api/readings?agent=pi-1&sensor={sensor}&limit=100000")[
            "readings"]

    async def main():
        agent = Agent(config, backend=backend)
        await agent.start()
        try:
            deadline = time.monotonic() + 30
            while filtered_part.count < 60:  # through the ramp
                assert time.monotonic() < deadline, "the sensors stopped reading"
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.5)  # 2.5 s of the plateau: the heartbeat's turn
            status = await agent.status()
        finally:
            await agent.stop()
        return status

    status = asyncio.run(main())
    plain, tuned = rows("plain"), rows("tuned")
    plain_t = [r for r in plain if r["metric"] == "temperature"]
    assert {r["metric"] for r in plain} == {"temperature", "humidity"}
    assert {r["metric"] for r in tuned} == {"temperature"}  # metrics: [temperature]
    # The ramp's k-th reading becomes round((20 + 0.05 k - 0.4) * 2, 1) = 39.2 + 0.1 k;
    # delta 0.5 keeps every 6th (a change of 0.6), from 39.2 to the plateau's 45.2.
    ramp = [r["value"] for r in tuned if r["value"] < 45.2]
    assert ramp == pytest.approx([39.2 + 0.6 * j for j in range(len(ramp))], abs=1e-9)
    assert len(ramp) == 10
    # On the plateau delta drops every reading; the heartbeat sends one each second.
    flat = [r for r in tuned if r["value"] == pytest.approx(45.2)]
    assert 2 <= len(flat) <= 4, flat
    assert all(b["ts"] - a["ts"] >= 1.0 for a, b in itertools.pairwise(flat))
    # Far fewer readings stored: under a tenth of the plain sensor's (both its metrics).
    assert len(plain_t) > 80 and len(tuned) * 10 < len(plain)
    # The agent's status counts what the filters held back (humidity is not kept at all).
    assert status.sensors["tuned"].held_back > 50
    assert status.sensors["plain"].held_back == 0
