"""What Home Assistant is told: every unit is one it accepts, every name gets its own id,
and keeps it (the first seen keeping the plain one).

The accepted units below are copied from Home Assistant's own source, so the
check does not trust our reading of its documentation:

- DEVICE_CLASS_UNITS and DEVICE_CLASS_STATE_CLASSES: home-assistant/core,
  homeassistant/components/sensor/const.py (commit 00eb6680fbf6bdf7af2499095f2e74fca980a148),
  with the unit enums it names resolved from homeassistant/const.py (UnitOfTemperature,
  UnitOfPressure, UnitOfElectricPotential, LIGHT_LUX, PERCENTAGE);
- BINARY_SENSOR_DEVICE_CLASSES: homeassistant/components/binary_sensor/__init__.py
  (BinarySensorDeviceClass, commit 027590d94dd8effd8b68fef1d7ac9d8d10027eb6).

Only the device classes a sensor-edge metric uses or may soon use are copied.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor_edge.agent.backends.mock import MockBackend
from sensor_edge.agent.sensors import open_sensor
from sensor_edge.config.model import MQTTConfig, SensorConfig
from sensor_edge.config.home_assistant import EntityIds, entity, ha_id
from sensor_edge.config.sensor_types import METRICS
from sensor_edge.runtime.service import StartupError
from sensor_edge.server.outputs.metrics import CollectorMetrics
from sensor_edge.server.outputs.mqtt import CLAIM_ROUNDS, MQTTBridge, discovery_config, topic_level
from sensor_edge.server.storage.sqlite import SQLiteStorage

# sensor/const.py DEVICE_CLASS_UNITS (excerpt), enums resolved.
DEVICE_CLASS_UNITS = {
    "temperature": {"°C", "°F", "K"},  # set(UnitOfTemperature)
    "humidity": {"%"},  # {PERCENTAGE}
    "moisture": {"%"},  # {PERCENTAGE}
    "battery": {"%"},  # {PERCENTAGE}
    "illuminance": {"lx"},  # {LIGHT_LUX}
    # set(UnitOfPressure)
    "pressure": {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
    "atmospheric_pressure": {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
    "voltage": {"µV", "mV", "V", "kV", "MV"},  # set(UnitOfElectricPotential)
    "current": {"mA", "A"},  # set(UnitOfElectricCurrent)
}
# sensor/const.py DEVICE_CLASS_STATE_CLASSES (excerpt).
DEVICE_CLASS_STATE_CLASSES = {
    "temperature": {"measurement"}, "humidity": {"measurement"}, "moisture": {"measurement"},
    "battery": {"measurement"}, "illuminance": {"measurement"}, "pressure": {"measurement"},
    "atmospheric_pressure": {"measurement"}, "voltage": {"measurement"},
    "current": {"measurement"},
}
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window",
}
# Today's metrics and those of the sensor types named for the second round.
PRODUCT_METRICS = {"temperature": "C", "humidity": "%", "pressure": "hPa", "voltage": "V",
                   "illuminance": "lx", "motion": "", "pressed": ""}


def test_the_table_covers_every_metric_the_product_sends():
    assert {m: k.unit for m, k in METRICS.items()} == PRODUCT_METRICS


def test_every_unit_in_the_table_is_one_home_assistant_accepts_for_its_device_class():
    for metric, kind in METRICS.items():
        if kind.binary:
            assert kind.ha_device_class is None or kind.ha_device_class in \
                BINARY_SENSOR_DEVICE_CLASSES, metric
            assert kind.ha_units == (), metric
            continue
        accepted = DEVICE_CLASS_UNITS[kind.ha_device_class]
        assert "measurement" in DEVICE_CLASS_STATE_CLASSES[kind.ha_device_class], metric
        assert kind.ha_units[0][0] == kind.unit, f"{metric}: the agent's own unit comes first"
        for wire, shown in kind.ha_units:
            assert shown in accepted, f"{metric}: {wire!r} is shown as {shown!r}, not in {accepted}"


def test_every_discovery_config_the_bridge_sends_passes_home_assistants_unit_check():
    config = MQTTConfig(prefix="se", discovery_prefix="ha")
    units_seen = {u for kind in METRICS.values() for u, _ in kind.ha_units} | {"", "l/min", "C"}
    for metric in [*METRICS, "flow"]:
        for unit in units_seen:
            topic, payload = discovery_config(config, "pi-1", None, "s", metric, unit)
            component = topic.split("/")[1]
            device_class = payload.get("device_class")
            if component == "binary_sensor":
                assert "unit_of_measurement" not in payload
                assert device_class is None or device_class in BINARY_SENSOR_DEVICE_CLASSES
            elif device_class is not None:
                # A unit its device class does not know would make Home Assistant refuse it.
                assert payload["unit_of_measurement"] in DEVICE_CLASS_UNITS[device_class], \
                    (metric, unit)
    # A unit its class does not know: announced with no device class, in its own unit.
    refused = entity("temperature", "bananas")
    assert (refused.component, refused.device_class, refused.unit, refused.unit_refused) == \
        ("sensor", None, "bananas", True)


def test_the_agents_units_are_the_tables(tmp_path):
    backend = MockBackend(seed=1)
    configs = [SensorConfig(name="c", type="dht22", pin=4, interval=2.0),
               SensorConfig(name="soc", type="cpu_temperature", interval=1.0),
               SensorConfig(name="m", type="motion", pin=17),
               SensorConfig(name="b", type="button", pin=27)]
    samples = []
    for config in configs:
        sensor = open_sensor(config, backend)
        try:
            for _ in range(20):  # the simulated DHT fails now and then
                try:
                    samples += sensor.read()
                    break
                except Exception:
                    continue
        finally:
            sensor.close()
    backend.close()
    units = {(metric, unit) for _, metric, _, unit, _ in samples}
    assert units == {("temperature", "C"), ("humidity", "%"), ("motion", ""), ("pressed", "")}
    assert all(METRICS[metric].unit == unit for metric, unit in units)


def test_topic_levels_escape_only_what_a_level_cannot_carry():
    assert topic_level("kitchen-climate.1_a") == "kitchen-climate.1_a"
    assert topic_level("π °C ok") == "π °C ok"
    assert topic_level("a+b/c#d%e") == "a%2Bb%2Fc%23d%25e"
    assert topic_level("nul\x00\x1f\x85") == "nul%00%1F%C2%85"
    assert topic_level("\ud800") == "%ED%A0%80"


# Names as a hostile or unlucky agent sends them: few letters, many ways to meet.
NAMES = st.text(alphabet="ab._/+", min_size=1, max_size=4)
KEY = st.tuples(st.sampled_from(["pi", "pi_a", "pi.a"]), NAMES,
                st.sampled_from(["t", "a_t", "m.t"]))
# What two collectors on one database do: see one commit's new names, or restart.
EVENT = st.tuples(st.sampled_from([0, 1]),
                  st.one_of(st.just("restart"), st.lists(KEY, min_size=1, max_size=3)))


def see(ids: EntityIds, storage: SQLiteStorage, keys: list) -> None:
    """What the bridge does with one commit's new names: claim ids until each has one."""
    for _ in range(CLAIM_ROUNDS):
        proposals = ids.propose(keys)
        if not proposals:
            return
        ids.learn(storage.claim_ha_entity_ids(proposals))
    raise AssertionError(f"{keys} still without ids after {CLAIM_ROUNDS} rounds")


