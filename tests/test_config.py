"""Config files: defaults as in the contract, and one-line errors naming file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensor_edge.config import ConfigError, load_agent_config, load_collector_config

REPO = Path(__file__).resolve().parent.parent

AGENT = """\
agent:
  id: pi-kitchen
collector:
  url: ws://collector.lan:8765/v1/stream
  token: "s3cret-kitchen-token"
sensors:
  - name: kitchen-climate
    type: dht22
    pin: 4
    interval: 5
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_shipped_examples_load():
    collector = load_collector_config(str(REPO / "config" / "collector.example.yaml"))
    assert collector.port == 8765 and collector.agents
    agent = load_agent_config(str(REPO / "config" / "agent.example.yaml"))
    assert agent.sensors and agent.urls[0].startswith("ws")


def test_the_examples_commented_bus_sensors_load_once_uncommented(tmp_path):
    import re

    text = (REPO / "config" / "agent.example.yaml").read_text()
    head, _, block = text.partition("  # Parts on the 1-Wire")
    sensors = [re.sub(r"^  # ", "  ", line) for line in block.splitlines()[2:]]
    config = load_agent_config(write(tmp_path, head + "\n".join(sensors) + "\n"))
    kinds = {s.type for s in config.sensors}
    assert {"ds18b20", "bme280", "sht3x", "mcp3008", "ads1115"} <= kinds
    room = next(s for s in config.sensors if s.name == "room")
    assert room.metrics == ("temperature", "pressure") and len(room.filters) == 4


def test_collector_defaults_match_the_contract(tmp_path):
    config = load_collector_config(write(tmp_path, "agents: []\n"))
    assert (config.host, config.port) == ("0.0.0.0", 8765)
    assert config.storage == "/var/lib/sensor-collector/readings.db"
    assert config.limits.max_frame_bytes >= 256 * 1024
    assert config.limits.max_batch_readings >= 1000
    assert config.retention_days is None and config.rollup_retention_days == 3650
    config = load_collector_config(write(tmp_path, "retention_days: 30\nrollup_retention_days: 730\n"))
    assert (config.retention_days, config.rollup_retention_days) == (30, 730)


def test_agent_defaults_match_the_contract(tmp_path):
    config = load_agent_config(write(tmp_path, AGENT))
    assert config.backend == "auto"
    assert config.buffer_path == "/var/lib/sensor-agent/buffer.db"
    assert config.sensors[0].interval == 5.0
    assert config.max_buffered == 1_000_000
    assert config.sync_interval == 90.0


def test_buffer_sync_interval_in_seconds(tmp_path):
    text = AGENT + "buffer:\n  path: ./b\n  sync_interval: 10s\n"
    assert load_agent_config(write(tmp_path, text)).sync_interval == 10.0


@pytest.mark.parametrize("raw,seconds", [("5", 5.0), ("2.5", 2.5), ('"5s"', 5.0),
                                         ('"2m"', 120.0), ('"500ms"', 2.0), ('"1h"', 3600.0)])
def test_intervals_in_seconds_or_with_units(tmp_path, raw, seconds):
    config = load_agent_config(write(tmp_path, AGENT.replace("interval: 5", f"interval: {raw}")))
    # 500 ms is under the DHT22's floor, so it is raised to 2 s with a warning.
    assert config.sensors[0].interval == seconds


def test_interval_under_the_floor_is_raised_with_a_warning(tmp_path):
    config = load_agent_config(write(tmp_path, AGENT.replace("interval: 5", "interval: 0.5")))
    assert config.sensors[0].interval == 2.0
    assert len(config.warnings) == 1
    assert "config.yaml:10: sensors[0].interval" in config.warnings[0]


