"""py-spy on a running collector over a measured window, and what it spent its time on.

The raw stacks (collapsed, one per line: flamegraph.pl and speedscope read
them) are kept; the summary lists, per thread, the functions with the most
samples on the stack (inclusive) and at its top (self). py-spy pauses the
process for each sample, so figures measured while it runs are not the
benchmark's figures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

SAMPLES_PER_SECOND = 100
# A frame as py-spy writes it: "name (file:line)"; the line is dropped to group by function.
_LINE = re.compile(r":\d+\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found


class Profiler:
    """`py-spy record` attached to `pid` for `seconds`, writing raw stacks to `out`."""

    def __init__(self, pid: int, seconds: float, out: Path):
        self.out = out
        self.proc = subprocess.Popen(
            [py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
             "--rate", str(SAMPLES_PER_SECOND), "--format", "raw", "--native", "--threads",
             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def summary(self, top: int = 12) -> str:
        """Wait for py-spy to finish; the top costs, or why there are none."""
        try:
            _, errors = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "py-spy did not finish"
        if not self.out.exists():
            return f"py-spy wrote nothing: {errors.strip()[-300:]}"
        return summarize(self.out, top)


def summarize(path: Path, top: int = 12) -> str:
    per_thread: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    own: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        thread = thread.split(": ", 1)[-1]
        samples = int(count)
        per_thread[thread] += samples
        names = [_LINE.sub(")", f) for f in frames]
        for name in set(names):
            inclusive[thread][name] += samples
        if names:
            own[thread][names[-1]] += samples
    total = sum(per_thread.values())
    lines = [f"{total} busy samples ({total / SAMPLES_PER_SECOND:.1f} s of CPU), raw stacks in "
             f"{path}"]
    for thread, samples in per_thread.most_common():
        if samples < total * 0.02:
            continue
        lines.append(f"  thread {thread}: {samples / total:.0%} of the samples")
        for title, counter in (("on the stack", inclusive[thread]), ("self", own[thread])):
            lines.append(f"    {title}:")
            for name, n in counter.most_common(top):
                lines.append(f"      {n / samples:5.1%}  {name}")
    return "\n".join(lines)
