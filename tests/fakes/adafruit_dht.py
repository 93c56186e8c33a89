"""Stand-in for adafruit_dht (adafruit-circuitpython-dht 4.x), for tests only.

It behaves as the real library is documented and known to:
- reading `temperature` or `humidity` measures, unless a measurement began
  2 s ago or less: then it answers from its cache, the last good values or
  None, even when that measurement failed;
- a failed measurement raises RuntimeError with the library's messages;
- the pin is held from construction until exit(): a second open of a held
  pin, even from a later process (the orphaned libgpiod_pulsein helper of the
  real library), fails.

What each measurement gives comes from a script of outcomes, cycled:
``ok`` (fresh values: 20.0 + 0.1 k C and 40.0 + 0.1 k %% for the k-th good
measurement), ``checksum``, ``buffer``, ``notfound`` (RuntimeError),
``none`` (no values), ``hot`` (85 C: outside a DHT22's range). The script is
``SCRIPT`` if a test sets it, else ``$FAKE_DHT_SCRIPT_<pin>`` or ``$FAKE_DHT_SCRIPT``
(comma-separated), else ``ok``. With ``$FAKE_DHT_DIR`` set, the held pins and a log of every
access and exit() live in files there, so a test can look from outside the
process; otherwise in this module.
"""

from __future__ import annotations

import os
import sys
import time

CACHE_SECONDS = 2.0
SCRIPT: list[str] | None = None
HELD: set[int] = set()
# (pin, event, monotonic time) for every access, measurement and exit().
EVENTS: list[tuple[int, str, float]] = []

_ERRORS = {
    "checksum": "Checksum did not validate. Try again.",
    "buffer": "A full buffer was not returned. Try again.",
    "notfound": "DHT sensor not found, check wiring",
}


def _dir() -> str | None:
    return os.environ.get("FAKE_DHT_DIR")


def _record(pin: int, event: str) -> None:
    now = time.monotonic()
    EVENTS.append((pin, event, now))
    d = _dir()
    if d:
        with open(os.path.join(d, f"pin{pin}.events"), "a") as f:
            f.write(f"{os.getpid()} {event} {now:.6f}\n")


class DHTBase:
    def __init__(self, dht11: bool, pin, trig_wait: int, use_pulseio: bool = True):
        self._dht11 = dht11
        self._pin = pin.id
        self._last_called = 0.0
        self._temperature = None
        self._humidity = None
        self._good = 0
        self._step = 0
        text = os.environ.get(f"FAKE_DHT_SCRIPT_{self._pin}") or os.environ.get("FAKE_DHT_SCRIPT")
        self._script = SCRIPT or (text or "ok").split(",")
        self._claim()
        _record(self._pin, "open")

    def _held_file(self) -> str:
        return os.path.join(_dir(), f"pin{self._pin}.held")

    def _claim(self) -> None:
        held = os.path.exists(self._held_file()) if _dir() else self._pin in HELD
        if held:
            # What the real library shows when libgpiod_pulsein still has the line.
            print(f"Unable to set line {self._pin} to input", file=sys.stderr)
            raise RuntimeError(
                "Timed out waiting for PulseIn message. Make sure libgpiod is installed.")
        if _dir():
            with open(self._held_file(), "w") as f:
                f.write(str(os.getpid()))
        else:
            HELD.add(self._pin)

    def exit(self) -> None:
        if _dir():
            try:
                os.unlink(self._held_file())
            except FileNotFoundError:
                pass
        else:
            HELD.discard(self._pin)
        _record(self._pin, "exit")

    def measure(self) -> None:
        now = time.monotonic()
        if self._last_called and now - self._last_called <= CACHE_SECONDS:
            return
        self._last_called = now
        outcome = self._script[self._step % len(self._script)]
        self._step += 1
        _record(self._pin, f"measure:{outcome}")
        if outcome in _ERRORS:
            raise RuntimeError(_ERRORS[outcome])
        if outcome == "none":
            self._temperature = self._humidity = None
            return
        if outcome == "hot":
            self._temperature, self._humidity = 85.0, 40.0
            return
        assert outcome == "ok", f"unknown scripted outcome {outcome!r}"
        self._temperature = round(20.0 + 0.1 * self._good, 1)
        self._humidity = round(40.0 + 0.1 * self._good, 1)
        self._good += 1

    def _access(self, what: str) -> None:
        fresh = not self._last_called or time.monotonic() - self._last_called > CACHE_SECONDS
        _record(self._pin, f"{what}:{'fresh' if fresh else 'cached'}")
        self.measure()

    @property
    def temperature(self):
        self._access("temperature")
        return self._temperature

    @property
    def humidity(self):
        self._access("humidity")
        return self._humidity


class DHT11(DHTBase):
    def __init__(self, pin, use_pulseio: bool = True):
        super().__init__(True, pin, 18000, use_pulseio)


class DHT22(DHTBase):
    def __init__(self, pin, use_pulseio: bool = True):
        super().__init__(False, pin, 1000, use_pulseio)
