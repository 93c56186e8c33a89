"""`sensor-agent probe`: the installer's wiring check.

Opens each configured sensor through the same backend and sensor code the
agent runs, reads it a few times (a DHT no faster than its spacing), prints
one row per sensor and exits non-zero if any sensor never gave a good read.
Nothing is buffered or sent.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO

from sensor_edge.config.model import DIGITAL_TYPES, AgentConfig, SensorConfig
from sensor_edge.runtime.service import StartupError
from sensor_edge.agent.backends import choose_backend
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


def run_probe(config: AgentConfig, backend_name: str, reads: int, out: TextIO) -> int:
    """Probe every sensor of ``config``; print the table to ``out``; return the exit code."""
    if not config.sensors:
        print(f"no sensors are configured in {config.source}", file=out)
        return 1
    backend = choose_backend(backend_name, config.pin_factory)
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
    finally:
        for sensor in opened:
            try:
                sensor.close()  # a DHT frees its pin for the agent
            except Exception:
                pass
        backend.close()
    ordered = [results[s.name] for s in config.sensors]
    print_table(ordered, backend.name, out)
    return 0 if all(r.ok for r in ordered) else 1


def print_table(results: list[ProbeResult], backend: str, out: TextIO) -> None:
    import statistics  # here, not at the top: the running agent imports this module too

    rows = [("SENSOR", "TYPE", "PIN", "READ TIME", "FAILED", "VALUES OR LAST ERROR")]
    for r in results:
        failed = r.reads - r.good
        rate = f"{failed}/{r.reads} {100 * failed / r.reads:.0f}%" if r.reads else "not opened"
        read_time = f"{statistics.median(r.read_seconds) * 1000:.0f} ms" if r.read_seconds \
            else "-"
        rows.append((r.config.name, r.config.type,
                     "-" if r.config.pin is None else f"GPIO{r.config.pin}",
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


def _values(result: ProbeResult) -> str:
    digital = result.config.type in DIGITAL_TYPES
    return ", ".join(f"{metric} {value:g}" if digital else f"{value:g} {unit}".strip()
                     for _sensor, metric, value, unit, _ts in result.values)
