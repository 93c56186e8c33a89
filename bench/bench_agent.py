"""The agent on an SD card: CPU, bytes written, RSS and edge latency, beside a baseline.

    python bench/bench_agent.py                       # this tree beside 3e8d824 (~12 min)
    python bench/bench_agent.py --only steady8,dht --seconds 30
    python bench/bench_agent.py --keep /tmp/agent-bench   # reuse the venvs next time

Both agents run in the same invocation, side by side on the same two cores,
each from a clean venv made with `pip install .` (not editable): this tree
and a checkout of the baseline commit (`git archive`). One collector (this
tree's) serves both. Everything is counted from /proc/<pid> over the steady
state, after `--warmup` seconds of start-up:

  CPU per reading     on-CPU time of every thread (schedstat, ns) / readings stored
  bytes written       write_bytes - cancelled_write_bytes (/proc/<pid>/io): what the
                      process sends towards the disk, per reading and per day
  write syscalls      syscw per reading
  peak RSS            VmHWM at the end of the load
  block device        with --block (root; the default when losetup works): each agent's
                      buffer on its own ext4 loop device, and the sectors that device
                      wrote (the file system's journal and metadata included)
  edge to stored      for digital edges (a reading whose value differs from its sensor's
                      last one), the time from the edge's `ts` to its arrival on the
                      collector's /v1/live feed, which pushes a reading once it is stored

Loads:
  steady8  4 mock sensors every 0.5 s (2 CPU temperatures, a PIR and a button with
           heartbeats): 8 readings/s plus the mock's random edges
  dht      one mock DHT22 every 2 s (about 0.85 reads/s good, 2 readings each)
  outage   the dht load with the collector unreachable: bytes written per reading
           against the readings' own bytes (3 numbers of 8 bytes plus the three names)
  drain    a buffer pre-filled through the buffer's own API with a day at 1 reading/s
           (86,400 readings), then drained into a collector: readings/s
  floor    what this machine charges for the least an agent does: an asyncio timer
           waking every 0.5 s, and a WebSocket frame and its ack every 2 s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE.parent / "tests"))

from processes import Agent, Collector, free_port, wait_until  # noqa: E402

BASELINE = "3e8d824"
DAY = 86_400

# How long the agent lets periodic readings wait to share a frame (agent/uplink.py).
LINGER_SECONDS = 2.0

STEADY8 = [
    {"name": "soc-1", "type": "cpu_temperature", "interval": 0.5},
    {"name": "soc-2", "type": "cpu_temperature", "interval": 0.5},
    {"name": "hall-motion", "type": "motion", "pin": 17, "interval": 0.5},
    {"name": "door-button", "type": "button", "pin": 27, "interval": 0.5},
]
DHT = [{"name": "kitchen-climate", "type": "dht22", "pin": 4, "interval": 2}]
# The same sensors with the filters a user would put on a slow-moving temperature:
# a change of 0.5 degrees or more, but at least every 60 s (issue 15's filters).
TEMPERATURE_FILTERS = [{"round": 1}, {"delta": 0.5}, {"heartbeat": 60}]
STEADY8_FILTERED = [{**sensor, "filters": TEMPERATURE_FILTERS}
                    if sensor["type"] == "cpu_temperature" else sensor for sensor in STEADY8]
DIGITAL_METRICS = {"motion", "pressed"}


# --- the two agents: clean venvs ------------------------------------------------


def make_venv(source: Path, venv: Path) -> Path:
    """A venv with `pip install SOURCE` (not editable); its python. A kept venv gets
    the package reinstalled from SOURCE, its dependencies kept."""
    python = venv / "bin" / "python"
    if python.exists():
        command = ["install", "-q", "--force-reinstall", "--no-deps", str(source)]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        command = ["install", "-q", str(source)]
    subprocess.run([str(python), "-m", "pip", *command], check=True, stdout=subprocess.DEVNULL)
    return python


def checkout(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (git archive), without touching any worktree."""
    if not (into / "pyproject.toml").exists():
        into.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def this_tree(into: Path) -> Path:
    """This working tree as it is now (uncommitted changes included), without .venv."""
    if into.exists():
        shutil.rmtree(into)
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis")
    shutil.copytree(REPO, into, ignore=ignore)
    return into


