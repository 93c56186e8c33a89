"""The agent buffer's files: where they live, their records, how they replay.

Two stores hold the buffer (agent/buffer.py says why): append-only segment
files on the card, in the directory `buffer.path` (NNNNNNNNNN.log, with a
`meta` file naming the epoch and the machine), and journal files in RAM
(journal-GGGGGGGGGG, one per sync generation). Both are sequences of records:
u32 body length, u32 CRC-32 of the body, body; the body's first byte says
what it is. A torn or corrupt record ends its file.

Replaying the log folds each sync's records into a state once its closing
STATE record is read; replaying the journals then adds what came after the
log's last sync. Nothing here decides anything: the buffer does.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sensor_edge.contract.protocol import Reading
from sensor_edge.agent.sensors import Sample

log = logging.getLogger("sensor_edge.agent.buffer")

# Rows in one READINGS record on the card at most (a read decodes one whole record).
RECORD_ROWS = 1000
META = "meta"
RESERVE = "reserve"
SEGMENT_SUFFIX = ".log"
JOURNAL_PREFIX = "journal-"
SQLITE_MAGIC = b"SQLite format 3\0"


# --- records ------------------------------------------------------------------------

_HEAD = struct.Struct("<II")  # body length, crc32(body)
SEQ_FORMAT = struct.Struct("<Q")
SHIFT_FORMAT = struct.Struct("<Qq")  # seqs from this one on move by that much
STATE_FORMAT = struct.Struct("<QQQQ")  # generation, last seq, floor, dropped; then the epoch
_RUN = struct.Struct("<QH")  # first seq, key count; then the keys, then the rows
_NAME = struct.Struct("<H")
ROW_FORMAT = struct.Struct("<Hdd")  # key, value, ts

JOURNAL, READINGS, FLOOR, DROPPED, SHIFT, STATE = range(1, 7)


def record(kind: int, payload: bytes) -> bytes:
    body = bytes((kind,)) + payload
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def readings_record(first: int, samples: Iterable[Sample]) -> bytes:
    """Consecutive seqs from ``first``; each (sensor, metric, unit) is written once."""
    keys: dict[tuple[str, str, str], int] = {}
    rows = []
    for sensor, metric, value, unit, ts in samples:
        key = keys.setdefault((sensor, metric, unit), len(keys))
        rows.append(ROW_FORMAT.pack(key, value, ts))
    names = []
    for key in keys:
        for name in key:
            encoded = name.encode()
            names.append(_NAME.pack(len(encoded)) + encoded)
    return record(READINGS, _RUN.pack(first, len(keys)) + b"".join(names) + b"".join(rows))


def decode_readings(payload: bytes) -> tuple[int, list[Sample]]:
    """A READINGS record's first seq and its samples."""
    first, count = _RUN.unpack_from(payload)
    at = _RUN.size
    keys = []
    for _ in range(count):
        key = []
        for _ in range(3):
            (size,) = _NAME.unpack_from(payload, at)
            key.append(payload[at + 2:at + 2 + size].decode())
            at += 2 + size
        keys.append(key)
    rows = [(*keys[k][:2], value, keys[k][2], ts)
            for k, value, ts in ROW_FORMAT.iter_unpack(payload[at:])]
    return first, rows


def state_record(gen: int, last: int, floor: int, dropped: int, epoch: str) -> bytes:
    return record(STATE, STATE_FORMAT.pack(gen, last, floor, dropped) + epoch.encode())


