"""Fake buses for the sensor drivers, answering as each part's datasheet says.

Only the lowest layer is fake, so the real drivers run on top:

- :class:`W1Tree`: the kernel's 1-Wire sysfs folder (what w1thermsensor reads):
  a ``28-xxxxxxxxxxxx/w1_slave`` per probe in the kernel's own format, the
  scratchpad's bytes with their Dallas CRC-8 and the kernel's YES/NO verdict.
- :class:`FakeSMBus`: what smbus2.SMBus offers the I2C layer (``i2c_rdwr``
  with smbus2's own i2c_msg, ``write_quick``), with parts at addresses. An
  address nobody answers gets OSError 121 (EREMOTEIO), as on a Pi.
- Parts: :class:`BME280` (registers, chip id 0x60, calibration block, forced
  mode), :class:`SHT3x` and :class:`SHT4x` (commands, CRC-8 poly 0x31),
  :class:`ADS1115` (pointer, config and conversion registers, single shot).

A part answers only to what its datasheet defines: an unknown command or
register is not acknowledged, so a driver that sends a wrong one fails.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from pathlib import Path
from typing import ClassVar

I2C_M_RD = 0x0001  # linux/i2c.h: a read message


def no_ack() -> OSError:
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


# --- 1-Wire ---------------------------------------------------------------------------

def dallas_crc8(data: bytes) -> int:
    """The DS18B20's CRC (x^8 + x^5 + x^4 + 1, LSB first), as in Maxim AN27."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def scratchpad(celsius: float) -> bytes:
    """A 12-bit DS18B20's 9 scratchpad bytes for ``celsius`` (datasheet fig. 7, table 1)."""
    raw = round(celsius * 16) & 0xFFFF
    body = bytes([raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x01, 0x10])
    return body + bytes([dallas_crc8(body)])


def w1_slave_text(celsius: float, crc_ok: bool = True) -> str:
    """w1_slave as the kernel's w1_therm writes it: two lines, the CRC verdict first."""
    data = bytearray(scratchpad(celsius))
    if not crc_ok:
        data[0] ^= 0x01  # a bit flipped on the wire: the CRC no longer matches
    crc = dallas_crc8(bytes(data[:8]))
    hex_bytes = " ".join(f"{b:02x}" for b in data)
    verdict = "YES" if crc == data[8] else "NO"
    raw = struct.unpack("<h", bytes(data[:2]))[0]
    return f"{hex_bytes} : crc={data[8]:02x} {verdict}\n{hex_bytes} t={raw * 1000 // 16}\n"


class W1Tree:
    """A fake /sys/bus/w1/devices."""

    def __init__(self, root: Path):
        self.devices = root / "devices"
        (self.devices / "w1_bus_master1").mkdir(parents=True)

    def plug(self, device_id: str, celsius: float, crc_ok: bool = True) -> None:
        folder = self.devices / device_id
        folder.mkdir(exist_ok=True)
        (folder / "w1_slave").write_text(w1_slave_text(celsius, crc_ok))

    def unplug(self, device_id: str) -> None:
        """As the kernel does once its bus search stops finding the probe."""
        folder = self.devices / device_id
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()

    def slow(self, device_id: str, celsius: float, seconds: float) -> threading.Thread:
        """Make the next read of ``device_id`` block ``seconds``, as a conversion does.

        w1_slave becomes a FIFO that a thread fills after the delay.
        """
        path = self.devices / device_id / "w1_slave"
        path.unlink(missing_ok=True)
        os.mkfifo(path)

        def answer() -> None:
            with open(path, "w") as fifo:  # blocks until the reader opens it
                threading.Event().wait(seconds)
                fifo.write(w1_slave_text(celsius))

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        return thread


# --- I2C ------------------------------------------------------------------------------

