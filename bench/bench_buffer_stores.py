"""Before choosing the agent's buffer: what each way of storing it writes to the card.

    python bench/bench_buffer_stores.py [--seconds 120] [--sync-interval 60]

Each candidate runs in its own process on its own ext4 loop device (root), in
real time, so the kernel's write-back (30 s) and the file system's journal
act as on a Pi. Two patterns: `connected` (8 readings/s in ticks of 4 every
0.5 s, each tick acknowledged 5 ms later) and `outage` (1 reading/s, never
acknowledged). Printed per candidate: bytes per reading the process sent
towards the disk (write_bytes - cancelled_write_bytes) and what the block
device wrote (journal and metadata included).

Candidates, each a minimal model of the write pattern, not the agent's code:
  sqlite-3e8d824  WAL, synchronous=NORMAL, a commit per tick, a DELETE per ack
  sqlite-tuned    page_size 1024, WAL, synchronous=NORMAL, one commit per tick that
                  also deletes what was acked since the last, a checkpoint (WAL
                  synced, then the database) every sync interval, the WAL truncated
  log-on-disk     an append-only segment file written every tick, fdatasync every
                  sync interval while unacknowledged readings wait, a new segment
                  every 20 s and acknowledged segments deleted (before write-back)
  ram-journal     ticks appended to a file in RAM (tmpfs: survives the process, not
                  the power); every sync interval the unacknowledged readings are
                  appended to a segment on the card and fdatasync'd
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_agent import LoopDisk, io_counters  # noqa: E402

ROW = ("kitchen-climate", "temperature", 21.5, "C")


def record(seq: int, ts: float) -> bytes:
    name = b"kitchen-climate\0temperature\0C"
    return struct.pack("<QddB", seq, 21.5, ts, len(name)) + name


class SqliteBaseline:
    def __init__(self, directory: Path, sync_interval: float):
        self.db = sqlite3.connect(directory / "buffer.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA wal_autocheckpoint = 256")
        self.db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
            "CREATE TABLE readings (seq INTEGER PRIMARY KEY, sensor TEXT, metric TEXT, "
            "value REAL, unit TEXT, ts REAL);")

    def append(self, rows: list[tuple[int, float]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?)",
                            [(seq, *ROW[:3], ROW[3], ts) for seq, ts in rows])
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (rows[-1][0],))
        self.db.execute("COMMIT")

    def ack(self, seq: int) -> None:
        self.db.execute("DELETE FROM readings WHERE seq <= ?", (seq,))

    def tick(self, now: float) -> None:
        pass


class SqliteTuned:
    def __init__(self, directory: Path, sync_interval: float):
        self.db = sqlite3.connect(directory / "buffer.db", isolation_level=None)
        self.db.execute("PRAGMA page_size = 1024")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA wal_autocheckpoint = 0")
        self.db.execute("PRAGMA journal_size_limit = 0")
        self.db.execute("CREATE TABLE readings (seq INTEGER PRIMARY KEY, sensor TEXT, "
                        "metric TEXT, value REAL, unit TEXT, ts REAL)")
        self.acked = 0
        self.deleted = 0
        self.sync_interval = sync_interval
        self.next_sync = time.monotonic() + sync_interval

    def append(self, rows: list[tuple[int, float]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        if self.acked > self.deleted:
            self.db.execute("DELETE FROM readings WHERE seq <= ?", (self.acked,))
            self.deleted = self.acked
        self.db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?)",
                            [(seq, *ROW[:3], ROW[3], ts) for seq, ts in rows])
        self.db.execute("COMMIT")

    def ack(self, seq: int) -> None:
        self.acked = seq

    def tick(self, now: float) -> None:
        if now >= self.next_sync:
            self.next_sync = now + self.sync_interval
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class LogOnDisk:
    SEGMENT_SECONDS = 20.0

    def __init__(self, directory: Path, sync_interval: float):
        self.directory = directory
        self.sync_interval = sync_interval
        self.segments: list[tuple[Path, int]] = []  # (path, last seq)
        self.fd = -1
        self.acked = 0
        self.last = 0
        self.synced = 0
        self.rolled = self.next_sync = time.monotonic()
        self._roll()

    def _roll(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        path = self.directory / f"{self.last + 1:020d}.log"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.segments.append((path, self.last))
        self.rolled = time.monotonic()

    def append(self, rows: list[tuple[int, float]]) -> None:
        os.write(self.fd, b"".join(record(seq, ts) for seq, ts in rows))
        self.last = rows[-1][0]
        self.segments[-1] = (self.segments[-1][0], self.last)

    def ack(self, seq: int) -> None:
        self.acked = seq
        while len(self.segments) > 1 and self.segments[0][1] <= seq:
            os.unlink(self.segments.pop(0)[0])

    def tick(self, now: float) -> None:
        if now - self.rolled >= self.SEGMENT_SECONDS:
            self._roll()
            self.ack(self.acked)
        if now >= self.next_sync:
            self.next_sync = now + self.sync_interval
            if self.last > max(self.acked, self.synced):
                os.fdatasync(self.fd)
                self.synced = self.last


class RamJournal:
    def __init__(self, directory: Path, sync_interval: float):
        self.ram = tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="bench-journal-")
        self.fd = os.open(directory / "segment.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                          0o600)
        self.sync_interval = sync_interval
        self.pending: list[bytes] = []  # (seq, record) not yet on the card
        self.acked = 0
        self.next_sync = time.monotonic() + sync_interval

    def append(self, rows: list[tuple[int, float]]) -> None:
        records = [(seq, record(seq, ts)) for seq, ts in rows]
        os.write(self.ram.fileno(), b"".join(r for _, r in records))
        self.pending += records

    def ack(self, seq: int) -> None:
        self.acked = seq

    def tick(self, now: float) -> None:
        if now >= self.next_sync:
            self.next_sync = now + self.sync_interval
            unacked = [r for seq, r in self.pending if seq > self.acked]
            if unacked:
                os.write(self.fd, b"".join(unacked))
                os.fdatasync(self.fd)
            self.pending.clear()
            os.ftruncate(self.ram.fileno(), 0)
            os.lseek(self.ram.fileno(), 0, os.SEEK_SET)


CANDIDATES = {"sqlite-3e8d824": SqliteBaseline, "sqlite-tuned": SqliteTuned,
              "log-on-disk": LogOnDisk, "ram-journal": RamJournal}


def sectors(device: str) -> int:
    return int(Path(f"/sys/block/{device}/stat").read_text().split()[6])


def simulate(candidate: str, pattern: str, directory: Path, device: str, warmup: float,
             seconds: float, sync_interval: float) -> None:
    """Runs in its own process; after ``warmup`` s, measures for ``seconds`` and prints
    `readings write_bytes block_bytes`."""
    store = CANDIDATES[candidate](directory, sync_interval)
    per_tick, period = (4, 0.5) if pattern == "connected" else (1, 1.0)
    seq = 0
    start = time.monotonic()
    measuring = False
    next_tick = start
    while time.monotonic() - start < warmup + seconds:
        if not measuring and time.monotonic() - start >= warmup:
            measuring, first = True, seq
            io = io_counters(os.getpid())
            before, block = io["write_bytes"] - io["cancelled_write_bytes"], sectors(device)
        rows = [(seq + i + 1, time.time()) for i in range(per_tick)]
        seq += per_tick
        store.append(rows)
        if pattern == "connected":
            time.sleep(0.005)
            store.ack(seq)
        store.tick(time.monotonic())
        next_tick += period
        time.sleep(max(0.0, next_tick - time.monotonic()))
    io = io_counters(os.getpid())
    print(seq - first, io["write_bytes"] - io["cancelled_write_bytes"] - before,
          (sectors(device) - block) * 512, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--warmup", type=float, default=40.0,
                   help="seconds left out first (longer than the kernel's 30 s write-back)")
    p.add_argument("--sync-interval", type=float, default=60.0)
    p.add_argument("--simulate", nargs=4, metavar=("CANDIDATE", "PATTERN", "DIR", "DEVICE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.simulate:
        name, pattern, directory, device = args.simulate
        simulate(name, pattern, Path(directory), device, args.warmup, args.seconds,
                 args.sync_interval)
        return
    own = 24 + len("".join(ROW[:2]) + ROW[3])
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as tmp:
        runs = []
        try:
            for pattern in ("connected", "outage"):
                for name in CANDIDATES:
                    i = len(runs)
                    disk = LoopDisk(Path(tmp) / f"{i}.img", Path(tmp) / f"mnt-{i}", 64)
                    proc = subprocess.Popen(
                        [sys.executable, __file__, "--simulate", name, pattern,
                         str(disk.mountpoint), disk.device, "--seconds", str(args.seconds),
                         "--warmup", str(args.warmup), "--sync-interval",
                         str(args.sync_interval)], stdout=subprocess.PIPE, text=True)
                    runs.append((pattern, name, disk, proc))
            print(f"{args.seconds:g} s each after {args.warmup:g} s, sync interval "
                  f"{args.sync_interval:g} s, all at once; a reading's own bytes: {own}")
            print(f"  {'pattern':<10} {'candidate':<16} {'readings':>9} {'process B/reading':>18}"
                  f" {'block B/reading':>16} {'block MB/day':>13}")
            for pattern, name, _, proc in runs:
                readings, written, block = map(int, proc.communicate()[0].split())
                print(f"  {pattern:<10} {name:<16} {readings:>9} {written / readings:>18,.0f}"
                      f" {block / readings:>16,.0f} {block / args.seconds * 86400 / 1e6:>13,.1f}")
        finally:
            for *_, disk, proc in runs:
                if proc.poll() is None:
                    proc.kill()
                disk.close()


if __name__ == "__main__":
    main()
