"""`sensor-edge-demo`: a collector and a few mock agents on this machine, in one command.

It writes ordinary config files into a folder (so you can read them, and run
the same programs by hand), starts `sensor-collector` and N `sensor-agent
--mock` processes, tells you where to look, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

DEMO_SENSORS = [
    {"name": "climate", "type": "dht22", "pin": 4, "interval": 5},
    {"name": "motion", "type": "motion", "pin": 17},
    {"name": "door", "type": "button", "pin": 27, "interval": 60},
    {"name": "soc", "type": "cpu_temperature", "interval": 10},
    # The parts Pi users move to from DHTs (docs/raspberry-pi.md), simulated like the real ones.
    {"name": "tank", "type": "ds18b20", "interval": 5,
     "filters": [{"offset": -0.2}, {"round": 2}]},
    {"name": "room", "type": "bme280", "interval": 5},
    {"name": "shelf", "type": "sht3x", "interval": 5},
    {"name": "cellar", "type": "sht4x", "address": 0x45, "interval": 5},
    {"name": "soil", "type": "mcp3008", "channel": 0, "interval": 5},
    {"name": "battery", "type": "ads1115", "channel": 0, "interval": 5},
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sensor-edge-demo",
        description="Run a collector (SQLite) and mock agents on this machine until Ctrl-C.")
    p.add_argument("--agents", type=int, default=3, help="how many mock agents (default 3)")
    p.add_argument("--port", type=int, default=8765, help="collector port (default 8765)")
    p.add_argument("--dir", default="demo-data", help="where configs, databases and logs go")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop by itself after this long (default: run until Ctrl-C)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.agents <= 50:
        print("sensor-edge-demo: --agents must be from 1 to 50", file=sys.stderr)
        return 2
    workdir = Path(args.dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = _tokens(workdir, args.agents)
    collector_config = workdir / "collector.yaml"
    _write(collector_config, {
        "listen": {"host": "127.0.0.1", "port": args.port},
        "storage": str(workdir / "readings.db"),
        "agents": [{"id": agent, "token": token} for agent, token in tokens.items()],
    })
    agent_configs = []
    for agent, token in tokens.items():
        path = workdir / f"{agent}.yaml"
        _write(path, {
            "agent": {"id": agent},
            "collector": {"url": f"ws://127.0.0.1:{args.port}/v1/stream", "token": token},
            "buffer": {"path": str(workdir / f"{agent}.buffer.db")},
            "backend": "mock",
            "sensors": DEMO_SENSORS,
        })
        agent_configs.append(path)

    children: list[subprocess.Popen] = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        children.append(_spawn("sensor_edge.server", collector_config, workdir / "collector.log"))
        base = f"http://127.0.0.1:{args.port}"
        if not _wait_healthy(base, children[0], seconds=15):
            print(f"sensor-edge-demo: the collector did not start; see {workdir}/collector.log",
                  file=sys.stderr)
            return 1
        for path in agent_configs:
            children.append(_spawn("sensor_edge.agent", path, path.with_suffix(".log"),
                                   "--mock"))
        print(f"""
sensor-edge demo: a collector and {args.agents} mock agents are running.

  dashboard      {base}/
  readings       curl '{base}/api/readings?limit=10'
  agents         curl {base}/api/agents
  metrics        curl {base}/metrics
  configs, logs  {workdir}/

Try an outage: kill the collector's pid ({children[0].pid}); the agents keep
reading into their buffers and deliver everything when it is back:
  sensor-collector --config {collector_config}

Ctrl-C stops everything.
""", flush=True)
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while not stopping and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
    finally:
        # Agents first, so they can deliver what they hold before the collector goes.
        for group in (children[1:], children[:1]):
            for child in group:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in group:
                try:
                    child.wait(8)
                except subprocess.TimeoutExpired:
                    child.kill()
    print("sensor-edge demo: stopped; the data stays in", workdir)
    return 0


def _tokens(workdir: Path, count: int) -> dict[str, str]:
    """Stable tokens across demo runs, so restarted agents are still welcome."""
    store = workdir / "tokens.yaml"
    tokens = yaml.safe_load(store.read_text()) if store.exists() else {}
    tokens = tokens or {}
    for i in range(1, count + 1):
        tokens.setdefault(f"demo-pi-{i}", secrets.token_urlsafe(18))
    store.write_text(yaml.safe_dump(tokens))
    os.chmod(store, 0o600)
    return {f"demo-pi-{i}": tokens[f"demo-pi-{i}"] for i in range(1, count + 1)}


def _write(path: Path, config: dict) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.chmod(path, 0o600)  # holds tokens


def _spawn(module: str, config: Path, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", module, "--config", str(config), *extra],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_healthy(base: str, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


if __name__ == "__main__":
    sys.exit(main())
