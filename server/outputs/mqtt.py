"""The MQTT bridge: every stored reading, published for Home Assistant and other consumers.

The last stage of the collector's pipeline. It is fed only with what storage
committed (``Collector._committed``), through a bounded queue, so a slow or
absent broker never slows ingest or acks: past the bound, readings are still
stored but not published, and counted.

paho-mqtt runs the broker connection on its own network thread and reconnects
with exponential backoff. Everything else here lives on the event loop; paho's
callbacks hop over with ``call_soon_threadsafe``, so no state is shared
between threads. Topics and payloads are documented in docs/home-assistant.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from sensor_edge.config.model import MQTTConfig
from sensor_edge.runtime.service import StartupError
from sensor_edge.contract.protocol import Reading

if TYPE_CHECKING:
    from sensor_edge.server.ingest.agents import AgentRegistry, AgentState
    from sensor_edge.server.outputs.metrics import CollectorMetrics
    from sensor_edge.server.storage import Batch

log = logging.getLogger("sensor_edge.collector.mqtt")

INSTALL_HINT = "pip install 'sensor-edge[mqtt]'"
# Stored readings waiting for the broker; past this they are dropped (and counted).
QUEUE_READINGS = 10_000
# Readings handed to paho and not yet confirmed by the broker: bounds paho's own queue too.
IN_FLIGHT = 200
# The publisher shares the event loop with ingest: it yields this often, so it never
# holds the loop for more than a few milliseconds.
YIELD_EVERY = 32
RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS = 1, 30
KEEPALIVE_SECONDS = 30
# At stop, how long the queue may take to drain; all of stop must fit the contract's 5 s.
STOP_DRAIN_SECONDS = 1.0
STOP_NETWORK_SECONDS = 1.0

ONLINE, OFFLINE = "online", "offline"
# The collector's own availability topic is <prefix>/collector/availability.
COLLECTOR_NODE = "collector"

# Home Assistant's names for what the agents report. Metric names are the agent's
# (agent/sensors.py); the collector learns only name, metric and unit from the wire.
HA_UNITS = {"C": "°C", "F": "°F"}
HA_SENSOR_CLASSES = {"temperature": "temperature", "humidity": "humidity",
                     "pressure": "pressure", "illuminance": "illuminance"}
# Digital inputs (1 active, 0 idle) are binary sensors; a button has no device class.
HA_BINARY_CLASSES = {"motion": "motion", "pressed": None}
_HA_ID = re.compile(r"[^A-Za-z0-9_-]")


def state_topic(prefix: str, agent: str, sensor: str, metric: str) -> str:
    return f"{prefix}/{agent}/{sensor}/{metric}"


def availability_topic(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/availability"


def state_payload(epoch: str, row: Reading) -> str:
    """The JSON published for one stored reading."""
    seq, _sensor, _metric, value, unit, ts = row
    return json.dumps({"value": value, "unit": unit, "ts": ts, "seq": seq, "epoch": epoch},
                      separators=(",", ":"))


def discovery_config(config: MQTTConfig, agent: str, version: str | None, sensor: str,
                     metric: str, unit: str) -> tuple[str, dict[str, Any]]:
    """Home Assistant's MQTT discovery message for one (agent, sensor, metric): topic, payload."""
    node = _HA_ID.sub("_", agent)
    obj = _HA_ID.sub("_", f"{sensor}_{metric}")
    payload: dict[str, Any] = {
        "name": f"{sensor} {metric}",
        # Independent of the prefixes, so re-pointing a collector keeps HA's entity history.
        "unique_id": f"sensor_edge_{node}_{obj}",
        "state_topic": state_topic(config.prefix, agent, sensor, metric),
        "availability": [
            {"topic": availability_topic(config.prefix, COLLECTOR_NODE)},
            {"topic": availability_topic(config.prefix, agent)},
        ],
        "availability_mode": "all",
        "device": {
            "identifiers": [f"sensor_edge_{node}"],
            "name": agent,
            "manufacturer": "sensor-edge",
            "model": "Raspberry Pi sensor agent",
            **({"sw_version": version} if version else {}),
        },
        "origin": {"name": "sensor-edge", "sw_version": _version()},
    }
    if metric in HA_BINARY_CLASSES:
        component = "binary_sensor"
        payload["value_template"] = "{{ 'ON' if value_json.value > 0 else 'OFF' }}"
        device_class = HA_BINARY_CLASSES[metric]
    else:
        component = "sensor"
        payload["value_template"] = "{{ value_json.value }}"
        payload["state_class"] = "measurement"
        if unit:
            payload["unit_of_measurement"] = HA_UNITS.get(unit, unit)
        device_class = HA_SENSOR_CLASSES.get(metric)
    if device_class:
        payload["device_class"] = device_class
    return f"{config.discovery_prefix}/{component}/{node}/{obj}/config", payload


