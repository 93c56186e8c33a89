"""The MQTT bridge against real Mosquitto brokers: discovery, states, availability, outages.

Tests on the machine's shared broker (127.0.0.1:1883) use their own random
topic prefixes and clear every retained message they caused. The outage test
runs its own Mosquitto on a free port, so stopping it disturbs no one.
"""

from __future__ import annotations

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
