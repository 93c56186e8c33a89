"""The wire protocol between agent and collector, with no I/O.

This module is the vocabulary both sides speak: the message types of the
contract, the parsing and validation of every frame (types, finite numbers,
sizes, nesting, order) and the error and close codes. It imports no socket,
no asyncio and no database: frames go in, typed messages or a
:class:`ProtocolError` come out. The collector's and the agent's connection
code call it; validation lives here and nowhere else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

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


# Reading rows travel as plain tuples: they go straight into executemany().
# (seq, sensor, metric, value, unit, ts)
Reading = tuple[int, str, str, float, str, float]
READING_FIELDS = ("seq", "sensor", "metric", "value", "unit", "ts")


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
        return self.readings[-1][0] if self.readings else 0


@dataclass(frozen=True)
class Status:
    fields: dict[str, Any] = field(default_factory=dict)


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
        rows = [dict(zip(READING_FIELDS, row)) for row in message.readings]
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
        rows.append((seq, sensor, metric, float(value), unit, float(ts)))
        previous = seq
    return Readings(rows)


def parse_agent_message(frame: str | bytes, *, max_frame_bytes: int = MAX_FRAME_LIMIT - 1,
                        max_batch_readings: int = MAX_BATCH_LIMIT - 1) -> AgentMessage:
    """Parse and validate one frame from an agent, or raise :class:`ProtocolError`."""
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
            time=None if time is None else _number(body, "time", "hello"),
        )
        _check_extra(body, 5 if time is not None else 4, 0, "hello")
        return hello
    if kind == "status":
        fields = {k: v for k, v in body.items() if k != "type"}
        _check_depth(fields, 1, "status")
        return Status(fields)
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


class AgentSession:
    """The collector's view of one agent connection: which messages may come when.

    Feed it frames with :meth:`receive`; it returns the validated message or
    raises :class:`ProtocolError`. It holds no socket and no clock.
    """

    def __init__(self, agent_id: str, *, max_frame_bytes: int = MAX_FRAME_LIMIT - 1,
                 max_batch_readings: int = MAX_BATCH_LIMIT - 1):
        self.agent_id = agent_id
        self.max_frame_bytes = max_frame_bytes
        self.max_batch_readings = max_batch_readings
        self.hello: Hello | None = None
        self.closed = False

    @property
    def epoch(self) -> str | None:
        return self.hello.epoch if self.hello else None

    def receive(self, frame: str | bytes) -> AgentMessage:
        if self.closed:
            raise _policy("closed", "the agent said bye")
        message = parse_agent_message(frame, max_frame_bytes=self.max_frame_bytes,
                                      max_batch_readings=self.max_batch_readings)
        if isinstance(message, Hello):
            if self.hello is not None:
                raise _policy("duplicate_hello", "hello was already received")
            if message.agent != self.agent_id:
                raise _policy("wrong_agent",
                              f"this token belongs to agent {self.agent_id!r}, not {message.agent!r}")
            self.hello = message
        elif self.hello is None:
            raise _policy("hello_required", "the first message must be hello")
        elif isinstance(message, Bye):
            self.closed = True
        return message
