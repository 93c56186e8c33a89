"""The README's first command ends in `sensor-edge-demo`: it must really run the demo."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

from processes import free_port, wait_until


def stored_agents(path) -> set[str]:
    with sqlite3.connect(path, timeout=10) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT agent FROM readings")}


def stored_series(path) -> set[tuple[str, str, str]]:
    with sqlite3.connect(path, timeout=10) as db:
        return set(db.execute("SELECT DISTINCT sensor, metric, unit FROM readings"))


# Every sensor type of the demo, and what it must store (shared/contract.md).
EXPECTED_SERIES = {
    ("climate", "temperature", "C"), ("climate", "humidity", "%"),
    ("tank", "temperature", "C"),
    ("room", "temperature", "C"), ("room", "humidity", "%"), ("room", "pressure", "hPa"),
    ("shelf", "temperature", "C"), ("shelf", "humidity", "%"),
    ("cellar", "temperature", "C"), ("cellar", "humidity", "%"),
    ("soil", "voltage", "V"), ("battery", "voltage", "V"),
}


def test_demo_runs_a_collector_and_mock_agents_that_store_readings(tmp_path):
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "sensor_edge.server.commands.demo", "--agents", "2", "--port", str(port),
         "--dir", str(tmp_path), "--seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: stored_agents(tmp_path / "readings.db") == {"demo-pi-1", "demo-pi-2"},
                   40, what="readings from both demo agents")
        wait_until(lambda: EXPECTED_SERIES <= stored_series(tmp_path / "readings.db"),
                   40, what="a reading of every demo sensor type")
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            # SIGTERM, not SIGKILL: the demo then stops the processes it started.
            demo.terminate()
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait(10)
    assert demo.returncode == 0, err
    assert f"http://127.0.0.1:{port}/api/readings" in out
    for name in ("collector.log", "demo-pi-1.log", "demo-pi-2.log"):
        log = (tmp_path / name).read_text()
        assert "Traceback" not in log
        assert "stopped" in log  # each one was stopped cleanly by the demo
