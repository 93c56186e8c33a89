"""The wire protocol as plain function calls: frames in, messages or errors out."""

from __future__ import annotations

import json

import pytest

from sensor_edge.contract import protocol
from sensor_edge.contract.session import CollectorSession
from sensor_edge.contract.protocol import (
    Ack,
    Bye,
    CloseCode,
    Error,
    Hello,
    ProtocolError,
    Reading,
    Readings,
    Status,
    Welcome,
    encode,
    parse_agent_message,
    parse_collector_message,
)

HELLO = {"type": "hello", "agent": "pi-1", "epoch": "e1", "version": "0.1.0"}


def reading(seq: int, **overrides) -> dict:
    return {"seq": seq, "sensor": "climate", "metric": "temperature", "value": 21.5,
            "unit": "C", "ts": 1_700_000_000.25, **overrides}


def frame(body) -> str:
    return json.dumps(body)


def session() -> CollectorSession:
    s = CollectorSession("pi-1", max_frame_bytes=256 * 1024, max_batch_readings=1000)
    s.receive(frame(HELLO))
    return s


# --- every message type, both directions --------------------------------------


def test_hello_with_and_without_clock():
    assert parse_agent_message(frame(HELLO)) == Hello("pi-1", "e1", "0.1.0")
    with_time = parse_agent_message(frame({**HELLO, "time": 1_700_000_000.5}))
    assert with_time.time == 1_700_000_000.5


def test_readings_become_rows_in_order():
    message = parse_agent_message(frame({"type": "readings",
                                         "readings": [reading(1), reading(2, value=3)]}))
    assert isinstance(message, Readings)
    assert message.readings == [(1, "climate", "temperature", 21.5, "C", 1_700_000_000.25),
                                (2, "climate", "temperature", 3.0, "C", 1_700_000_000.25)]
    assert message.last_seq == 2


def test_bye_and_status():
    assert parse_agent_message('{"type":"bye"}') == Bye()
    status = parse_agent_message(frame({"type": "status", "uptime": 12.5,
                                        "sensors": {"climate": {"good": 3, "failed": 1}}}))
    assert status == Status({"uptime": 12.5, "sensors": {"climate": {"good": 3, "failed": 1}}})


def test_unknown_fields_are_ignored_in_a_valid_message():
    message = parse_agent_message(frame({**HELLO, "future": {"a": [1, 2]}}))
    assert message == Hello("pi-1", "e1", "0.1.0")
    rows = parse_agent_message(frame({"type": "readings",
                                      "readings": [reading(1, quality="good")]}))
    assert rows.readings[0][0] == 1


# --- status: the agent's health, checked field by field --------------------------

AGENT_STATUS = {  # what agent/agent.py sends
    "time": 1_700_000_000.5, "uptime": 12.5, "version": "0.1.0", "backend": "mock",
    "buffer_depth": 42, "buffer_oldest_age": None, "dropped": 0, "sent": 900,
    "cpu_temperature": 48.3, "clock_synced": True,
    "sensors": {"climate": {"good": 3, "failed": 1, "failures": {"checksum": 1},
                            "consecutive_failures": 0, "last_error": "checksum did not validate",
                            "held_back": 2}},
}


def test_the_agents_own_status_is_kept_whole_and_typed():
    status = parse_agent_message(frame({"type": "status", **AGENT_STATUS}))
    assert status == Status(AGENT_STATUS)
    assert status.dropped == ()
    assert type(status.fields["uptime"]) is float and type(status.fields["buffer_depth"]) is int


def test_status_fields_the_collector_does_not_know_are_ignored():
    status = parse_agent_message(frame({"type": "status", "uptime": 1, "future": {"a": [1]},
                                        "sensors": {"s": {"good": 1, "colour": "red"}}}))
    assert status.fields == {"uptime": 1.0, "sensors": {"s": {"good": 1}}}
    assert status.dropped == ()


