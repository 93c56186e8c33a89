"""Where readings are kept. SQLite is the embedded default.

A storage object is used from one writer thread (the batcher's) and any number
of reader threads (the HTTP API's); every method blocks, so callers run them
off the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, Protocol
from urllib.parse import urlsplit

from sensor_edge.contract.protocol import Reading
from sensor_edge.server.storage.rollups import SeriesQuery

# A stored reading's columns, in the order every row-returning method uses.
READING_COLUMNS = ("agent", "epoch", "seq", "sensor", "metric", "value", "unit", "ts")


@dataclass(frozen=True)
class Batch:
    """One `readings` message, ready to store."""

    agent: str
    epoch: str
    rows: list[Reading]

    def new_rows(self, added: int) -> list[Reading]:
        """The rows a commit stored for the first time, given how many it added.

        Duplicates are resends of a batch's start (an agent resumes after the
        acked seq, in seq order), so the newly stored readings are its tail.
        """
        return self.rows[len(self.rows) - added:] if added > 0 else []


def differing(received: list[Reading], stored: list[Reading]) -> list[tuple[Reading, Reading]]:
    """(stored, received) for each received reading whose seq is stored with other values."""
    by_seq = {row[0]: row for row in stored}
    return [(by_seq[row[0]], row) for row in received
            if row[0] in by_seq and by_seq[row[0]] != row]


@dataclass(frozen=True)
class ReadingQuery:
    agent: str | None = None
    sensor: str | None = None
    metric: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 1000


class Storage(Protocol):
    def store(self, batches: list[Batch], now: float) -> list[int]:
        """Store every batch in one transaction; return how many rows each added."""

    def differing_duplicates(self, batch: Batch) -> list[tuple[Reading, Reading]]:
        """(stored, received) for each reading of ``batch`` already stored with other
        values: the same (agent, epoch, seq) read twice, by two machines. Called
        only for a batch that had duplicates, after its commit."""

    def acked(self, agent: str, epoch: str) -> int:
        """The highest seq stored for this agent and epoch (0 if none)."""

    def newest_window(self, query: ReadingQuery) -> tuple[float, int] | None:
        """Where the newest ``query.limit`` matching readings begin, for :func:`iter_newest`:
        the ts of the oldest of them, and how many matching readings have a ts at
        least that (more than ``limit`` when others share that ts). None when no
        more than ``limit`` readings match."""

    def agents(self) -> list[dict[str, Any]]:
        """Every agent that ever stored a reading: id, last_seen, readings."""

    def iter_readings(self, query: ReadingQuery, chunk: int = 5000) -> Iterator[tuple]:
        """Every reading that matches (``query.limit`` is ignored), oldest first.

        Rows are tuples in :data:`READING_COLUMNS` order, sorted by
        (ts, agent, epoch, seq). Pages of ``chunk`` rows are fetched by keyset
        (``WHERE (ts, agent, epoch, seq) > last row's``, never OFFSET), so memory
        stays flat however many rows match and each page is a short read.
        """

    def delete_older_than(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` readings read (``ts``) and received before
        ``cutoff`` in one short transaction; return how many were deleted (fewer
        than ``limit``: done). Rows stored before received times were kept go by
        ``ts`` alone.

        Called from the writer thread between commits; the per-epoch acked seq
        is kept, so an agent is never asked to resend an expired reading.
        """

    def backfill_rollups(self, limit: int = ...) -> tuple[int, bool]:
        """Roll up the next ``limit`` readings stored before the rollups existed, in
        one short transaction (server/storage/rollup_tables.py); (how many, done)."""

    def rollups_backfilled(self) -> bool:
        """Whether every reading stored before the rollups existed is rolled up."""

    def delete_rollups_older_than(self, width: int, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` ``width``-second buckets that ended by ``cutoff``."""

    def series(self, query: SeriesQuery) -> dict[str, Any]:
        """`/api/series`: ``{"step", "series": [{"agent", "sensor", "metric", "unit",
        "points": [[ts, min, avg, max, count], ...]}]}`` from the source
        :func:`rollups.plan` picks."""

    def rollup_rows(self, query: ReadingQuery, tier: str) -> list[dict[str, Any]]:
        """The newest ``query.limit`` rollups of a tier ("1m", "1h") that match, oldest
        first, as dicts of :data:`rollups.ROLLUP_COLUMNS`."""

    def iter_rollups(self, query: ReadingQuery, tier: str, chunk: int = 5000) -> Iterator[tuple]:
        """Every rollup of a tier that matches (``query.limit`` is ignored), as tuples in
        :data:`rollups.ROLLUP_COLUMNS` order sorted by (ts, agent, sensor, metric)."""

    def alert_states(self) -> list[tuple]:
        """Every stored alert series (server/storage/alert_state.py)."""

    def alert_transition(self, key: tuple[str, str, str, str], old: str, new: str,
                         since: float, value: float | None, notified: bool) -> bool:
        """Compare-and-set an alert series from ``old`` to ``new``; whether this call won."""

    def alert_notified(self, key: tuple[str, str, str, str], state: str, since: float) -> None:
        """Every receiver has that transition's notification."""

    def ha_entity_ids(self) -> list[tuple]:
        """Every Home Assistant id given so far (server/storage/ha_entity_ids.py)."""

    def claim_ha_entity_ids(self, proposals: list[tuple]) -> list[tuple]:
        """Store the proposed ids whose name and ``unique_id`` are both free; the stored
        rows of each proposal's name and ``unique_id`` holder (a lost race: the winner's)."""

    def close(self) -> None: ...


def iter_newest(storage: Storage, query: ReadingQuery, chunk: int = 5000) -> Iterator[tuple]:
    """The newest ``query.limit`` readings that match, oldest first.

    Tuples in :meth:`Storage.iter_readings` order, read page by page like it, so
    memory stays flat however large the limit.
    """
    window = storage.newest_window(query)
    if window is None:
        rows, skip, stop = storage.iter_readings(query, chunk), 0, None
    else:
        start, matching = window
        rows = storage.iter_readings(replace(query, since=start), chunk)
        # Readings that share the window's first ts come in key order: the first
        # of them are the oldest, those past `limit` stay out.
        skip, stop = matching - query.limit, matching
    with closing(rows):
        yield from islice(rows, skip, stop)


def safe_url(url: str) -> str:
    """A storage URL fit for logs and messages: a postgresql:// password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def open_storage(url: str, maintain_rollups: bool = True) -> Storage:
    """The storage a config's `storage` value names: postgresql://... or a SQLite file.

    ``maintain_rollups=False``: for benchmarks only (bench/bench_history.py)."""
    if url.startswith(("postgresql://", "postgres://")):
        from sensor_edge.server.storage.postgres import PostgresStorage

        return PostgresStorage(url, maintain_rollups=maintain_rollups)
    from sensor_edge.server.storage.sqlite import SQLiteStorage

    return SQLiteStorage(url, maintain_rollups=maintain_rollups)
