"""Running a program as a long-lived service: start, wait for a signal, stop in time."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from sensor_edge.runtime import systemd_notify

log = logging.getLogger("sensor_edge")

# The contract: SIGTERM/SIGINT stop either program within 5 s.
STOP_DEADLINE = 4.5


class StartupError(Exception):
    """Something an operator can fix kept the program from starting; one-line message."""


def run_service(name: str, start: Callable[[], Awaitable[None]],
                stop: Callable[[], Awaitable[None]],
                describe: Callable[[], str] | None = None,
                startup_errors: tuple[type[Exception], ...] = ()) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code.

    A StartupError, an OSError or one of ``startup_errors`` raised by ``start``
    is an operator's to fix: one line on stderr, exit 1.

    Under systemd (Type=notify) it reports READY=1 once started, pings the
    watchdog from the event loop, shows ``describe()`` as the unit's status
    line, and says STOPPING=1 when it begins to stop.
    """

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        try:
            await start()
        except (StartupError, OSError, *startup_errors) as e:
            print(f"{name}: cannot start: {_describe(e)}", file=sys.stderr)
            await stop()
            return 1
        # Installed after start(): some hardware libraries replace SIGTERM's handler on import.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        systemd_notify.notify("READY=1", f"STATUS={name} running")
        period = systemd_notify.watchdog_period()
        helpers = [asyncio.create_task(systemd_notify.watchdog(period))] if period else []
        if describe is not None and systemd_notify.under_systemd():
            # Refreshed with the watchdog's pings, but no more than every 10 s.
            helpers.append(asyncio.create_task(
                systemd_notify.report_status(describe, min(period or 10.0, 10.0))))
        await stopping.wait()
        log.info("%s: stopping", name)
        systemd_notify.notify("STOPPING=1")
        try:
            await asyncio.wait_for(stop(), STOP_DEADLINE)
        except TimeoutError:
            log.error("%s: did not stop cleanly in %.1f s", name, STOP_DEADLINE)
            return 1
        finally:
            for task in helpers:
                task.cancel()
        log.info("%s: stopped", name)
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:  # a second Ctrl-C during start or stop
        return 130


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    return str(error)