HUGE = 10**400  # a JSON integer no float holds


@pytest.mark.parametrize("key,value", [
    ("time", HUGE), ("time", "now"), ("time", True), ("time", [1]),
    ("uptime", HUGE), ("uptime", -1), ("uptime", {"s": 1}), ("uptime", None),
    ("version", 5), ("version", "v" * 500), ("version", "a\x00b"), ("backend", ["mock"]),
    ("buffer_depth", HUGE), ("buffer_depth", 2**63), ("buffer_depth", -1),
    ("buffer_depth", 1.5), ("buffer_depth", False), ("buffer_oldest_age", "old"),
    ("buffer_oldest_age", -HUGE), ("dropped", "0"), ("sent", 10**19),
    ("cpu_temperature", HUGE), ("cpu_temperature", "hot"), ("clock_synced", "yes"),
    ("clock_synced", 1), ("sensors", []), ("sensors", "all good"), ("sensors", HUGE),
])
def test_a_known_status_field_of_the_wrong_type_is_dropped_and_named(key, value):
    body = {"type": "status", **AGENT_STATUS, key: value}
    status = parse_agent_message(frame(body))
    assert key not in status.fields
    assert status.dropped == (key,)
    # Everything else is still there.
    assert status.fields == {k: v for k, v in AGENT_STATUS.items() if k != key}


@pytest.mark.parametrize("sensor,dropped,kept", [
    ({"good": HUGE, "failed": 1}, "sensors.climate.good", {"failed": 1}),
    ({"good": 1, "failed": "1"}, "sensors.climate.failed", {"good": 1}),
    ({"good": 1, "consecutive_failures": -3}, "sensors.climate.consecutive_failures",
     {"good": 1}),
    ({"good": 1, "last_error": {"x": 1}}, "sensors.climate.last_error", {"good": 1}),
    ({"good": 1, "last_error": "e" * 1000}, "sensors.climate.last_error", {"good": 1}),
    ({"good": 1, "failures": {"timeout": HUGE, "crc": 2}}, "sensors.climate.failures.timeout",
     {"good": 1, "failures": {"crc": 2}}),
    ({"good": 1, "failures": [1]}, "sensors.climate.failures", {"good": 1}),
])
def test_a_bad_per_sensor_count_is_dropped_alone(sensor, dropped, kept):
    status = parse_agent_message(frame({"type": "status", "sensors": {"climate": sensor,
                                                                      "soc": {"good": 7}}}))
    assert status.dropped == (dropped,)
    assert status.fields["sensors"] == {"climate": kept, "soc": {"good": 7}}


def test_a_sensor_entry_that_is_not_an_object_or_has_no_name_is_dropped():
    status = parse_agent_message(frame({"type": "status", "sensors": {
        "climate": 5, "": {"good": 1}, "x" * 500: {"good": 1}, "ok": {"good": 2}}}))
    assert status.fields["sensors"] == {"ok": {"good": 2}}
    assert len(status.dropped) == 3 and "sensors.climate" in status.dropped


def test_a_status_names_at_most_so_many_sensors():
    sensors = {f"s{i}": {"good": i} for i in range(protocol.MAX_STATUS_SENSORS + 10)}
    status = parse_agent_message(frame({"type": "status", "sensors": sensors}))
    assert len(status.fields["sensors"]) == protocol.MAX_STATUS_SENSORS
    assert status.dropped == ("sensors",)
    # Bad names count too, so what is checked and named stays bounded.
    bad = {"x" * 200 + str(i): {"good": 1} for i in range(5_000)}
    status = parse_agent_message(frame({"type": "status", "sensors": bad}))
    assert status.fields["sensors"] == {}
    assert len(status.dropped) == protocol.MAX_STATUS_SENSORS + 1


def test_status_time_too_big_for_a_float_is_dropped_not_fatal():
    status = parse_agent_message('{"type":"status","time":' + "9" * 400 + ',"uptime":3}')
    assert status.fields == {"uptime": 3.0} and status.dropped == ("time",)


