"""The wire protocol between agent and collector, with no I/O.

This module is the vocabulary both sides speak: the message types of the
contract, the parsing and validation of every frame (types, finite numbers,
sizes, nesting, order) and the error and close codes. It imports no socket,
no asyncio and no database: frames go in, typed messages or a
:class:`ProtocolError` come out. The collector's and the agent's connection
code call it; validation lives here and nowhere else.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import islice
from operator import itemgetter, lt
from typing import Annotated, Any, NamedTuple

from sensor_edge.contract.status import AgentStatus

STREAM_PATH = "/v1/stream"

# Bounds the contract fixes: the defaults must accept at least the first and
# refuse at least the second of each pair.
MIN_FRAME_LIMIT, MAX_FRAME_LIMIT = 256 * 1024, 2 * 1024 * 1024
MIN_BATCH_LIMIT, MAX_BATCH_LIMIT = 1_000, 100_000

# No message needs more: {"type": "status", "sensors": {"dht": {"good": 1}}} is 3.
MAX_DEPTH = 8
MAX_NAME_LENGTH = 128
# The largest integer SQLite and PostgreSQL (BIGINT) store; a seq past it could
# pass here and then fail the whole group commit it landed in.
MAX_INTEGER = 2**63 - 1


class CloseCode(IntEnum):
    NORMAL = 1000
    UNSUPPORTED_DATA = 1003  # a binary frame
    INVALID_DATA = 1007  # not JSON, wrong types, non-finite numbers
    POLICY_VIOLATION = 1008  # out of order, wrong agent, unknown type
    TOO_BIG = 1009  # frame or batch over the limits


class ProtocolError(Exception):
    """Bad input from the peer: send an ``error`` with ``code``, then close with ``close_code``."""

    def __init__(self, code: str, detail: str, close_code: CloseCode):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.close_code = close_code


def _invalid(code: str, detail: str) -> ProtocolError:
    return ProtocolError(code, detail, CloseCode.INVALID_DATA)


def _policy(code: str, detail: str) -> ProtocolError:
    return ProtocolError(code, detail, CloseCode.POLICY_VIOLATION)


class Reading(NamedTuple):
    """One reading, as the wire carries it and both ends store it.

    A tuple, so rows go straight into executemany() and COPY; read it by name.
    """

    seq: int
    sensor: str
    metric: str
    value: float
    unit: str
    ts: float


# Building one from a tuple without a Python-level __new__ call: the hot path.
_reading = Reading._make


@dataclass(frozen=True)
class Hello:
    agent: str
    epoch: str
    version: str
    time: float | None = None  # the agent's clock, when it sends it


@dataclass(frozen=True)
class Readings:
    readings: list[Reading]

    @property
    def last_seq(self) -> int:
        return self.readings[-1].seq if self.readings else 0


@dataclass(frozen=True)
class Status:
    """The agent's health: the fields of :data:`STATUS_FIELDS` it sent, checked.

    ``dropped`` names the known fields that were of the wrong type or out of
    range (``sensors.climate.good``); they are left out of ``fields``.
    """

    fields: dict[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    @property
    def status(self) -> AgentStatus:
        """The fields, typed."""
        return AgentStatus.from_fields(self.fields)


@dataclass(frozen=True)
class Bye:
    pass


@dataclass(frozen=True)
class Welcome:
    acked: int
    time: float


@dataclass(frozen=True)
class Ack:
    seq: int


@dataclass(frozen=True)
class Error:
    error: str
    detail: str


AgentMessage = Hello | Readings | Status | Bye
CollectorMessage = Welcome | Ack | Error


# --- encoding ---------------------------------------------------------------


def encode(message: AgentMessage | CollectorMessage) -> str:
    """The text frame for a message."""
    if isinstance(message, Readings):
        fields = Reading._fields
        rows = [dict(zip(fields, row)) for row in message.readings]
        return json.dumps({"type": "readings", "readings": rows}, separators=(",", ":"))
    if isinstance(message, Hello):
        body = {"type": "hello", "agent": message.agent, "epoch": message.epoch,
                "version": message.version}
        if message.time is not None:
            body["time"] = message.time
    elif isinstance(message, Status):
        body = {**message.fields, "type": "status"}
    elif isinstance(message, Bye):
        body = {"type": "bye"}
    elif isinstance(message, Welcome):
        body = {"type": "welcome", "acked": message.acked, "time": message.time}
    elif isinstance(message, Ack):
        body = {"type": "ack", "seq": message.seq}
    elif isinstance(message, Error):
        body = {"type": "error", "error": message.error, "detail": message.detail}
    else:  # pragma: no cover - a programming error, not bad input
        raise TypeError(f"not a protocol message: {message!r}")
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def error_frame(error: ProtocolError) -> str:
    return encode(Error(error.code, error.detail))


# --- decoding ---------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise _invalid("not_finite", f"{name} is not a finite number")


def _decode(frame: str | bytes, max_frame_bytes: int) -> dict[str, Any]:
    if not isinstance(frame, str):
        raise ProtocolError("binary_frame", "messages are JSON in text frames",
                            CloseCode.UNSUPPORTED_DATA)
    # A str of n characters is at least n bytes of UTF-8.
    if len(frame) >= max_frame_bytes:
        raise ProtocolError("frame_too_large",
                            f"frames must be under {max_frame_bytes} bytes", CloseCode.TOO_BIG)
    try:
        body = json.loads(frame, parse_constant=_reject_constant)
    except RecursionError:
        raise _invalid("too_deep", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        if isinstance(e.__context__, ProtocolError):  # pragma: no cover - defensive
            raise e.__context__ from None
        raise _invalid("bad_json", f"not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise _invalid("bad_message", "a message is a JSON object")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise _invalid("bad_message", "a message needs a string 'type'")
    return body


def _check_depth(value: Any, depth: int, what: str) -> None:
    """Refuse nesting deeper than any message needs, without recursing unboundedly."""
    if depth > MAX_DEPTH:
        raise _invalid("too_deep", f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for child in value.values():
            _check_depth(child, depth + 1, what)
    elif isinstance(value, list):
        for child in value:
            _check_depth(child, depth + 1, what)


def _check_extra(body: dict[str, Any], known: int, depth: int, what: str) -> None:
    # Unknown fields are ignored, but still may not smuggle in a deep structure.
    if len(body) > known:
        for value in body.values():
            _check_depth(value, depth + 1, what)


def _string(body: dict[str, Any], key: str, what: str, *, allow_empty: bool = False) -> str:
    value = body.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise _invalid("bad_message", f"{what}: '{key}' must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise _invalid("bad_message", f"{what}: '{key}' is longer than {MAX_NAME_LENGTH}")
    # A lone surrogate cannot be stored as UTF-8 and PostgreSQL refuses NUL: either
    # would fail the whole group commit it landed in, other agents' batches included.
    if not value.isprintable():
        raise _invalid("bad_message", f"{what}: '{key}' must be printable text")
    return value


def _number(body: dict[str, Any], key: str, what: str) -> float:
    value = body.get(key)
    # bool is an int in Python but not a number on the wire.
    if type(value) is not float and type(value) is not int:
        raise _invalid("bad_message", f"{what}: '{key}' must be a number")
    if not _finite(value):
        raise _invalid("not_finite", f"{what}: '{key}' must be finite")
    return value


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _integer(body: dict[str, Any], key: str, what: str, minimum: int) -> int:
    value = body.get(key)
    if type(value) is not int or not minimum <= value <= MAX_INTEGER:
        raise _invalid("bad_message",
                       f"{what}: '{key}' must be an integer from {minimum} to {MAX_INTEGER}")
    return value


def _readings(body: dict[str, Any], max_batch: int) -> Readings:
    raw = body.get("readings")
    if not isinstance(raw, list):
        raise _invalid("bad_message", "readings: 'readings' must be a list")
    if len(raw) >= max_batch:
        raise ProtocolError("batch_too_large",
                            f"a batch must hold fewer than {max_batch} readings",
                            CloseCode.TOO_BIG)
    _check_extra(body, 2, 0, "readings")
    rows: list[Reading] = []
    previous = 0
    isfinite = math.isfinite
    for i, item in enumerate(raw):
        what = f"readings[{i}]"
        if type(item) is not dict:
            raise _invalid("bad_message", f"{what}: a reading is an object")
        seq = item.get("seq")
        sensor = item.get("sensor")
        metric = item.get("metric")
        value = item.get("value")
        unit = item.get("unit")
        ts = item.get("ts")
        # The common case in one cheap test; the detailed checks name the culprit.
        try:
            good = (
                type(seq) is int and previous < seq <= MAX_INTEGER
                and type(sensor) is str and 0 < len(sensor) <= MAX_NAME_LENGTH
                and sensor.isprintable()
                and type(metric) is str and 0 < len(metric) <= MAX_NAME_LENGTH
                and metric.isprintable()
                and type(unit) is str and len(unit) <= MAX_NAME_LENGTH and unit.isprintable()
                and (type(value) is float or type(value) is int) and isfinite(value)
                and (type(ts) is float or type(ts) is int) and isfinite(ts)
            )
        except OverflowError:  # an integer too large for a float: _number() says which
            good = False
        if not good:
            seq = _integer(item, "seq", what, 1)
            if seq <= previous:
                raise _invalid("seq_order", f"{what}: seq {seq} is not above {previous}; "
                               "seqs must be strictly increasing")
            _string(item, "sensor", what)
            _string(item, "metric", what)
            _string(item, "unit", what, allow_empty=True)
            _number(item, "value", what)
            _number(item, "ts", what)
        if len(item) > 6:
            _check_extra(item, 6, 2, what)
        rows.append(_reading((seq, sensor, metric, float(value), unit, float(ts))))
        previous = seq
    return Readings(rows)



# --- readings: the fast path ------------------------------------------------------
#
# A `readings` frame as agents write it is decoded and type-checked in one pass in C
# by msgspec (3 times as fast as json.loads plus _readings() at 50 readings a frame).
# What its types do not say is checked on the whole batch, still in C: no Python
# step per reading. A frame that fails any check, or is not shaped as our agents
# write it, gets None here and goes the general way (_decode and _readings), which
# names the error, or accepts it (an unknown field, a ':' inside a name): the rules
# and the errors are that path's, the fast path only takes the frames it accepts.
#
# msgspec is imported on first use: the agent parses no readings and never loads it.

# How our agents start one (compact), and json.dumps' default spacing.
_READINGS_START = ('{"type":"readings"', '{"type": "readings"')
# What the contract calls finite: every float but the infinities (JSON has no NaN).
_FLOAT_MAX = sys.float_info.max
# Keys a batch of n readings has: "type", "readings" and six per reading.
_KEYS, _KEYS_PER_READING = 2, len(Reading._fields)
_SEQ, _SENSOR, _METRIC, _UNIT = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(4)
# A Reading from a tuple, in C (Reading._make is a Python function).
_as_reading = functools.partial(tuple.__new__, Reading)


@functools.cache
def _decode_readings() -> Callable[[str], list[Reading] | None]:
    """A frame's readings, each field of the type and in the range _readings() wants,
    or None when msgspec refuses the frame. Built once, on first use."""
    import msgspec

    name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
    unit = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)]
    seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_INTEGER)]  # bool is not an int here
    # An integer is taken as a float (an integer too large for one is refused).
    real = Annotated[float, msgspec.Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
    # The fields in Reading's order; gc=False: never tracked by the cyclic collector.
    wire_reading = msgspec.defstruct("WireReading", [
        ("seq", seq), ("sensor", name), ("metric", name), ("value", real), ("unit", unit),
        ("ts", real)], gc=False)
    wire_readings = msgspec.defstruct("WireReadings", [("readings", list[wire_reading])],
                                      gc=False)
    decode = msgspec.json.Decoder(wire_readings).decode
    astuple = msgspec.structs.astuple

    def readings(frame: str) -> list[Reading] | None:
        try:
            wire = decode(frame).readings
        # (A lone surrogate in the str itself is a UnicodeEncodeError, a ValueError.)
        except (ValueError, RecursionError):
            return None
        return list(map(_as_reading, map(astuple, wire)))

    return readings


def _fast_readings(frame: str, max_batch: int) -> Readings | None:
    """The frame's readings if it is a `readings` message as our agents write it and
    valid, checked in C; None: let the general path decide."""
    if not frame.startswith(_READINGS_START):
        return None
    rows = _decode_readings()(frame)
    if rows is None or len(rows) >= max_batch:
        return None
    # Each key has one ':' after it; a string may hold more. Exactly as many as the
    # known keys: no unknown or repeated field (whose value might be deep, or repeat
    # "type"), so the nesting is the known one.
    if frame.count(":") != _KEYS + _KEYS_PER_READING * len(rows):
        return None
    seqs = list(map(_SEQ, rows))
    if not all(map(lt, seqs, islice(seqs, 1, None))):
        return None
    names = {*map(_SENSOR, rows), *map(_METRIC, rows), *map(_UNIT, rows)}
    if not all(map(str.isprintable, names)):
        return None
    return Readings(rows)


# --- status: the agent's health, checked field by field -----------------------
#
# A status is the agent's word about itself: kept in memory and shown in
# /api/agents and /metrics, never stored. Each field the collector knows is
# checked like a reading's (its type, finite, in range); one that fails is
# dropped and named in Status.dropped while the rest is kept and the
# connection goes on: a newer agent that changed one field must not lose its
# readings' connection over it. Fields the collector does not know are ignored
# (not kept), so nothing unchecked reaches a page, a scrape or a float().

MAX_STATUS_SENSORS = 64
MAX_FAILURE_KINDS = 16
MAX_STATUS_TEXT = 500  # a sensor's last error
_BAD = object()  # what a check returns for a value it does not take

# A check takes a value, its path (for naming what is dropped) and the list of
# dropped paths (where nested checks add theirs); it returns the value to keep
# or _BAD. Leaf checks ignore the last two.
Check = Callable[[Any, str, list[str]], Any]


def _count(value: Any, *_: Any) -> Any:
    return value if type(value) is int and 0 <= value <= MAX_INTEGER else _BAD


def _real(value: Any, *_: Any) -> Any:
    if (type(value) is float or type(value) is int) and _finite(value):
        return float(value)
    return _BAD


def _seconds(value: Any, *_: Any) -> Any:
    value = _real(value)
    return value if value is _BAD or value >= 0 else _BAD


def _flag(value: Any, *_: Any) -> Any:
    return value if type(value) is bool else _BAD


def _text(limit: int) -> Check:
    def check(value: Any, *_: Any) -> Any:
        ok = type(value) is str and len(value) <= limit and value.isprintable()
        return value if ok else _BAD
    return check


def _or_none(check: Check) -> Check:
    return lambda value, *rest: None if value is None else check(value, *rest)


def _object(schema: dict[str, Check]) -> Check:
    """An object's known fields, each checked; a bad one is dropped, unknown ones ignored."""
    def check(value: Any, path: str, dropped: list[str]) -> Any:
        if type(value) is not dict:
            return _BAD
        kept = {}
        for key, check_field in schema.items():
            if key in value:
                where = f"{path}.{key}" if path else key
                checked = check_field(value[key], where, dropped)
                if checked is _BAD:
                    dropped.append(where)
                else:
                    kept[key] = checked
        return kept
    return check


