"""One YAML loader for both programs.

Every error is a :class:`ConfigError` whose message is one line naming the
file, the line and the key, e.g.::

    agent.yaml:12: sensors[1].interval: expected seconds (a number or "5s"), got 'soon'

Unknown keys are errors: in a hand-written file they are nearly always typos.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import yaml

from sensor_edge.config.home_assistant import ha_id
from sensor_edge.contract.protocol import MAX_BATCH_LIMIT, MAX_FRAME_LIMIT, MIN_BATCH_LIMIT, MIN_FRAME_LIMIT
from sensor_edge.config.model import (
    ALERT_KINDS,
    BACKENDS,
    DEFAULT_POLL_INTERVAL,
    FILTERS,
    PIN_FACTORIES,
    AgentConfig,
    AgentCredential,
    AlertRule,
    CollectorConfig,
    FilterConfig,
    Limits,
    MQTTConfig,
    SensorConfig,
    ServerTLS,
)
from sensor_edge.config.sensor_types import SENSOR_TYPES, SensorType, Setting

# Agent and sensor names end up in URLs, MQTT topics and metric labels.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A DNS name as a browser puts it in `Host` (listen.allowed_hosts).
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
ALERTS_PIP_HINT = "pip install 'sensor-edge[alerts]'"

# A 1-Wire device id as the kernel names it under /sys/bus/w1/devices.
W1_ID_PATTERN = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{12}$")
# The GPIOs a bus takes when a sensor on it is configured: a `pin:` there is a mistake.
I2C1_PINS = (2, 3)  # SDA1, SCL1
SPI0_PINS = (8, 9, 10, 11)  # CE0, MISO, MOSI, SCLK


class ConfigError(Exception):
    """An operator mistake in a config file; ``str()`` is the one-line message."""


class _Value:
    """A YAML node with where it came from, so any error can name its line."""

    def __init__(self, source: str, node: yaml.Node, path: str, loader: yaml.SafeLoader,
                 key_node: yaml.Node | None = None):
        self.source = source
        self.node = node
        self.path = path
        self._loader = loader
        self._key_node = key_node

    @property
    def line(self) -> int:
        # The key's line: a nested mapping's own node starts on the line after it.
        return (self._key_node or self.node).start_mark.line + 1

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.line}: {self.path}: {message}")

    def _scalar(self) -> Any:
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.error(f"expected a single value, got a {_kind(self.node)}")
        return self._loader.construct_object(self.node)

    def string(self) -> str:
        value = self._scalar()
        if not isinstance(value, str) or not value:
            raise self.error(f"expected a non-empty string, got {value!r}")
        return value

    def secret(self) -> str:
        """A token or password: like string(), but an error never shows the value."""
        value = self._scalar()
        if not isinstance(value, str) or not value:
            raise self.error("expected a non-empty string (put it in quotes)")
        return value

    def name(self) -> str:
        value = self.string()
        if not NAME_PATTERN.match(value):
            raise self.error(
                f"{value!r} is not a valid name (letters, digits, '.', '_', '-'; at most 64)"
            )
        return value

    def integer(self, low: int | None = None, high: int | None = None) -> int:
        value = self._scalar()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected a whole number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.error(f"{value} is out of range {low}..{high}")
        return value

    def seconds(self, allow_zero: bool = False) -> float:
        """A duration: a number of seconds, or a string like "500ms", "5s", "2m", "1h"."""
        value = self._scalar()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION.match(value)):
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        else:
            raise self.error(f'expected seconds (a number or "5s"), got {value!r}')
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
            raise self.error(f"expected a positive number of seconds, got {value!r}")
        return seconds

    def boolean(self) -> bool:
        value = self._scalar()
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {value!r}")
        return value

    def number(self, low: float, high: float | None = None) -> float:
        value = self._scalar()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"expected a number, got {value!r}")
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            raise self.error(f"{value} is out of range {low:g}..{'' if high is None else high}")
        return float(value)

    def file(self) -> str:
        """A path that must name a readable file now (certificates, keys)."""
        path = self.string()
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise self.error(f"cannot read {path!r}: {e.strerror or e}") from None
        return path

    def sha256_hex(self) -> str:
        value = self.string()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise self.error("expected 64 lowercase hex digits (a sha256 of the token)")
        return value

    def choice(self, options: tuple[str, ...]) -> str:
        value = self._scalar()
        if value not in options:
            raise self.error(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def items(self) -> list[_Value]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"expected a list, got a {_kind(self.node)}")
        return [
            _Value(self.source, child, f"{self.path}[{i}]", self._loader)
            for i, child in enumerate(self.node.value)
        ]

    def section(self) -> _Section:
        return _Section(self)


class _Section:
    """A YAML mapping whose keys are taken one by one; leftovers are typos."""

    def __init__(self, value: _Value):
        self.value = value
        if not isinstance(value.node, yaml.MappingNode):
            raise value.error(f"expected a mapping of keys, got a {_kind(value.node)}")
        self._children: dict[str, _Value] = {}
        for key_node, child in value.node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            path = f"{value.path}.{key}" if value.path else str(key)
            if not isinstance(key, str):
                raise ConfigError(
                    f"{value.source}:{key_node.start_mark.line + 1}: {value.path or 'top level'}: "
                    "keys must be plain names"
                )
            if key in self._children:
                raise ConfigError(
                    f"{value.source}:{key_node.start_mark.line + 1}: {path}: duplicate key"
                )
            self._children[key] = _Value(value.source, child, path, value._loader, key_node)
        self._taken: set[str] = set()

    def get(self, key: str) -> _Value | None:
        self._taken.add(key)
        child = self._children.get(key)
        if child is not None and _is_null(child.node):
            return None
        return child

    def take(self, key: str, read: Callable[[_Value], Any], default: Any) -> Any:
        child = self.get(key)
        return default if child is None else read(child)

    def require(self, key: str, read: Callable[[_Value], Any]) -> Any:
        child = self.get(key)
        if child is None:
            where = self.value.path or "top level"
            raise ConfigError(
                f"{self.value.source}:{self.value.line}: {where}: missing required key '{key}'"
            )
        return read(child)

    def finish(self) -> None:
        for key, child in self._children.items():
            if key not in self._taken:
                parent = f" in {self.value.path}" if self.value.path else ""
                raise child.error(f"unknown key{parent} (a typo?)")


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "value"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _read_root(path: str) -> _Section:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if node is None:
        raise ConfigError(f"{path}:1: the config file is empty")
    return _Value(path, node, "", loader).section()


def _url(value: _Value) -> str:
    url = value.string()
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise value.error(f"expected a ws:// or wss:// URL, got {url!r}")
    try:
        parts.port
    except ValueError:
        raise value.error(f"bad port in {url!r}") from None
    return url


def load_collector_config(path: str) -> CollectorConfig:
    """Read and check a collector config file."""
    root = _read_root(path)
    host, port, tls, allowed_hosts = "0.0.0.0", CollectorConfig.port, None, ()
    listen = root.get("listen")
    if listen is not None:
        section = listen.section()
        host = section.take("host", _Value.string, host)
        port = section.take("port", lambda v: v.integer(0, 65535), port)
        tls = section.take("tls", _server_tls, None)
        allowed_hosts = section.take(
            "allowed_hosts", lambda v: tuple(_host_name(item) for item in v.items()), ())
        section.finish()

    storage = root.take("storage", _Value.string, CollectorConfig.storage)
    if "://" in storage and not storage.startswith(("postgresql://", "postgres://")):
        raise root.get("storage").error(
            f"expected a SQLite file path or postgresql://user@host/db, got {storage!r}"
        )

    agents: list[AgentCredential] = []
    seen_ids: set[str] = set()
    seen_tokens: set[str] = set()
    id_values: list[tuple[str, _Value]] = []
    agents_value = root.get("agents")
    for item in agents_value.items() if agents_value is not None else []:
        entry = item.section()
        agent_id = entry.require("id", _Value.name)
        id_values.append((agent_id, entry.get("id")))
        token_value = entry.get("token")
        hash_value = entry.get("token_sha256")
        if (token_value is None) == (hash_value is None):
            raise item.error("each agent needs exactly one of 'token' or 'token_sha256'")
        token = token_value.secret() if token_value is not None else None
        token_sha256 = hash_value.sha256_hex() if hash_value is not None else None
        entry.finish()
        if agent_id in seen_ids:
            raise item.error(f"agent id {agent_id!r} is listed twice")
        secret = token if token is not None else token_sha256
        if secret in seen_tokens:
            # Never echo the token itself: error messages end up in logs.
            raise (token_value or hash_value).error("this token is already given to another agent")
        seen_ids.add(agent_id)
        seen_tokens.add(secret)
        agents.append(AgentCredential(agent_id, token=token, token_sha256=token_sha256))

    limits = Limits()
    limits_value = root.get("limits")
    if limits_value is not None:
        section = limits_value.section()
        limits = Limits(
            # Within the contract's bounds: accept at least the minimum, refuse the maximum.
            max_frame_bytes=section.take(
                "max_frame_bytes",
                lambda v: v.integer(MIN_FRAME_LIMIT, MAX_FRAME_LIMIT - 1),
                limits.max_frame_bytes,
            ),
            max_batch_readings=section.take(
                "max_batch_readings",
                lambda v: v.integer(MIN_BATCH_LIMIT, MAX_BATCH_LIMIT - 1),
                limits.max_batch_readings,
            ),
            max_readings_per_second=section.take(
                "max_readings_per_second", lambda v: v.number(1), limits.max_readings_per_second
            ),
            handshake_timeout=section.take(
                "handshake_timeout", _Value.seconds, limits.handshake_timeout
            ),
            max_connections=section.take(
                "max_connections", lambda v: v.integer(1, None), limits.max_connections
            ),
            max_live_connections=section.take(
                "max_live_connections", lambda v: v.integer(0, None), limits.max_live_connections
            ),
            max_connections_per_agent=section.take(
                "max_connections_per_agent", lambda v: v.integer(1, None),
                limits.max_connections_per_agent
            ),
            bad_token_max_delay=section.take(
                "bad_token_max_delay", lambda v: v.number(0, 60), limits.bad_token_max_delay
            ),
        )
        section.finish()
    stale_after = root.take("stale_after", _Value.seconds, CollectorConfig.stale_after)
    retention_days = root.take("retention_days", lambda v: v.number(0.001), None)
    rollup_retention_days = root.take("rollup_retention_days", lambda v: v.number(0.001),
                                      CollectorConfig.rollup_retention_days)
    api_token = None
    api = root.get("api")
    if api is not None:
        section = api.section()
        api_token = section.take("token", _Value.secret, None)
        section.finish()
    mqtt = root.take("mqtt", _mqtt, None)
    alerts = root.take("alerts", _alert_rules, ())
    if mqtt is not None:
        _check_home_assistant_ids(id_values)
    root.finish()
    return CollectorConfig(
        source=path, host=host, port=port, storage=storage, agents=tuple(agents), limits=limits,
        tls=tls, stale_after=stale_after, retention_days=retention_days,
        rollup_retention_days=rollup_retention_days, api_token=api_token, mqtt=mqtt, alerts=alerts,
        allowed_hosts=allowed_hosts,
    )


def _check_home_assistant_ids(id_values: list[tuple[str, _Value]]) -> None:
    """Two agent ids Home Assistant would see as one device ('pi.hall', 'pi_hall') are refused:
    their entities would share discovery topics and the last to announce would own them."""
    first: dict[str, tuple[str, _Value]] = {}
    for agent_id, value in id_values:
        node = ha_id(agent_id)
        if node in first:
            other, other_value = first[node]
            raise value.error(
                f"agent id {agent_id!r} and {other!r} (line {other_value.line}) would be one "
                f"device in Home Assistant ('{node}': it allows no '.'); rename one")
        first[node] = (agent_id, value)


def _host_name(value: _Value) -> str:
    name = value.string()
    if not _HOST_NAME.fullmatch(name):
        raise value.error(f"{name!r} is not a host name (like collector.lan, without port)")
    return name.lower().rstrip(".")


def _server_tls(value: _Value) -> ServerTLS:
    section = value.section()
    tls = ServerTLS(
        cert=section.require("cert", _Value.file),
        key=section.require("key", _Value.file),
        client_ca=section.take("client_ca", _Value.file, None),
    )
    section.finish()
    return tls


def _mqtt(value: _Value) -> MQTTConfig:
    section = value.section()
    d = MQTTConfig()
    config = MQTTConfig(
        host=section.take("host", _Value.string, d.host),
        port=section.take("port", lambda v: v.integer(1, 65535), d.port),
        username=section.take("username", _Value.string, d.username),
        password=section.take("password", _Value.secret, d.password),
        tls=section.take("tls", _Value.boolean, d.tls),
        prefix=section.take("prefix", _Value.string, d.prefix),
        discovery_prefix=section.take("discovery_prefix", _Value.string, d.discovery_prefix),
        qos=section.take("qos", lambda v: v.integer(0, 2), d.qos),
    )
    section.finish()
    return config


def _alert_rules(value: _Value) -> tuple[AlertRule, ...]:
    rules: list[AlertRule] = []
    names: set[str] = set()
    for item in value.items():
        rule = _alert_rule(item)
        if rule.name in names:
            raise item.error(f"alert name {rule.name!r} is used twice")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _alert_rule(item: _Value) -> AlertRule:
    section = item.section()
    name = section.require("name", _Value.name)
    kind = section.take("kind", lambda v: v.choice(ALERT_KINDS), "threshold")
    agent = section.take("agent", _Value.string, "*")
    notify = tuple(_apprise_url(v) for v in section.take("notify", _Value.items, []))
    if kind == "stale":  # only the agent glob applies: the agent's silence is the condition
        for key in ("sensor", "metric", "above", "below", "hysteresis", "for"):
            child = section.get(key)
            if child is not None:
                raise child.error("does not apply to kind: stale (an agent past stale_after)")
        section.finish()
        return AlertRule(name=name, kind=kind, agent=agent, notify=notify)
    above = section.take("above", _finite, None)
    below = section.take("below", _finite, None)
    rule = AlertRule(
        name=name, kind=kind, agent=agent,
        sensor=section.take("sensor", _Value.string, "*"),
        metric=section.take("metric", _Value.string, "*"),
        above=above, below=below,
        hysteresis=section.take("hysteresis", lambda v: v.number(0), 0.0),
        for_seconds=section.take("for", lambda v: v.seconds(allow_zero=True), 0.0),
        notify=notify,
    )
    section.finish()  # a typo ('abve') is named before what it leaves missing
    if above is None and below is None:
        raise item.error("a threshold alert needs 'above' or 'below' (or both: outside a band)")
    if above is not None and below is not None and below >= above:
        raise section.get("below").error(
            f"with both, 'below' ({below:g}) must be under 'above' ({above:g})")
    return rule


def _finite(value: _Value) -> float:
    number = value._scalar()
    if isinstance(number, bool) or not isinstance(number, (int, float)) \
            or not math.isfinite(number):
        raise value.error(f"expected a finite number, got {number!r}")
    return float(number)


def _apprise_url(value: _Value) -> str:
    """An Apprise URL that Apprise itself can load (the error shows only its scheme:
    the rest often holds a token or password)."""
    url = value.secret()
    try:
        import apprise
    except ImportError:
        raise value.error(f"alerts need Apprise: {ALERTS_PIP_HINT}") from None
    quiet = logging.getLogger("apprise")
    was_disabled, quiet.disabled = quiet.disabled, True  # its own complaint names the URL
    try:
        loaded = apprise.Apprise.instantiate(url)
    finally:
        quiet.disabled = was_disabled
    if loaded is None:
        scheme = url.split("://", 1)[0] if "://" in url else url[:0]
        raise value.error(f"not a usable Apprise URL ({scheme + '://...' if scheme else 'no scheme'}"
                          "; see the Apprise wiki for each service's form)")
    return url


def load_agent_config(path: str) -> AgentConfig:
    """Read and check an agent config file."""
    root = _read_root(path)
    warnings: list[str] = []

    agent = root.require("agent", _Value.section)
    agent_id = agent.require("id", _Value.name)
    agent.finish()

    collector = root.require("collector", _Value.section)
    url = collector.get("url")
    url_list = collector.get("urls")
    if (url is None) == (url_list is None):
        raise collector.value.error("give exactly one of 'url' or 'urls' (a list, for failover)")
    if url is not None:
        urls = (_url(url),)
    else:
        urls = tuple(_url(item) for item in url_list.items())
        if not urls:
            raise url_list.error("the list of collector URLs is empty")
    token = collector.require("token", _Value.secret)
    ca = collector.take("ca", _Value.file, None)
    cert = collector.take("cert", _Value.file, None)
    key_value = collector.get("key")
    key = key_value.file() if key_value is not None else None
    if (cert is None) != (key is None):
        raise collector.value.error("'cert' and 'key' go together (the client certificate)")
    collector.finish()

    buffer_path, max_buffered = AgentConfig.buffer_path, AgentConfig.max_buffered
    sync_interval = AgentConfig.sync_interval
    buffer = root.get("buffer")
    if buffer is not None:
        section = buffer.section()
        buffer_path = section.take("path", _Value.string, buffer_path)
        max_buffered = section.take("max_readings", lambda v: v.integer(1, None), max_buffered)
        sync_interval = section.take("sync_interval", _Value.seconds, sync_interval)
        section.finish()

    backend = root.take("backend", lambda v: v.choice(BACKENDS), "auto")
    pin_factory = root.take("pin_factory", lambda v: v.choice(PIN_FACTORIES), None)

    sensors: list[SensorConfig] = []
    sensors_value = root.get("sensors")
    items = sensors_value.items() if sensors_value is not None else []
    for item in items:
        sensors.append(_sensor(item, warnings))
    _check_sensors_apart(sensors, items)
    root.finish()
    return AgentConfig(
        source=path,
        agent_id=agent_id,
        urls=urls,
        token=token,
        ca=ca,
        cert=cert,
        key=key,
        buffer_path=buffer_path,
        max_buffered=max_buffered,
        sync_interval=sync_interval,
        backend=backend,
        pin_factory=pin_factory,
        sensors=tuple(sensors),
        warnings=tuple(warnings),
    )


def _sensor(item: _Value, warnings: list[str]) -> SensorConfig:
    section = item.section()
    name = section.require("name", _Value.name)
    kind = section.require("type", lambda v: v.choice(tuple(SENSOR_TYPES)))
    sensor_type = SENSOR_TYPES[kind]
    settings: dict[str, Any] = {}
    for key in _SETTING_KEYS:
        value = section.get(key)
        setting = sensor_type.setting(key)
        if setting is None:
            if value is not None:
                users = [t.name for t in SENSOR_TYPES.values() if t.setting(key) is not None]
                raise value.error(f"{key} applies to {_and(users)} sensors, not {kind}")
            continue
        if value is None:
            if setting.required:
                raise item.error(f"a {kind} sensor needs a '{key}' ({setting.hint})")
            settings[key] = setting.default
        else:
            settings[key] = _setting(value, setting, kind)

    interval_value = section.get("interval")
    interval = interval_value.seconds() if interval_value is not None else None
    if interval is None and sensor_type.polled:
        interval = DEFAULT_POLL_INTERVAL
    floor = sensor_type.read_floor
    if floor is not None and interval is not None and interval < floor:
        warnings.append(
            f"{item.source}:{interval_value.line}: {interval_value.path}: "
            f"{interval:g} s is faster than a {kind} can be read; using {floor:g} s"
        )
        interval = floor
    filters = section.take("filters", _filters, ())
    metrics = section.take("metrics", lambda v: _metrics(v, sensor_type), None)
    section.finish()
    return SensorConfig(name=name, type=kind, interval=interval, filters=filters,
                        metrics=metrics, **settings)


# Every key some sensor type takes (pin, debounce, bus, address, channel, gain).
_SETTING_KEYS = tuple(dict.fromkeys(s.key for t in SENSOR_TYPES.values() for s in t.settings))


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _setting(value: _Value, setting: Setting, kind: str) -> Any:
    if setting.kind == "pin":
        return value.integer(setting.low, setting.high)
    if setting.kind == "seconds":
        return value.seconds()
    if setting.kind in ("bus", "channel"):
        return value.integer(setting.low, setting.high)
    if setting.kind == "i2c_address":
        raw = value._scalar()
        if isinstance(raw, str) and re.fullmatch(r"0[xX][0-9a-fA-F]{1,2}", raw.strip()):
            address = int(raw, 16)  # "0x76" in quotes, as i2cdetect prints it
        else:
            address = value.integer(0, 0x7F)
        if address not in setting.choices:
            options = ", ".join(f"0x{a:02x}" for a in setting.choices)
            raise value.error(f"a {kind} answers at {options}, not 0x{address:02x}")
        return address
    if setting.kind == "w1_id":
        device_id = str(value._scalar()).strip().lower()
        if not W1_ID_PATTERN.match(device_id):
            raise value.error(f"expected a 1-Wire id like 28-0316a2791dff (as listed in "
                              f"/sys/bus/w1/devices), got {device_id!r}")
        family = device_id[:2]
        if family not in SENSOR_TYPES[kind].w1_families:
            raise value.error(f"{device_id} is not a {kind}: its family {family} is not one of "
                              f"{', '.join(SENSOR_TYPES[kind].w1_families)}")
        return device_id
    if setting.kind == "gain":
        raw = value._scalar()
        gain = 2 / 3 if raw == "2/3" else raw
        if isinstance(gain, bool) or gain not in setting.choices:
            options = ", ".join("2/3" if g == 2 / 3 else f"{g:g}" for g in setting.choices)
            raise value.error(f"expected a gain of {options}, got {raw!r}")
        return next(g for g in setting.choices if g == gain)
    raise AssertionError(f"unknown setting kind {setting.kind!r}")


def _filters(value: _Value) -> tuple[FilterConfig, ...]:
    filters = []
    for item in value.items():
        step = item.section()
        present = [key for key in FILTERS if step.get(key) is not None]
        if len(present) != 1:
            step.finish()  # a misspelt filter: "unknown key"
            raise item.error(f"each list item is one filter ({', '.join(FILTERS)}), "
                             "e.g. '- delta: 0.2'")
        kind = present[0]
        amount = step.get(kind)
        if kind in ("offset", "multiply"):
            number = amount.number(-1e12, 1e12)
        elif kind == "round":
            number = float(amount.integer(-6, 10))
        elif kind == "delta":
            number = amount.number(0)
        else:  # heartbeat, throttle_average
            number = amount.seconds()
        step.finish()
        filters.append(FilterConfig(kind, number))
    return tuple(filters)


def _metrics(value: _Value, sensor_type: SensorType) -> tuple[str, ...]:
    chosen: list[str] = []
    for item in value.items():
        metric = item.choice(sensor_type.metric_names)
        if metric in chosen:
            raise item.error(f"{metric} is listed twice")
        chosen.append(metric)
    if not chosen:
        raise value.error("an empty list keeps nothing: leave 'metrics' out to keep all")
    return tuple(chosen)


def _check_sensors_apart(sensors: list[SensorConfig], items: list[_Value]) -> None:
    """Two sensors on one pin, address or channel, or a pin that a bus in use needs, is a
    mistake in the file: name the line of the second one."""
    names: set[str] = set()
    pins: dict[int, str] = {}  # GPIO -> the sensor on it
    bus_pins: dict[int, tuple[str, str]] = {}  # GPIO -> (the bus that needs it, a sensor on it)
    places: dict[tuple[Any, ...], str] = {}  # (bus, address or channel or id) -> the sensor
    thermometers = [s for s in sensors if SENSOR_TYPES[s.type].interface == "1-wire"]
    for sensor, item in zip(sensors, items):
        if sensor.name in names:
            raise item.error(f"sensor name {sensor.name!r} is used twice")
        names.add(sensor.name)
        interface = SENSOR_TYPES[sensor.type].interface
        place, where, bus = None, "", ("", ())
        if interface == "i2c":
            # An ADC's channels share its address; anything else on one address clashes.
            place = ("i2c", sensor.bus, sensor.address, sensor.channel)
            where = f"address 0x{sensor.address:02x} on I2C bus {sensor.bus}" + \
                ("" if sensor.channel is None else f", channel {sensor.channel},")
            if sensor.bus == 1:
                bus = ("I2C bus 1", I2C1_PINS)
        elif interface == "spi":
            place, where = ("spi", sensor.channel), f"MCP3008 channel {sensor.channel}"
            bus = ("SPI0", SPI0_PINS)
        elif interface == "1-wire":
            if sensor.address is None and len(thermometers) > 1:
                raise item.error(f"with {len(thermometers)} 1-Wire sensors, each needs its "
                                 "'address' (sensor-agent probe lists the ids)")
            place, where = ("w1", sensor.address), f"1-Wire id {sensor.address}"
        if place is not None:
            if place in places:
                raise item.error(f"{where} is already used by sensor {places[place]!r}")
            places[place] = sensor.name
        label, needed = bus
        for pin in needed:
            if pin in pins:
                raise item.error(f"{label} needs GPIO{pin}, which sensor {pins[pin]!r} uses")
            bus_pins.setdefault(pin, (label, sensor.name))
        if sensor.pin is not None:
            if sensor.pin in pins:
                raise item.error(f"pin {sensor.pin} is already used by sensor "
                                 f"{pins[sensor.pin]!r}")
            if sensor.pin in bus_pins:
                label, user = bus_pins[sensor.pin]
                raise item.error(f"GPIO{sensor.pin} belongs to {label}, which sensor "
                                 f"{user!r} uses")
            pins[sensor.pin] = sensor.name