# --- the buffer's own disk (optional) ---------------------------------------------


class LoopDisk:
    """A small ext4 file system on a loop device: what the buffer writes, journal included."""

    def __init__(self, image: Path, mountpoint: Path, megabytes: int = 256):
        self.image, self.mountpoint = image, mountpoint
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(megabytes * 1024 * 1024)
        # No lazy init: it would write in the background while we measure.
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(image)], check=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mountpoint)],
                                check=True, capture_output=True, text=True).stdout.strip()
        self.device = Path(source).name

    def sectors_written(self) -> int:
        return int(Path(f"/sys/block/{self.device}/stat").read_text().split()[6])

    def close(self) -> None:
        subprocess.run(["umount", str(self.mountpoint)], check=False)
        self.image.unlink(missing_ok=True)


def can_loop_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("losetup") and shutil.which("mkfs.ext4")


# --- what is measured ------------------------------------------------------------


# The file system writes back the metadata of a start (a new buffer, its reserve)
# about 30 s later: the block-device window starts after it.
BLOCK_SETTLE = 40.0


@dataclass
class Sample:
    cpu_ns: int
    write_bytes: int
    syscw: int
    sectors: int
    stored: int
    at: float


def cpu_ns(pid: int) -> int:
    """On-CPU time of every thread of ``pid``, in ns (schedstat: exact, unlike ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total


def io_counters(pid: int) -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return {k: int(v) for k, v in fields.items()}


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def stored_count(storage: str, agent: str) -> int:
    with sqlite3.connect(storage, timeout=30) as db:
        return db.execute("SELECT count(*) FROM readings WHERE agent = ?", (agent,)).fetchone()[0]


class Side:
    """One agent under test: which python, its process, its disk."""

    def __init__(self, label: str, python: Path, disk: LoopDisk | None):
        self.label, self.python, self.disk = label, python, disk
        self.agent: Agent | None = None

    def snapshot(self, storage: str) -> Sample:
        pid = self.agent.pid
        io = io_counters(pid)
        return Sample(cpu_ns(pid), io["write_bytes"] - io["cancelled_write_bytes"], io["syscw"],
                      self.disk.sectors_written() if self.disk else 0,
                      stored_count(storage, self.agent_id), time.monotonic())

    @property
    def agent_id(self) -> str:
        return f"bench-{self.label}"

    def buffer_path(self, workdir: Path, load: str) -> str:
        base = self.disk.mountpoint if self.disk else workdir
        path = base / f"{load}-{self.label}" / "buffer.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)


@dataclass
class Figures:
    readings: int = 0
    seconds: float = 0.0
    cpu_us_per_reading: float = float("nan")
    bytes_per_reading: float = float("nan")
    bytes_per_day: float = float("nan")
    syscw_per_reading: float = float("nan")
    block_bytes_per_day: float | None = None
    peak_rss_mib: float = float("nan")
    latencies_ms: list[float] = field(default_factory=list)
    own_bytes_per_reading: float | None = None
    drain_rate: float | None = None


def figures(before: Sample, after: Sample, peak_kib: int) -> Figures:
    readings = max(1, after.stored - before.stored)
    seconds = after.at - before.at
    written = after.write_bytes - before.write_bytes
    return Figures(
        readings=after.stored - before.stored, seconds=seconds,
        cpu_us_per_reading=(after.cpu_ns - before.cpu_ns) / readings / 1000,
        bytes_per_reading=written / readings, bytes_per_day=written / seconds * DAY,
        syscw_per_reading=(after.syscw - before.syscw) / readings,
        peak_rss_mib=peak_kib / 1024)


class LiveWatch:
    """Listens on the collector's /v1/live and keeps, per agent, edge-to-stored latencies."""

    def __init__(self, collector: Collector):
        from websockets.sync.client import connect

        self._ws = connect(f"ws://127.0.0.1:{collector.port}/v1/live", origin=collector.base,
                           open_timeout=10)
        self._last: dict[tuple[str, str], float] = {}
        self.edges: dict[str, list[tuple[float, float]]] = {}  # agent -> [(ts, latency s)]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for frame in self._ws:
                arrived = time.time()
                message = json.loads(frame)
                if message.get("type") != "readings":
                    continue
                for r in sorted(message["readings"], key=lambda r: r["seq"]):
                    if r["metric"] not in DIGITAL_METRICS:
                        continue
                    key = (r["agent"], r["sensor"])
                    previous = self._last.get(key)
                    self._last[key] = r["value"]
                    if previous is not None and previous != r["value"]:
                        self.edges.setdefault(r["agent"], []).append((r["ts"],
                                                                      arrived - r["ts"]))
        except ConnectionClosed:
            pass

    def latencies_ms(self, agent: str, since: float, until: float) -> list[float]:
        return sorted(lat * 1000 for ts, lat in self.edges.get(agent, []) if since <= ts <= until)

    def close(self) -> None:
        self._ws.close()
        self._thread.join(5)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- the scenarios ------------------------------------------------------------------


