"""An I2C bus for the Adafruit drivers, over smbus2 on /dev/i2c-N.

The Adafruit CircuitPython drivers talk to a `busio.I2C` through
adafruit_bus_device; Blinka's own busio.I2C only knows the board's default
pins, detects the board first, and is not thread-safe. This is the part of
busio.I2C's interface they use (try_lock, unlock, writeto, readfrom_into,
writeto_then_readfrom, scan), as plain I2C messages through smbus2's
``i2c_rdwr`` (one ioctl per transaction, a repeated start between a write and
its read), on any bus number. Tests hand it a fake SMBus that answers as the
parts' datasheets say.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any

# The addresses i2cdetect scans by default: below and above are reserved.
SCAN_RANGE = range(0x08, 0x78)
# A driver that cannot get the bus waits this long per try (the others hold it briefly).
LOCK_WAIT = 0.1


def i2c_device_path(bus: int) -> str:
    return f"/dev/i2c-{bus}"


def is_no_ack(error: OSError) -> bool:
    """Nobody acknowledged the address: unplugged, unpowered, or another address.

    The Pi's controller (i2c-bcm2835) says EREMOTEIO (121); the kernel's fault
    codes let others say ENXIO.
    """
    return error.errno in (errno.EREMOTEIO, errno.ENXIO)


class I2CBus:
    """busio.I2C's interface over one smbus2.SMBus, shared by every part on the bus."""

    def __init__(self, bus: int, open_smbus: Callable[[int], Any] | None = None):
        from smbus2 import SMBus, i2c_msg

        self.bus = bus
        self._msg = i2c_msg
        self._smbus = (open_smbus or SMBus)(bus)
        self._lock = threading.Lock()
        self._part_locks: dict[int, threading.Lock] = {}

    def part_lock(self, address: int) -> threading.Lock:
        """Held for a whole measurement: two sensors on one chip (an ADC's channels) must
        not start a conversion in the middle of the other's."""
        with self._lock:
            return self._part_locks.setdefault(address, threading.Lock())

    # -- locking: adafruit_bus_device holds the bus for each register transaction --
    def try_lock(self) -> bool:
        # Waits a little rather than fail at once: I2CDevice spins on this with
        # sleep(0), which would burn a core while another part holds the bus.
        return self._lock.acquire(timeout=LOCK_WAIT)

    def unlock(self) -> None:
        self._lock.release()

    # -- transfers --
    def writeto(self, address: int, buffer: bytes, *, start: int = 0,
                end: int | None = None) -> None:
        self._smbus.i2c_rdwr(self._msg.write(address, bytes(buffer[start:end])))

    def readfrom_into(self, address: int, buffer: bytearray, *, start: int = 0,
                      end: int | None = None) -> None:
        end = len(buffer) if end is None else end
        message = self._msg.read(address, end - start)
        self._smbus.i2c_rdwr(message)
        buffer[start:end] = bytes(message)

    def writeto_then_readfrom(self, address: int, buffer_out: bytes, buffer_in: bytearray, *,
                              out_start: int = 0, out_end: int | None = None,
                              in_start: int = 0, in_end: int | None = None) -> None:
        in_end = len(buffer_in) if in_end is None else in_end
        write = self._msg.write(address, bytes(buffer_out[out_start:out_end]))
        read = self._msg.read(address, in_end - in_start)
        self._smbus.i2c_rdwr(write, read)  # one transaction: a repeated start, no stop
        buffer_in[in_start:in_end] = bytes(read)

    def scan(self) -> list[int]:
        """The addresses that acknowledge a write, as i2cdetect finds them.

        A quick write, not a read: an SHT3x or SHT4x refuses a read when it has
        no measurement waiting, and would be missed.
        """
        found = []
        with self._lock:
            for address in SCAN_RANGE:
                try:
                    self._smbus.write_quick(address)
                except OSError:
                    continue
                found.append(address)
        return found

    def close(self) -> None:
        self._smbus.close()
