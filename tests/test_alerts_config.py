"""`alerts:` in the collector's config: the contract's keys, and one-line errors."""

from __future__ import annotations

import pytest

from sensor_edge.config import ConfigError, load_collector_config
from sensor_edge.config.model import AlertRule

GOOD = """\
alerts:
  - name: freezer-warm
    agent: "*"
    sensor: freezer
    metric: temperature
    above: -12
    hysteresis: 1.0
    for: 300
    notify: ["json://127.0.0.1:9000/hook", "ntfy://ntfy.lan/freezer"]
  - name: pi-silent
    kind: stale
    notify: ["mailto://127.0.0.1:2525?from=alerts@example.com&to=ops@example.com"]
"""


def load(tmp_path, text: str):
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    return load_collector_config(str(path))


def test_the_contract_example_loads_into_frozen_rules(tmp_path):
    freezer, silent = load(tmp_path, GOOD).alerts
    assert freezer == AlertRule(name="freezer-warm", sensor="freezer", metric="temperature",
                                above=-12.0, hysteresis=1.0, for_seconds=300.0,
                                notify=("json://127.0.0.1:9000/hook", "ntfy://ntfy.lan/freezer"))
    assert silent.kind == "stale" and silent.agent == "*" and len(silent.notify) == 1
    with pytest.raises(AttributeError):
        freezer.above = 0  # type: ignore[misc]
    assert "json://" not in repr(freezer)  # URLs often hold tokens: kept out of logs


@pytest.mark.parametrize("change,expected", [
    (("above: -12", "abve: -12"), ":6: alerts[0].abve: unknown key in alerts[0]"),
    (("    above: -12\n", ""), ":2: alerts[0]: a threshold alert needs 'above' or 'below'"),
    (("json://127.0.0.1:9000/hook", "jsn://127.0.0.1/x"),
     ":9: alerts[0].notify[0]: not a usable Apprise URL (jsn://...;"),
    (("name: pi-silent", "name: freezer-warm"),
     ":10: alerts[1]: alert name 'freezer-warm' is used twice"),
    (("kind: stale", "kind: stale\n    above: 3"),
     ":12: alerts[1].above: does not apply to kind: stale"),
    (("above: -12", "above: -12\n    below: 0"), ":7: alerts[0].below: with both, 'below'"),
    (("kind: stale", "kind: flood"), ":11: alerts[1].kind: expected one of threshold, stale"),
    (("for: 300", "for: soon"), ":8: alerts[0].for: expected seconds"),
    (("hysteresis: 1.0", "hysteresis: -1"), ":7: alerts[0].hysteresis: -1 is out of range"),
    (("above: -12", "above: .nan"), ":6: alerts[0].above: expected a finite number"),
])
def test_mistakes_get_one_line_naming_file_line_and_key(tmp_path, change, expected):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, GOOD.replace(*change))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "collector.yaml") + expected), message


def test_a_bad_url_error_does_not_show_the_secret(tmp_path):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, GOOD.replace("json://127.0.0.1:9000/hook", "jsn://user:hunter2@h/x"))
    assert "hunter2" not in str(error.value)


def test_for_zero_and_durations(tmp_path):
    rules = load(tmp_path, GOOD.replace("for: 300", "for: 0")).alerts
    assert rules[0].for_seconds == 0
    assert load(tmp_path, GOOD.replace("for: 300", 'for: "5m"')).alerts[0].for_seconds == 300


def test_every_example_in_the_alerts_doc_loads(tmp_path):
    """docs/alerts.md stays true: each YAML example with alerts: passes the loader."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "alerts.md").read_text()
    examples = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if "alerts:" in b]
    assert len(examples) >= 4
    names = [rule.name for block in examples for rule in load(tmp_path, block).alerts]
    assert {"freezer-warm", "greenhouse-temperature", "pi-silent"} <= set(names)
