"""The agent's store-and-forward buffer: a journal in RAM, a log on the card.

A reading gets its (epoch, seq) when the buffer accepts it, and leaves only
when the collector has acknowledged it, or when it is the oldest and the
buffer is past `max_readings` or the disk is full (then it is counted as
dropped). Each kind of failure has its own store:

- The journal, a file in RAM (systemd's RuntimeDirectory, else /dev/shm): every
  accepted reading and every ack is appended to it before the call returns,
  so an agent that is killed (kill -9, a crash, the watchdog) finds it all on
  restart. It costs the SD card nothing.
- The log, append-only segment files on the card in the directory
  `buffer.path`: the readings still unacknowledged `sync_interval` seconds
  after they were accepted (or a page's worth of them, whichever comes
  first) are appended to it in one write, then fdatasync'd. A power cut
  empties RAM, so it loses at most the unacknowledged readings of the last
  `sync_interval` seconds. While the collector acknowledges readings within
  milliseconds, nothing is written to the card at all.

Each log write ends with a STATE record (epoch, last seq, the floor below
which readings are forgotten, the dropped count): a write whose STATE did not
reach the card counts for nothing. Each sync starts a new journal file, so the
journal holds only what came after the last sync; on open, the journals of
syncs the log holds are deleted and the others replayed on top of the log.
Segments whose readings are all acknowledged are deleted; the journal is
folded into the log when it grows past JOURNAL_BYTES, so its RAM is bounded.

The files' layout and records, and how they replay: agent/buffer_files.py.

Thread use: append(), recent(), acknowledged() and the properties are quick
(memory and the RAM journal) and run on the event loop; sync(), after(),
reconcile(), tidy(), oldest_age() and close() may touch the card and run on
the agent's buffer thread. One lock guards the state; the card is never
written or fsync'd while holding it.
"""

from __future__ import annotations

import bisect
import errno
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

from sensor_edge.config.model import DEFAULT_SYNC_INTERVAL
from sensor_edge.contract.protocol import Reading
from sensor_edge.agent.sensors import Sample
from sensor_edge.agent.buffer_files import (
    DROPPED,
    FLOOR,
    JOURNAL,
    SHIFT,
    META,
    RESERVE,
    ROW_FORMAT,
    Run,
    SEQ_FORMAT,
    SHIFT_FORMAT,
    State,
    decode_readings,
    encode_runs,
    fsync_directory,
    journal_directory,
    journal_path,
    migrate_sqlite,
    own_private_directory,
    read_meta,
    readings_record,
    record,
    records,
    replay_journals,
    replay_log,
    segment_path,
    seq_of,
    sibling,
    state_record,
    write_all,
)

log = logging.getLogger("sensor_edge.agent.buffer")

# A segment file is closed and a new one begun past this size; a segment whose
# readings are all acknowledged is deleted. On a full disk, whole segments go.
SEGMENT_BYTES = 64 * 1024
# A sync is due this long (at most a tenth of sync_interval) before sync_interval runs out.
SYNC_MARGIN = 1.0
# A page's worth of unsynced readings is synced at once: writes then fill whole pages.
SYNC_BYTES = 4096
# Past this, the journal is folded into the log (a sync) even with nothing unacknowledged.
JOURNAL_BYTES = 1024 * 1024
# Unsynced readings held in RAM while the card takes none (a full disk with nothing
# left to drop, a failing card); past it the oldest are dropped and counted.
MAX_UNSYNCED = 10_000
# On a full disk: segments dropped to make room before a sync gives up.
FULL_RETRIES = 10
# Room the buffer sets aside on its file system: when the disk fills up, it is
# given up, and the log lives on in it (and in its own segments) as a ring.
RESERVE_BYTES = 4 * SEGMENT_BYTES
# How often to try to take the reserve back after the disk filled up.
RESERVE_RETRY_SECONDS = 10.0
# While the disk stays full, one warning about dropped readings per this many seconds.
DROP_LOG_EVERY = 60.0
# Set by tests: after each sync the log is copied here (a power cut's view of the card).
SNAPSHOTS_ENV = "SENSOR_EDGE_BUFFER_SNAPSHOTS"

