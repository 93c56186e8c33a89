"""The MQTT bridge against real Mosquitto brokers: discovery, states, availability, outages.

Tests on the machine's shared broker (127.0.0.1:1883) use their own random
topic prefixes and clear every retained message they caused. The outage test
runs its own Mosquitto on a free port, so stopping it disturbs no one.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from conftest import BOTH_BACKENDS, POSTGRES_ONLY, TOKENS
from processes import HOST, free_port, wait_until

from sensor_edge.config.model import MQTTConfig
from sensor_edge.server.outputs.mqtt import discovery_config

paho = pytest.importorskip("paho.mqtt.client")

SHARED_BROKER = 1883
SENSORS = [
    {"name": "climate", "type": "dht22", "pin": 4, "interval": 2},
    # `interval` gives the button a reading every half second without anyone pressing it.
    {"name": "door", "type": "button", "pin": 27, "interval": 0.5},
    {"name": "hall", "type": "motion", "pin": 17},
]


class Subscriber:
    """A real MQTT client that records every message it gets, from paho's thread."""

    def __init__(self, port: int, topics: list[str], client_id: str | None = None):
        persistent = client_id is not None
        self.port = port
        self.topics = topics
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"test-{uuid.uuid4().hex[:12]}",
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason, properties):
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def start(self) -> Subscriber:
        self.client.connect_async(HOST, self.port, keepalive=10)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 10, what="the test subscriber to subscribe")
        return self

    def received(self, topic_pattern: str = ".*") -> list[tuple[str, bytes]]:
        with self._lock:
            return [(t, p) for t, p in self.messages if re.fullmatch(topic_pattern, t)]

    def last(self, topic: str) -> bytes | None:
        matching = self.received(re.escape(topic))
        return matching[-1][1] if matching else None

    def states(self, prefix: str, agent: str) -> dict[tuple[str, str, int], dict]:
        """(sensor, metric, seq) -> JSON payload of every state message of this agent."""
        found = {}
        for topic, payload in self.received(re.escape(f"{prefix}/{agent}/") + r"[^/]+/[^/]+"):
            _, _, sensor, metric = topic.split("/")
            if metric == "availability" or not payload:
                continue
            body = json.loads(payload)
            found[(sensor, metric, body["seq"])] = body
        return found

    def stop(self, clear_retained: bool = True) -> None:
        """Disconnect; first publish an empty retained message on every topic seen."""
        if clear_retained and self.client.is_connected():
            infos = [self.client.publish(t, b"", qos=1, retain=True)
                     for t in sorted({t for t, _ in self.received()})]
            for info in infos:
                info.wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_section(port: int, prefix: str, discovery_prefix: str) -> dict:
    return {"host": HOST, "port": port, "prefix": prefix, "discovery_prefix": discovery_prefix,
            "qos": 1}


def metric(collector, name: str) -> float:
    text = collector.get("/metrics")[1].decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def stored(collector, agent: str) -> dict[tuple[str, str, int], dict]:
    rows = collector.json(f"/api/readings?agent={agent}&limit=100000")["readings"]
    return {(r["sensor"], r["metric"], r["seq"]): r for r in rows}


@pytest.fixture
def names():
    tag = uuid.uuid4().hex[:10]
    return f"test-se-{tag}", f"test-ha-{tag}"


@pytest.fixture
def shared_subscriber(names, processes):
    prefix, discovery = names
    subscriber = Subscriber(SHARED_BROKER, [f"{prefix}/#", f"{discovery}/#"]).start()
    yield subscriber
    for p in processes:  # so that nothing publishes again after the clean-up
        p.kill()
    subscriber.stop()


