"""Logging for both programs: one line per event, readable under journald."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; timestamps only on a terminal (journald adds its own)."""
    if sys.stderr.isatty():
        fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    else:
        fmt = "%(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # The libraries' own chatter (every handshake, every ping) is noise at INFO.
    for name in ("websockets", "asyncio", "gpiozero"):
        logging.getLogger(name).setLevel(logging.WARNING)
