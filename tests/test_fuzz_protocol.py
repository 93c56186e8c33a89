"""Property tests of the wire protocol: whatever arrives is either a valid message or a
ProtocolError with one of the contract's close codes, never another exception, and
nothing invalid comes out of a frame that parses (that is what would reach storage)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sensor_edge.contract import protocol
from sensor_edge.contract.session import CollectorSession
from sensor_edge.contract.protocol import (
    Reading,
    Ack,
    Bye,
    Error,
    Hello,
    ProtocolError,
    Readings,
    Status,
    Welcome,
)

CONTRACT_CLOSE_CODES = {1003, 1007, 1008, 1009}
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Any JSON value: scalars (NaN and infinities included, as a sloppy sender writes them;
# integers past what a float or a database column holds), nested lists and objects.
huge_integers = st.integers(2**63 - 2, 2**64) | st.integers(10**308, 10**400).map(
    lambda n: n * (-1) ** (n % 2))
json_scalars = (st.none() | st.booleans() | st.integers() | huge_integers | st.floats()
                | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
fields = st.sampled_from(["type", "agent", "epoch", "version", "time", "readings", "seq",
                          "sensor", "metric", "value", "unit", "ts", "acked", "error",
                          "detail"])
message_types = st.sampled_from(["hello", "readings", "status", "bye", "welcome", "ack",
                                 "error", "", "READINGS"])


@st.composite
def message_like(draw) -> dict:
    """Objects that look like messages: a known type, known fields, any values."""
    body = draw(st.dictionaries(fields, json_values, max_size=6))
    if draw(st.booleans()):
        body["type"] = draw(message_types)
    return body


# What a name may be: printable text (no control characters, no lone surrogates).
printable = st.characters(codec="utf-8", exclude_categories=["Cc", "Cf", "Cs", "Co", "Cn",
                                                             "Zl", "Zp", "Zs"])
names = st.text(printable, min_size=1, max_size=protocol.MAX_NAME_LENGTH)
units = st.text(printable, max_size=protocol.MAX_NAME_LENGTH)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def valid_readings(draw) -> list[Reading]:
    count = draw(st.integers(1, 20))
    seqs = sorted(draw(st.sets(st.integers(1, 2**53), min_size=count, max_size=count)))
    return [Reading(seq, draw(names), draw(names), draw(finite),
                    draw(units), draw(finite)) for seq in seqs]


@st.composite
def readings_with_one_field_spoiled(draw) -> str:
    """A valid batch, then one field of one reading replaced by any JSON value."""
    rows = [row._asdict() for row in draw(valid_readings())]
    victim = draw(st.sampled_from(rows))
    key = draw(st.sampled_from([*protocol.Reading._fields, "extra"]))
    if draw(st.booleans()):
        victim[key] = draw(json_values)
    else:
        victim.pop(key, None)
    return json.dumps({"type": "readings", "readings": rows})


def parse_or_refuse(frame, parse=protocol.parse_agent_message):
    """The message, or None after checking the refusal is a contract-shaped ProtocolError."""
    try:
        return parse(frame)
    except ProtocolError as e:
        assert e.close_code in CONTRACT_CLOSE_CODES
        assert e.code and isinstance(e.detail, str)
        # The refusal itself is sendable: an `error` frame with the same code.
        assert json.loads(protocol.error_frame(e)) == {"type": "error", "error": e.code,
                                                       "detail": e.detail}
        return None


def storable_text(text: str) -> None:
    """Text every storage takes: valid UTF-8 (no lone surrogate), no NUL (PostgreSQL)."""
    text.encode("utf-8")
    assert "\x00" not in text


def assert_storable(message) -> None:
    """What a parsed message hands on is exactly what storage may hold."""
    assert isinstance(message, Hello | Readings | Status | Bye)
    if isinstance(message, Readings):
        previous = 0
        for seq, sensor, metric, value, unit, ts in message.readings:
            assert type(seq) is int and previous < seq <= protocol.MAX_INTEGER
            previous = seq
            assert isinstance(sensor, str) and 0 < len(sensor) <= protocol.MAX_NAME_LENGTH
            assert isinstance(metric, str) and 0 < len(metric) <= protocol.MAX_NAME_LENGTH
            assert isinstance(unit, str) and len(unit) <= protocol.MAX_NAME_LENGTH
            for text in (sensor, metric, unit):
                storable_text(text)
            assert type(value) is float and math.isfinite(value)
            assert type(ts) is float and math.isfinite(ts)
    elif isinstance(message, Hello):
        assert message.agent and message.epoch
        storable_text(message.epoch)
        assert message.time is None or math.isfinite(message.time)


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_are_refused_as_a_binary_frame(frame):
    assert parse_or_refuse(frame) is None
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_agent_message(frame)
    assert refused.value.close_code == 1003


@FUZZ
@given(st.text(max_size=2000))
def test_any_text_is_a_message_or_a_contract_error(frame):
    message = parse_or_refuse(frame)
    if message is not None:
        assert_storable(message)


@FUZZ
@given(json_values)
def test_any_json_value_is_a_message_or_a_contract_error(value):
    message = parse_or_refuse(json.dumps(value))
    if message is not None:
        assert_storable(message)


@FUZZ
@given(message_like())
def test_message_shaped_objects_are_messages_or_contract_errors(body):
    message = parse_or_refuse(json.dumps(body))
    if message is not None:
        assert_storable(message)
    # The agent's side reads collector messages just as safely.
    reply = parse_or_refuse(json.dumps(body), protocol.parse_collector_message)
    if reply is not None:
        assert isinstance(reply, Welcome | Ack | Error)


@FUZZ
@given(readings_with_one_field_spoiled())
# Found by this test: an integer too big for a float raised OverflowError, and a seq
# past 2**63 - 1 was accepted and then failed the whole group commit in storage.
@example('{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m","value":1'
         + "0" * 400 + ',"unit":"","ts":1}]}')
@example('{"type":"readings","readings":[{"seq":' + str(2**63) + ',"sensor":"s",'
         '"metric":"m","value":1,"unit":"","ts":1}]}')
@example('{"type":"hello","agent":"a","epoch":"e","version":"v","time":' + "9" * 400 + "}")
# And text no storage takes: a lone surrogate (SQLite's UTF-8), NUL (PostgreSQL).
@example('{"type":"readings","readings":[{"seq":1,"sensor":"s\\ud800","metric":"m",'
         '"value":1,"unit":"","ts":1}]}')
@example('{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m","value":1,'
         '"unit":"\\u0000","ts":1}]}')
@example('{"type":"hello","agent":"a","epoch":"\\udfff","version":"v"}')
def test_one_bad_field_refuses_the_whole_batch_or_it_is_all_valid(frame):
    message = parse_or_refuse(frame)
    if message is not None:
        assert_storable(message)


@FUZZ
@given(valid_readings())
def test_valid_readings_round_trip(rows):
    frame = protocol.encode(Readings(rows))
    parsed = protocol.parse_agent_message(frame)
    assert parsed == Readings([(s, se, m, float(v), u, float(t)) for s, se, m, v, u, t in rows])


@FUZZ
@given(st.integers(1, 8), st.integers(0, 40), st.sampled_from(["[", "{\"a\":"]))
def test_nesting_past_any_message_is_too_deep_whatever_the_type(position, extra, opener):
    closer = "]" if opener == "[" else "}"
    depth = protocol.MAX_DEPTH + 1 + extra
    deep = opener * depth + ("1" if opener != "[" else "") + closer * depth
    frame = ['{"type":"status","x":' + deep + "}",
             '{"type":"hello","agent":"a","epoch":"e","version":"v","x":' + deep + "}",
             '{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m","value":1,'
             '"unit":"","ts":1,"x":' + deep + "}]}"][position % 3]
    try:
        protocol.parse_agent_message(frame)
    except ProtocolError as e:
        assert (e.code, e.close_code) == ("too_deep", 1007)
    else:
        raise AssertionError("a too-deep frame was accepted")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=200), message_like().map(json.dumps),
                          st.binary(max_size=20)), max_size=8))
def test_a_session_never_fails_otherwise_and_stores_nothing_before_hello(frames):
    session = CollectorSession("pi-1")
    hello = json.dumps({"type": "hello", "agent": "pi-1", "epoch": "e", "version": "v"})
    said_hello = False
    for frame in [*frames, hello, *frames]:
        message = parse_or_refuse(frame, session.receive)
        if message is None:
            continue  # the collector closes here; the fuzz goes on to test more states
        assert_storable(message)
        if isinstance(message, Hello):
            said_hello = True
        if isinstance(message, Readings):
            assert said_hello, "readings accepted before hello"


# --- status: whatever an agent says about itself -------------------------------

status_keys = st.sampled_from(["time", "uptime", "version", "backend", "buffer_depth",
                               "buffer_oldest_age", "dropped", "sent", "cpu_temperature",
                               "clock_synced", "sensors", "future"])
sensor_keys = st.sampled_from(["good", "failed", "failures", "consecutive_failures",
                               "last_error", "held_back", "colour"])
sensor_entries = st.dictionaries(
    sensor_keys, json_values | st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    max_size=6) | json_values
status_bodies = st.dictionaries(
    status_keys,
    json_values | st.dictionaries(st.text(max_size=12), sensor_entries, max_size=4),
    max_size=12)


def assert_clean(value, path: str = "status") -> None:
    """Nothing in a kept status that JSON, Prometheus or a float() could choke on."""
    if isinstance(value, dict):
        for key, child in value.items():
            assert isinstance(key, str) and key.isprintable(), path
            assert_clean(child, f"{path}.{key}")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        assert 0 <= value <= protocol.MAX_INTEGER, path
    elif isinstance(value, float):
        assert math.isfinite(value), path
    elif isinstance(value, str):
        assert value.isprintable(), path
        storable_text(value)
    else:
        raise AssertionError(f"{path}: a {type(value).__name__} kept in a status")


@FUZZ
@given(status_bodies)
@example({"time": 10**400})  # found by review: float() raised on every /metrics scrape
@example({"sensors": {"s": {"good": 10**400}}, "dropped": 10**400, "uptime": 10**400})
def test_any_status_is_a_clean_typed_status_or_a_contract_error(body):
    from sensor_edge.server.ingest.agents import AgentRegistry
    from sensor_edge.server.outputs.metrics import CollectorMetrics

    status = parse_or_refuse(json.dumps({**body, "type": "status"}))
    if status is None:
        return
    assert isinstance(status, Status)
    assert set(status.fields) <= set(protocol.STATUS_FIELDS)
    assert_clean(status.fields)
    assert all(isinstance(name, str) for name in status.dropped)
    # What the collector does with it: /api/agents and /metrics render it.
    agents = AgentRegistry(["pi-1"], [])
    agents.status_received("pi-1", status, 1_700_000_000.0)
    json.dumps(agents.as_json(), allow_nan=False)
    metrics = CollectorMetrics()
    metrics.watch_agents(agents)
    assert b"sensor_edge_agent_connected" in metrics.render()
