"""The scale benchmark still runs: `bench_scale.py --quick` on one small scenario.

A smoke test, not a timing test: it checks that one invocation brings up the
collector, the MQTT stack and the null collector, prints every line of the
scenario with its target, and that the store held every reading exactly once.
The figures themselves are not checked (a few seconds on shared cores).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_scale.py"

BATCHES_LINES = (
    "product: readings/s acked",
    "MQTT stack: readings/s stored",
    "product / MQTT stack",
    "ack p99 / MQTT publish-to-stored p99",
    "MQTT stack: PUBACKed but not stored",
    "ceilings: storage, transport",
    "product / lower ceiling",
    "product: stored seqs exactly 1..N per agent",
)


def table_row(output: str, what: str) -> str:
    table = output[output.index("every line with its target"):]
    return next(line for line in table.splitlines() if what in line)


def test_quick_batches_prints_every_line_with_its_target():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "batches", "--baseline-ref", "none"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {what: table_row(done.stdout, what) for what in BATCHES_LINES}
    assert rows["product: stored seqs exactly 1..N per agent"].rstrip().endswith("PASS")
    for what in ("product / MQTT stack", "product / lower ceiling"):
        assert re.search(r"(PASS|MISS)$", rows[what].rstrip()), rows[what]
    # Both stacks moved readings: figures, not zeros or nan.
    for what in ("product: readings/s acked", "MQTT stack: readings/s stored"):
        rate = re.search(r"\| ([\d,]+)/s", rows[what])
        assert rate and int(rate.group(1).replace(",", "")) > 0, rows[what]
