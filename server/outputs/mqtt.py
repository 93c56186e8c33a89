"""The MQTT bridge: every stored reading, published for Home Assistant and other consumers.

The last stage of the collector's pipeline. It is fed only with what storage
committed (``Collector._committed``), through a bounded queue, so a slow or
absent broker never slows ingest or acks: past the bound, readings are still
stored but not published, and counted.

paho-mqtt runs the broker connection on its own network thread and reconnects
with exponential backoff. Everything else here lives on the event loop; paho's
callbacks hop over with ``call_soon_threadsafe``, so no state is shared
between threads. Topics and payloads are documented in docs/home-assistant.md.

Names come from the wire and may hold anything printable: a topic level gets them
percent-encoded (:func:`topic_level`), Home Assistant ids get them through
:mod:`.home_assistant`, and each name that had to change is counted and logged
once. No name and no error of the client's ends the bridge: a publish that
raises is counted, logged and skipped.

A name's Home Assistant id is given the first time the bridge sees it and then
kept for good, in storage (the ``ha_entity_ids`` table): claimed on the storage
writer's thread, read back at start, and the same for every collector on one
database. The name's entity is announced once its id is stored.
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
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from sensor_edge.config.model import MQTTConfig
from sensor_edge.contract import __version__
from sensor_edge.runtime.service import StartupError
from sensor_edge.config import home_assistant as ha
from sensor_edge.contract.protocol import Reading

if TYPE_CHECKING:
    from sensor_edge.server.ingest.agents import AgentRegistry, AgentState
    from sensor_edge.server.outputs.metrics import CollectorMetrics
    from sensor_edge.server.storage import Batch, Storage

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

# Distinct client errors remembered as logged; a failing client logs each kind once.
LOGGED_ERRORS = 100
# Claims of Home Assistant ids for one commit's new names: a claim loses only to another
# collector's claim of the same id, and the next one tries another, so a few rounds do.
CLAIM_ROUNDS = 10
_UNCLAIMED = ("Home Assistant ids for new names could not be stored (%s); each such name is "
              "tried again with its next reading and announced once its id is stored")

# What a topic level cannot carry: the wildcards, the level separator and NUL (paho
# refuses them, or they would change the topic's shape); control characters and
# lone surrogates (the spec and UTF-8 forbid them); and '%', the escape itself.
_NOT_IN_TOPIC = re.compile(r"[+#/%\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def topic_level(name: str) -> str:
    """A name as one MQTT topic level: each character a level cannot carry becomes '%'
    and the hex of its UTF-8 bytes ('a+b' -> 'a%2Bb', '50%' -> '50%25'), so every
    other name is unchanged and no two names share a level."""
    return _NOT_IN_TOPIC.sub(_percent_encoded, name)


def _percent_encoded(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def state_topic(prefix: str, agent: str, sensor: str, metric: str) -> str:
    return f"{prefix}/{topic_level(agent)}/{topic_level(sensor)}/{topic_level(metric)}"


def availability_topic(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/availability"


def state_payload(epoch: str, row: Reading) -> str:
    """The JSON published for one stored reading."""
    seq, _sensor, _metric, value, unit, ts = row
    return json.dumps({"value": value, "unit": unit, "ts": ts, "seq": seq, "epoch": epoch},
                      separators=(",", ":"))


def discovery_config(config: MQTTConfig, agent: str, version: str | None, sensor: str,
                     metric: str, unit: str, object_id: str | None = None
                     ) -> tuple[str, dict[str, Any]]:
    """Home Assistant's MQTT discovery message for one (agent, sensor, metric): topic, payload.

    ``object_id``: the one :class:`~.home_assistant.EntityIds` gave it (default: the
    plain ``ha_id`` of sensor and metric, right while no other name meets it).
    """
    node = ha.ha_id(agent)
    obj = object_id if object_id is not None else ha.ha_id(f"{sensor}_{metric}")
    shown = ha.entity(metric, unit)
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
        "origin": {"name": "sensor-edge", "sw_version": __version__},
    }
    if shown.component == ha.BINARY_SENSOR:
        payload["value_template"] = "{{ 'ON' if value_json.value > 0 else 'OFF' }}"
    else:
        payload["value_template"] = "{{ value_json.value }}"
        payload["state_class"] = "measurement"
        if shown.unit:
            payload["unit_of_measurement"] = shown.unit
    if shown.device_class:
        payload["device_class"] = shown.device_class
    return f"{config.discovery_prefix}/{shown.component}/{node}/{obj}/config", payload


def _check_topic_prefix(source: str, key: str, value: str) -> None:
    # Names below the prefixes are escaped by topic_level(); the prefixes are the operator's.
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
        for agent in agent_ids:
            # The collector's own topics and ids (availability, alert entities) are
            # `collector` and `sensor_edge_collector_...`: no agent may reach into them.
            node = ha.ha_id(agent)
            if node == COLLECTOR_NODE or node.startswith(COLLECTOR_NODE + "_"):
                raise StartupError(f"{source}: agent id {agent!r} would share the collector's "
                                   "MQTT topics or Home Assistant ids; rename the agent")
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
        self._seen: dict[ha.Key, str] = {}
        self._entity_ids = ha.EntityIds()  # every id stored, loaded at start
        # Names seen whose ids are being claimed (key -> unit), and the claims in order.
        self._claiming: dict[ha.Key, str] = {}
        self._claims: asyncio.Queue[list[ha.Key]] = asyncio.Queue()
        self._storage: Storage | None = None
        self._writer: Executor | None = None
        self._errors_logged: set[tuple[str, str]] = set()
        self._agents: AgentRegistry | None = None
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._claimer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False  # log a broker outage once, not on every retry
        # Called on each connect, on the loop: other stages' retained topics (alerts).
        self.on_connected: list[Callable[[], None]] = []
        self._stopping = False
        metrics.mqtt_pending.set_function(lambda: self._queue.qsize() + self._holding
                                          + len(self._in_flight))

    # -- the collector's side ---------------------------------------------------------------

    async def start(self, agents: AgentRegistry, storage: Storage, writer: Executor) -> None:
        """Load the Home Assistant ids given so far, connect in the background (retried
        with backoff) and start publishing. ``writer``: the storage writer's thread."""
        paho = self._paho
        c = self.config
        self._loop = asyncio.get_running_loop()
        self._agents = agents
        self._storage, self._writer = storage, writer
        self._entity_ids.learn(await self._loop.run_in_executor(writer, storage.ha_entity_ids))
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
        self._claimer = asyncio.create_task(self._claim_ids(), name="mqtt-entity-ids")
        log.info("publishing to MQTT broker %s:%d under %s/ (discovery under %s/)", c.host,
                 c.port, c.prefix, c.discovery_prefix)

    def stored(self, batches: Sequence[Batch], added: Sequence[int]) -> None:
        """Queue what one commit stored; runs on the event loop and never blocks."""
        new: dict[ha.Key, str] = {}
        for batch, count in zip(batches, added):
            for row in batch.new_rows(count):
                key = (batch.agent, row[1], row[2])
                if key not in self._seen and key not in self._claiming and key not in new:
                    new[key] = row[4]
        if new:
            try:
                self._first_seen(new)
            except Exception as e:  # this runs in the batcher's commit callback: never raise
                self._publish_failed(e)
        for batch, count in zip(batches, added):
            rows = batch.new_rows(count)
            for i, row in enumerate(rows):
                try:
                    self._queue.put_nowait((batch.agent, batch.epoch, row))
                except asyncio.QueueFull:
                    self.metrics.mqtt_dropped.inc(len(rows) - i)
                    break

    def publish(self, topic: str, payload: str) -> bool:
        """Publish a retained message now if connected (False: not connected)."""
        if not self._connected.is_set():
            return False
        self._client.publish(topic, payload, qos=self.config.qos, retain=True)
        return True

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
        for task in (self._task, self._claimer):
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as e:  # each catches its own errors; this is the last net
                log.error("the MQTT bridge's %s task had stopped: %s", task.get_name(), e)
        lost = self._queue.qsize() + self._holding + len(self._in_flight)
        if lost:
            self.metrics.mqtt_unpublished.inc(lost)
            log.warning("%d stored readings were not published to MQTT", lost)
        if self._connected.is_set():
            # A clean disconnect does not fire the last will, so say it ourselves.
            info = self._publish(availability_topic(self.config.prefix, COLLECTOR_NODE),
                                 OFFLINE)
            deadline = loop.time() + 0.5
            while info is not None and not info.is_published() and loop.time() < deadline:
                await asyncio.sleep(0.01)
        self._stopping = True
        try:
            self._client.disconnect()
        except Exception as e:
            self._publish_failed(e)
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
            self._holding = 0
            _seq, sensor, metric, _value, _unit, _ts = row
            try:
                info = self._publish(state_topic(self.config.prefix, agent, sensor, metric),
                                     state_payload(epoch, row))
            except Exception as e:  # nothing one reading holds may end the publisher
                self._publish_failed(e)
                info = None
            if info is not None and (info.rc == ok or (info.rc == queued and qos > 0)):
                self._in_flight.add(info.mid)
            else:
                self._window.release()
                self.metrics.mqtt_unpublished.inc()

    def _publish(self, topic: str, payload: str) -> Any:
        """Hand one retained message to paho; its MQTTMessageInfo, or None if paho raised."""
        try:
            return self._client.publish(topic, payload, qos=self.config.qos, retain=True)
        except Exception as e:
            self._publish_failed(e)
            return None

    def _publish_failed(self, error: Exception) -> None:
        # Whatever raises (paho, or a bug of ours) costs that one message, no more.
        self.metrics.mqtt_publish_errors.inc()
        self._log_once("an MQTT message was not published (%s); the bridge goes on. Each such "
                       "error is logged once and counted in sensor_edge_mqtt_publish_errors_total",
                       f"{type(error).__name__}: {error}")

    def _log_once(self, message: str, detail: str) -> None:
        """Log ``message % detail`` unless that very line was logged already."""
        if (message, detail) not in self._errors_logged:
            if len(self._errors_logged) >= LOGGED_ERRORS:
                self._errors_logged.clear()
            self._errors_logged.add((message, detail))
            log.error(message, detail)

    def _first_seen(self, new: dict[ha.Key, str]) -> None:
        """Names first stored since start (key -> unit): say what had to change, and
        announce them once they have ids (claimed first for names new to storage)."""
        escaped = self.metrics.escaped_names
        for key, unit in new.items():
            for name in key:
                level = topic_level(name)
                if level != name:
                    escaped.record("mqtt_topic", name, f"published as topic level {level!r}")
            if ha.entity(key[2], unit).unit_refused:
                escaped.record("home_assistant_unit", f"{key[2]} [{unit}]",
                               f"not a unit Home Assistant knows for {key[2]}: announced "
                               "without a device class")
        unknown = [key for key in new if key not in self._entity_ids]
        if unknown:
            self._claiming.update((key, new[key]) for key in unknown)
            self._claims.put_nowait(unknown)
        self._adopt({key: unit for key, unit in new.items() if key in self._entity_ids})

    async def _claim_ids(self) -> None:
        """Store ids for names new to storage, in the order they came (the first seen
        keeps the plain id), one commit's names at a time; then announce them."""
        loop = asyncio.get_running_loop()
        while True:
            keys = await self._claims.get()
            try:
                for _ in range(CLAIM_ROUNDS):
                    proposals = self._entity_ids.propose(keys)
                    if not proposals:
                        break
                    self._entity_ids.learn(await loop.run_in_executor(
                        self._writer, self._storage.claim_ha_entity_ids, proposals))
                else:
                    self._log_once(_UNCLAIMED, f"claims still lost after {CLAIM_ROUNDS} rounds")
            except Exception as e:  # a storage outage: the next reading of each tries again
                self._log_once(_UNCLAIMED, f"{type(e).__name__}: {e}")
            finally:
                units = {key: self._claiming.pop(key) for key in keys if key in self._claiming}
            self._adopt({key: unit for key, unit in units.items() if key in self._entity_ids})

    def _adopt(self, new: dict[ha.Key, str]) -> None:
        """Names with their ids (key -> unit): announce them, now and on each connect."""
        for key, unit in new.items():
            self._seen[key] = unit
            if self._entity_ids.disambiguated(key):
                self.metrics.escaped_names.record(
                    "home_assistant_id", "/".join(key), "another name had its Home "
                    f"Assistant id first; its unique_id is {self._entity_ids.unique_id(key)!r}")
            if self._connected.is_set():  # else announced on (re)connect
                self._announce(*key, unit)

    def _announce(self, agent: str, sensor: str, metric: str, unit: str) -> None:
        version = self._agents.get(agent).version if self._agents else None
        topic, payload = discovery_config(self.config, agent, version, sensor, metric, unit,
                                          self._entity_ids.object_id((agent, sensor, metric)))
        self._publish(topic, json.dumps(payload))

    def _publish_availability(self, node: str, online: bool) -> None:
        self._publish(availability_topic(self.config.prefix, node), ONLINE if online else OFFLINE)

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
        for hook in self.on_connected:
            hook()

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