class Part:
    """An I2C part: ``write`` gets each write message's bytes, ``read`` answers a read."""

    def __init__(self) -> None:
        self.plugged = True
        self.log: list[tuple[str, bytes]] = []  # what the driver sent and got, for tests

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, length: int) -> bytes:
        raise NotImplementedError


class FakeSMBus:
    """The I2C bus as smbus2.SMBus offers it, with ``parts`` by 7-bit address."""

    def __init__(self, parts: dict[int, Part] | None = None):
        self.parts = dict(parts or {})
        self.closed = False
        self._lock = threading.Lock()

    def _part(self, address: int) -> Part:
        part = self.parts.get(address)
        if part is None or not part.plugged:
            raise no_ack()
        return part

    def i2c_rdwr(self, *messages) -> None:
        with self._lock:  # one transaction at a time, as the kernel's adapter lock does
            for message in messages:
                part = self._part(message.addr)
                if message.flags & I2C_M_RD:
                    data = part.read(message.len)
                    assert len(data) >= message.len, "a part answers every byte clocked"
                    ctypes.memmove(message.buf, bytes(data[:message.len]), message.len)
                    part.log.append(("read", bytes(data[:message.len])))
                else:
                    data = bytes(message)
                    part.log.append(("write", data))
                    part.write(data)

    def write_quick(self, address: int) -> None:
        self._part(address)

    def close(self) -> None:
        self.closed = True


