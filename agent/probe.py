"""`sensor-agent probe`: the installer's wiring check.

First lists what answers on the buses (the 1-Wire ids, the I2C addresses with
the parts that use each), so an operator can see a part before configuring
it. Then opens each configured sensor through the same backend and sensor
code the agent runs, reads it a few times (a DHT no faster than its spacing),
prints one row per sensor and exits non-zero if any sensor never gave a good
read. Nothing is buffered or sent, and no filter is applied: these are the
part's own values.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO

from sensor_edge.config.model import AgentConfig, SensorConfig
from sensor_edge.config.sensor_types import SENSOR_TYPES, likely_i2c_parts, w1_part
from sensor_edge.runtime.service import StartupError
from sensor_edge.agent.backends import Backend, BusUnavailable, choose_backend
from sensor_edge.agent.sensors import Sample, Sensor, SensorReadError, open_sensor

DEFAULT_READS = 3
# Between reads of a sensor with no spacing of its own (CPU, a digital input).
PAUSE = 0.1


@dataclass
class ProbeResult:
    config: SensorConfig
    reads: int = 0
    good: int = 0
    values: list[Sample] = field(default_factory=list)  # of the last good read
    last_error: str | None = None
    read_seconds: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.good > 0


def probe_sensor(sensor: Sensor, reads: int) -> ProbeResult:
    """Read ``sensor`` ``reads`` times, spaced as the sampler would."""
    result = ProbeResult(sensor.config)
    for i in range(reads):
        if i:
            time.sleep(max(sensor.min_spacing, PAUSE))
        started = time.monotonic()
        try:
            samples = sensor.read()
        except SensorReadError as e:
            result.last_error = f"{e.kind}: {e}"
        except Exception as e:  # a driver bug: report it in the table, keep probing
            result.last_error = f"{type(e).__name__}: {e}"
        else:
            result.good += 1
            result.values = samples
        result.reads += 1
        result.read_seconds.append(time.monotonic() - started)
    return result


def run_probe(config: AgentConfig, backend: str | Backend, reads: int, out: TextIO) -> int:
    """Probe every sensor of ``config``; print the table to ``out``; return the exit code.

    ``backend`` is a backend's name (as the config or --mock says) or one already made.
    """
    if isinstance(backend, str):
        backend = choose_backend(backend, config.pin_factory)
    results: dict[str, ProbeResult] = {}
    opened: list[Sensor] = []
    try:
        for sensor_config in config.sensors:
            try:
                opened.append(open_sensor(sensor_config, backend))
            except StartupError as e:  # names the fix
                results[sensor_config.name] = ProbeResult(sensor_config, last_error=str(e))
            except Exception as e:
                message = f"{type(e).__name__}: {e}"
                results[sensor_config.name] = ProbeResult(sensor_config, last_error=message)
        if opened:
            # One thread per sensor: DHT reads are slow and spaced by seconds.
            with ThreadPoolExecutor(len(opened), thread_name_prefix="probe") as pool:
                for result in pool.map(lambda s: probe_sensor(s, reads), opened):
                    results[result.config.name] = result
        # After opening: the mock's simulated buses hold the parts it opened.
        print_buses(backend, config, out)
    finally:
        for sensor in opened:
            try:
                sensor.close()  # a DHT frees its pin for the agent
            except Exception:
                pass
        backend.close()
    if not config.sensors:
        print(f"no sensors are configured in {config.source}", file=out)
        return 1
    ordered = [results[s.name] for s in config.sensors]
    print_table(ordered, backend.name, out)
    return 0 if all(r.ok for r in ordered) else 1


def print_buses(backend: Backend, config: AgentConfig, out: TextIO) -> None:
    """What answers on the 1-Wire bus and the I2C buses (bus 1 and any configured)."""
    try:
        ids = backend.scan_w1()
        found = ", ".join(f"{i} ({w1_part(i) or 'not a part sensor-edge reads'})"
                          for i in ids) or "no devices"
    except BusUnavailable as e:
        found = f"not available: {e}"
    print(f"1-Wire: {found}", file=out)
    buses = sorted({1} | {s.bus for s in config.sensors if s.bus is not None})
    for bus in buses:
        try:
            addresses = backend.scan_i2c(bus)
            found = ", ".join(f"0x{a:02x} ({' or '.join(likely_i2c_parts(a)) or 'unknown'})"
                              for a in addresses) or "no devices"
        except BusUnavailable as e:
            found = f"not available: {e}"
        print(f"I2C bus {bus}: {found}", file=out)
    print(file=out)


def print_table(results: list[ProbeResult], backend: str, out: TextIO) -> None:
    rows = [("SENSOR", "TYPE", "WHERE", "READ TIME", "FAILED", "VALUES OR LAST ERROR")]
    for r in results:
        failed = r.reads - r.good
        rate = f"{failed}/{r.reads} {100 * failed / r.reads:.0f}%" if r.reads else "not opened"
        read_time = f"{statistics.median(r.read_seconds) * 1000:.0f} ms" if r.read_seconds \
            else "-"
        rows.append((r.config.name, r.config.type, where(r.config),
                     read_time, rate, _values(r) if r.ok else (r.last_error or "no reading")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        print("  ".join(cells).rstrip(), file=out)
    bad = [r.config.name for r in results if not r.ok]
    if bad:
        print(f"never read well: {', '.join(bad)} (backend {backend}; see Troubleshooting "
              "in docs/raspberry-pi.md)", file=out)
    else:
        print(f"all {len(results)} sensors read well (backend {backend})", file=out)


def where(sensor: SensorConfig) -> str:
    """Where a sensor is wired: its GPIO, its bus and address, or "-"."""
    interface = SENSOR_TYPES[sensor.type].interface
    if interface == "i2c":
        return f"I2C{sensor.bus} 0x{sensor.address:02x}"
    if interface == "1-wire":
        return f"1-Wire {sensor.address or '(the only one)'}"
    if interface == "spi":
        return f"SPI0 ch{sensor.channel}"
    return "-" if sensor.pin is None else f"GPIO{sensor.pin}"


def _values(result: ProbeResult) -> str:
    digital = SENSOR_TYPES[result.config.type].interface == "digital"
    return ", ".join(f"{metric} {value:g}" if digital else f"{value:g} {unit}".strip()
                     for _sensor, metric, value, unit, _ts in result.values)
