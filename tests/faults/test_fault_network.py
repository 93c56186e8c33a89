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

    streams_again("start")

    net.stall()
    during = stored()
    time.sleep(3)
    assert stored() == during, "nothing gets through a stalled link"
    net.resume()
    streams_again("the stall")
    say(f"stalled both directions for 3 s ({during} stored, none during), resumed: "
        "the same connection carried on")

    for round_ in (1, 2):
        net.stall()
        time.sleep(1)
        cut = net.cut()
        net.refuse(True)
        time.sleep(2)
        net.refuse(False)
        net.resume()
        streams_again("a cut")
        say(f"cut {round_}: stalled 1 s, aborted {cut} connection(s) both ways, refused "
            "new ones for 2 s, restored: the agent reconnected and went on")

    for round_ in (1, 2):
        # A backlog first, so the batch cut in two is a big one.
        net.cut()
        net.refuse(True)
        time.sleep(2)
        cutting = net.cut_mid_batch()
        net.refuse(False)
        size = cutting.result(30)
        streams_again("a cut mid-batch")
        say(f"mid-batch cut {round_}: a 2 s outage, then on reconnect half of the "
            f"{size}-byte backlog batch went through before the cut: the collector stored "
            "none of it, the agent sent it again")

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
