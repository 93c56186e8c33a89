"""The collector's limits as plain objects and config keys: a reading rate that slows
a connection down, failed logins slowed per address, connection budgets, and their
defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from sensor_edge.config import ConfigError, load_agent_config, load_collector_config
from sensor_edge.config.model import Limits
from sensor_edge.server.ingest.limits import ConnectionBudget, FailedLogins, ReadingRate


def test_reading_rate_lets_a_burst_through_then_spaces_batches_out():
    rate = ReadingRate(1000, burst=2000, now=0.0)
    assert rate.take(1500, now=0.0) == 0.0  # within the burst
    assert rate.take(500, now=0.0) == 0.0  # the burst is spent exactly
    # 1000 more at once: a second's worth over the bucket, so a second's pause.
    assert rate.take(1000, now=0.0) == pytest.approx(1.0)
    # After that pause the bucket is back at zero: the next second's readings cost a second.
    assert rate.take(1000, now=1.0) == pytest.approx(1.0)
    # Left alone, it refills, but never past the burst.
    assert rate.take(2000, now=100.0) == 0.0
    assert rate.take(1, now=100.0) == pytest.approx(0.001)


def test_reading_rate_never_refuses_a_batch_larger_than_the_burst():
    rate = ReadingRate(100, burst=100, now=0.0)
    # A batch bigger than the bucket still goes through; the debt becomes the pause.
    assert rate.take(1100, now=0.0) == pytest.approx(10.0)


def test_failed_logins_are_free_at_first_then_slowed_doubling_to_a_cap():
    logins = FailedLogins(max_delay=2.0, free=3, first_delay=0.25)
    delays = [logins.failed("10.0.0.9", now=float(i)) for i in range(8)]
    assert delays == [0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 2.0]
    # Another address is not slowed by the first one's guesses.
    assert logins.failed("10.0.0.10", now=8.0) == 0.0


def test_failed_logins_are_forgotten_after_a_quiet_while():
    logins = FailedLogins(max_delay=5.0, free=1, forget_after=600.0)
    assert [logins.failed("a", now=t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.25, 0.5]
    assert logins.failed("a", now=700.0) == 0.0  # quiet for over 600 s: counting starts again


def test_failed_logins_table_is_bounded():
    logins = FailedLogins(max_delay=5.0, max_addresses=100)
    for i in range(1000):
        logins.failed(f"10.0.{i // 256}.{i % 256}", now=float(i))
    assert len(logins) == 100


def test_failed_logins_can_be_turned_off():
    logins = FailedLogins(max_delay=0.0, free=0)
    assert all(logins.failed("a", now=float(i)) == 0.0 for i in range(20))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    return str(path)



def test_browsers_and_agents_have_budgets_of_their_own():
    budget = ConnectionBudget(max_agents=3, per_agent=2, max_live=2)
    assert [budget.take_live() for _ in range(3)] == [None, None, "max_live_connections"]
    # Browsers at their limit take nothing from the agents'.
    assert [budget.take_agent(a) for a in ("pi-1", "pi-2", "pi-3", "pi-4")] == [
        None, None, None, "max_connections"]
    budget.release_live()
    assert budget.take_live() is None
    assert (budget.agents, budget.live) == (3, 2)


def test_one_agent_cannot_take_more_than_its_share():
    budget = ConnectionBudget(max_agents=10, per_agent=2, max_live=0)
    assert [budget.take_agent("pi-1") for _ in range(3)] == [None, None,
                                                             "max_connections_per_agent"]
    assert budget.take_agent("pi-2") is None
    budget.release_agent("pi-1")
    assert budget.take_agent("pi-1") is None
    assert budget.take_live() == "max_live_connections"  # 0: no live feed at all
    for _ in range(2):
        budget.release_agent("pi-1")
    budget.release_agent("pi-2")
    assert budget.agents == 0 and budget.held("pi-1") == 0


def test_limit_keys_are_read_with_safe_defaults(tmp_path):
    default = load_collector_config(write(tmp_path, "agents: []\n")).limits
    assert default == Limits()
    assert default.handshake_timeout <= 30 and default.bad_token_max_delay > 0
    assert 0 < default.max_readings_per_second and 0 < default.max_connections
    config = load_collector_config(write(tmp_path, """\
limits:
  max_readings_per_second: 500
  handshake_timeout: 2s
  max_connections: 3
  max_live_connections: 0
  max_connections_per_agent: 1
  bad_token_max_delay: 0
"""))
    assert config.limits == Limits(max_readings_per_second=500.0, handshake_timeout=2.0,
                                   max_connections=3, max_live_connections=0,
                                   max_connections_per_agent=1, bad_token_max_delay=0.0)
    # The contract's names and defaults (shared/contract.md).
    assert (default.max_live_connections, default.max_connections_per_agent) == (100, 2)


@pytest.mark.parametrize("line,key", [
    ("max_readings_per_second: 0", "limits.max_readings_per_second"),
    ("handshake_timeout: never", "limits.handshake_timeout"),
    ("max_connections: 0", "limits.max_connections"),
    ("max_live_connections: -1", "limits.max_live_connections"),
    ("max_live_connections: many", "limits.max_live_connections"),
    ("max_connections_per_agent: 0", "limits.max_connections_per_agent"),
    ("max_connections_per_agent: 1.5", "limits.max_connections_per_agent"),
    ("bad_token_max_delay: 3600", "limits.bad_token_max_delay"),
    ("max_conections: 5", "limits.max_conections"),
])
def test_bad_limit_values_name_file_line_and_key(tmp_path, line, key):
    path = write(tmp_path, f"agents: []\nlimits:\n  {line}\n")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    assert str(caught.value).startswith(f"{path}:3: {key}: ")


@pytest.mark.parametrize("text,key", [
    ("agents:\n  - id: pi-1\n    token: 12345678901234\n", "agents[0].token"),
    ("agents: []\napi:\n  token: 98765432109876\n", "api.token"),
])
def test_a_token_that_is_not_a_string_is_refused_without_showing_it(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    message = str(caught.value)
    assert f": {key}: " in message and "quotes" in message
    assert "1234567890" not in message and "9876543210" not in message


def test_an_agent_token_that_is_not_a_string_is_refused_without_showing_it(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("agent: {id: pi-1}\ncollector:\n  url: ws://c.lan:8765/v1/stream\n"
                    "  token: 31415926535897\n")
    with pytest.raises(ConfigError) as caught:
        load_agent_config(str(path))
    assert "collector.token" in str(caught.value) and "3141592653" not in str(caught.value)
