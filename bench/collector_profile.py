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
# A thread waiting for work (a pool's queue, a lock), not working.
_IDLE = ("PyThread_acquire_lock_timed", "_queue_SimpleQueue_get")


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


def summarize(path: Path, top: int = 10) -> str:
    per_thread: Counter[str] = Counter()
    gil: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    own: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        thread = thread.split(": ", 1)[-1]
        samples = int(count)
        names = [_LINE.sub(")", f) for f in frames]
        if not names or any(n.startswith(_IDLE) for n in names) or names[-1].startswith(
                "epoll_wait"):
            continue  # a thread asleep: py-spy's --native sees it as busy
        per_thread[thread] += samples
        # A C function of the interpreter waiting on a condition: taking back the GIL
        # it released around a blocking call (sqlite3_step, a socket write).
        if any(n.startswith("pthread_cond_timedwait") for n in names):
            gil[thread] += samples
        for name in set(names):
            if not name.startswith("0x"):
                inclusive[thread][name] += samples
        own[thread][names[-1] if not names[-1].startswith("0x") else "(libc, unresolved)"] += (
            samples)
    total = sum(per_thread.values())
    lines = [f"{total} busy samples ({total / SAMPLES_PER_SECOND:.1f} s), raw stacks in {path}"]
    for thread, samples in per_thread.most_common():
        if samples < total * 0.02:
            continue
        lines.append(f"  thread {thread}: {samples / total:.0%} of the busy samples, "
                     f"{gil[thread] / samples:.0%} of its own waiting for the GIL")
        below_root = [(n, c) for n, c in inclusive[thread].most_common() if c < 0.9 * samples]
        for title, ranked in (("on the stack", below_root[:top]),
                              ("self", own[thread].most_common(top))):
            lines.append(f"    {title}: " + ", ".join(f"{name} {n / samples:.0%}"
                                                      for name, n in ranked))
    return "\n".join(lines)
