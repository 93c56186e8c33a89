"""The network between agent and collector breaks: a stall, cuts in both directions, a
cut in the middle of a batch, a lost ack. Nothing is lost and nothing stored twice."""

from __future__ import annotations

import json
import time

import pytest
from checks import assert_exactly_once, drain, oldest_buffered, say
from processes import wait_until
from proxy import FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

STALL_SECONDS = 3
# Readings waiting in the agent's buffer before a batch is cut in two (FAST_SENSORS
# take about 25 a second).
BACKLOG = 50


@pytest.fixture
def proxy(make_collector):
    collector = make_collector()
    proxy = FaultProxy(collector.port).start()
    try:
        yield collector, proxy
    finally:
        proxy.stop()


def test_network_stalls_cuts_and_lost_acks(proxy, make_agent):
    collector, net = proxy
    agent = make_agent(collector, "pi-1", urls=[net.url])

    def stored() -> int:
        return len(collector.stored_seqs("pi-1"))

    def streams_again(what: str) -> None:
        before = stored()
        wait_until(lambda: stored() > before + 10, 30, what=f"delivery after {what}")

    def connections() -> int:
        return agent.log().count("connected to")

    streams_again("start")

    net.stall()
    # What got through before the stall is stored.
    wait_until(lambda: collector.stored_seqs("pi-1")[-1] >= net.forwarded_seq, 10,
               what="the collector to store what got through before the stall")
    during, read, connected = stored(), agent.last_seq(), connections()
    # The stall's length is what is under test: 3 s of silence, well under the agent's
    # 20 s ping timeout, must not end the connection, and nothing may get through.
    time.sleep(STALL_SECONDS)
    assert stored() == during, "nothing gets through a stalled link"
    assert agent.last_seq() > read, "the agent kept reading"
    assert net.held > 0, "the agent kept sending into the stalled link"
    net.resume()
    streams_again("the stall")
    assert (connections(), net.accepted, net.cuts) == (connected, 1, 0), \
        "the same connection carried on"
    say(f"stalled both directions for {STALL_SECONDS} s ({during} stored, none during, "
        "the agent's frames held), resumed: the same connection carried on")

    for round_ in (1, 2):
        net.stall()
        wait_until(lambda: net.held > 0, 10, what="the agent's data to be caught in the stall")
        cut = net.cut()
        net.refuse(True)
        refused = net.refused
        wait_until(lambda r=refused: net.refused > r, 15,
                   what="the agent to try again and be refused")
        net.refuse(False)
        net.resume()
        streams_again("a cut")
        say(f"cut {round_}: stalled with data in flight, aborted {cut} connection(s) both "
            "ways, refused new ones until the agent had tried once, restored: the agent "
            "reconnected and went on")

    for round_ in (1, 2):
        # A backlog first, so the batch cut in two is a big one.
        net.cut()
        net.refuse(True)
        refused, stored_upto = net.refused, collector.stored_seqs("pi-1")[-1]
        wait_until(lambda r=refused, s=stored_upto: net.refused > r
                   and agent.last_seq() >= s + BACKLOG, 30,
                   what=f"a backlog of {BACKLOG} readings while the agent is refused")
        cutting = net.cut_mid_batch()
        net.refuse(False)
        size = cutting.result(30)
        streams_again("a cut mid-batch")
        say(f"mid-batch cut {round_}: an outage until {BACKLOG} readings waited, then on "
            f"reconnect half of the {size}-byte backlog batch went through before the cut: "
            "the collector stored none of it, the agent sent it again")

        ack = json.loads(net.lose_next_ack().result(30))
        # The collector stored that batch but the agent never heard: welcome tells it.
        assert ack["seq"] in collector.stored_seqs("pi-1")
        streams_again("a lost ack")
        wait_until(lambda a=ack: (oldest_buffered(agent) or a["seq"] + 1) > a["seq"], 15,
                   what="the agent to learn from welcome that the collector has it")
        say(f"lost ack {round_}: swallowed ack of seq {ack['seq']} (already stored), cut: "
            "on reconnect welcome said so, and the agent dropped it from its buffer")

    last = drain(collector, agent)["pi-1"]
    assert_exactly_once(collector, agent, last)
    duplicates = [line for line in collector.get("/metrics")[1].decode().splitlines()
                  if line.startswith("sensor_edge_readings_duplicate_total ")]
    say(f"{net.cuts} cuts in all; {duplicates[0] if duplicates else 'no duplicate counter'} "
        "(resent readings acknowledged, not stored twice)")
    assert "Traceback" not in agent.log() + collector.log()