def _named(check_item: Check, limit: int) -> Check:
    """An object of names to items, each checked; past ``limit`` names the rest is dropped."""
    def check(value: Any, path: str, dropped: list[str]) -> Any:
        if type(value) is not dict:
            return _BAD
        kept = {}
        for seen, (name, item) in enumerate(value.items()):
            if seen == limit:  # good names or bad, so the work and what is named is bounded
                dropped.append(path)
                break
            if type(name) is not str or not 0 < len(name) <= MAX_NAME_LENGTH \
                    or not name.isprintable():
                dropped.append(f"{path}.?")
                continue
            checked = check_item(item, f"{path}.{name}", dropped)
            if checked is _BAD:
                dropped.append(f"{path}.{name}")
            else:
                kept[name] = checked
        return kept
    return check


# Every status field the collector knows: what the agent sends (agent/agent.py).
STATUS_FIELDS: dict[str, Check] = {
    "time": _real,  # the agent's clock, Unix seconds
    "uptime": _seconds,
    "version": _text(MAX_NAME_LENGTH),
    "backend": _text(MAX_NAME_LENGTH),
    "buffer_depth": _count,
    "buffer_oldest_age": _or_none(_seconds),
    "dropped": _count,
    "sent": _count,
    "cpu_temperature": _or_none(_real),
    "clock_synced": _or_none(_flag),
    "sensors": _named(_object({
        "good": _count,
        "failed": _count,
        "consecutive_failures": _count,
        "failures": _named(_count, MAX_FAILURE_KINDS),  # failed reads by kind
        "last_error": _or_none(_text(MAX_STATUS_TEXT)),
        "held_back": _count,  # readings its filters kept from the buffer
    }), MAX_STATUS_SENSORS),
}
_STATUS = _object(STATUS_FIELDS)