@pytest.mark.parametrize("time,code", [
    ("9" * 400, "not_finite"), ('"soon"', "bad_message"), ("true", "bad_message"),
    ("[1]", "bad_message"), ("{}", "bad_message"), ("1e999", "not_finite"),
])
def test_hello_time_of_the_wrong_type_or_not_finite_is_refused(time, code):
    body = frame(HELLO)[:-1] + ',"time":' + time + "}"
    with pytest.raises(ProtocolError) as caught:
        parse_agent_message(body)
    assert (caught.value.code, caught.value.close_code) == (code, CloseCode.INVALID_DATA)


def test_hello_time_is_a_float_even_when_sent_as_a_large_integer():
    hello = parse_agent_message(frame({**HELLO, "time": 10**300}))
    assert type(hello.time) is float and hello.time == 1e300


@pytest.mark.parametrize("message", [
    Hello("pi-1", "e", "1", time=5.0), Readings([Reading(1, "s", "m", 1.0, "", 2.0)]), Bye(),
    Status({"uptime": 1}),
])
def test_agent_messages_round_trip(message):
    assert parse_agent_message(encode(message)) == message


@pytest.mark.parametrize("message", [Welcome(7, 1.5), Ack(9), Error("bad_json", "nope")])
def test_collector_messages_round_trip(message):
    assert parse_collector_message(encode(message)) == message


# --- bad input: the contract's list, each with its error and close code ---------

BAD_FRAMES = [
    ("binary frame", b'{"type":"bye"}', "binary_frame", CloseCode.UNSUPPORTED_DATA),
    ("not JSON", "{nope", "bad_json", CloseCode.INVALID_DATA),
    ("not an object", "[1, 2]", "bad_message", CloseCode.INVALID_DATA),
    ("no type", '{"readings": []}', "bad_message", CloseCode.INVALID_DATA),
    ("unknown type", '{"type": "launch"}', "unknown_type", CloseCode.POLICY_VIOLATION),
    ("readings not a list", '{"type": "readings", "readings": {}}', "bad_message",
     CloseCode.INVALID_DATA),
    ("seq a string", frame({"type": "readings", "readings": [reading("1")]}), "bad_message",
     CloseCode.INVALID_DATA),
    ("seq zero", frame({"type": "readings", "readings": [reading(0)]}), "bad_message",
     CloseCode.INVALID_DATA),
    ("seq a float", frame({"type": "readings", "readings": [reading(1.5)]}), "bad_message",
     CloseCode.INVALID_DATA),
    ("seqs not increasing", frame({"type": "readings", "readings": [reading(2), reading(2)]}),
     "seq_order", CloseCode.INVALID_DATA),
    ("value a string", frame({"type": "readings", "readings": [reading(1, value="21")]}),
     "bad_message", CloseCode.INVALID_DATA),
    ("value a bool", frame({"type": "readings", "readings": [reading(1, value=True)]}),
     "bad_message", CloseCode.INVALID_DATA),
    ("value NaN", '{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m",'
     '"value":NaN,"unit":"","ts":1}]}', "not_finite", CloseCode.INVALID_DATA),
    ("value Infinity", '{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m",'
     '"value":-Infinity,"unit":"","ts":1}]}', "not_finite", CloseCode.INVALID_DATA),
    ("value overflows to inf", '{"type":"readings","readings":[{"seq":1,"sensor":"s",'
     '"metric":"m","value":1e999,"unit":"","ts":1}]}', "not_finite", CloseCode.INVALID_DATA),
    ("ts missing", frame({"type": "readings", "readings": [
        {k: v for k, v in reading(1).items() if k != "ts"}]}), "bad_message",
     CloseCode.INVALID_DATA),
    ("sensor empty", frame({"type": "readings", "readings": [reading(1, sensor="")]}),
     "bad_message", CloseCode.INVALID_DATA),
    ("reading not an object", '{"type":"readings","readings":[5]}', "bad_message",
     CloseCode.INVALID_DATA),
    ("nested too deep", '{"type":"status","x":' + "[" * 50 + "]" * 50 + "}", "too_deep",
     CloseCode.INVALID_DATA),
    ("nested past the parser", '{"type":"bye","x":' + "[" * 100_000 + "]" * 100_000 + "}",
     "too_deep", CloseCode.INVALID_DATA),
    ("deep junk in a reading", frame({"type": "readings", "readings": [
        reading(1, extra=[[[[[[[[[[1]]]]]]]]]])]}), "too_deep", CloseCode.INVALID_DATA),
    ("batch too large", frame({"type": "readings",
                               "readings": [reading(i) for i in range(1, 1001)]}),
     "batch_too_large", CloseCode.TOO_BIG),
    ("frame too large", "x" * (256 * 1024), "frame_too_large", CloseCode.TOO_BIG),
]


