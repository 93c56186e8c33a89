"""A Pi without a clock chip: the collector learns each agent's clock offset at hello.

The offset (collector minus agent, seconds) shows in /api/agents and a warning
is logged when it is over 2 s, so readings stamped before NTP synced the Pi
are never wrong silently.
"""

from __future__ import annotations

import asyncio
import json
import time

from conftest import TOKENS
from processes import wait_until
from websockets.asyncio.client import connect


async def hello_from_a_skewed_clock(url: str, token: str, agent: str, skew: float) -> dict:
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                       open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "hello", "agent": agent, "epoch": "skewed-epoch",
                                  "version": "test", "time": time.time() + skew}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send(json.dumps({"type": "bye"}))
        await asyncio.wait_for(ws.wait_closed(), 10)
        return welcome


def test_collector_records_each_agents_clock_offset_and_warns_past_two_seconds(
        make_collector, make_agent):
    collector = make_collector()
    # A Pi whose clock is 90 s behind: booted, NTP not synced yet.
    welcome = asyncio.run(hello_from_a_skewed_clock(
        collector.stream_url, TOKENS["pi-2"], "pi-2", -90.0))
    assert welcome["type"] == "welcome" and abs(welcome["time"] - time.time()) < 5
    offset = collector.agent_entry("pi-2")["clock_offset"]
    assert 88 < offset < 92  # collector minus agent
    wait_until(lambda: "agent pi-2: its clock is" in collector.log(), 5,
               what="the clock warning for pi-2")

    # A real agent sends its own clock in hello: in step with the collector here.
    make_agent(collector, "pi-1")
    wait_until(lambda: collector.agent_entry("pi-1")["clock_offset"] is not None, 20,
               what="pi-1's clock offset")
    assert abs(collector.agent_entry("pi-1")["clock_offset"]) < 2
    assert "agent pi-1: its clock is" not in collector.log()
