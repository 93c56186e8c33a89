"""Stand-in for Blinka's `board`, put on sys.path only by tests.

Like recent Blinka releases, importing it replaces the process's SIGTERM
handler; this one ends the process at once, skipping any clean shutdown, so a
program that does not install its own handlers after the import is caught.
"""

import os
import signal


class Pin:
    def __init__(self, bcm: int):
        self.id = bcm

    def __repr__(self) -> str:
        return f"board.D{self.id}"


for _n in range(28):
    globals()[f"D{_n}"] = Pin(_n)


def _blinka_sigterm(signum, frame):
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _blinka_sigterm)