ERRORS = [
    # (what, text, expected line, expected key path, words in the message)
    ("unknown key", AGENT + "bakend: mock\n", 11, "bakend", "unknown key"),
    ("unknown nested key", AGENT.replace("    pin: 4", "    pin: 4\n    pim: 5"), 10,
     "sensors[0].pim", "unknown key"),
    ("bad interval", AGENT.replace("interval: 5", "interval: soon"), 10, "sensors[0].interval",
     "seconds"),
    ("negative interval", AGENT.replace("interval: 5", "interval: -1"), 10,
     "sensors[0].interval", "positive"),
    ("bad type", AGENT.replace("type: dht22", "type: dht33"), 8, "sensors[0].type",
     "one of"),
    ("pin out of range", AGENT.replace("pin: 4", "pin: 99"), 9, "sensors[0].pin", "range"),
    ("missing pin", AGENT.replace("    pin: 4\n", ""), 7, "sensors[0]", "pin"),
    ("bad url", AGENT.replace("ws://collector", "http://collector"), 4, "collector.url",
     "ws://"),
    ("missing token", AGENT.replace('  token: "s3cret-kitchen-token"\n', ""), 3, "collector",
     "token"),
    ("bad backend", AGENT + "backend: real\n", 11, "backend", "auto, hardware, mock"),
    ("duplicate key", AGENT + "agent:\n  id: x\n", 11, "agent", "duplicate"),
    ("bad agent id", AGENT.replace("id: pi-kitchen", "id: pi kitchen!"), 2, "agent.id",
     "not a valid name"),
    ("sensors not a list", AGENT.split("sensors:")[0] + "sensors: 5\n", 6, "sensors", "list"),
    ("zero sync interval", AGENT + "buffer:\n  sync_interval: 0\n", 12,
     "buffer.sync_interval", "positive"),
]


@pytest.mark.parametrize("what,text,line,key,words", ERRORS, ids=[e[0] for e in ERRORS])
def test_agent_config_errors_name_file_line_and_key(tmp_path, what, text, line, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: {key}")
    assert words in message
    assert "\n" not in message


def test_collector_config_errors(tmp_path):
    cases = [
        ("listen:\n  port: 70000\n", 2, "listen.port"),
        ("listen:\n  prot: 1\n", 2, "listen.prot"),
        ("agents:\n  - id: a\n", 2, "agents[0]"),
        ("agents:\n  - id: a\n    token: t\n  - id: a\n    token: u\n", 4, "agents[1]"),
        ("agents:\n  - id: a\n    token: t\n  - id: b\n    token: t\n", 5, "agents[1].token"),
        ("storage: mysql://x/y\n", 1, "storage"),
        ("limits:\n  max_batch_readings: 200000\n", 2, "limits.max_batch_readings"),
        ("agents: []\nrollup_retention_days: forever\n", 2, "rollup_retention_days"),
        ("agents: []\nrollup_retention_days: 0\n", 2, "rollup_retention_days"),
    ]
    for text, line, key in cases:
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as caught:
            load_collector_config(path)
        assert str(caught.value).startswith(f"{path}:{line}: {key}"), str(caught.value)


def test_agent_ids_that_would_be_one_home_assistant_device_are_refused_with_mqtt(tmp_path):
    agents = ("agents:\n  - id: pi.hall\n    token: t-1\n  - id: pi-2\n    token: t-2\n"
              "  - id: pi_hall\n    token: t-3\n")
    path = write(tmp_path, agents + "mqtt:\n  host: 127.0.0.1\n")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:6: agents[2].id: agent id 'pi_hall' and 'pi.hall' "
                              "(line 2) would be one device in Home Assistant"), message
    assert "\n" not in message
    # Without MQTT nothing meets in Home Assistant: the same agents are fine.
    assert len(load_collector_config(write(tmp_path, agents)).agents) == 3


def test_duplicate_token_error_does_not_echo_the_token(tmp_path):
    path = write(tmp_path, "agents:\n  - id: a\n    token: hush-1234\n"
                           "  - id: b\n    token: hush-1234\n")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    assert "hush-1234" not in str(caught.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "agent:\n  id: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    assert str(caught.value).startswith(f"{path}:")
    assert "not valid YAML" in str(caught.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_agent_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="empty"):
        load_collector_config(write(tmp_path, ""))


@pytest.mark.parametrize("command", ["sensor_edge.agent", "sensor_edge.server"])
def test_commands_exit_nonzero_with_one_line_and_no_traceback(tmp_path, command):
    path = write(tmp_path, AGENT.replace("type: dht22", "type: dht33") + "listen: {}\n")
    result = subprocess.run([sys.executable, "-m", command, "--config", path],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and path in lines[0], result.stderr


@pytest.mark.parametrize("command", ["sensor_edge.agent", "sensor_edge.server"])
def test_help_works(command):
    result = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and "--config" in result.stdout