def plain_unique_id(key) -> str:
    agent, sensor, metric = key
    return f"sensor_edge_{ha_id(agent)}_{ha_id(f'{sensor}_{metric}')}"


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENT, max_size=20))
def test_the_first_name_seen_keeps_its_id_for_good_across_restarts_and_collectors(events):
    storage = SQLiteStorage(":memory:")  # the real table and claims, in memory
    try:
        collectors = [EntityIds(), EntityIds()]
        given: dict = {}  # key -> the unique_id it got first, from whichever collector
        for collector, action in events:
            if action == "restart":  # all it knows is what storage holds
                collectors[collector] = EntityIds(storage.ha_entity_ids())
                keys = list(given)
            else:
                held_before = set(given.values())
                see(collectors[collector], storage, action)
                for key in action:
                    uid = collectors[collector].unique_id(key)
                    if key not in given:
                        plain = plain_unique_id(key)
                        # The plain id when no name seen before holds it, else a hashed one.
                        if plain not in held_before:
                            assert uid == plain
                        else:
                            assert re.fullmatch(re.escape(plain) + r"_[0-9a-f]{8,64}(_\d+)?",
                                                uid), (key, uid)
                        given[key] = uid
                        held_before.add(uid)
                keys = action
            ids = collectors[collector]
            for key in keys:  # once given, kept: whichever collector asks, whenever
                assert ids.unique_id(key) == given[key], key
                assert ids.disambiguated(key) == (given[key] != plain_unique_id(key))
            assert len(set(given.values())) == len(given)  # distinct
    finally:
        storage.close()