def test_home_assistant_sees_discovery_states_and_availability(
        make_collector, make_agent, names, shared_subscriber):
    prefix, discovery = names
    sub = shared_subscriber
    collector = make_collector(mqtt=mqtt_section(SHARED_BROKER, prefix, discovery))
    agent = make_agent(collector, "pi-1", sensors=SENSORS)

    configs = {
        "temperature": f"{discovery}/sensor/pi-1/climate_temperature/config",
        "humidity": f"{discovery}/sensor/pi-1/climate_humidity/config",
        "pressed": f"{discovery}/binary_sensor/pi-1/door_pressed/config",
    }
    wait_until(lambda: all(sub.last(t) for t in configs.values()), 30,
               what="discovery configs for the DHT22 and the button")
    temperature, humidity, button = (json.loads(sub.last(t)) for t in configs.values())
    assert (temperature["device_class"], temperature["unit_of_measurement"],
            temperature["state_class"]) == ("temperature", "°C", "measurement")
    assert (humidity["device_class"], humidity["unit_of_measurement"],
            humidity["state_class"]) == ("humidity", "%", "measurement")
    assert "device_class" not in button and "unit_of_measurement" not in button
    assert temperature["state_topic"] == f"{prefix}/pi-1/climate/temperature"
    assert button["state_topic"] == f"{prefix}/pi-1/door/pressed"
    # One device per Pi, and an id per entity that does not depend on the topic prefixes.
    assert temperature["device"] == humidity["device"] == button["device"]
    assert temperature["device"]["name"] == "pi-1"
    assert len({temperature["unique_id"], humidity["unique_id"], button["unique_id"]}) == 3
    assert prefix not in temperature["unique_id"] and discovery not in temperature["unique_id"]
    assert {a["topic"] for a in temperature["availability"]} == {
        f"{prefix}/collector/availability", f"{prefix}/pi-1/availability"}
    wait_until(lambda: sub.last(f"{prefix}/pi-1/availability") == b"online", 10,
               what="the agent to be announced online")
    assert sub.last(f"{prefix}/collector/availability") == b"online"

    wait_until(lambda: {("climate", "temperature"), ("climate", "humidity"),
                        ("door", "pressed")} <= {k[:2] for k in sub.states(prefix, "pi-1")},
               30, what="state messages of the DHT22 and the button")
    assert agent.terminate() == 0
    wait_until(lambda: sub.last(f"{prefix}/pi-1/availability") == b"offline", 10,
               what="the agent to be announced offline")

    # Every stored reading is published, with the stored value, unit, time and epoch.
    in_storage = stored(collector, "pi-1")
    wait_until(lambda: set(sub.states(prefix, "pi-1")) >= set(in_storage), 15,
               what="every stored reading on MQTT")
    published = sub.states(prefix, "pi-1")
    assert set(published) == set(in_storage)
    for key, row in in_storage.items():
        body = published[key]
        assert (body["value"], body["unit"], body["ts"], body["epoch"]) == (
            row["value"], row["unit"], row["ts"], row["epoch"]), key
    wait_until(lambda: metric(collector, "sensor_edge_mqtt_published_total") == len(in_storage),
               10, what="the broker's acks to be counted")
    assert metric(collector, "sensor_edge_mqtt_dropped_total") == 0

    # A crash: the broker publishes the collector's last will.
    collector.kill()
    wait_until(lambda: sub.last(f"{prefix}/collector/availability") == b"offline", 10,
               what="the collector's last will")


def test_discovery_maps_metrics_to_home_assistant_classes():
    config = MQTTConfig(prefix="se", discovery_prefix="ha")
    topic, motion = discovery_config(config, "pi.1", "0.1.0", "hall", "motion", "")
    assert topic == "ha/binary_sensor/pi_1/hall_motion/config"  # HA ids allow no dots
    assert motion["device_class"] == "motion" and motion["state_topic"] == "se/pi.1/hall/motion"
    topic, cpu = discovery_config(config, "pi-1", None, "soc", "temperature", "C")
    assert topic == "ha/sensor/pi-1/soc_temperature/config"
    assert (cpu["device_class"], cpu["unit_of_measurement"]) == ("temperature", "°C")
    assert "sw_version" not in cpu["device"]
    _, other = discovery_config(config, "pi-1", None, "meter", "flow", "l/min")
    assert "device_class" not in other and other["unit_of_measurement"] == "l/min"


