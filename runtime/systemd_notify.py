"""systemd's readiness and watchdog protocol (sd_notify), in a few lines of stdlib.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a datagram socket that
takes newline-separated ``KEY=VALUE`` messages: ``READY=1`` once the service
serves, ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` microseconds when
``WatchdogSec=`` is set (or systemd kills and restarts it), ``STOPPING=1`` as it
begins to stop. A name starting with ``@`` is in Linux's abstract namespace.
Outside systemd ``$NOTIFY_SOCKET`` is unset and every call here does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("sensor_edge.systemd")


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields to systemd; False when not under systemd or on failure."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not address.startswith(("/", "@")):
        return False  # unset, or a transport we do not speak (vsock:)
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(fields).encode())
        return True
    except OSError as e:
        # Never fatal: the service works without systemd's bookkeeping.
        log.debug("sd_notify to %s failed: %s", address.lstrip("\0"), e)
        return False


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of systemd's timeout), or None when off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None  # no watchdog, or it watches another process (a wrapper's child)
    try:
        timeout = int(usec) / 1e6
    except ValueError:
        return None
    return timeout / 2 if timeout > 0 else None


async def watchdog(period: float) -> None:
    """Ping systemd every ``period`` s from the event loop, so a hung loop is restarted."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)


async def report_status(describe: Callable[[], str], period: float) -> None:
    """Keep the STATUS= line of `systemctl status` current: what the service is doing."""
    while True:
        try:
            notify(f"STATUS={describe()}")
        except Exception as e:  # a status line must never stop the service
            log.debug("status line failed: %s", e)
        await asyncio.sleep(period)


def under_systemd() -> bool:
    """Is there a notify socket to talk to?"""
    return bool(os.environ.get("NOTIFY_SOCKET"))
