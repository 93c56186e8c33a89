"""`sensor-collector export`: stream stored readings out as CSV or JSON lines.

Rows come from :meth:`Storage.iter_readings` page by page and are written as
they come, so exporting a year of readings takes as little memory as a day.
The CSV shape is the same as `GET /api/readings.csv`. With ``--tier 1m|1h`` the
rows are the 1-minute or 1-hour rollups instead (:meth:`Storage.iter_rollups`).

A text cell a spreadsheet would run as a formula (a sensor named
``=HYPERLINK(...)``) is neutralised by OWASP's rule for CSV injection: a single
quote before it, and the cell quoted. Numbers are written as numbers, so a
negative value stays -3.5.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import IO, Any

from sensor_edge.server.outputs.formats import csv_lines, jsonl_lines
from sensor_edge.server.storage import READING_COLUMNS, ReadingQuery, open_storage, safe_url
from sensor_edge.server.storage.rollups import RAW, ROLLUP_COLUMNS, TIER_NAMES

FORMATS = ("csv", "jsonl")
# How often the progress line is redrawn.
PROGRESS_EVERY = 0.25


class ExportError(Exception):
    """An operator mistake or an unreadable store: one line, no traceback."""


def parse_time(text: str) -> float:
    """Unix seconds, or ISO 8601 (a date, or a date and time; no offset means UTC)."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ExportError(f"not a time: {text!r}")
        return value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(f"not Unix seconds nor ISO 8601: {text!r} "
                          "(for example 1714557600 or 2024-05-01T10:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class NeutralisedCells:
    """Counts the cells an export neutralised, for one line at the end."""

    EXAMPLES = 3

    def __init__(self) -> None:
        self.cells = 0
        self.texts: set[str] = set()

    def __call__(self, text: str) -> None:
        self.cells += 1
        if len(self.texts) < 10_000:  # distinct texts, bounded
            self.texts.add(text)

    def __str__(self) -> str:
        examples = ", ".join(ascii(t) for t in sorted(self.texts)[:self.EXAMPLES])
        return (f"{self.cells} cells ({len(self.texts)} distinct texts, e.g. {examples}) began "
                "with =, +, -, @, tab or CR and were written with a leading ' so that no "
                "spreadsheet runs them as formulas")


class Progress:
    """A one-line progress bar on a terminal, judged by how far through time the rows are."""

    def __init__(self, stream: IO[str], start: float | None, end: float):
        self._stream = stream
        self._start = start
        self._end = end
        self._began = time.monotonic()
        self._drawn = 0.0
        self.rows = 0

    def row(self, rows: int, ts: float) -> None:
        self.rows = rows
        if self._start is None:
            self._start = ts
        now = time.monotonic()
        if now - self._drawn >= PROGRESS_EVERY:
            self._drawn = now
            self._draw(ts)

    def done(self) -> None:
        self._draw(self._end, final=True)

    def _draw(self, ts: float, final: bool = False) -> None:
        span = (self._end - self._start) if self._start is not None else 0.0
        fraction = 1.0 if final or span <= 0 else min(1.0, max(0.0, (ts - self._start) / span))
        width = 30
        filled = int(fraction * width)
        elapsed = max(1e-6, time.monotonic() - self._began)
        self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
                           f"{self.rows:,} rows  {self.rows / elapsed:,.0f} rows/s"
                           + ("\n" if final else ""))
        self._stream.flush()


def export(storage_url: str, query: ReadingQuery, fmt: str, out: IO[str],
           progress: IO[str] | None = None,
           neutralised: Callable[[str], None] | None = None, tier: str = RAW) -> int:
    """Write every matching reading (or a tier's rollups) to ``out``; return how many
    rows were written.

    ``neutralised``: told the text of each CSV cell that had a formula's start.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if tier not in TIER_NAMES:
        raise ExportError(f"tier must be one of {', '.join(TIER_NAMES)}, not {tier!r}")
    if "://" not in storage_url and not os.path.exists(storage_url):
        raise ExportError(f"no readings database at {storage_url}")
    try:
        storage = open_storage(storage_url)
    except Exception as e:
        raise ExportError(f"cannot open {safe_url(storage_url)}: {e}") from None
    bar = None
    if progress is not None:
        bar = Progress(progress, query.since,
                       query.until if query.until is not None else time.time())
    if tier != RAW and not storage.rollups_backfilled():
        print("sensor-collector export: the collector is still rolling up readings stored "
              "before rollups existed; this export lacks some of them", file=sys.stderr)
    written = 0
    columns = READING_COLUMNS if tier == RAW else ROLLUP_COLUMNS
    at = columns.index("ts")

    def counted(rows: Iterable[Sequence[Any]]) -> Iterable[Sequence[Any]]:
        nonlocal written
        for row in rows:
            written += 1
            if bar is not None:
                bar.row(written, row[at])
            yield row

    try:
        rows = counted(storage.iter_readings(query) if tier == RAW
                       else storage.iter_rollups(query, tier))
        lines = csv_lines(rows, neutralised, columns) if fmt == "csv" \
            else jsonl_lines(rows, columns)
        for text in lines:
            out.write(text)
        out.flush()
    finally:
        storage.close()
    if bar is not None:
        bar.rows = written
        bar.done()
    return written


def main(args: Any, config_storage: str) -> int:
    """The `export` subcommand, given parsed arguments and the configured storage."""
    formulas = NeutralisedCells()
    try:
        query = ReadingQuery(
            agent=args.agent,
            since=None if args.since is None else parse_time(args.since),
            until=None if args.until is None else parse_time(args.until),
        )
        progress = sys.stderr if sys.stderr.isatty() else None
        if args.out in (None, "-"):
            export(config_storage, query, args.format, sys.stdout, progress, formulas,
                   args.tier)
        else:
            # Written aside and renamed when complete: a half export never looks whole.
            partial = args.out + ".part"
            try:
                with open(partial, "w", encoding="utf-8", newline="") as out:
                    export(config_storage, query, args.format, out, progress, formulas,
                           args.tier)
                os.replace(partial, args.out)
            except OSError as e:
                raise ExportError(f"cannot write {args.out}: {e.strerror or e}") from None
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
    except ExportError as e:
        print(f"sensor-collector export: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `export | head`: the reader has had enough; that is not an error. Point
        # stdout at /dev/null so the flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if formulas.cells:
        print(f"sensor-collector export: {formulas}", file=sys.stderr)
    return 0
