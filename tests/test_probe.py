"""`sensor-agent probe`: the installer's wiring check, run as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from processes import hardware_env


def probe(tmp_path: Path, sensors: list[dict], *args: str, env: dict | None = None,
          backend: str = "hardware") -> subprocess.CompletedProcess:
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "agent": {"id": "pi-1"},
        "collector": {"url": "ws://127.0.0.1:9/v1/stream", "token": "t"},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "backend": backend, "sensors": sensors}, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "sensor_edge.agent", "probe", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **(env or {})})


def table(output: str) -> dict[str, list[str]]:
    """The rows of the printed table by sensor name, split on runs of 2+ spaces."""
    import re

    lines = output.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("SENSOR"))
    assert re.split(r"\s{2,}", lines[header]) == [
        "SENSOR", "TYPE", "WHERE", "READ TIME", "FAILED", "VALUES OR LAST ERROR"]
    return {cells[0]: cells
            for cells in (re.split(r"\s{2,}", line) for line in lines[header + 1:-1])}


def buses(output: str) -> dict[str, str]:
    """The bus lines printed before the table: {"1-Wire": "...", "I2C bus 1": "..."}."""
    lines = output.strip().splitlines()
    return dict(line.split(": ", 1) for line in lines[:lines.index("")])


def test_probe_reads_every_sensor_on_the_hardware_path_and_flags_a_dead_one(tmp_path):
    sensors = [
        {"name": "climate", "type": "dht22", "pin": 4},
        {"name": "cellar", "type": "dht22", "pin": 5},
        {"name": "hall", "type": "motion", "pin": 17},
        {"name": "door", "type": "button", "pin": 27, "debounce": 0.05},
    ]
    env = hardware_env(tmp_path / "dht", FAKE_DHT_SCRIPT_4="checksum,ok,ok",
                       FAKE_DHT_SCRIPT_5="notfound")
    result = probe(tmp_path, sensors, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = table(result.stdout)
    assert list(rows) == ["climate", "cellar", "hall", "door"]
    # 3 reads of the scripted sensor: a checksum error, then fresh values twice.
    assert rows["climate"][1:3] == ["dht22", "GPIO4"]
    assert rows["climate"][4:] == ["1/3 33%", "20.1 C, 40.1 %"]
    assert rows["cellar"][4:] == ["3/3 100%", "not_found: DHT sensor not found, check wiring"]
    assert rows["hall"][4:] == ["0/3 0%", "motion 0"]
    assert rows["door"][4:] == ["0/3 0%", "pressed 0"]
    assert result.stdout.strip().splitlines()[-1].startswith("never read well: cellar ")
    assert "Traceback" not in result.stderr
    # Each DHT was let go with exit(), so the agent can take the pins next.
    state = Path(env["FAKE_DHT_DIR"])
    for pin in (4, 5):
        assert (state / f"pin{pin}.events").read_text().split("\n")[-2].split()[1] == "exit"
        assert not (state / f"pin{pin}.held").exists()
    # And it read no faster than the library allows: never from its cache.
    assert "temperature:cached" not in (state / "pin4.events").read_text()


def test_probe_exits_zero_when_every_sensor_reads_well(tmp_path):
    result = probe(tmp_path, [{"name": "climate", "type": "dht11", "pin": 4},
                              {"name": "hall", "type": "motion", "pin": 17}],
                   "--reads", "2", env=hardware_env(tmp_path / "dht"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert table(result.stdout)["climate"][4:] == ["0/2 0%", "20.1 C, 40.1 %"]
    assert result.stdout.strip().splitlines()[-1] == "all 2 sensors read well (backend hardware)"


def test_probe_with_mock_needs_no_hardware(tmp_path):
    result = probe(tmp_path, [{"name": "soc", "type": "cpu_temperature"},
                              {"name": "bell", "type": "button", "pin": 22}],
                   "--mock", "--reads", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    value, unit = rows["soc"][5].split()
    assert 0 < float(value) < 110 and unit == "C"
    assert rows["bell"][5] == "pressed 0"
    assert "(backend mock)" in result.stdout


def test_probe_reports_a_sensor_that_cannot_open_and_a_bad_config_in_one_line(tmp_path):
    env = hardware_env(tmp_path / "dht")
    Path(env["FAKE_DHT_DIR"], "pin4.held").write_text("1")  # an orphaned pulse reader
    result = probe(tmp_path, [{"name": "climate", "type": "dht22", "pin": 4}], env=env)
    assert result.returncode == 1
    row = table(result.stdout)["climate"]
    assert row[3:5] == ["-", "not opened"]
    assert "cannot open the dht22 on GPIO4" in row[5]

    bad = probe(tmp_path, [{"name": "climate", "type": "dht22", "pin": 40}], env=env)
    assert bad.returncode == 2
    assert bad.stdout == ""
    config = tmp_path / "agent.yaml"
    line = config.read_text().splitlines().index("  pin: 40") + 1
    assert bad.stderr.strip().splitlines() == [
        f"sensor-agent: config error: {config}:{line}: sensors[0].pin: 40 is out of range 0..27"]