def sensirion_crc8(data: bytes) -> int:
    """CRC-8, polynomial 0x31, init 0xFF (SHT3x datasheet 4.12, SHT4x datasheet 4.4)."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def sensirion_words(*words: int, corrupt: bool = False) -> bytes:
    out = bytearray()
    for word in words:
        pair = struct.pack(">H", word)
        out += pair + bytes([sensirion_crc8(pair) ^ (0xFF if corrupt else 0)])
    return bytes(out)


class Sensirion(Part):
    """What the SHT3x and SHT4x share: commands of ``COMMAND_BYTES``, a result read once
    (a read with none waiting is not acknowledged), words each with its CRC-8."""

    COMMAND_BYTES = 0
    MEASURE: ClassVar[set[int]] = set()
    OTHER: ClassVar[set[int]] = set()  # valid commands without a result

    def __init__(self, temperature: float, humidity: float):
        super().__init__()
        self.temperature, self.humidity = temperature, humidity
        self.corrupt_next = False
        self.commands: list[int] = []
        self._out = b""

    def raw(self) -> tuple[int, int]:
        raise NotImplementedError

    def answer(self, command: int) -> bytes | None:
        """The words a command other than a measurement leaves to read."""
        return None

    def write(self, data: bytes) -> None:
        if not data:
            return  # the address alone: acknowledged (an address probe)
        if len(data) != self.COMMAND_BYTES:
            raise no_ack()
        command = int.from_bytes(data, "big")
        self.commands.append(command)
        if command in self.MEASURE:
            self._out = sensirion_words(*self.raw(), corrupt=self.corrupt_next)
            self.corrupt_next = False
        elif (answer := self.answer(command)) is not None:
            self._out = answer
        elif command not in self.OTHER:
            raise no_ack()  # not a command of this part

    def read(self, length: int) -> bytes:
        if not self._out:
            raise no_ack()
        out, self._out = self._out, b""
        return out + b"\xff" * (length - len(out))


class SHT3x(Sensirion):
    """SHT3x-DIS: 16-bit commands, single shot; RH = 100 * S / 65535 (datasheet 4.13)."""

    COMMAND_BYTES = 2
    MEASURE: ClassVar[set[int]] = {0x2C06, 0x2C0D, 0x2C10, 0x2400, 0x240B, 0x2416}  # datasheet table 9
    OTHER: ClassVar[set[int]] = {0x3093, 0x30A2}  # break, soft reset

    def __init__(self, temperature: float = 21.5, humidity: float = 48.25):
        super().__init__(temperature, humidity)

    def raw(self) -> tuple[int, int]:
        return (round((self.temperature + 45) / 175 * 65535), round(self.humidity / 100 * 65535))

    def answer(self, command: int) -> bytes | None:
        return sensirion_words(0x0000) if command == 0xF32D else None  # the status register


class SHT4x(Sensirion):
    """SHT4x: 8-bit commands; RH = -6 + 125 * S / 65535 (datasheet 4.6)."""

    COMMAND_BYTES = 1
    MEASURE: ClassVar[set[int]] = {0xFD, 0xF6, 0xE0}  # high, medium, low precision, no heater
    OTHER: ClassVar[set[int]] = {0x94}  # soft reset

    def __init__(self, temperature: float = 19.75, humidity: float = 61.5):
        super().__init__(temperature, humidity)

    def raw(self) -> tuple[int, int]:
        return (round((self.temperature + 45) / 175 * 65535),
                round((self.humidity + 6) / 125 * 65535))

    def answer(self, command: int) -> bytes | None:
        return sensirion_words(0x1234, 0x5678) if command == 0x89 else None  # the serial


def bme280_calibration(t: tuple[int, int, int], p: tuple[int, ...],
                       h: tuple[int, int, int, int, int, int]) -> dict[int, int]:
    """The calibration registers for dig_T1..3, dig_P1..9, dig_H1..6 (datasheet table 16)."""
    registers: dict[int, int] = {}
    block = struct.pack("<HhhHhhhhhhhh", *t, *p)  # 0x88..0x9F
    registers.update({0x88 + i: b for i, b in enumerate(block)})
    h1, h2, h3, h4, h5, h6 = h
    registers[0xA1] = h1
    registers[0xE1], registers[0xE2] = struct.pack("<h", h2)
    registers[0xE3] = h3
    registers[0xE4] = (h4 >> 4) & 0xFF  # dig_H4 [11:4]
    registers[0xE5] = (h4 & 0x0F) | ((h5 & 0x0F) << 4)  # dig_H4 [3:0], dig_H5 [3:0]
    registers[0xE6] = (h5 >> 4) & 0xFF  # dig_H5 [11:4]
    registers[0xE7] = h6 & 0xFF
    return registers


class BME280(Part):
    """BME280 registers; a measurement in forced mode, results in 0xF7..0xFE (datasheet 5)."""

    CHIP_ID = 0x60

    def __init__(self, calibration: dict[int, int], adc_t: int, adc_p: int, adc_h: int,
                 chip_id: int = CHIP_ID):
        super().__init__()
        self.calibration = calibration
        self.adc = (adc_t, adc_p, adc_h)
        self.chip_id = chip_id
        self.resets = 0
        self.measurements = 0
        self._measuring_reads = 0
        self._power_on()

    def _power_on(self) -> None:
        self.registers = dict(self.calibration)
        self.registers.update({0xD0: self.chip_id, 0xF2: 0, 0xF3: 0, 0xF4: 0, 0xF5: 0})
        # Data registers hold 0x80000 / 0x8000 until a measurement (datasheet 5.4.7-9).
        self.registers.update({0xF7: 0x80, 0xF8: 0, 0xF9: 0, 0xFA: 0x80, 0xFB: 0, 0xFC: 0,
                               0xFD: 0x80, 0xFE: 0})
        self._pointer = 0
        self._pending = False

    def write(self, data: bytes) -> None:
        if not data:
            return  # an address probe
        self._pointer = data[0]
        # Pairs of (register, value) after the first; a lone byte only sets the pointer.
        for i in range(0, len(data) - 1, 2):
            register, value = data[i], data[i + 1]
            if register == 0xE0 and value == 0xB6:
                self.resets += 1
                self._power_on()
            elif register in (0xF2, 0xF4, 0xF5):
                self.registers[register] = value
                if register == 0xF4 and value & 0x03 in (0x01, 0x02):  # forced mode
                    self._pending = True
                    self._measuring_reads = 2
            else:
                raise no_ack()  # a read-only or reserved register

    def read(self, length: int) -> bytes:
        out = bytearray()
        for register in range(self._pointer, self._pointer + length):
            if register == 0xF3:
                out.append(self._status())
            elif register in self.registers:
                out.append(self.registers[register])
            else:
                out.append(0x00)
        return bytes(out)

    def _status(self) -> int:
        if self._pending and self._measuring_reads:
            self._measuring_reads -= 1
            return 0x08  # measuring
        if self._pending:
            self._finish()
        return 0x00

    def _finish(self) -> None:
        """Store the measurement, skipping what oversampling 0 turns off, back to sleep."""
        self._pending = False
        self.measurements += 1
        adc_t, adc_p, adc_h = self.adc
        ctrl_meas, ctrl_hum = self.registers[0xF4], self.registers[0xF2]
        if ctrl_meas >> 5:
            self._put20(0xFA, adc_t)
        if (ctrl_meas >> 2) & 0x07:
            self._put20(0xF7, adc_p)
        if ctrl_hum & 0x07:
            self.registers[0xFD], self.registers[0xFE] = adc_h >> 8, adc_h & 0xFF
        self.registers[0xF4] = ctrl_meas & ~0x03  # sleep again

    def _put20(self, register: int, value: int) -> None:
        self.registers[register] = (value >> 12) & 0xFF
        self.registers[register + 1] = (value >> 4) & 0xFF
        self.registers[register + 2] = (value & 0x0F) << 4


class ADS1115(Part):
    """ADS1115: a pointer register, then 16-bit registers (datasheet 9.5, 9.6)."""

    FULL_SCALE: ClassVar[dict[int, float]] = {0: 6.144, 1: 4.096, 2: 2.048, 3: 1.024, 4: 0.512, 5: 0.256, 6: 0.256,
                  7: 0.256}  # PGA[2:0] -> +-volts

    def __init__(self, inputs: tuple[float, float, float, float], conversion_reads: int = 3):
        super().__init__()
        self.inputs = list(inputs)
        self.conversion_reads = conversion_reads  # config reads while a conversion runs
        self.registers = {0: 0x0000, 1: 0x8583, 2: 0x8000, 3: 0x7FFF}  # reset values
        self.conversions: list[tuple[int, int]] = []  # (mux, pga) of each, for tests
        self._pointer = 0
        self._busy = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if data[0] > 3:
            raise no_ack()
        self._pointer = data[0]
        if len(data) == 3:
            value = data[1] << 8 | data[2]
            if self._pointer == 0:
                raise no_ack()  # the conversion register is read-only
            if self._pointer == 1:
                self.registers[1] = value & 0x7FFF | 0x8000
                if value & 0x8000 and value & 0x0100:  # OS=1 in single-shot: start one
                    self._start(value)
            else:
                self.registers[self._pointer] = value

    def _start(self, config: int) -> None:
        mux, pga = (config >> 12) & 0x07, (config >> 9) & 0x07
        self.conversions.append((mux, pga))
        pairs = {0: (0, 1), 1: (0, 3), 2: (1, 3), 3: (2, 3)}
        if mux >= 4:
            vin = self.inputs[mux - 4]
        else:
            positive, negative = pairs[mux]
            vin = self.inputs[positive] - self.inputs[negative]
        code = round(vin / self.FULL_SCALE[pga] * 32768)
        self._result = max(-32768, min(32767, code)) & 0xFFFF
        self._busy = self.conversion_reads
        self.registers[1] &= 0x7FFF  # OS reads 0 while converting

    def read(self, length: int) -> bytes:
        if self._pointer == 1 and self._busy:
            self._busy -= 1
            if not self._busy:
                self.registers[0] = self._result
                self.registers[1] |= 0x8000
        value = self.registers[self._pointer]
        return bytes([value >> 8, value & 0xFF] + [0xFF] * (length - 2))
