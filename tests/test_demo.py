"""The README's first command ends in `sensor-edge-demo`: it must really run the demo."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from processes import free_port


def test_demo_runs_a_collector_and_mock_agents_that_store_readings(tmp_path):
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "sensor_edge.server.demo", "--agents", "2", "--port", str(port),
         "--dir", str(tmp_path), "--seconds", "6"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:{port}/api/readings" in result.stdout
    with sqlite3.connect(tmp_path / "readings.db") as db:
        agents = dict(db.execute("SELECT agent, count(*) FROM readings GROUP BY agent"))
    assert set(agents) == {"demo-pi-1", "demo-pi-2"}
    for name in ("collector.log", "demo-pi-1.log", "demo-pi-2.log"):
        log = (tmp_path / name).read_text()
        assert "Traceback" not in log
        assert "stopped" in log  # each one was stopped cleanly by the demo
