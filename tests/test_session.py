"""Both ends' session objects, driven in-process with frames: no sockets, no clock."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from sensor_edge.contract.protocol import (
    STATUS_FIELDS,
    Ack,
    Bye,
    Error,
    Hello,
    ProtocolError,
    Reading,
    Readings,
    Status,
    Welcome,
    encode,
)
from sensor_edge.contract.status import AgentStatus, SensorHealth
from sensor_edge.contract.session import (
    Acked,
    AgentSession,
    CollectorSession,
    Refused,
    Welcomed,
)


def rows(first: int, count: int) -> list[Reading]:
    return [Reading(seq, "s", "m", float(seq), "C", 1.0 + seq) for seq in
            range(first, first + count)]


def welcomed(acked: int = 0, window: int = 2) -> AgentSession:
    session = AgentSession("pi-1", "e1", "0.1.0", window=window)
    session.hello()
    assert session.receive(encode(Welcome(acked, 5.0))) == Welcomed(acked, 5.0)
    return session


def test_hello_names_agent_epoch_version_and_time():
    session = AgentSession("pi-1", "e1", "0.1.0", window=4)
    assert json.loads(session.hello(time=12.5)) == {
        "type": "hello", "agent": "pi-1", "epoch": "e1", "version": "0.1.0", "time": 12.5}
    assert not session.window_open  # nothing may be sent before welcome


def test_welcome_opens_the_window_after_what_the_collector_holds():
    session = welcomed(acked=41)
    assert session.window_open and session.acked == 41 and session.sent_upto == 41
    with pytest.raises(RuntimeError):
        session.readings(rows(41, 1))  # 41 is stored already: the driver must read after it
    frame = json.loads(session.readings(rows(42, 3)))
    assert [r["seq"] for r in frame["readings"]] == [42, 43, 44]
    assert session.sent_upto == 44 and session.in_flight == 1


@pytest.mark.parametrize("first", [
    Ack(3), Error("unknown_agent", "no such agent"), "not json", json.dumps({"type": "nope"}),
])
def test_anything_but_welcome_first_ends_the_session(first):
    session = AgentSession("pi-1", "e1", "0.1.0", window=2)
    session.hello()
    frame = first if isinstance(first, str) else encode(first)
    with pytest.raises(ProtocolError):
        session.receive(frame)
    assert not session.window_open


def test_the_window_closes_when_full_and_acks_reopen_it():
    session = welcomed(window=2)
    session.readings(rows(1, 2))
    session.readings(rows(3, 2))
    assert not session.window_open and session.in_flight == 2
    with pytest.raises(RuntimeError):
        session.readings(rows(5, 1))
    assert session.receive(encode(Ack(2))) == Acked(2)
    assert session.window_open and session.in_flight == 1 and session.acked == 2
    assert session.receive(encode(Ack(4))) == Acked(4)
    assert session.in_flight == 0


def test_an_ack_covering_several_batches_clears_them_all():
    session = welcomed(window=3)
    for first in (1, 3, 5):
        session.readings(rows(first, 2))
    session.receive(encode(Ack(6)))
    assert session.in_flight == 0 and session.acked == 6


def test_an_ack_past_what_was_sent_is_refused_so_nothing_unsent_is_forgotten():
    session = welcomed(acked=10)
    session.readings(rows(11, 2))
    with pytest.raises(ProtocolError) as caught:
        session.receive(encode(Ack(13)))
    assert caught.value.code == "bad_ack"
    assert session.acked == 10


def test_an_old_ack_does_not_move_acked_back():
    session = welcomed(acked=10)
    session.readings(rows(11, 2))
    session.receive(encode(Ack(12)))
    session.receive(encode(Ack(11)))  # late duplicate
    assert session.acked == 12


def test_a_second_welcome_is_refused():
    session = welcomed()
    with pytest.raises(ProtocolError):
        session.receive(encode(Welcome(0, 1.0)))


def test_an_error_after_welcome_is_reported_not_raised():
    session = welcomed()
    assert session.receive(encode(Error("bad_message", "x"))) == Refused("bad_message", "x")


def test_bye_is_last():
    session = welcomed()
    frame = json.loads(session.status(AgentStatus(uptime=1.0, sensors={"s": SensorHealth(good=2)})))
    assert frame["type"] == "status" and frame["uptime"] == 1.0
    assert frame["sensors"]["s"]["good"] == 2
    assert json.loads(session.bye()) == {"type": "bye"}
    assert not session.window_open
    with pytest.raises(RuntimeError):
        session.status(AgentStatus(uptime=2.0))


def test_the_two_ends_talk_through_frames_alone():
    """An agent session and a collector session wired to each other, batch by batch."""
    agent = AgentSession("pi-1", "e1", "0.1.0", window=2)
    collector = CollectorSession("pi-1")
    stored: list[Reading] = []
    hello = collector.receive(agent.hello(time=1.0))
    assert hello == Hello("pi-1", "e1", "0.1.0", 1.0)
    agent.receive(encode(Welcome(0, 1.0)))
    pending = rows(1, 7)
    while pending or agent.in_flight:
        if agent.window_open and pending:
            batch, pending = pending[:3], pending[3:]
            message = collector.receive(agent.readings(batch))
            assert isinstance(message, Readings)
            stored += message.readings
            agent.receive(encode(Ack(message.last_seq)))
    assert stored == rows(1, 7) and agent.acked == 7
    sent = AgentStatus(uptime=3.0, buffer_depth=4, clock_synced=True,
                       sensors={"climate": SensorHealth(good=5, failures={"checksum": 1})})
    received = collector.receive(agent.status(sent))
    assert isinstance(received, Status) and received.status == sent
    assert collector.receive(agent.bye()) == Bye()
    with pytest.raises(ProtocolError):
        collector.receive(agent.hello())  # nothing after bye


def test_the_status_type_and_the_protocols_checks_name_the_same_fields():
    """One shape: every field of AgentStatus is checked on the wire and comes through."""
    assert {f.name for f in fields(AgentStatus)} == set(STATUS_FIELDS)
    full = AgentStatus(
        time=1.5, uptime=2.5, version="1", backend="mock", buffer_depth=3,
        buffer_oldest_age=4.5, dropped=5, sent=6, cpu_temperature=47.5, clock_synced=False,
        sensors={"c": SensorHealth(good=1, failed=2, consecutive_failures=1,
                                   failures={"checksum": 2}, last_error="bad", held_back=3)})
    assert None not in [getattr(full, f.name) for f in fields(AgentStatus)]
    agent = AgentSession("pi-1", "e1", "0.1.0", window=1)
    collector = CollectorSession("pi-1")
    collector.receive(agent.hello())
    agent.receive(encode(Welcome(0, 1.0)))
    received = collector.receive(agent.status(full))
    assert received.dropped == () and received.status == full
