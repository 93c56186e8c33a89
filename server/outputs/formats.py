"""Stored readings as text: CSV and JSON lines, for `/api/readings.csv` and `export`.

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
# Cells only text columns can hold; the numeric ones are never touched.
TEXT_COLUMNS = tuple(i for i, column in enumerate(READING_COLUMNS)
                     if column in ("agent", "epoch", "sensor", "metric", "unit"))
_text_cells = operator.itemgetter(*TEXT_COLUMNS)


def csv_lines(rows: Iterable[Sequence[Any]],
              neutralised: Callable[[str], None] | None = None) -> Iterable[str]:
    """A header line, then one CSV line per row (columns in READING_COLUMNS order).

    A text cell starting with one of FORMULA_STARTS gets a leading ``'`` and its
    row is written with every text cell quoted; ``neutralised`` is told each such
    cell's original text.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # Quotes every str cell, never an int or float: OWASP's "quote the cell".
    quoting = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(READING_COLUMNS)
    for row in rows:
        for cell in _text_cells(row):
            if cell.startswith(FORMULA_STARTS):
                quoting.writerow(_neutralised_row(row, neutralised))
                break
        else:
            writer.writerow(row)
        # Hand lines on in small runs: the writer is fast, the buffer must stay small.
        if buffer.tell() > 65536:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _neutralised_row(row: Sequence[Any], neutralised: Callable[[str], None] | None) -> list[Any]:
    cells = list(row)
    for i in TEXT_COLUMNS:
        if cells[i].startswith(FORMULA_STARTS):
            if neutralised is not None:
                neutralised(cells[i])
            cells[i] = "'" + cells[i]
    return cells


def counted_in(names: EscapedNames) -> Callable[[str], None]:
    """A ``neutralised`` callback that counts and logs each text once in the collector's metrics."""
    return lambda text: names.record(
        "csv", text, "written with a leading ' so that no spreadsheet runs it as a formula")


def jsonl_lines(rows: Iterable[Sequence[Any]]) -> Iterable[str]:
    for row in rows:
        yield json.dumps(dict(zip(READING_COLUMNS, row)), separators=(",", ":")) + "\n"
