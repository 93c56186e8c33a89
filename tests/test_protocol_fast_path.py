"""The fast path for `readings` frames (msgspec, checked in C) against the general one
(json.loads and protocol._readings): it may decline any frame, but what it accepts the
general path accepts too, with the very same rows (types and float bits included)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sensor_edge.contract import protocol
from sensor_edge.contract.protocol import ProtocolError, Readings
from test_fuzz_protocol import FUZZ, json_values, readings_with_one_field_spoiled, valid_readings

LIMIT = 1000


def general(frame: str) -> Readings | ProtocolError:
    try:
        return protocol._readings(protocol._decode(frame, protocol.MAX_FRAME_LIMIT), LIMIT)
    except ProtocolError as e:
        return e


def agrees(frame: str) -> Readings | None:
    """The fast path's answer, after checking the general path gives the same."""
    fast = protocol._fast_readings(frame, LIMIT)
    if fast is not None:
        slow = general(frame)
        assert isinstance(slow, Readings), f"fast path took a frame refused with {slow}"
        # repr: exact floats (and -0.0), int seqs not bools, the same strings.
        assert repr(fast.readings) == repr(slow.readings)
        assert all(type(r) is protocol.Reading for r in fast.readings)
        assert protocol.parse_agent_message(frame, max_batch_readings=LIMIT) == fast
    return fast


@FUZZ
@given(valid_readings(), st.booleans())
def test_our_agents_frames_take_the_fast_path(rows, compact):
    frame = protocol.encode(Readings(rows)) if compact else json.dumps(
        {"type": "readings", "readings": [row._asdict() for row in rows]})
    fast = agrees(frame)
    # A ':' in a name is taken for a key by the count, so that frame goes the long way.
    if not any(":" in text for row in rows for text in (row.sensor, row.metric, row.unit)):
        assert fast is not None


@FUZZ
@given(readings_with_one_field_spoiled())
@example('{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m","value":1,'
         '"unit":"\\u0000","ts":1}]}')
@example('{"type":"readings","readings":[{"seq":1,"sensor":"s\\ud800","metric":"m",'
         '"value":1,"unit":"","ts":1}]}')
@example('{"type":"readings","readings":[{"seq":1,"sensor":"s","metric":"m","value":1,'
         '"unit":"","ts":1,"extra":' + "9" * 5000 + '}]}')  # past json.loads' digit limit
@example('{"type":"readings","readings":[],"x":' + "[" * 10_000 + "]" * 10_000 + "}")
@example('{"type":"readings","type":"hello","agent":"a","epoch":"e","version":"v",'
         '"readings":[]}')
@example('{"type":"readings","readings":[{"seq":1,"seq":0,"sensor":"s","metric":"m",'
         '"value":1,"unit":"","ts":1}]}')
@example('{"type":"readings","readings":[{"seq":3,"sensor":"s","metric":"m","value":1,'
         '"unit":"","ts":1},{"seq":3,"sensor":"s","metric":"m","value":1,"unit":"","ts":1}]}')
@example('{"type":"readings","readings":[{"seq":3,"sensor":"s","metric":"m","value":1,'
         '"unit":"","ts":1},{"seq":1,"sensor":"s","metric":"m","value":1,"unit":"","ts":1}]}')
def test_a_spoiled_batch_is_never_taken_by_the_fast_path_alone(frame):
    agrees(frame)


@FUZZ
@given(st.dictionaries(st.sampled_from(["readings", "x", "type"]), json_values, max_size=3))
def test_readings_shaped_junk(body):
    agrees(json.dumps({"type": "readings", **body}))


# Numbers as text, not as Python made them: msgspec's parser must round each exactly as
# Python's float() does, and refuse what overflows.
number_texts = st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?",
                             fullmatch=True)
EDGE_NUMBERS = ["-0", "-0.0", "0.0", "1e-400", "4.9e-324", "2.2250738585072011e-308",
                "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308",
                "1e999", str(2**64 + 1), str(2**63), "1" + "0" * 400, "1E5", "1e+5", "0.1",
                "123456789012345678901234567", "true", "null", '"1"']


def number_frame(number: str, field: str) -> str:
    fields = {"seq": "1", "sensor": '"s"', "metric": '"m"', "value": "1.5", "unit": '"C"',
              "ts": "2", field: number}
    return ('{"type":"readings","readings":[{'
            + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}]}")


@FUZZ
@given(number_texts, st.sampled_from(["value", "ts", "seq"]))
def test_numbers_are_read_exactly_as_the_general_path_reads_them(number, field):
    agrees(number_frame(number, field))


@pytest.mark.parametrize("number", EDGE_NUMBERS)
@pytest.mark.parametrize("field", ["value", "ts", "seq"])
def test_edge_numbers(number, field):
    agrees(number_frame(number, field))


def test_names_with_escapes_and_wide_characters_take_the_fast_path():
    frame = ('{"type":"readings","readings":[{"seq":1,"sensor":"caf\\u00e9","metric":"m",'
             '"value":1,"unit":"\\u00b0C","ts":1},{"seq":2,"sensor":"' + "é" * 128
             + '","metric":"m","value":1,"unit":"","ts":1}]}')
    fast = agrees(frame)
    assert fast is not None and fast.readings[0].unit == "°C"
    assert agrees(frame.replace("é" * 128, "é" * 129)) is None


def test_the_agent_never_loads_msgspec():
    """The fast path is the collector's: the agent's RSS does not pay for it."""
    code = ("import sys, sensor_edge.agent.agent\n"
            "from sensor_edge.contract.session import AgentSession\n"
            "s = AgentSession('a', 'e', 'v', window=2)\n"
            "s.hello(); s.receive('{\"type\":\"welcome\",\"acked\":0,\"time\":1}')\n"
            "print('msgspec' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