def records(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(offset, length, kind, payload) of each intact record; stops at the first bad one."""
    at = 0
    while at + _HEAD.size <= len(data):
        size, crc = _HEAD.unpack_from(data, at)
        body = data[at + _HEAD.size:at + _HEAD.size + size]
        if size == 0 or len(body) < size or zlib.crc32(body) != crc:
            return
        yield at, _HEAD.size + size, body[0], body[1:]
        at += _HEAD.size + size


# --- what the files hold --------------------------------------------------------------


@dataclass
class Run:
    """Readings on the card: rows skip..skip+count of the READINGS record at offset."""

    segment: int
    offset: int
    length: int
    first: int  # the seq of row `skip`
    skip: int
    count: int

    @property
    def last(self) -> int:
        return self.first + self.count - 1


@dataclass
class State:
    """What replaying the log and the journals gives."""

    epoch: str | None = None
    gen: int = 0  # of the last sync the log holds
    last_seq: int = 0
    floor: int = 0  # every seq up to here is forgotten: acknowledged or dropped
    dropped: int = 0
    runs: list[Run] = field(default_factory=list)  # on the card, in seq order
    pending: list[Reading] = field(default_factory=list)  # in RAM only, in seq order
    segments: list[int] = field(default_factory=list)
    journals: list[int] = field(default_factory=list)  # generations of the live journals

    def shift(self, start: int, by: int) -> None:
        """Move every seq from ``start`` on by ``by``."""
        runs: list[Run] = []
        for run in self.runs:
            if run.last < start:
                runs.append(run)
            elif run.first >= start:
                runs.append(Run(run.segment, run.offset, run.length, run.first + by,
                                 run.skip, run.count))
            else:  # split: the part before `start` stays
                head = start - run.first
                runs.append(Run(run.segment, run.offset, run.length, run.first, run.skip,
                                 head))
                runs.append(Run(run.segment, run.offset, run.length, start + by,
                                 run.skip + head, run.count - head))
        self.runs = runs
        self.pending = [r if r.seq < start else r._replace(seq=r.seq + by)
                        for r in self.pending]
        self.last_seq += by

    def forget(self, upto: int) -> None:
        """Everything up to ``upto`` is acknowledged or dropped."""
        if upto > self.floor:
            self.set_floor(upto)

    def set_floor(self, floor: int) -> None:
        self.floor = floor
        if self.runs and self.runs[0].last <= floor:
            del self.runs[:bisect.bisect_right(self.runs, floor, key=last_of)]
        if self.pending and self.pending[0].seq <= floor:
            del self.pending[:bisect.bisect_right(self.pending, floor, key=seq_of)]

    def apply(self, gen: int, last: int, floor: int, dropped: int, epoch: str) -> None:
        """A STATE record: what the buffer was when it was written."""
        self.gen, self.last_seq, self.dropped, self.epoch = gen, last, dropped, epoch
        self.set_floor(floor)


def seq_of(reading: Reading) -> int:
    return reading.seq


def last_of(run: Run) -> int:
    return run.last


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:010d}{SEGMENT_SUFFIX}"


def journal_path(directory: Path, gen: int) -> Path:
    return directory / f"{JOURNAL_PREFIX}{gen:010d}"


def _numbered(directory: Path, prefix: str, suffix: str) -> list[int]:
    numbers = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(prefix) and name.endswith(suffix):
            digits = name[len(prefix):len(name) - len(suffix)]
            if digits.isdigit():
                numbers.append(int(digits))
    return sorted(numbers)


def replay_log(directory: Path, state: State, *, quiet: bool = False) -> None:
    """Fold the log into ``state``: the records of each sync count once its STATE is read."""
    for number in _numbered(directory, "", SEGMENT_SUFFIX):
        try:
            data = segment_path(directory, number).read_bytes()
        except FileNotFoundError:
            continue  # deleted meanwhile (inspect() reads a live buffer)
        state.segments.append(number)
        uncommitted: list[tuple[int, int, int, bytes]] = []
        end = 0
        for offset, length, kind, payload in records(data):
            end = offset + length
            if kind != STATE:
                uncommitted.append((offset, length, kind, payload))
                continue
            for at, size, k, body in uncommitted:
                if k == SHIFT:
                    state.shift(*SHIFT_FORMAT.unpack(body))
                elif k == READINGS:
                    first, rows = decode_readings(body)
                    if rows:
                        state.runs.append(Run(number, at, size, first, 0, len(rows)))
            uncommitted.clear()
            state.apply(*STATE_FORMAT.unpack_from(payload), payload[STATE_FORMAT.size:].decode())
        if end < len(data) and not quiet:
            log.warning("buffer segment %s ends with %d bytes of an unfinished write (a power "
                        "cut?): ignored", segment_path(directory, number), len(data) - end)


def replay_journals(directory: Path, state: State, *, remove_stale: bool) -> None:
    """Fold the journals newer than the log's last sync into ``state``."""
    for gen in _numbered(directory, JOURNAL_PREFIX, ""):
        path = journal_path(directory, gen)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # removed by a sync meanwhile (inspect() reads a live buffer)
        entries = iter(records(data))
        header = next(entries, None)
        fresh = (header is not None and header[2] == JOURNAL and
                 header[3][SEQ_FORMAT.size:].decode() == state.epoch and gen >= state.gen)
        if not fresh:
            if remove_stale:
                path.unlink(missing_ok=True)
            continue
        state.journals.append(gen)
        for _, _, kind, payload in entries:
            if kind == READINGS:
                first, rows = decode_readings(payload)
                for i, row in enumerate(rows):
                    if first + i > state.last_seq:
                        state.pending.append(Reading._make((first + i, *row)))
                state.last_seq = max(state.last_seq, first + len(rows) - 1)
            elif kind == FLOOR:
                state.forget(SEQ_FORMAT.unpack(payload)[0])
            elif kind == DROPPED:
                state.dropped = SEQ_FORMAT.unpack(payload)[0]
            elif kind == SHIFT:
                state.shift(*SHIFT_FORMAT.unpack(payload))


def journal_directory(path: str, runtime: str | None = None) -> Path:
    """Where the RAM journal of the buffer at ``path`` lives.

    ``runtime`` (default: $RUNTIME_DIRECTORY, which systemd sets from the
    unit's RuntimeDirectory=, kept over restarts) or else /dev/shm; both are
    tmpfs. Named after the buffer's path, so two buffers never share one.
    """
    runtime = runtime or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    key = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    if runtime:
        return Path(runtime) / f"journal-{key}"
    return Path("/dev/shm") / f"sensor-agent-{os.getuid()}-{key}"


def own_private_directory(directory: Path) -> bool:
    """Make ``directory`` (mode 0700); False unless it is ours alone, not a symlink."""
    try:
        directory.mkdir(mode=0o700, parents=False, exist_ok=True)
        st = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


@dataclass(frozen=True)
class BufferState:
    """A buffer as its files show it (see :func:`inspect`)."""

    epoch: str | None
    last_seq: int
    floor: int
    dropped: int

    @property
    def depth(self) -> int:
        return self.last_seq - self.floor

    @property
    def oldest(self) -> int | None:
        """The oldest seq waiting for an ack."""
        return self.floor + 1 if self.depth else None


def inspect(path: str, runtime: str | None = None) -> BufferState:
    """Read a buffer's files without changing them (a running agent's too)."""
    state = State()
    replay_log(Path(path), state, quiet=True)
    if state.epoch is None:
        state.epoch = read_meta(Path(path)).get("epoch")
    replay_journals(journal_directory(path, runtime), state, remove_stale=False)
    return BufferState(state.epoch, state.last_seq, state.floor, state.dropped)


def read_meta(directory: Path) -> dict:
    """The buffer's meta file: {"epoch", "machine"}."""
    try:
        return json.loads((directory / META).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def encode_runs(readings: list[Reading], at: int) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """READINGS records for ``readings``, and where each run lands: (offset from the start
    of the write, given that ``at`` bytes come before them; length; first seq; count)."""
    encoded, runs = [], []
    for first, rows in _consecutive(readings):
        data = readings_record(first, rows)
        runs.append((at, len(data), first, len(rows)))
        encoded.append(data)
        at += len(data)
    return b"".join(encoded), runs


def _consecutive(readings: list[Reading]) -> Iterator[tuple[int, list[Sample]]]:
    """Runs of consecutive seqs, at most RECORD_ROWS each: (first seq, their samples)."""
    run: list[Sample] = []
    first = expected = 0
    for reading in readings:
        if run and (reading.seq != expected or len(run) >= RECORD_ROWS):
            yield first, run
            run = []
        if not run:
            first = reading.seq
        run.append(reading[1:])
        expected = reading.seq + 1
    if run:
        yield first, run


def migrate_sqlite(path: Path) -> None:
    """Turn the SQLite buffer of earlier releases at ``path`` into a log directory.

    Its epoch, seqs, dropped count and machine are kept. Crash-safe: the new
    directory is complete before it takes the old file's place.
    """
    with open(path, "rb") as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise OSError(errno.EEXIST, f"{path} is a file, not a buffer directory")
    import sqlite3

    db = sqlite3.connect(path)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        rows = db.execute("SELECT seq, sensor, metric, value, unit, ts FROM readings "
                          "ORDER BY seq").fetchall()
    finally:
        db.close()
    last = int(meta.get("last_seq", 0))
    floor = rows[0][0] - 1 if rows else last
    staging = sibling(path, ".migrating")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    readings = [Reading._make(row) for row in rows]
    body = b"".join(readings_record(first, run) for first, run in _consecutive(readings))
    state = state_record(0, last, floor, int(meta.get("dropped", 0)), meta["epoch"])
    with open(segment_path(staging, 1), "wb") as f:
        f.write(body + state)
        f.flush()
        os.fsync(f.fileno())
    (staging / META).write_text(json.dumps({"epoch": meta["epoch"],
                                            "machine": meta.get("machine")}))
    fsync_directory(staging)
    old = sibling(path, ".sqlite-old")
    os.replace(path, old)
    os.rename(staging, path)
    fsync_directory(path.parent)
    for leftover in (old, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.reserve")):
        leftover.unlink(missing_ok=True)
    log.warning("buffer %s: moved %d readings (epoch %s, up to seq %d) from the SQLite buffer "
                "of earlier releases into the log", path, len(rows), meta["epoch"], last)