def machine_identity(root: str = "/") -> str | None:
    """What names this machine: systemd's machine id and the board's serial number.

    A buffer remembers the machine that made it; an SD card cloned into another
    Pi carries the buffer (and often /etc/machine-id) along, so the board's own
    serial counts too. None when neither can be read.
    """
    parts = []
    for name in ("etc/machine-id", "sys/firmware/devicetree/base/serial-number"):
        try:
            with open(os.path.join(root, name), "rb") as f:
                parts.append(f.read(256).strip(b"\0\n ").decode("ascii", "replace"))
        except OSError:
            parts.append("")
    return "/".join(parts) if any(parts) else None


def _disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


class Buffer:
    def __init__(self, path: str, max_readings: int, machine: str | None = None, *,
                 sync_interval: float = DEFAULT_SYNC_INTERVAL, runtime: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """Open (or create) the buffer in the directory ``path``.

        ``machine`` (see :func:`machine_identity`): a buffer made on another
        machine is given a new epoch, so two Pis booted from copies of one card
        never share an (agent, epoch); the readings it holds are kept, renumbered.
        ``runtime``: the RAM directory for the journal (see :func:`journal_directory`).
        ``clock``: monotonic seconds, for when a sync is due.
        """
        self.path = path
        self.directory = Path(path)
        self.max_readings = max_readings
        self.sync_interval = sync_interval
        self._clock = clock
        self._lock = threading.Lock()
        if self.directory.is_file():
            migrate_sqlite(self.directory)
        elif not self.directory.exists() and sibling(self.directory, ".migrating").is_dir():
            # A migration was cut short between its last two steps.
            os.rename(sibling(self.directory, ".migrating"), self.directory)
        sibling(self.directory, ".sqlite-old").unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.journals = journal_directory(path, runtime)
        if not own_private_directory(self.journals):
            log.warning("cannot keep the buffer's journal in RAM (%s is not a private "
                        "directory of ours): it goes on the card, which then takes a write "
                        "for every reading", self.journals)
            self.journals = self.directory / "journal"
            self.journals.mkdir(mode=0o700, exist_ok=True)

        meta = read_meta(self.directory)
        state = State()
        replay_log(self.directory, state)
        # The log's STATE records say which epoch; the meta file too, for the
        # moments a full disk leaves the log without one.
        created = state.epoch is None and "epoch" not in meta
        if created:
            state = State(epoch=uuid.uuid4().hex)
            self._write_meta({"epoch": state.epoch})
        elif state.epoch is None:
            state.epoch = meta["epoch"]
        replay_journals(self.journals, state, remove_stale=True)
        self._state = state
        self.epoch: str = state.epoch
        self._durable = (state.gen, state.last_seq, state.floor, state.dropped, state.epoch)
        self._shifts: list[tuple[int, int]] = []  # made since the last sync
        # When readings were accepted: (last seq of an append, clock).
        self._accepted_at: deque[tuple[int, float]] = deque()
        now = clock()
        if state.pending:
            self._accepted_at.append((state.last_seq, now))
        self._gen = max([state.gen, *state.journals])
        if not state.journals:
            state.journals.append(self._gen)
        self._journal_fd = -1
        self._journal_bytes = 0
        self._log_fd = -1
        self._log_size = 0
        self._log_segment = state.segments[-1] if state.segments else 0
        self._capped = False  # the disk filled up: the log stays within _cap bytes
        self._cap = 0
        self._sizes = {n: segment_path(self.directory, n).stat().st_size
                       for n in state.segments}
        self._reserve_retry_at = 0.0
        self._drop_logged_at = -DROP_LOG_EVERY
        self.after_sync: Callable[[], None] | None = None  # a test hook
        if os.environ.get(SNAPSHOTS_ENV):
            self.after_sync = self._snapshot

        if created:
            log.info("new buffer %s, epoch %s", path, self.epoch)
        elif machine is not None and meta.get("machine") not in (None, machine):
            old = self.epoch
            self._new_epoch()
            log.warning("buffer %s was made on another machine (%s, this is %s): a copied SD "
                        "card? Starting a new epoch %s (was %s) so its seqs cannot collide "
                        "with the other machine's", path, meta["machine"], machine, self.epoch,
                        old)
        self._open_journal(state.journals[-1])
        if created or self._durable[4] != self.epoch:
            if not self.sync(force=True):
                raise OSError(errno.EIO, f"cannot write the buffer's first record in {path}")
        if (machine is not None and meta.get("machine") != machine) or \
                meta.get("epoch") != self.epoch:
            self._write_meta({"epoch": self.epoch, "machine": machine or meta.get("machine")})
        self._take_reserve()
        # Seqs from here on were assigned in this run, before any collector
        # confirmed them; see reconcile().
        self._unconfirmed_from: int | None = self.last_seq + 1

    # --- state ----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._state.last_seq

    @property
    def dropped(self) -> int:
        return self._state.dropped

    @property
    def depth(self) -> int:
        """Readings waiting for an ack."""
        return self._state.last_seq - self._state.floor

    def _oldest_seq(self) -> int | None:
        return self._state.floor + 1 if self.depth else None

    # --- the journal (RAM) --------------------------------------------------------

    def _open_journal(self, gen: int) -> None:
        path = journal_path(self.journals, gen)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(fd).st_size
        if size == 0:
            header = record(JOURNAL, SEQ_FORMAT.pack(gen) + self.epoch.encode())
            try:
                write_all(fd, header)
            except OSError:
                os.close(fd)
                raise
            size = len(header)
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
        self._journal_fd, self._journal_bytes = fd, size

    def _journal(self, data: bytes) -> None:
        write_all(self._journal_fd, data)
        self._journal_bytes += len(data)

    def _journal_quietly(self, data: bytes) -> None:
        """For what a restart can learn again (an ack, a renumbering: from the next welcome)."""
        try:
            self._journal(data)
        except OSError as e:
            log.debug("cannot write the buffer's journal: %s", e)

    # --- the quick path (event loop) ---------------------------------------------

    def append(self, samples: list[Sample]) -> int:
        """Accept samples as the next seqs; drop the oldest past the bound. Returns last seq.

        When it returns, the samples are in the journal: a killed agent keeps them.
        """
        if not samples:
            return self.last_seq
        with self._lock:
            state = self._state
            first = state.last_seq + 1
            last = first + len(samples) - 1
            data = readings_record(first, samples)
            full = last - state.floor > self.max_readings
            floor = max(state.floor, last - self.max_readings)
            unsynced = len(state.pending) + len(samples) - MAX_UNSYNCED
            if unsynced > 0:
                # RAM's bound (the card takes nothing): the oldest go, on the card or not.
                floor = max(floor, state.pending[unsynced - 1].seq
                            if unsynced <= len(state.pending) else first + unsynced
                            - len(state.pending) - 1)
            over = floor - state.floor
            if over > 0:
                data += (record(FLOOR, SEQ_FORMAT.pack(floor)) +
                         record(DROPPED, SEQ_FORMAT.pack(state.dropped + over)))
            self._journal(data)
            state.pending.extend(Reading._make((first + i, *s)) for i, s in enumerate(samples))
            state.last_seq = last
            self._accepted_at.append((last, self._clock()))
            if over > 0:
                state.dropped += over
                state.forget(floor)
                if full:
                    self._log_drop("buffer full (%d readings): dropped the %d oldest, %d "
                                   "dropped in all", self.max_readings, over, state.dropped)
                else:
                    self._log_drop("%d readings wait in RAM for the card, which takes none: "
                                   "dropped the %d oldest, %d dropped in all", MAX_UNSYNCED,
                                   over, state.dropped)
        return last

    def recent(self, seq: int, limit: int) -> list[Reading] | None:
        """Up to ``limit`` readings above ``seq`` if all are in RAM; None if the card is needed."""
        with self._lock:
            state = self._state
            if state.runs and state.runs[-1].last > seq:
                return None
            start = bisect.bisect_right(state.pending, seq, key=seq_of)
            return state.pending[start:start + limit]

    def acknowledged(self, seq: int) -> None:
        """The collector holds everything up to ``seq``: forget it."""
        with self._lock:
            if seq <= self._state.floor:
                return
            self._journal_quietly(record(FLOOR, SEQ_FORMAT.pack(seq)))
            self._state.forget(seq)

    def sync_due(self) -> float | None:
        """The clock time by which sync() should run (now or past: at once); None: no need."""
        with self._lock:
            state = self._state
            if self._journal_bytes >= JOURNAL_BYTES or self._shifts:
                return self._clock()
            if not state.pending:
                return None
            if len(state.pending) * ROW_FORMAT.size >= SYNC_BYTES:
                return self._clock()
            first = state.pending[0].seq
            while self._accepted_at and self._accepted_at[0][0] < first:
                self._accepted_at.popleft()
            accepted = self._accepted_at[0][1] if self._accepted_at else self._clock()
            # Due a little early: the write itself takes time (a slow card, a busy machine).
            return accepted + self.sync_interval - min(SYNC_MARGIN, self.sync_interval / 10)

    @property
    def has_dead_segments(self) -> bool:
        """Segments whose readings are all acknowledged: tidy() deletes them."""
        state = self._state
        oldest_needed = state.runs[0].segment if state.runs else self._log_segment
        return bool(state.segments) and state.segments[0] < oldest_needed

    # --- the card (buffer thread) -------------------------------------------------

    def sync(self, force: bool = False) -> bool:
        """Write what is in RAM only to the card and fdatasync it. False: it could not.

        Writes the unacknowledged readings the journal alone holds, the renumbering
        done since the last sync and the state; then the journals before it go.
        Without ``force``, does nothing when the card already holds all that matters.
        """
        with self._lock:
            state = self._state
            if not force and not state.pending and not self._shifts and \
                    self._journal_bytes < JOURNAL_BYTES and \
                    (state.last_seq, state.floor, state.dropped) == self._durable[1:4]:
                return True
            try:
                self._open_journal(self._gen + 1)  # what comes next goes to a new journal
            except OSError as e:
                log.error("cannot start a new journal in %s: %s", self.journals, e)
                return False
            self._gen += 1
            gen = self._gen
            state.journals.append(gen)
            pending = list(state.pending)
            shifts = list(self._shifts)
            last = state.last_seq  # the card will hold all up to here but the acknowledged
        shift_records = b"".join(record(SHIFT, SHIFT_FORMAT.pack(*s)) for s in shifts)
        body, runs = encode_runs(pending, len(shift_records))
        for attempt in range(FULL_RETRIES + 1):
            while self._capped and sum(self._sizes.values()) + len(body) > self._cap \
                    and self._drop_oldest():
                pass
            with self._lock:
                durable = (gen, last, min(state.floor, last), state.dropped, self.epoch)
                if pending and pending[0].seq <= state.floor:  # dropped to make room
                    pending = [r for r in pending if r.seq > state.floor]
                    body, runs = encode_runs(pending, len(shift_records))
            try:
                segment, offset = self._append_log(shift_records + body +
                                                   state_record(*durable))
                break
            except OSError as e:
                if not _disk_full(e) or attempt == FULL_RETRIES or not self._make_room():
                    log.error("cannot write the buffer to %s (%s): %d readings wait in RAM",
                              self.path, e.strerror or e, len(state.pending))
                    return False
        with self._lock:
            self._durable = durable
            for where, length, first, count in runs:
                if first + count - 1 > state.floor:
                    state.runs.append(Run(segment, offset + where, length, first, 0, count))
            if pending:
                del state.pending[:bisect.bisect_right(state.pending, pending[-1].seq,
                                                       key=seq_of)]
            del self._shifts[:len(shifts)]
            stale = [g for g in state.journals if g < gen]
            state.journals = [g for g in state.journals if g >= gen]
        for old in stale:
            journal_path(self.journals, old).unlink(missing_ok=True)
        if self._capped and time.monotonic() >= self._reserve_retry_at:
            self._take_reserve()
        if self.after_sync is not None:
            self.after_sync()
        return True

    def _append_log(self, data: bytes) -> tuple[int, int]:
        """Append ``data`` to the newest segment and fdatasync it: (segment, offset)."""
        new = self._log_fd < 0 or self._log_size >= SEGMENT_BYTES
        if new:
            self._new_segment()
        start = self._log_size
        try:
            write_all(self._log_fd, data)
            os.fdatasync(self._log_fd)
            if new:
                fsync_directory(self.directory)  # the new file's name is on the card too
        except OSError:
            try:
                os.ftruncate(self._log_fd, start)  # never leave half a record behind
            except OSError:
                pass
            raise
        self._log_size = start + len(data)
        self._sizes[self._log_segment] = self._log_size
        return self._log_segment, start

    def _new_segment(self) -> None:
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1
        number = self._log_segment + 1
        fd = os.open(segment_path(self.directory, number),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        with self._lock:
            self._state.segments.append(number)
        self._sizes[number] = 0
        self._log_fd, self._log_size, self._log_segment = fd, 0, number

    def _make_room(self) -> bool:
        """The disk is full: give up the reserve, else drop the oldest readings. False: none."""
        if self._release_reserve():
            return True
        return self._drop_oldest()

    def _drop_oldest(self) -> bool:
        """Drop the oldest segment and its readings; with none left, the oldest half of the
        readings only RAM holds, so that what is left fits. False: nothing to drop."""
        with self._lock:
            state = self._state
            number = None
            if state.segments:
                number = state.segments.pop(0)
                held = [r for r in state.runs if r.segment == number]
                upto = held[-1].last if held else state.floor
            elif state.pending:
                upto = state.pending[(len(state.pending) - 1) // 2].seq
            else:
                return False
            over = max(0, upto - state.floor)
            if over:
                self._journal_quietly(record(FLOOR, SEQ_FORMAT.pack(upto)) +
                                      record(DROPPED, SEQ_FORMAT.pack(state.dropped + over)))
                state.dropped += over
                state.forget(upto)
        if number is not None:
            if number == self._log_segment and self._log_fd >= 0:
                os.close(self._log_fd)
                self._log_fd = -1
            segment_path(self.directory, number).unlink(missing_ok=True)
            self._sizes.pop(number, None)
        if over:
            self._log_drop("disk full: dropped the %d oldest readings to make room, %d "
                           "dropped in all", over, state.dropped)
        return True

    def _log_drop(self, message: str, *args: object) -> None:
        """A warning, but one a minute at most: a full buffer or disk drops again and again."""
        now = time.monotonic()
        quiet = now - self._drop_logged_at < DROP_LOG_EVERY
        if not quiet:
            self._drop_logged_at = now
        log.log(logging.DEBUG if quiet else logging.WARNING, message, *args)

    def _take_reserve(self) -> None:
        """Set aside RESERVE_BYTES on the buffer's file system, if not done already."""
        self._reserve_retry_at = time.monotonic() + RESERVE_RETRY_SECONDS
        reserve = self.directory / RESERVE
        if reserve.exists():
            return
        try:
            fd = os.open(reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as e:
            reserve.unlink(missing_ok=True)
            if not _disk_full(e):
                log.warning("cannot set aside %d bytes next to the buffer: %s", RESERVE_BYTES,
                            e.strerror or e)
            return
        log.debug("set aside %s (%d bytes) for a full disk", reserve, RESERVE_BYTES)
        if self._capped:
            self._capped = False
            log.warning("the disk has room again: the buffer may grow (%d dropped in all)",
                        self.dropped)

    def _release_reserve(self) -> bool:
        try:
            (self.directory / RESERVE).unlink()
        except FileNotFoundError:
            return False
        # The log keeps the room it has (at least two segments: the reserve's room
        # holds them); the oldest readings make room for new ones.
        self._capped = True
        self._cap = max(sum(self._sizes.values()), 2 * SEGMENT_BYTES)
        self._reserve_retry_at = time.monotonic() + RESERVE_RETRY_SECONDS
        log.warning("disk full: released the %d bytes set aside next to the buffer; the "
                    "buffer stays at %d bytes, the oldest readings making room for new ones "
                    "while the disk stays full", RESERVE_BYTES, self._cap)
        return True

    def tidy(self) -> None:
        """Delete the segments whose readings are all acknowledged."""
        with self._lock:
            state = self._state
            oldest_needed = state.runs[0].segment if state.runs else self._log_segment
            dead = [n for n in state.segments if n < oldest_needed]
            state.segments = [n for n in state.segments if n >= oldest_needed]
        for number in dead:
            segment_path(self.directory, number).unlink(missing_ok=True)
            self._sizes.pop(number, None)

    def after(self, seq: int, limit: int) -> list[Reading]:
        """Up to ``limit`` readings with seqs above ``seq``, in order (may read the card)."""
        with self._lock:
            state = self._state
            seq = max(seq, state.floor)
            runs = [r for r in state.runs if r.last > seq]
            pending = state.pending
        out: list[Reading] = []
        for run in runs:
            if len(out) >= limit:
                return out
            out += self._read_run(run, seq + 1, limit - len(out))
        start = bisect.bisect_right(pending, seq, key=seq_of)
        return out + pending[start:start + limit - len(out)]

    def _read_run(self, run: Run, start: int, limit: int) -> list[Reading]:
        with open(segment_path(self.directory, run.segment), "rb") as f:
            f.seek(run.offset)
            data = f.read(run.length)
        (_, _, _, payload), = records(data)
        _, rows = decode_readings(payload)
        begin = max(0, start - run.first)
        end = min(run.count, begin + limit)
        return [Reading._make((run.first + i, *rows[run.skip + i])) for i in range(begin, end)]

    def oldest_age(self) -> float | None:
        """Seconds since the oldest waiting reading was read (reads the card if it is there:
        see backlog_on_card)."""
        oldest = self.after(0, 1)
        return None if not oldest else max(0.0, time.time() - oldest[0].ts)

    @property
    def backlog_on_card(self) -> bool:
        """Some waiting readings are on the card only (after() and oldest_age() read it)."""
        return bool(self._state.runs)

    def reconcile(self, acked: int) -> None:
        """Square the buffer with what the collector holds (its `welcome.acked`).

        The collector can only hold seqs this buffer handed out, so `acked` at
        or past the first seq handed out in this run means a power cut took back
        readings the collector had already stored. Seqs handed out since then
        would collide with different data there and be dropped as duplicates:
        move them all past `acked`, keeping their order, before anything is sent.
        """
        with self._lock:
            state = self._state
            start = self._unconfirmed_from
            if start is None:
                # Confirmed once already this run, so this is another store (a collector
                # whose database was replaced?): resend what we hold rather than lose it.
                start = self._oldest_seq() or state.last_seq + 1
                collides = acked > state.last_seq
            else:
                # Nothing from `start` on has been sent to anyone yet, so a collector that
                # holds `start` holds a reading of an earlier run that a power cut took back
                # from us: however few or many new readings we took since, each collides.
                collides = acked >= start
            if collides:
                shift = acked - start + 1
                moved = state.last_seq - start + 1
                self._journal_quietly(record(SHIFT, SHIFT_FORMAT.pack(start, shift)))
                state.shift(start, shift)
                self._shifts.append((start, shift))
                log.warning("the collector already holds seqs up to %d but this buffer's next "
                            "was %d (a power cut?): moved %d new readings past it", acked,
                            start, moved)
            self._unconfirmed_from = None
        self.acknowledged(acked)

    def _new_epoch(self) -> None:
        """Give the buffer a new epoch; what it holds becomes seqs 1..n of it."""
        state = self._state
        self.epoch = state.epoch = uuid.uuid4().hex
        if state.floor:
            # Recorded by the next sync, which is forced (the card holds the old epoch).
            self._shifts.append((state.floor + 1, -state.floor))
            state.shift(state.floor + 1, -state.floor)
            state.floor = 0

    def _write_meta(self, meta: dict) -> None:
        temporary = self.directory / (META + ".new")
        with open(temporary, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.directory / META)
        fsync_directory(self.directory)

    def _snapshot(self) -> None:
        """The test hook: copy the log as it is now, i.e. what a power cut would leave."""
        target = Path(os.environ[SNAPSHOTS_ENV]) / f"{self._durable[0]:010d}"
        partial = target.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(self.directory, partial, ignore=shutil.ignore_patterns("journal"))
        os.rename(partial, target)

    def close(self) -> None:
        """Write everything to the card and drop the journal (or keep it if the card says no)."""
        if self._journal_fd < 0:
            return
        synced = self.sync()
        if synced:
            self.tidy()
        os.close(self._journal_fd)
        self._journal_fd = -1
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1
        if synced:
            for gen in self._state.journals:
                journal_path(self.journals, gen).unlink(missing_ok=True)
            try:
                self.journals.rmdir()
            except OSError:
                pass
        else:
            log.error("%d readings could not be written to %s; they stay in %s until the "
                      "machine restarts", len(self._state.pending), self.path, self.journals)


