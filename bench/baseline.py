"""The collector as it was at an earlier commit, to run beside today's in one benchmark.

A temporary `git worktree` of that commit and a venv of its own with the
commit installed (`pip install`, not editable), so its collector runs its own
code and its own dependencies while the benchmark's load generator, ceilings
and checks stay today's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


class Baseline:
    """`ref` checked out under `workdir` and installed in its own venv; remove() undoes it."""

    def __init__(self, ref: str, workdir: Path):
        self.commit = _git("rev-parse", "--short", f"{ref}^{{commit}}")
        self.path = workdir / f"baseline-{self.commit}"
        _git("worktree", "add", "--detach", str(self.path), self.commit)
        try:
            venv = self.path / ".venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            self.python = str(venv / "bin" / "python")
            # postgres: the same extra today's collector runs with.
            pip = subprocess.run([self.python, "-m", "pip", "install", "-q",
                                  "--disable-pip-version-check", f"{self.path}[postgres]"],
                                 capture_output=True, text=True, timeout=900)
            if pip.returncode:
                raise RuntimeError(f"pip install of {self.commit} failed: {pip.stderr[-2000:]}")
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.path)],
                       capture_output=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
