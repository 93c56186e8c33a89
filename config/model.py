"""Typed, immutable configuration of both programs.

Built once by :mod:`sensor_edge.config.loader`; the rest of the code never
sees raw YAML. Defaults live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PORT = 8765
DEFAULT_COLLECTOR_STORAGE = "/var/lib/sensor-collector/readings.db"
DEFAULT_AGENT_BUFFER = "/var/lib/sensor-agent/buffer.db"
DEFAULT_MAX_BUFFERED = 1_000_000
# Seconds: the most a power cut may lose of readings not yet acknowledged. Each
# sync during an outage costs the SD card a page or more (docs/reliability.md).
DEFAULT_SYNC_INTERVAL = 90.0
DEFAULT_POLL_INTERVAL = 10.0
DEFAULT_STALE_AFTER = 60.0

# A DHT sensor needs this long between reads or it answers with stale data.
READ_FLOORS = {"dht22": 2.0, "dht11": 1.0}
POLLED_TYPES = ("dht11", "dht22", "cpu_temperature")
DIGITAL_TYPES = ("motion", "button")
SENSOR_TYPES = POLLED_TYPES + DIGITAL_TYPES
BACKENDS = ("auto", "hardware", "mock")
# gpiozero 2's own pin factories (its `gpiozero_pin_factories` entry points);
# lgpio is the one that works on every Pi, the Pi 5 included.
PIN_FACTORIES = ("lgpio", "rpigpio", "pigpio", "native", "mock")


@dataclass(frozen=True)
class Limits:
    """What one agent connection may send (defaults within the contract's bounds)."""

    max_frame_bytes: int = 1024 * 1024
    max_batch_readings: int = 10_000
    # Per connection; past it the collector stops reading that agent for a while.
    max_readings_per_second: float = 20_000.0
    # A client that has not finished its WebSocket handshake by then is dropped.
    handshake_timeout: float = 10.0
    # Open WebSocket connections (agents and dashboards); one more gets HTTP 503.
    max_connections: int = 10_000
    # Repeated bad tokens from one address wait up to this long for their 401 (0: never).
    bad_token_max_delay: float = 5.0


@dataclass(frozen=True)
class AgentCredential:
    """Who may connect. Exactly one of ``token`` or ``token_sha256`` is set."""

    id: str
    # repr=False: a config printed into a log or a traceback must not leak a secret.
    token: str | None = field(default=None, repr=False)
    token_sha256: str | None = field(default=None, repr=False)  # lowercase hex


@dataclass(frozen=True)
class ServerTLS:
    cert: str
    key: str
    client_ca: str | None = None  # set: mutual TLS, agents must present a certificate


@dataclass(frozen=True)
class MQTTConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    prefix: str = "sensor-edge"
    discovery_prefix: str = "homeassistant"
    qos: int = 1


@dataclass(frozen=True)
class CollectorConfig:
    source: str
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    storage: str = DEFAULT_COLLECTOR_STORAGE
    agents: tuple[AgentCredential, ...] = ()
    limits: Limits = field(default_factory=Limits)
    tls: ServerTLS | None = None
    stale_after: float = DEFAULT_STALE_AFTER
    retention_days: float | None = None  # None: keep forever
    api_token: str | None = field(default=None, repr=False)  # set: the HTTP read API needs Authorization: Bearer
    mqtt: MQTTConfig | None = None  # None: no MQTT


@dataclass(frozen=True)
class SensorConfig:
    name: str
    type: str
    pin: int | None = None
    interval: float | None = None
    # Digital inputs: edges closer together than this after a reported one are
    # contact bounce; the settled state is reported when the window ends.
    debounce: float | None = None


@dataclass(frozen=True)
class AgentConfig:
    source: str
    agent_id: str
    urls: tuple[str, ...]  # tried in order: failover
    token: str = field(repr=False)
    ca: str | None = None  # the CA that signed the collector's certificate
    cert: str | None = None  # client certificate for mutual TLS, with key
    key: str | None = None
    buffer_path: str = DEFAULT_AGENT_BUFFER
    max_buffered: int = DEFAULT_MAX_BUFFERED
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    backend: str = "auto"
    # gpiozero pin factory for digital inputs; None: $GPIOZERO_PIN_FACTORY, then gpiozero's choice.
    pin_factory: str | None = None
    sensors: tuple[SensorConfig, ...] = ()
    # Readings per `readings` message and batches awaiting an ack at once.
    batch_size: int = 500
    window: int = 8
    # Notes for the operator (an interval raised to a sensor's floor, ...).
    warnings: tuple[str, ...] = ()