def make_agent(side: Side, workdir: Path, load: str, sensors: list[dict], urls: list[str],
               token: str) -> Agent:
    agent = Agent(workdir, side.agent_id, token, urls, sensors=sensors,
                  name=f"{load}-{side.label}")
    agent.executable = str(side.python)
    agent.config["buffer"]["path"] = side.buffer_path(workdir, load)
    agent.write_config()
    side.agent = agent
    return agent


def run_load(load: str, sensors: list[dict], sides: list[Side], workdir: Path,
             warmup: float, seconds: float) -> dict[str, Figures]:
    """Both agents at once against one collector: their figures over the same window."""
    tokens = {s.agent_id: f"{s.agent_id}-token-0123456789" for s in sides}
    collector = Collector(workdir, tokens, name=f"collector-{load}").start(30)
    watch = LiveWatch(collector)
    results: dict[str, Figures] = {}
    try:
        for side in sides:
            make_agent(side, workdir, load, sensors, [collector.stream_url],
                       tokens[side.agent_id]).start()
        started = time.monotonic()
        for side in sides:
            wait_until(lambda s=side: stored_count(collector.storage, s.agent_id) > 0, 30,
                       what=f"{side.label}'s first readings")
        time.sleep(max(0.0, started + warmup - time.monotonic()))
        window_start = time.time()
        before = {s.label: s.snapshot(collector.storage) for s in sides}
        end_at = time.monotonic() + seconds
        settle_at = started + max(warmup, BLOCK_SETTLE)
        settled = {}
        if settle_at < end_at - 10:
            time.sleep(max(0.0, settle_at - time.monotonic()))
            settled = {s.label: (s.disk.sectors_written(), time.monotonic())
                       for s in sides if s.disk is not None}
        time.sleep(max(0.0, end_at - time.monotonic()))
        after = {s.label: s.snapshot(collector.storage) for s in sides}
        window_end = time.time()
        for side in sides:
            result = figures(before[side.label], after[side.label],
                             peak_rss_kib(side.agent.pid))
            if side.label in settled:
                sectors, at = settled[side.label]
                result.block_bytes_per_day = ((after[side.label].sectors - sectors) * 512
                                              / (after[side.label].at - at) * DAY)
            # An edge read in the window may be stored just after it.
            result.latencies_ms = watch.latencies_ms(side.agent_id, window_start, window_end)
            results[side.label] = result
    finally:
        for side in sides:
            if side.agent is not None and side.agent.running():
                side.agent.terminate(15)
        watch.close()
        collector.terminate(15)
    return results


