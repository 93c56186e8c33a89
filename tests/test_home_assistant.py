"""What Home Assistant is told: every unit is one it accepts, every name gets its own id.

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

import re
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor_edge.agent.backends.mock import MockBackend
from sensor_edge.agent.sensors import open_sensor
from sensor_edge.config.model import MQTTConfig, SensorConfig
from sensor_edge.config.home_assistant import EntityIds, entity, ha_id
from sensor_edge.config.sensor_types import METRICS
from sensor_edge.server.outputs.mqtt import discovery_config, topic_level

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
KEYS = st.lists(st.tuples(st.sampled_from(["pi", "pi_a", "pi.a"]), NAMES,
                          st.sampled_from(["t", "a_t", "m.t"])), unique=True, max_size=25)


@settings(max_examples=300, deadline=None)
@given(KEYS, st.randoms(use_true_random=False))
def test_entity_ids_are_distinct_and_do_not_depend_on_the_order_names_came_in(keys, rng):
    ids = EntityIds()
    for key in keys:
        ids.add(key)
    shuffled = EntityIds()
    for key in rng.sample(keys, len(keys)):
        shuffled.add(key)
    unique = {key: ids.unique_id(key) for key in keys}
    assert len(set(unique.values())) == len(keys)
    assert {key: shuffled.unique_id(key) for key in keys} == unique
    for key in keys:
        agent, sensor, metric = key
        plain = f"sensor_edge_{ha_id(agent)}_{ha_id(f'{sensor}_{metric}')}"
        meets = [k for k in keys if k != key and
                 f"sensor_edge_{ha_id(k[0])}_{ha_id(f'{k[1]}_{k[2]}')}" == plain]
        if not meets:  # a name nothing meets keeps the id it always had
            assert unique[key] == plain
        else:
            assert re.fullmatch(re.escape(plain) + r"(_[0-9a-f]{8,64})?", unique[key])
        assert ids.disambiguated(key) == (unique[key] != plain)


def test_adding_a_name_reports_whose_id_moved():
    ids = EntityIds()
    assert ids.add(("pi", "a.b", "t")) == {("pi", "a.b", "t"): None}
    assert ids.object_id(("pi", "a.b", "t")) == "a_b_t"
    # a_b needs nothing replaced, so it keeps the plain id; a.b moves to a hashed one.
    moved = ids.add(("pi", "a_b", "t"))
    assert moved == {("pi", "a_b", "t"): None, ("pi", "a.b", "t"): "a_b_t"}
    assert ids.object_id(("pi", "a_b", "t")) == "a_b_t"
    assert re.fullmatch(r"a_b_t_[0-9a-f]{8}", ids.object_id(("pi", "a.b", "t")))
    assert ids.owner("pi", "a_b_t") == ("pi", "a_b", "t")
    assert ids.add(("pi", "a_b", "t")) == {}
    # Two agents' unique_ids may meet while their discovery topics differ: the topic the
    # loser leaves is free (its old config is cleared), though the unique_id is taken.
    assert ids.add(("pi_a", "b", "t")) == {("pi_a", "b", "t"): None}
    assert ids.unique_id(("pi", "a_b", "t")) == "sensor_edge_pi_a_b_t"
    assert re.fullmatch(r"b_t_[0-9a-f]{8}", ids.object_id(("pi_a", "b", "t")))
    assert ids.owner("pi_a", "b_t") is None


def test_the_agent_takes_the_table_without_any_of_the_collectors_code():
    code = ("import sys, sensor_edge.agent.agent, sensor_edge.agent.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('sensor_edge.server')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"  # the table is in config/, which both programs share
