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
# The 1-minute and 1-hour rollups: ten years.
DEFAULT_ROLLUP_RETENTION_DAYS = 3650.0

# Sensor types (their metrics, keys, floors) live in sensor_types.py.
# A sensor's `filters:`, applied in this order of the list on the agent.
FILTERS = ("offset", "multiply", "round", "delta", "heartbeat", "throttle_average")
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
    # Open agent connections (/v1/stream); one more gets HTTP 503.
    max_connections: int = 10_000
    # Browsers on /v1/live: a budget of their own, so they can never lock agents out.
    max_live_connections: int = 100
    # Connections one agent token may hold at once: two lets a reconnect overlap an
    # old connection not yet known to be dead; more would let one token take them all.
    max_connections_per_agent: int = 2
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


ALERT_KINDS = ("threshold", "stale")


@dataclass(frozen=True)
class AlertRule:
    """One `alerts:` entry (docs/alerts.md). Globs match like shell patterns."""

    name: str
    kind: str = "threshold"  # or "stale": an agent silent past stale_after
    agent: str = "*"
    sensor: str = "*"
    metric: str = "*"
    above: float | None = None  # fires above this, or below `below`; both: outside the band
    below: float | None = None
    hysteresis: float = 0.0  # clears only once back past the threshold by this much
    for_seconds: float = 0.0  # `for`: how long (reading time) the condition must hold
    # Apprise URLs; repr=False: they often carry tokens or passwords.
    notify: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class CollectorConfig:
    source: str
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    # Host names the HTTP side answers to besides IP literals, localhost and this machine's own.
    allowed_hosts: tuple[str, ...] = ()
    storage: str = DEFAULT_COLLECTOR_STORAGE
    agents: tuple[AgentCredential, ...] = ()
    limits: Limits = field(default_factory=Limits)
    tls: ServerTLS | None = None
    stale_after: float = DEFAULT_STALE_AFTER
    retention_days: float | None = None  # None: keep forever
    # Rollups are kept at least as long as readings (server/storage/retention.py).
    rollup_retention_days: float = DEFAULT_ROLLUP_RETENTION_DAYS
    api_token: str | None = field(default=None, repr=False)  # set: the HTTP read API needs Authorization: Bearer
    mqtt: MQTTConfig | None = None  # None: no MQTT
    alerts: tuple[AlertRule, ...] = ()


@dataclass(frozen=True)
class FilterConfig:
    """One step of a sensor's `filters:` list: ``kind`` is one of FILTERS."""

    kind: str
    value: float  # the amount, decimals (round) or seconds (heartbeat, throttle_average)


@dataclass(frozen=True)
class SensorConfig:
    name: str
    type: str  # a key of sensor_types.SENSOR_TYPES
    pin: int | None = None
    interval: float | None = None
    # Digital inputs: edges closer together than this after a reported one are
    # contact bounce; the settled state is reported when the window ends.
    debounce: float | None = None
    bus: int | None = None  # I2C: /dev/i2c-N
    # I2C: the 7-bit address; 1-Wire: the id (28-0316a2791dff), None: the only one there.
    address: int | str | None = None
    channel: int | None = None  # ADCs
    gain: float | None = None  # ADS1115: 2/3, 1, 2, 4, 8 or 16
    filters: tuple[FilterConfig, ...] = ()
    metrics: tuple[str, ...] | None = None  # None: all of the type's metrics


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