def test_a_name_that_meets_one_seen_before_gets_a_hashed_id_and_neither_moves(tmp_path):
    path = str(tmp_path / "ids.db")
    storage = SQLiteStorage(path)
    ids = EntityIds(storage.ha_entity_ids())
    see(ids, storage, [("pi", "a.b", "t")])
    assert ids.object_id(("pi", "a.b", "t")) == "a_b_t"  # alone: the plain id
    see(ids, storage, [("pi", "a_b", "t")])
    assert ids.object_id(("pi", "a.b", "t")) == "a_b_t"  # seen first: kept
    assert re.fullmatch(r"a_b_t_[0-9a-f]{8}", ids.object_id(("pi", "a_b", "t")))
    assert ids.disambiguated(("pi", "a_b", "t")) and not ids.disambiguated(("pi", "a.b", "t"))
    # Two agents' unique_ids may meet while their discovery topics differ: still one each.
    see(ids, storage, [("pi_a", "b", "t")])
    assert ids.unique_id(("pi_a", "b", "t")) != ids.unique_id(("pi", "a_b", "t"))
    assert ids.unique_id(("pi_a", "b", "t")).startswith("sensor_edge_pi_a_b_t_")
    storage.close()

    # Restarted, the names coming in the reverse order: nothing moves.
    before = {key: ids.object_id(key) for key in [("pi", "a.b", "t"), ("pi", "a_b", "t"),
                                                  ("pi_a", "b", "t")]}
    storage = SQLiteStorage(path)
    again = EntityIds(storage.ha_entity_ids())
    see(again, storage, list(reversed(before)))
    assert {key: again.object_id(key) for key in before} == before
    assert again.propose(before) == []
    storage.close()


def test_names_made_to_take_every_hashed_id_of_another_still_leave_it_one():
    storage = SQLiteStorage(":memory:")
    victim = ("pi", "a.b", "t")
    plain = "a_b_t"
    # A hostile agent sends, first, names whose plain ids are the victim's first choices.
    digest = hashlib.sha256("pi\0a.b\0t".encode()).hexdigest()
    squatters = [("pi", "a_b", "t"), *[("pi", "a_b", f"t_{digest[:n]}") for n in (8, 16, 64)]]
    ids = EntityIds()
    see(ids, storage, squatters)
    assert [ids.object_id(k) for k in squatters[1:]] == [f"{plain}_{digest[:n]}"
                                                           for n in (8, 16, 64)]
    see(ids, storage, [victim])
    assert ids.object_id(victim) == f"{plain}_{digest}_2"
    assert len({ids.unique_id(k) for k in [*squatters, victim]}) == 5
    storage.close()


def test_proposals_in_one_commit_do_not_take_each_others_ids():
    ids = EntityIds([("pi", "a.b", "t", "a_b_t", "sensor_edge_pi_a_b_t")])
    proposals = ids.propose([("pi", "a.b", "t"), ("pi", "x.y", "t"), ("pi", "x_y", "t"),
                             ("pi", "x.y", "t")])
    assert [p[:4] for p in proposals] == [("pi", "x.y", "t", "x_y_t"),
                                          ("pi", "x_y", "t", proposals[1][3])]
    assert re.fullmatch(r"x_y_t_[0-9a-f]{8}", proposals[1][3])
    assert [p[4] for p in proposals] == [f"sensor_edge_pi_{p[3]}" for p in proposals]


def test_the_agent_takes_the_table_without_any_of_the_collectors_code():
    code = ("import sys, sensor_edge.agent.agent, sensor_edge.agent.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('sensor_edge.server')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"  # the table is in config/, which both programs share


@pytest.mark.parametrize("agent", ["collector", "collector_alert", "collector.alert"])
def test_no_agent_may_take_the_collectors_topics_or_ids(agent):
    """The collector's availability topic and its alert entities' ids are its own."""
    with pytest.raises(StartupError, match="rename the agent"):
        MQTTBridge(MQTTConfig(), CollectorMetrics(), "c.yaml", ["pi-1", agent])


def test_names_near_the_collectors_are_fine():
    MQTTBridge(MQTTConfig(), CollectorMetrics(), "c.yaml", ["collectors", "my-collector"])