def own_bytes(storage: str, agent: str, since: float, until: float) -> tuple[int, int]:
    """Readings of ``agent`` read in [since, until] and their own bytes (3 x 8 + names)."""
    with sqlite3.connect(storage, timeout=30) as db:
        count, names = db.execute(
            "SELECT count(*), coalesce(sum(length(CAST(sensor AS BLOB)) + "
            "length(CAST(metric AS BLOB)) + length(CAST(unit AS BLOB))), 0) "
            "FROM readings WHERE agent = ? AND ts >= ? AND ts <= ?",
            (agent, since, until)).fetchone()
    return count, names + 24 * count


def run_outage(sides: list[Side], workdir: Path, warmup: float,
               seconds: float) -> dict[str, Figures]:
    """The dht load with nothing listening at the collector's address; then it comes up."""
    tokens = {s.agent_id: f"{s.agent_id}-token-0123456789" for s in sides}
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/stream"
    results: dict[str, Figures] = {}
    collector = Collector(workdir, tokens, name="collector-outage", port=port)
    try:
        for side in sides:
            make_agent(side, workdir, "outage", DHT, [url], tokens[side.agent_id]).start()
        time.sleep(max(warmup, BLOCK_SETTLE))
        since = time.time()
        before = {}
        for side in sides:
            io = io_counters(side.agent.pid)
            before[side.label] = (io["write_bytes"] - io["cancelled_write_bytes"], io["syscw"],
                                  side.disk.sectors_written() if side.disk else 0,
                                  cpu_ns(side.agent.pid))
        time.sleep(seconds)
        until = time.time()
        for side in sides:
            io = io_counters(side.agent.pid)
            written = io["write_bytes"] - io["cancelled_write_bytes"] - before[side.label][0]
            sectors = (side.disk.sectors_written() if side.disk else 0) - before[side.label][2]
            results[side.label] = Figures(
                seconds=until - since, bytes_per_day=written / (until - since) * DAY,
                block_bytes_per_day=(sectors * 512 / (until - since) * DAY
                                     if side.disk else None),
                peak_rss_mib=peak_rss_kib(side.agent.pid) / 1024)
            results[side.label].syscw_per_reading = io["syscw"] - before[side.label][1]
            results[side.label].cpu_us_per_reading = cpu_ns(side.agent.pid) - before[side.label][3]
            results[side.label].bytes_per_reading = written
        collector.start(30)
        for side in sides:  # the outage is over: count what was read during it
            side_id = side.agent_id
            wait_until(lambda a=side_id: own_bytes(collector.storage, a, until, time.time())[0]
                       > 0, 60, what=f"{side.label} to deliver its backlog")
        for side in sides:
            result = results[side.label]
            count, own = own_bytes(collector.storage, side.agent_id, since, until)
            result.readings = count
            result.own_bytes_per_reading = own / max(1, count)
            result.bytes_per_reading /= max(1, count)
            result.syscw_per_reading /= max(1, count)
            result.cpu_us_per_reading /= max(1, count) * 1000
    finally:
        for side in sides:
            if side.agent is not None and side.agent.running():
                side.agent.terminate(15)
        if collector.running():
            collector.terminate(15)
    return results


FILL = textwrap.dedent("""
    import sys, time
    from sensor_edge.agent.buffer import Buffer
    path, count, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    buffer = Buffer(path, 1_000_000)
    start = 1_700_000_000.0
    for first in range(0, count, chunk):
        rows = []
        for i in range(first, min(count, first + chunk)):
            metric, unit = ("temperature", "C") if i % 2 == 0 else ("humidity", "%")
            rows.append(("kitchen-climate", metric, 20.0 + (i % 100) / 10, unit, start + i))
        buffer.append(rows)
        if hasattr(buffer, "sync"):
            buffer.sync()
    buffer.close()
""")