def test_mqtt_configured_without_the_client_library_refuses_to_start(tmp_path, names):
    prefix, discovery = names
    blocker = tmp_path / "blocked" / "paho"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('paho hidden for this test')\n")
    config = tmp_path / "collector.yaml"
    config.write_text(json.dumps({
        "listen": {"host": HOST, "port": free_port()}, "storage": str(tmp_path / "c.db"),
        "agents": [], "mqtt": mqtt_section(SHARED_BROKER, prefix, discovery)}))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "blocked")}
    done = subprocess.run([sys.executable, "-m", "sensor_edge.server", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'sensor-edge[mqtt]'" in lines[0], done.stderr


def test_agent_ids_that_meet_in_home_assistant_stop_the_collector_at_start(tmp_path, names):
    prefix, discovery = names
    config = tmp_path / "collector.yaml"
    config.write_text(json.dumps({
        "listen": {"host": HOST, "port": free_port()}, "storage": str(tmp_path / "c.db"),
        "agents": [{"id": "pi.hall", "token": "t-0123456789"},
                   {"id": "pi_hall", "token": "t-1123456789"}],
        "mqtt": mqtt_section(SHARED_BROKER, prefix, discovery)}, indent=1))
    done = subprocess.run([sys.executable, "-m", "sensor_edge.server", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{config}:13: agents[1].id" in lines[0] \
        and "'pi_hall' and 'pi.hall'" in lines[0], done.stderr


class Mosquitto:
    """A private broker on a free port that keeps sessions across its own restarts."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.log_path = workdir / "mosquitto.log"
        data = workdir / "mosquitto-data"
        data.mkdir()
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\n"
            f"persistence true\npersistence_location {data}/\n"
            # Mosquitto started as root switches to this user: keep the one that owns tmp_path.
            f"user {getpass.getuser()}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: self._listening(), 10, what="mosquitto to listen")
        return self

    def _listening(self) -> bool:
        import socket

        assert self.proc.poll() is None, self.log_path.read_text()
        with socket.socket() as s:
            return s.connect_ex((HOST, self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: it saves its sessions to disk
            self.proc.wait(10)


@pytest.fixture
def own_broker(tmp_path):
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


def test_broker_outage_loses_no_stored_reading_and_publishing_resumes(
        make_collector, make_agent, names, own_broker):
    prefix, discovery = names
    # A persistent session: what is published while this subscriber reconnects waits for it.
    sub = Subscriber(own_broker.port, [f"{prefix}/+/+/+"],
                     client_id=f"test-outage-{uuid.uuid4().hex[:8]}").start()
    try:
        collector = make_collector(mqtt=mqtt_section(own_broker.port, prefix, discovery))
        agent = make_agent(collector, "pi-1")  # fast mock sensors, ~25 readings a second
        wait_until(lambda: len(sub.states(prefix, "pi-1")) > 20, 20,
                   what="first readings on MQTT")

        own_broker.stop()
        wait_until(lambda: metric(collector, "sensor_edge_mqtt_connected") == 0, 10,
                   what="the collector to notice the broker is gone")
        during = len(collector.stored_seqs("pi-1"))
        wait_until(lambda: len(collector.stored_seqs("pi-1")) > during + 40, 20,
                   what="readings to keep being stored while the broker is down")
        assert agent.running() and collector.running()

        own_broker.start()
        outage_end = max(collector.stored_seqs("pi-1"))
        wait_until(lambda: metric(collector, "sensor_edge_mqtt_connected") == 1, 30,
                   what="the collector to reconnect with backoff")
        wait_until(lambda: max(k[2] for k in sub.states(prefix, "pi-1")) > outage_end + 20, 30,
                   what="publishing to resume after the outage")
        assert agent.terminate() == 0

        seqs = collector.stored_seqs("pi-1")
        assert seqs == list(range(1, len(seqs) + 1)), "storage lost or doubled a reading"
        wait_until(lambda: {k[2] for k in sub.states(prefix, "pi-1")} >= set(seqs), 20,
                   what="every stored reading, outage included, on MQTT")
        assert metric(collector, "sensor_edge_mqtt_dropped_total") == 0
        assert collector.terminate() == 0
        assert "Traceback" not in collector.log()
    finally:
        sub.stop()


class WireAgent:
    """An agent speaking the wire protocol directly, so it can send any name the
    protocol accepts (a real agent only sends names its config allows)."""

    def __init__(self, ws):
        self.ws = ws
        self.seq = 0

    def send(self, names: list[tuple[str, str, str]]) -> None:
        """One batch, one reading per (sensor, metric, unit); returns once it is acked."""
        readings = []
        for sensor, metric_name, unit in names:
            self.seq += 1
            readings.append({"seq": self.seq, "sensor": sensor, "metric": metric_name,
                             "value": 20.5, "unit": unit, "ts": 1_700_000_000.0 + self.seq})
        self.ws.send(json.dumps({"type": "readings", "readings": readings}))
        while json.loads(self.ws.recv(timeout=10)).get("seq") != self.seq:
            pass


@contextlib.contextmanager
def wire_agent(collector, agent: str, epoch: str, tokens: dict[str, str] = TOKENS):
    from websockets.sync.client import connect

    with connect(collector.stream_url, open_timeout=10,
                 additional_headers={"Authorization": f"Bearer {tokens[agent]}"}) as ws:
        ws.send(json.dumps({"type": "hello", "agent": agent, "epoch": epoch, "version": "t"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        yield WireAgent(ws)


def labelled(collector, name: str, labels: str) -> float:
    text = collector.get("/metrics")[1].decode()
    match = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# Names the wire protocol accepts and an MQTT topic level cannot carry as they are.
UNTOPICAL = [("a+b", "temperature", "C"), ("#", "humidity", "%"), ("x/y", "z", ""),
             ("ok", "m+#", ""), ("50%", "temperature", "C")]


def test_names_a_topic_cannot_carry_are_escaped_and_every_agent_keeps_publishing(
        make_collector, make_agent, names, shared_subscriber):
    prefix, discovery = names
    sub = shared_subscriber
    collector = make_collector(mqtt=mqtt_section(SHARED_BROKER, prefix, discovery))
    make_agent(collector, "pi-1")  # fast mock sensors, ~25 readings a second
    wait_until(lambda: len(sub.states(prefix, "pi-1")) > 5, 20, what="pi-1 on MQTT")

    with wire_agent(collector, "pi-2", "hostile") as hostile:
        hostile.send(UNTOPICAL)
        hostile.send(UNTOPICAL)  # the same names again: counted and logged once
    # Percent-encoded, one topic level each, so distinct names keep distinct topics.
    escaped = {("a%2Bb", "temperature"), ("%23", "humidity"), ("x%2Fy", "z"), ("ok", "m%2B%23"),
               ("50%25", "temperature")}
    wait_until(lambda: escaped <= {k[:2] for k in sub.states(prefix, "pi-2")}, 15,
               what="the escaped names' states")
    # Every other agent goes on being published.
    after = max(k[2] for k in sub.states(prefix, "pi-1"))
    wait_until(lambda: max(k[2] for k in sub.states(prefix, "pi-1")) > after + 20, 20,
               what="pi-1 to keep being published")
    # Their discovery configs point at the escaped topics.
    config = json.loads(wait_until(
        lambda: sub.last(f"{discovery}/sensor/pi-2/a_b_temperature/config"), 10,
        what="the discovery config of a+b"))
    assert config["state_topic"] == f"{prefix}/pi-2/a%2Bb/temperature"
    assert config["name"] == "a+b temperature"

    assert labelled(collector, "sensor_edge_names_escaped_total", 'output="mqtt_topic"') == 5
    assert metric(collector, "sensor_edge_mqtt_publish_errors_total") == 0
    assert collector.terminate() == 0
    log = collector.log()
    assert "Traceback" not in log
    assert log.count("'a+b'") == 1, log


def test_a_publish_that_raises_never_ends_the_bridge(tmp_path, monkeypatch, make_collector,
                                                       make_agent, names, shared_subscriber):
    """Whatever paho raises (here: every publish of pi-2's readings) is counted and logged,
    and the bridge goes on; the collector still stops cleanly."""
    prefix, discovery = names
    sub = shared_subscriber
    # A sitecustomize makes paho raise for one agent's topics, as a bug of ours or paho's would.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "from paho.mqtt import client\n"
        "_publish = client.Client.publish\n"
        "def publish(self, topic, *a, **k):\n"
        "    if '/pi-2/' in topic:\n"
        "        raise RuntimeError('simulated client failure')\n"
        "    return _publish(self, topic, *a, **k)\n"
        "client.Client.publish = publish\n")
    with monkeypatch.context() as patched:
        patched.setenv("PYTHONPATH", str(hook))
        collector = make_collector(mqtt=mqtt_section(SHARED_BROKER, prefix, discovery))
    make_agent(collector, "pi-1")
    make_agent(collector, "pi-2")
    wait_until(lambda: metric(collector, "sensor_edge_mqtt_publish_errors_total") > 10, 20,
               what="pi-2's publishes to fail")
    wait_until(lambda: sub.states(prefix, "pi-1"), 20, what="pi-1 on MQTT")
    after = max(k[2] for k in sub.states(prefix, "pi-1"))
    wait_until(lambda: max(k[2] for k in sub.states(prefix, "pi-1")) > after + 20, 20,
               what="pi-1 to keep being published")
    assert collector.terminate() == 0
    log = collector.log()
    assert "Traceback" not in log
    assert 1 <= log.count("simulated client failure") <= 3, log  # logged once, not per reading


def retained_configs(discovery: str, count: int) -> dict[str, dict]:
    """The retained discovery configs under ``discovery``, as a new subscriber gets them."""
    fresh = Subscriber(SHARED_BROKER, [f"{discovery}/+/+/+/config"]).start()
    try:
        def configs():
            last = {}
            for topic, payload in fresh.received():
                last[topic] = payload
            return {t: json.loads(p) for t, p in last.items() if p}
        return wait_until(lambda: len(c := configs()) == count and c, 10,
                          what=f"{count} retained discovery configs")
    finally:
        fresh.stop(clear_retained=False)


def unique_ids(discovery: str, count: int) -> dict[tuple[str, str, str], str]:
    """(agent, sensor, metric) -> unique_id, of the retained discovery configs."""
    found = {}
    for config in retained_configs(discovery, count).values():
        _prefix, agent, sensor, metric_name = config["state_topic"].rsplit("/", 3)
        found[(agent, sensor, metric_name)] = config["unique_id"]
    return found


@BOTH_BACKENDS
def test_names_that_meet_in_home_assistant_ids_get_distinct_ids_the_first_seen_keeping_its(
        make_collector, names, shared_subscriber):
    prefix, discovery = names
    sub = shared_subscriber
    agents = {"home": TOKENS["pi-1"], "home_kitchen": TOKENS["pi-2"], "pi-3": TOKENS["pi-3"]}
    collector = make_collector(agents, mqtt=mqtt_section(SHARED_BROKER, prefix, discovery))
    # Sent one at a time in this order; after a restart, in the reverse order.
    sent = [
        ("pi-3", ("a.b", "temperature", "C")),  # first: the plain id, for good
        ("pi-3", ("a_b", "temperature", "C")),  # meets a.b, which keeps its id: hashed
        ("pi-3", ("x", "y_z", "")),  # x/y_z and x_y/z meet without any '.'
        ("pi-3", ("x_y", "z", "")),
        ("pi-3", ("plain", "temperature", "C")),  # meets nothing: the plain id
        ("home_kitchen", ("climate", "temperature", "C")),  # the two agents' unique_ids meet
        ("home", ("kitchen_climate", "temperature", "C")),
    ]
    a_b_config = f"{discovery}/sensor/pi-3/a_b_temperature/config"
    with wire_agent(collector, "pi-3", "e", agents) as pi3:
        pi3.send([sent[0][1]])
        alone = json.loads(wait_until(lambda: sub.last(a_b_config), 10, what="a.b's config"))
        assert (alone["unique_id"], alone["state_topic"]) == (
            "sensor_edge_pi-3_a_b_temperature", f"{prefix}/pi-3/a.b/temperature")
        for agent, name in sent[1:]:
            if agent == "pi-3":
                pi3.send([name])
            else:
                with wire_agent(collector, agent, "e", agents) as other:
                    other.send([name])

    ids = unique_ids(discovery, len(sent))
    assert len(set(ids.values())) == len(sent)
    # a.b's entity stays where it was: same topic, same unique_id.
    assert json.loads(sub.last(a_b_config))["state_topic"] == f"{prefix}/pi-3/a.b/temperature"
    assert ids[("pi-3", "a.b", "temperature")] == "sensor_edge_pi-3_a_b_temperature"
    assert re.fullmatch(r"sensor_edge_pi-3_a_b_temperature_[0-9a-f]{8}",
                        ids[("pi-3", "a_b", "temperature")])
    assert ids[("pi-3", "x", "y_z")] == "sensor_edge_pi-3_x_y_z"
    assert re.fullmatch(r"sensor_edge_pi-3_x_y_z_[0-9a-f]{8}", ids[("pi-3", "x_y", "z")])
    assert ids[("pi-3", "plain", "temperature")] == "sensor_edge_pi-3_plain_temperature"
    assert ids[("home_kitchen", "climate", "temperature")] == \
        "sensor_edge_home_kitchen_climate_temperature"
    assert re.fullmatch(r"sensor_edge_home_kitchen_climate_temperature_[0-9a-f]{8}",
                        ids[("home", "kitchen_climate", "temperature")])
    assert metric(collector, "sensor_edge_mqtt_publish_errors_total") == 0
    escaped = 'output="home_assistant_id"'
    assert labelled(collector, "sensor_edge_names_escaped_total", escaped) == 3
    assert collector.terminate() == 0

    # Stable: restarted, the collector meets the names in the reverse order and gives
    # the same ids. Its configs are cleared first, so what is read next is what it announced.
    for info in [sub.client.publish(t, b"", qos=1, retain=True)
                 for t in sorted({t for t, _ in sub.received(re.escape(discovery) + "/.*")})]:
        info.wait_for_publish(5)
    collector.start()
    with wire_agent(collector, "pi-3", "after-restart", agents) as pi3:
        for agent, name in reversed(sent):
            if agent == "pi-3":
                pi3.send([name])
            else:
                with wire_agent(collector, agent, "after-restart", agents) as other:
                    other.send([name])
    wait_until(lambda: unique_ids(discovery, len(sent)) == ids, 15,
               what="the same ids after a restart")
    assert labelled(collector, "sensor_edge_names_escaped_total", escaped) == 3
    assert collector.terminate() == 0
    assert "Traceback" not in collector.log()


@POSTGRES_ONLY
def test_collectors_on_one_database_announce_the_same_ids(make_collector, names,
                                                          shared_subscriber):
    """Each collector started before the other gave any id, so each only learns the
    other's ids from the database, when a claim of its own loses to one."""
    prefix, discovery = names
    sub = shared_subscriber
    first, second = (
        make_collector(name=name, mqtt=mqtt_section(SHARED_BROKER, f"{prefix}/{name}",
                                                    f"{discovery}/{name}"))
        for name in ("first", "second"))
    with wire_agent(first, "pi-1", "e") as on_first:
        on_first.send([("a.b", "temperature", "C")])
        wait_until(lambda: sub.last(f"{discovery}/first/sensor/pi-1/a_b_temperature/config"),
                   10, what="a.b announced by the first collector")
        with wire_agent(second, "pi-1", "e2") as on_second:
            # The second collector has not seen a.b: it claims the plain id, loses it.
            on_second.send([("a_b", "temperature", "C")])
            on_second.send([("a.b", "temperature", "C")])
        on_first.send([("a_b", "temperature", "C")])
    by_first = unique_ids(f"{discovery}/first", 2)
    by_second = unique_ids(f"{discovery}/second", 2)
    assert by_first == by_second
    assert by_first[("pi-1", "a.b", "temperature")] == "sensor_edge_pi-1_a_b_temperature"
    assert re.fullmatch(r"sensor_edge_pi-1_a_b_temperature_[0-9a-f]{8}",
                        by_first[("pi-1", "a_b", "temperature")])
    for collector in (first, second):
        assert collector.terminate() == 0
        assert "Traceback" not in collector.log()


def test_ids_that_cannot_be_stored_hold_back_only_their_announcement(
        make_collector, names, shared_subscriber):
    """With the ids table out of reach, readings are still stored and published; the
    name is announced once its id can be stored, at its next reading."""
    import sqlite3

    prefix, discovery = names
    sub = shared_subscriber
    collector = make_collector(mqtt=mqtt_section(SHARED_BROKER, prefix, discovery))
    config_topic = f"{discovery}/sensor/pi-1/n_temperature/config"
    with sqlite3.connect(collector.storage) as db:
        db.execute("ALTER TABLE ha_entity_ids RENAME TO ha_entity_ids_away")
    with wire_agent(collector, "pi-1", "e") as pi1:
        for _ in range(3):
            pi1.send([("n", "temperature", "C")])
        wait_until(lambda: "ids for new names could not be stored" in collector.log(), 10,
                   what="the failed claim to be logged")
        wait_until(lambda: len(sub.states(prefix, "pi-1")) == 3, 10,
                   what="the readings published all the same")
        assert sub.last(config_topic) is None
        with sqlite3.connect(collector.storage) as db:
            db.execute("ALTER TABLE ha_entity_ids_away RENAME TO ha_entity_ids")
        pi1.send([("n", "temperature", "C")])
        config = json.loads(wait_until(lambda: sub.last(config_topic), 10,
                                       what="the name announced once its id is stored"))
    assert config["unique_id"] == "sensor_edge_pi-1_n_temperature"
    assert collector.stored_seqs("pi-1") == [1, 2, 3, 4]
    assert collector.terminate() == 0
    log = collector.log()
    assert log.count("ids for new names could not be stored") == 1, log
    assert "Traceback" not in log