@pytest.mark.parametrize("name,data,code,close_code", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_frames_raise_the_contract_codes(name, data, code, close_code):
    s = session()
    with pytest.raises(ProtocolError) as caught:
        s.receive(data)
    assert caught.value.code == code
    assert caught.value.close_code == close_code
    # The error frame the collector sends before closing is itself a valid message.
    assert parse_collector_message(protocol.error_frame(caught.value)) == Error(
        code, caught.value.detail)


def test_a_message_before_hello_is_refused():
    s = CollectorSession("pi-1")
    with pytest.raises(ProtocolError) as caught:
        s.receive(frame({"type": "readings", "readings": [reading(1)]}))
    assert (caught.value.code, caught.value.close_code) == ("hello_required",
                                                           CloseCode.POLICY_VIOLATION)


def test_hello_naming_another_agent_is_refused():
    s = CollectorSession("pi-1")
    with pytest.raises(ProtocolError) as caught:
        s.receive(frame({**HELLO, "agent": "pi-2"}))
    assert caught.value.code == "wrong_agent"
    assert s.epoch is None


def test_second_hello_is_refused():
    s = session()
    with pytest.raises(ProtocolError) as caught:
        s.receive(frame(HELLO))
    assert caught.value.code == "duplicate_hello"


def test_nothing_after_bye():
    s = session()
    assert s.receive('{"type":"bye"}') == Bye()
    with pytest.raises(ProtocolError):
        s.receive(frame({"type": "readings", "readings": [reading(1)]}))


def test_limits_accept_the_contract_minimums():
    # At least 1,000 readings and 256 KiB frames with the defaults.
    big = frame({"type": "readings", "readings": [reading(i) for i in range(1, 1001)]})
    assert len(parse_agent_message(big).readings) == 1000
    padded = frame({"type": "readings", "readings": [reading(1, sensor="s" * 100)] * 1}) \
        .replace('"type"', " " * (256 * 1024 - 200) + '"type"')
    assert len(padded) >= 256 * 1024 - 100
    assert parse_agent_message(padded).last_seq == 1


def test_defaults_refuse_the_contract_maximums():
    with pytest.raises(ProtocolError) as caught:
        parse_agent_message(frame({"type": "readings",
                                   "readings": [reading(i) for i in range(1, 100_001)]}))
    assert caught.value.close_code == CloseCode.TOO_BIG
    with pytest.raises(ProtocolError) as caught:
        parse_agent_message(" " * (2 * 1024 * 1024) + '{"type":"bye"}')
    assert caught.value.close_code == CloseCode.TOO_BIG


def test_collector_side_parsing_rejects_garbage():
    for data in ("{}", '{"type":"ack","seq":-1}', '{"type":"welcome","acked":0}', b"\x00"):
        with pytest.raises(ProtocolError):
            parse_collector_message(data)