def _version() -> str:
    try:
        return metadata.version("sensor-edge")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_topic_prefix(source: str, key: str, value: str) -> None:
    # The loader's NAME_PATTERN already keeps agent and sensor names topic-safe.
    if not value or value != value.strip("/") or any(c in value for c in "+#\0"):
        raise StartupError(f"{source}: mqtt.{key}: {value!r} is not a usable MQTT topic prefix "
                           "(no '+', '#', or leading or trailing '/')")


class MQTTBridge:
    """Publishes stored readings, agent availability and HA discovery configs."""

    def __init__(self, config: MQTTConfig, metrics: CollectorMetrics, source: str,
                 agent_ids: list[str]):
        try:
            from paho.mqtt import client as paho
        except ImportError:
            raise StartupError(f"mqtt is configured but paho-mqtt is not installed: "
                               f"{INSTALL_HINT}") from None
        _check_topic_prefix(source, "prefix", config.prefix)
        _check_topic_prefix(source, "discovery_prefix", config.discovery_prefix)
        if COLLECTOR_NODE in agent_ids:
            raise StartupError(f"{source}: agent id {COLLECTOR_NODE!r} would share the "
                               "collector's MQTT availability topic; rename the agent")
        self._paho = paho
        self.config = config
        self.metrics = metrics
        self._queue: asyncio.Queue[tuple[str, str, Reading]] = asyncio.Queue(QUEUE_READINGS)
        self._window = asyncio.Semaphore(IN_FLIGHT)
        self._in_flight: set[int] = set()  # mids of readings paho has not confirmed
        self._holding = 0  # a reading the publisher took from the queue, not yet handed to paho
        self._connected = asyncio.Event()
        # (agent, sensor, metric) -> unit, for every sensor seen since start: re-announced
        # on each connect, so a broker that lost its retained messages gets them back.
        self._seen: dict[tuple[str, str, str], str] = {}
        self._agents: AgentRegistry | None = None
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False  # log a broker outage once, not on every retry
        self._stopping = False
        metrics.mqtt_pending.set_function(lambda: self._queue.qsize() + self._holding
                                          + len(self._in_flight))

    # -- the collector's side ---------------------------------------------------------------

    def start(self, agents: AgentRegistry) -> None:
        """Connect in the background (retried with backoff) and start publishing."""
        paho = self._paho
        c = self.config
        self._loop = asyncio.get_running_loop()
        self._agents = agents
        agents.on_presence = self.agent_presence
        client_id = f"sensor-collector-{socket.gethostname()}-{os.getpid()}"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv311, clean_session=True)
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        if c.tls:
            client.tls_set()  # the system's CAs; the broker's name is checked
        client.will_set(availability_topic(c.prefix, COLLECTOR_NODE), OFFLINE, qos=c.qos,
                        retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS)
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_publish = self._paho_publish
        client.on_message = self._paho_message
        client.connect_async(c.host, c.port, keepalive=KEEPALIVE_SECONDS)
        client.loop_start()
        self._client = client
        self._task = asyncio.create_task(self._publish_readings(), name="mqtt-publisher")
        log.info("publishing to MQTT broker %s:%d under %s/ (discovery under %s/)", c.host,
                 c.port, c.prefix, c.discovery_prefix)

    def stored(self, batches: Sequence[Batch], added: Sequence[int]) -> None:
        """Queue what one commit stored; runs on the event loop and never blocks."""
        for batch, count in zip(batches, added):
            rows = batch.new_rows(count)
            for i, row in enumerate(rows):
                try:
                    self._queue.put_nowait((batch.agent, batch.epoch, row))
                except asyncio.QueueFull:
                    self.metrics.mqtt_dropped.inc(len(rows) - i)
                    break

    def agent_presence(self, state: AgentState, online: bool) -> None:
        """An agent's first connection opened (online) or its last one closed (offline)."""
        if not self._connected.is_set():
            return  # published on (re)connect
        self._publish_availability(state.id, online)
        if online:  # its version may have changed: refresh its devices' sw_version
            for key, unit in list(self._seen.items()):
                if key[0] == state.id:
                    self._announce(*key, unit)

    async def stop(self) -> None:
        """Publish what the queue holds (briefly), say the collector is offline, disconnect."""
        if self._client is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_DRAIN_SECONDS
        while (self._queue.qsize() or self._holding or self._in_flight) \
                and self._connected.is_set() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lost = self._queue.qsize() + self._holding + len(self._in_flight)
        if lost:
            self.metrics.mqtt_unpublished.inc(lost)
            log.warning("%d stored readings were not published to MQTT", lost)
        if self._connected.is_set():
            # A clean disconnect does not fire the last will, so say it ourselves.
            info = self._client.publish(availability_topic(self.config.prefix, COLLECTOR_NODE),
                                        OFFLINE, qos=self.config.qos, retain=True)
            deadline = loop.time() + 0.5
            while not info.is_published() and loop.time() < deadline:
                await asyncio.sleep(0.01)
        self._stopping = True
        self._client.disconnect()
        # loop_stop() joins paho's thread, which may sit in a TCP connect: never wait long.
        done = asyncio.Event()
        threading.Thread(target=lambda: (self._client.loop_stop(),
                                         loop.call_soon_threadsafe(done.set)),
                         name="mqtt-stop", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), STOP_NETWORK_SECONDS)
        self.metrics.mqtt_connected.set(0)

    # -- publishing, on the event loop ------------------------------------------------------

    async def _publish_readings(self) -> None:
        ok = self._paho.MQTTErrorCode.MQTT_ERR_SUCCESS
        queued = self._paho.MQTTErrorCode.MQTT_ERR_NO_CONN  # kept by paho when qos > 0
        qos = self.config.qos
        published = 0
        while True:
            published += 1
            if published % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            agent, epoch, row = await self._queue.get()
            self._holding = 1
            await self._connected.wait()
            await self._window.acquire()
            _seq, sensor, metric, _value, unit, _ts = row
            if (agent, sensor, metric) not in self._seen:
                self._seen[(agent, sensor, metric)] = unit
                self._announce(agent, sensor, metric, unit)
            info = self._client.publish(state_topic(self.config.prefix, agent, sensor, metric),
                                        state_payload(epoch, row), qos=qos, retain=True)
            self._holding = 0
            if info.rc == ok or (info.rc == queued and qos > 0):
                self._in_flight.add(info.mid)
            else:
                self._window.release()
                self.metrics.mqtt_unpublished.inc()

    def _announce(self, agent: str, sensor: str, metric: str, unit: str) -> None:
        version = self._agents.get(agent).version if self._agents else None
        topic, payload = discovery_config(self.config, agent, version, sensor, metric, unit)
        self._client.publish(topic, json.dumps(payload), qos=self.config.qos, retain=True)

    def _publish_availability(self, node: str, online: bool) -> None:
        self._client.publish(availability_topic(self.config.prefix, node),
                             ONLINE if online else OFFLINE, qos=self.config.qos, retain=True)

    def _connected_now(self) -> None:
        c = self.config
        if self._failing:
            log.info("MQTT broker %s:%d reached again", c.host, c.port)
        else:
            log.info("connected to MQTT broker %s:%d", c.host, c.port)
        self._failing = False
        self._connected.set()
        self.metrics.mqtt_connected.set(1)
        self._publish_availability(COLLECTOR_NODE, True)
        # Home Assistant announces its restarts here; it then needs the configs again.
        self._client.subscribe(f"{c.discovery_prefix}/status", qos=1)
        for state in self._agents.all() if self._agents else ():
            self._publish_availability(state.id, state.connections > 0)
        self._announce_all()

    def _announce_all(self) -> None:
        if self._connected.is_set():
            for key, unit in list(self._seen.items()):
                self._announce(*key, unit)

    def _disconnected_now(self, reason: str) -> None:
        if self._connected.is_set() and not self._stopping:
            log.warning("lost the MQTT broker (%s); retrying with backoff, readings stay "
                        "stored", reason)
            self._failing = True
        self._connected.clear()
        self.metrics.mqtt_connected.set(0)
        if self.config.qos == 0:
            # paho forgets unsent QoS 0 messages on reconnect and never confirms them.
            self.metrics.mqtt_unpublished.inc(len(self._in_flight))
            for _ in self._in_flight:
                self._window.release()
            self._in_flight.clear()

    def _confirmed(self, mid: int) -> None:
        if mid in self._in_flight:
            self._in_flight.discard(mid)
            self._window.release()
            self.metrics.mqtt_published.inc()

    def _failed(self, reason: str) -> None:
        if not self._failing:
            log.warning("cannot reach MQTT broker %s:%d (%s); retrying with backoff",
                        self.config.host, self.config.port, reason)
            self._failing = True

    # -- paho's network thread: hand everything to the loop ---------------------------------

    def _call(self, function: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(function, *args)

    def _paho_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
        if reason.is_failure:
            self._call(self._failed, f"refused: {reason}")
        else:
            self._call(self._connected_now)

    def _paho_connect_fail(self, client: Any, userdata: Any) -> None:
        self._call(self._failed, "connection failed")

    def _paho_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                         properties: Any) -> None:
        self._call(self._disconnected_now, str(reason))

    def _paho_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                      properties: Any) -> None:
        self._call(self._confirmed, mid)

    def _paho_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.payload == b"online":
            self._call(self._announce_all)