def _status(body: dict[str, Any]) -> Status:
    dropped: list[str] = []
    return Status(_STATUS(body, "", dropped), tuple(dropped))


def parse_agent_message(frame: str | bytes, *, max_frame_bytes: int = MAX_FRAME_LIMIT - 1,
                        max_batch_readings: int = MAX_BATCH_LIMIT - 1) -> AgentMessage:
    """Parse and validate one frame from an agent, or raise :class:`ProtocolError`."""
    if type(frame) is str and len(frame) < max_frame_bytes:
        readings = _fast_readings(frame, max_batch_readings)
        if readings is not None:
            return readings
    body = _decode(frame, max_frame_bytes)
    kind = body["type"]
    if kind == "readings":
        return _readings(body, max_batch_readings)
    if kind == "hello":
        time = body.get("time")
        hello = Hello(
            agent=_string(body, "agent", "hello"),
            epoch=_string(body, "epoch", "hello"),
            version=_string(body, "version", "hello", allow_empty=True),
            time=None if time is None else float(_number(body, "time", "hello")),
        )
        _check_extra(body, 5 if time is not None else 4, 0, "hello")
        return hello
    if kind == "status":
        _check_depth(body, 0, "status")
        return _status(body)
    if kind == "bye":
        _check_extra(body, 1, 0, "bye")
        return Bye()
    raise _policy("unknown_type", f"unknown message type {kind[:40]!r}")


def parse_collector_message(frame: str | bytes) -> CollectorMessage:
    """Parse one frame from the collector (the agent's side)."""
    body = _decode(frame, MAX_FRAME_LIMIT)
    kind = body["type"]
    if kind == "ack":
        return Ack(_integer(body, "seq", "ack", 0))
    if kind == "welcome":
        return Welcome(_integer(body, "acked", "welcome", 0), _number(body, "time", "welcome"))
    if kind == "error":
        return Error(_string(body, "error", "error"),
                     str(body.get("detail", ""))[:500])
    raise _policy("unknown_type", f"unknown message type {kind[:40]!r}")
