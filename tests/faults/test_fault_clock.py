"""The agent's wall clock steps backwards (an hour, then a day) and forwards again while
it streams. Seqs, not timestamps, order delivery: nothing is lost or stored twice."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from checks import assert_exactly_once, drain, say
from processes import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

CLOCK = Path(__file__).parent / "clock"


def test_agent_clock_stepping_backwards(make_collector, make_agent, tmp_path, monkeypatch):
    collector = make_collector()
    clock_file = tmp_path / "clock-offset"
    clock_file.write_text("0")
    with monkeypatch.context() as env:  # only the agent runs with the steppable clock
        env.setenv("PYTHONPATH", f"{CLOCK}:{os.environ.get('PYTHONPATH', '')}")
        env.setenv("SENSOR_EDGE_TEST_CLOCK_FILE", str(clock_file))
        agent = make_agent(collector, "pi-1")

    def stored() -> int:
        return len(collector.stored_seqs("pi-1"))

    def streams_on(what: str) -> int:
        before = stored()
        wait_until(lambda: stored() > before + 20, 30, what=f"delivery after {what}")
        return agent.last_seq()

    streams_on("start")
    steps = [(-3600, "back an hour"), (-86400, "back a day"), (0, "forward to the right time")]
    marks = []
    for offset, what in steps:
        clock_file.write_text(str(offset))
        marks.append((streams_on(f"the clock stepped {what}"), offset))
        say(f"stepped the agent's wall clock {what} (offset {offset:+d} s); it kept "
            f"streaming, up to seq {marks[-1][0]}")

    # A reconnect while the clock is off: the collector sees the offset in hello and says so.
    clock_file.write_text("-3600")
    streams_on("the clock stepped back again")
    collector.kill()
    collector.start()
    wait_until(lambda: "clock is" in collector.log(), 30,
               what="the collector to warn about the agent's clock")
    pi1 = collector.agent_entry("pi-1")
    assert pi1["clock_offset"] == pytest.approx(3600, abs=60)
    say(f"reconnected with the clock an hour behind: the collector logged it and reports "
        f"clock_offset {pi1['clock_offset']:+.0f} s")

    last = drain(collector, agent)["pi-1"]
    assert_exactly_once(collector, agent, last)
    # The timestamps really did jump back: the stored ts are not in seq order.
    readings = collector.json("/api/readings?agent=pi-1&limit=100000")["readings"]
    by_seq = [r["ts"] for r in sorted(readings, key=lambda r: r["seq"])]
    backwards = sum(1 for a, b in itertools.pairwise(by_seq) if b < a - 1000)
    assert backwards >= 2, "the agent's timestamps stepped back at least twice"
    say(f"checked: {backwards} backward steps in the stored timestamps, seqs still 1..{last}")
    assert "Traceback" not in agent.log()