def run_drain(sides: list[Side], workdir: Path, count: int) -> dict[str, Figures]:
    """A day's backlog at 1 reading/s, filled through the buffer's own API, then drained."""
    results = {}
    for side in sides:  # one at a time: each drain is as fast as the machine allows
        tokens = {side.agent_id: f"{side.agent_id}-token-0123456789"}
        path = side.buffer_path(workdir, "drain")
        # Filled in chunks of a minute: what a day-long outage leaves behind.
        subprocess.run([str(side.python), "-c", FILL, path, str(count), "60"], check=True)
        collector = Collector(workdir, tokens, name=f"collector-drain-{side.label}").start(30)
        agent = make_agent(side, workdir, "drain", [], [collector.stream_url],
                           tokens[side.agent_id])
        agent.config["buffer"]["path"] = path
        agent.write_config()
        try:
            agent.start()
            def stored(storage=collector.storage, agent=side.agent_id) -> int:
                return stored_count(storage, agent)

            first = wait_until(lambda: stored() and time.monotonic(), 60, interval=0.01,
                               what="the drain to begin")
            stored_then = stored()
            wait_until(lambda: stored() >= count, 300, interval=0.05,
                       what=f"{side.label} to drain {count} readings")
            elapsed = time.monotonic() - first
            results[side.label] = Figures(readings=count, seconds=elapsed,
                                          drain_rate=(count - stored_then) / elapsed)
        finally:
            agent.terminate(15)
            collector.terminate(15)
    return results


FLOOR = textwrap.dedent("""
    import asyncio, json, sys, time
    from websockets.asyncio.client import connect
    url, token, tick, every, seconds = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:6])

    async def main():
        loop = asyncio.get_running_loop()
        for frames in (False, True):
            async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                               compression=None) as ws:
                await ws.send(json.dumps({"type": "hello", "agent": "floor",
                                          "epoch": ("b" if frames else "a") * 32,
                                          "version": "0"}))
                await ws.recv()
                seq, wakes, sent, next_frame = 0, 0, 0, 0.0
                start = cpu = None
                end = loop.time() + seconds + 5
                while loop.time() < end:
                    await asyncio.sleep(tick)
                    wakes += 1
                    if start is None and loop.time() > end - seconds:
                        start, cpu, wakes, sent = loop.time(), time.process_time(), 0, 0
                    if frames and loop.time() >= next_frame:
                        next_frame = loop.time() + every
                        seq += 1
                        await ws.send(json.dumps({"type": "readings", "readings": [{
                            "seq": seq, "sensor": "s", "metric": "m", "value": 1.0,
                            "unit": "", "ts": time.time()}]}))
                        await ws.recv()
                        sent += 1
                used = time.process_time() - cpu
                if not frames:
                    per_wake = used / wakes
                    print(f"{per_wake * 1e6:.0f}")
                else:
                    print(f"{(used - per_wake * wakes) / sent * 1e6:.0f}")

    asyncio.run(main())
""")


def run_floor(side: Side, workdir: Path, seconds: float) -> tuple[float, float]:
    """What this machine charges for the least an agent does: an asyncio timer waking
    every 0.5 s, and one WebSocket frame and its ack (websockets, as the agent uses it).
    Returns (us per wake, us per frame and ack), in a clean venv's interpreter."""
    tokens = {"floor": "floor-token-0123456789"}
    collector = Collector(workdir, tokens, name="collector-floor").start(30)
    try:
        out = subprocess.run([str(side.python), "-c", FLOOR, collector.stream_url,
                              tokens["floor"], "0.5", str(LINGER_SECONDS), str(seconds)],
                             check=True, capture_output=True, text=True).stdout.split()
    finally:
        collector.terminate(15)
    return float(out[0]), float(out[1])


# --- output -----------------------------------------------------------------------


def ratio(new: float, old: float) -> str:
    if not old or old != old or new != new:
        return ""
    return f"{new / old:.2f}x"


