"""The agent's disk fills up while the collector is away: the agent keeps running and
reading, drops the oldest readings by policy and counts them, and is back to normal
once the space returns. Its buffer lives on a real, tiny tmpfs."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from checks import assert_exactly_once, buffer_meta, drain, oldest_buffered, say
from processes import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

DISK_BYTES = 8 * 1024 * 1024
# Fast mock sensors, so a full buffer is reached in seconds: about 200 readings a second.
BUSY_SENSORS = [{"name": f"soc-{i}", "type": "cpu_temperature", "interval": 0.01}
                for i in (1, 2)]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A size-limited file system of its own (tmpfs); skipped where mounting is not allowed."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0755",
                              "tmpfs", str(mountpoint)], capture_output=True, text=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(path: Path) -> int:
    """Write zeros until the file system says no more; the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    # Top off with the last partial block.
    with open(path, "ab", buffering=0) as f:
        for size in (4096, 512, 1):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError:
                    break
    return written


def test_agent_disk_full_drops_oldest_counts_and_recovers(small_disk, make_collector,
                                                          make_agent):
    collector = make_collector()
    agent = make_agent(collector, "pi-1", start=False, sensors=BUSY_SENSORS)
    agent.buffer_path = str(small_disk / "buffer.db")
    agent.config["buffer"]["path"] = agent.buffer_path
    agent.write_config()
    agent.start()
    wait_until(lambda: len(collector.stored_seqs("pi-1")) > 200, 30, what="first readings")

    logged = len(agent.log())
    collector.kill()
    # Once the agent has seen the link go, no ack can arrive any more to shrink its buffer.
    wait_until(lambda: "cannot reach collector" in agent.log()[logged:], 30,
               what="the agent to notice the collector is gone")
    stored_before = collector.stored_seqs("pi-1")
    first_unacked = oldest_buffered(agent)  # what the buffer holds: from here on, unacked
    assert first_unacked is not None and first_unacked <= stored_before[-1] + 1
    filler = small_disk / "filler"
    written = fill(filler)
    say(f"collector down after seq {stored_before[-1]}; filled the agent's {DISK_BYTES // 1024} "
        f"KiB disk with {written // 1024} KiB: {os.statvfs(small_disk).f_bavail} blocks free")

    wait_until(lambda: buffer_meta(agent, "dropped") > 0, 60,
               what="the agent to drop its oldest readings")
    dropped_then, last_then = buffer_meta(agent, "dropped"), agent.last_seq()
    held_when_full = last_then - oldest_buffered(agent) + 1  # what the full disk holds
    wait_until(lambda: agent.last_seq() > last_then + 200
               and buffer_meta(agent, "dropped") > dropped_then, 30,
               what="the agent to keep reading, dropping the oldest to make room")
    assert agent.running()
    assert "disk full" in agent.log()
    say(f"disk full: the agent kept running and reading (seq {last_then} -> "
        f"{agent.last_seq()}), dropping the oldest: {buffer_meta(agent, 'dropped')} so far")

    filler.unlink()
    wait_until(lambda: "the disk has room again" in agent.log(), 30,
               what="the agent to notice the space came back")
    dropped, read = buffer_meta(agent, "dropped"), agent.last_seq()
    # As many readings again as filled the disk, and still none dropped.
    wait_until(lambda: agent.last_seq() >= read + held_when_full, 60,
               what=f"the agent to take {held_when_full} more readings")
    assert buffer_meta(agent, "dropped") == dropped, "no more drops once there is room"
    collector.start()

    wait_until(lambda: (collector.agent_entry("pi-1")["status"] or {}).get("dropped")
               == dropped, 30,
               what="the agent to report its drop count in its status")
    say(f"space back: the agent took its reserve back; {dropped} dropped in all, reported in "
        "its status; collector restarted")

    last = drain(collector, agent)["pi-1"]
    assert buffer_meta(agent, "dropped") == dropped
    # Dropped: the oldest unacked readings, the first `dropped` of them from
    # first_unacked on, less any the collector had stored before its ack got lost.
    lost = range(stored_before[-1] + 1, first_unacked + dropped)
    assert_exactly_once(collector, agent, last, missing=lost)
    assert len(lost) <= dropped
    assert "Traceback" not in agent.log()
