"""The collector's disk fills up while an agent streams: every commit fails with the
real error ("database or disk is full", not a failed ROLLBACK hiding it), once in
the log each, nothing is acked, the agent buffers and retries; once the space
returns, every reading is stored exactly once. The database lives on a real,
tiny tmpfs."""

from __future__ import annotations

import pytest
from checks import assert_exactly_once, drain, say
from processes import wait_until
from test_fault_disk_full import BUSY_SENSORS, fill, small_disk  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def test_collector_disk_full_fails_commits_cleanly_and_loses_nothing(small_disk,  # noqa: F811
                                                                     make_collector,
                                                                     make_agent):
    collector = make_collector(storage=str(small_disk / "collector.db"))
    agent = make_agent(collector, "pi-1", sensors=BUSY_SENSORS)
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 200, 30, what="first readings")

    filler = small_disk / "filler"
    written = fill(filler)
    say(f"filled the collector's disk with {written // 1024} KiB")
    wait_until(lambda: "database or disk is full" in collector.log(), 60,
               what="a commit to fail for the full disk")
    last_then = agent.last_seq()
    wait_until(lambda: agent.last_seq() > last_then + 200, 30,
               what="the agent to keep reading into its buffer")
    stored_then = len(collector.stored_seqs("pi-1"))
    say(f"disk full: commits fail, {stored_then} readings stored, the agent buffers "
        f"(seq {agent.last_seq()})")

    filler.unlink()
    last = drain(collector, agent, timeout=90)["pi-1"]
    assert_exactly_once(collector, agent, last)
    log = collector.log()
    assert "no transaction is active" not in log
    assert "never retrieved" not in log and "Traceback" not in log
    assert collector.terminate() == 0
    say("space back: every reading stored once; the log named the full disk, no traceback")