def print_table(title: str, rows: list[tuple[str, float | None, float | None, str, str]],
                labels: list[str]) -> None:
    print(f"\n{title}")
    header = f"  {'figure':<34}" + "".join(f"{label:>16}" for label in labels)
    print(header + f"{'ratio':>10}  target")
    for name, old, new, fmt, target in rows:
        cells = [old, new][-len(labels):]
        text = "".join(f"{'' if v is None else format(v, fmt):>16}" for v in cells)
        r = ratio(new, old) if len(labels) == 2 and old is not None and new is not None else ""
        print(f"  {name:<34}{text}{r:>10}  {target}")


def load_rows(figs: dict[str, Figures], labels: list[str], targets: dict[str, str]):
    def pick(attr):
        values = [getattr(figs[label], attr) for label in labels]
        return ([None] * (2 - len(values))) + values

    def lat(p):
        values = [percentile(figs[label].latencies_ms, p) if figs[label].latencies_ms else None
                  for label in labels]
        return ([None] * (2 - len(values))) + values

    rows = [
        ("readings stored in the window", *pick("readings"), ",.0f", ""),
        ("CPU per reading (us)", *pick("cpu_us_per_reading"), ",.0f", targets.get("cpu", "")),
        ("bytes written per reading", *pick("bytes_per_reading"), ",.0f",
         targets.get("bytes", "")),
        ("bytes written per day (MB)", *[None if v is None else v / 1e6
                                         for v in pick("bytes_per_day")], ",.1f",
         targets.get("day", "")),
        ("write syscalls per reading", *pick("syscw_per_reading"), ".2f", ""),
        ("peak RSS (MiB)", *pick("peak_rss_mib"), ".1f", targets.get("rss", "")),
    ]
    blocks = pick("block_bytes_per_day")
    if any(v is not None for v in blocks):
        rows.append(("block device writes per day (MB)",
                     *[None if v is None else v / 1e6 for v in blocks], ",.1f",
                     f"journal, metadata; from {BLOCK_SETTLE:g} s"))
    if any(figs[label].latencies_ms for label in labels):
        counts = [len(figs[label].latencies_ms) for label in labels]
        rows += [
            (f"edges seen ({'/'.join(map(str, counts))})", None, None, "", ""),
            ("edge to stored p50 (ms)", *lat(50), ".1f", ""),
            ("edge to stored p99 (ms)", *lat(99), ".1f", targets.get("p99", "")),
            ("edge to stored max (ms)", *lat(100), ".1f", ""),
        ]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="steady8,dht,outage,drain,floor,filters")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window per load")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of start-up left out")
    p.add_argument("--outage-seconds", type=float, default=300.0)
    p.add_argument("--drain-readings", type=int, default=DAY)
    p.add_argument("--baseline", default=BASELINE, help="commit to compare with")
    p.add_argument("--no-baseline", action="store_true", help="this tree only")
    p.add_argument("--block", choices=("auto", "yes", "no"), default="auto",
                   help="put each buffer on its own ext4 loop device (needs root)")
    p.add_argument("--keep", metavar="DIR", help="keep the venvs here and reuse them")
    args = p.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]

    keep = Path(args.keep) if args.keep else None
    with tempfile.TemporaryDirectory(prefix="sensor-edge-agent-bench-") as tmp:
        work = Path(tmp)
        home = keep or work
        home.mkdir(parents=True, exist_ok=True)
        print("making clean venvs (pip install ., not editable) ...", flush=True)
        specs = []
        if not args.no_baseline:
            base_src = checkout(args.baseline, home / f"src-{args.baseline}")
            specs.append((args.baseline, make_venv(base_src, home / f"venv-{args.baseline}")))
        specs.append(("this tree", make_venv(this_tree(work / "src-this"), home / "venv-this")))
        block = args.block == "yes" or (args.block == "auto" and can_loop_mount())
        disks: list[LoopDisk] = []
        sides = []
        try:
            for i, (label, python) in enumerate(specs):
                disk = None
                if block:
                    disk = LoopDisk(work / f"disk-{i}.img", work / f"mnt-{i}")
                    disks.append(disk)
                sides.append(Side("this" if label == "this tree" else "base", python, disk))
            labels = [s.label for s in sides]
            shown = [args.baseline if s.label == "base" else "this tree" for s in sides]
            print(f"baseline {args.baseline} beside this tree; buffers on "
                  f"{'their own ext4 loop devices' if block else 'the work directory'}; "
                  f"{args.warmup:g} s of start-up left out", flush=True)
            for side in sides:
                print(f"  {side.label}: {side.python}")
            for load in chosen:
                if load in ("steady8", "dht"):
                    sensors = STEADY8 if load == "steady8" else DHT
                    figs = run_load(load, sensors, sides, work, args.warmup, args.seconds)
                    targets = ({"cpu": "<= 100", "bytes": "<= 150", "rss": "<= 28",
                                "p99": "<= 100"} if load == "steady8" else
                               {"cpu": "<= 300", "day": "<= 15", "rss": "<= 28"})
                    title = ("steady8: 4 mock sensors every 0.5 s (8 readings/s + edges)"
                             if load == "steady8" else "dht: one mock DHT22 every 2 s")
                    print_table(f"{title}, {args.seconds:g} s measured", 
                                load_rows(figs, labels, targets), shown)
                elif load == "filters":
                    # This tree only (the baseline has no filters): the steady8 load plain,
                    # then filtered; the ratio is what the filters save.
                    this = sides[-1]
                    plain = run_load("filters-off", STEADY8, [this], work, args.warmup,
                                     args.seconds)[this.label]
                    kept = run_load("filters-on", STEADY8_FILTERED, [this], work, args.warmup,
                                    args.seconds)[this.label]
                    print_table(f"filters: the steady8 load, its two temperatures plain, then "
                                f"with {TEMPERATURE_FILTERS} (this tree), {args.seconds:g} s "
                                "measured each", load_rows({"plain": plain, "filtered": kept},
                                                           ["plain", "filtered"], {}),
                                ["no filters", "filters"])
                elif load == "outage":
                    figs = run_outage(sides, work, args.warmup, args.outage_seconds)
                    rows = load_rows(figs, labels, {})
                    own = [figs[label].own_bytes_per_reading for label in labels]
                    own = ([None] * (2 - len(own))) + own
                    writes = [figs[label].bytes_per_reading / figs[label].own_bytes_per_reading
                              for label in labels]
                    writes = ([None] * (2 - len(writes))) + writes
                    rows.insert(3, ("readings' own bytes per reading", *own, ".1f", ""))
                    rows.insert(4, ("written / own bytes", *writes, ".2f", "<= 2"))
                    print_table(f"outage: the dht load, collector unreachable, "
                                f"{args.outage_seconds:g} s measured", rows, shown)
                elif load == "floor":
                    wake, frame = run_floor(sides[-1], work, args.seconds)
                    print(f"\nfloor: this machine, {sides[-1].python}, {args.seconds:g} s each")
                    print(f"  an asyncio timer waking every 0.5 s, doing nothing: {wake:,.0f} us "
                          "CPU per wake")
                    print(f"  one WebSocket frame of 1 reading and its ack every "
                          f"{LINGER_SECONDS:g} s (websockets, as the agent uses it): "
                          f"{frame:,.0f} us CPU per frame")
                elif load == "drain":
                    figs = run_drain(sides, work, args.drain_readings)
                    rates = [figs[label].drain_rate for label in labels]
                    rows = [("backlog drained, readings/s", *([None] * (2 - len(rates)) + rates),
                             ",.0f", ">= 5,000"),
                            ("seconds", *([None] * (2 - len(rates)) +
                                          [figs[label].seconds for label in labels]), ".1f", "")]
                    print_table(f"drain: {args.drain_readings:,} readings buffered "
                                "(a day at 1 reading/s)", rows, shown)
                else:
                    p.error(f"unknown load {load}")
        finally:
            for disk in disks:
                disk.close()


if __name__ == "__main__":
    main()
