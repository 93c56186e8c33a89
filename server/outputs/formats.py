"""Stored readings (or their rollups) as text: CSV and JSON lines, for
`/api/readings.csv` and `export`.

A text cell a spreadsheet would run as a formula (a sensor named
``=HYPERLINK(...)``) is neutralised by OWASP's rule for CSV injection: a single
quote before it, and the cell quoted. Numbers are written as numbers, so a
negative value stays -3.5. JSON lines carry names unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sensor_edge.server.storage import READING_COLUMNS

if TYPE_CHECKING:
    from sensor_edge.server.outputs.metrics import EscapedNames

# OWASP's CSV injection list: a cell starting with one of these is a formula to Excel,
# LibreOffice or Google Sheets.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The columns that hold text; the numeric ones are never touched.
TEXT_COLUMN_NAMES = frozenset(("agent", "epoch", "sensor", "metric", "unit"))


def text_positions(columns: Sequence[str]) -> tuple[int, ...]:
    """Where the text cells are in a row of ``columns``."""
    return tuple(i for i, column in enumerate(columns) if column in TEXT_COLUMN_NAMES)


def csv_lines(rows: Iterable[Sequence[Any]],
              neutralised: Callable[[str], None] | None = None,
              columns: Sequence[str] = READING_COLUMNS) -> Iterable[str]:
    """A header line, then one CSV line per row (values in ``columns`` order: the
    readings', or the rollups' ROLLUP_COLUMNS).

    A text cell starting with one of FORMULA_STARTS gets a leading ``'`` and its
    row is written with every text cell quoted; ``neutralised`` is told each such
    cell's original text.
    """
    positions = text_positions(columns)
    text_cells = operator.itemgetter(*positions)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # Quotes every str cell, never an int or float: OWASP's "quote the cell".
    quoting = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(columns)
    for row in rows:
        for cell in text_cells(row):
            if cell.startswith(FORMULA_STARTS):
                quoting.writerow(_neutralised_row(row, positions, neutralised))
                break
        else:
            writer.writerow(row)
        # Hand lines on in small runs: the writer is fast, the buffer must stay small.
        if buffer.tell() > 65536:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _neutralised_row(row: Sequence[Any], positions: tuple[int, ...],
                     neutralised: Callable[[str], None] | None) -> list[Any]:
    cells = list(row)
    for i in positions:
        if cells[i].startswith(FORMULA_STARTS):
            if neutralised is not None:
                neutralised(cells[i])
            cells[i] = "'" + cells[i]
    return cells


def counted_in(names: EscapedNames) -> Callable[[str], None]:
    """A ``neutralised`` callback that counts and logs each text once in the collector's metrics."""
    return lambda text: names.record(
        "csv", text, "written with a leading ' so that no spreadsheet runs it as a formula")


def jsonl_lines(rows: Iterable[Sequence[Any]],
                columns: Sequence[str] = READING_COLUMNS) -> Iterable[str]:
    for row in rows:
        yield json.dumps(dict(zip(columns, row)), separators=(",", ":")) + "\n"
