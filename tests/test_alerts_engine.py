"""The alert engine with plain function calls: readings in, transitions out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor_edge.config.model import AlertRule
from sensor_edge.server.outputs.alerts.engine import (
    FIRING,
    OK,
    PENDING,
    AlertEngine,
    SeriesKey,
    message,
)

FREEZER = AlertRule(name="freezer-warm", sensor="freezer", metric="temperature", above=-12,
                    hysteresis=1.0, for_seconds=300)


def rows(*values_at: tuple[float, float], sensor="freezer", metric="temperature"):
    """(ts, value) pairs as stored reading rows."""
    return [(i + 1, sensor, metric, value, "C", ts) for i, (ts, value) in enumerate(values_at)]


def events(engine, agent, *values_at, **kw):
    return [(t.old, t.new, t.value, t.ts) for t in engine.readings(agent, rows(*values_at, **kw))]


def test_fires_once_the_condition_held_for_its_seconds_of_reading_time():
    engine = AlertEngine([FREEZER])
    assert events(engine, "pi", (0, -18), (10, -11.5), (200, -10)) == []
    key = SeriesKey("freezer-warm", "pi", "freezer", "temperature")
    assert engine.in_state(key) == PENDING
    # 300 s after the first breaching reading, by the readings' own clock.
    assert events(engine, "pi", (310, -9)) == [(OK, FIRING, -9, 310)]
    assert events(engine, "pi", (320, -5), (330, -8)) == []  # nothing while firing


def test_a_dip_before_for_restarts_the_count():
    engine = AlertEngine([FREEZER])
    assert events(engine, "pi", (0, -11), (200, -13), (250, -11), (500, -11)) == []
    assert events(engine, "pi", (550, -11)) == [(OK, FIRING, -11, 550)]


def test_resolves_only_past_the_hysteresis():
    engine = AlertEngine([FREEZER])
    assert events(engine, "pi", (0, -5), (300, -5)) == [(OK, FIRING, -5, 300)]
    # -12.5 is below the threshold but not by the hysteresis (1.0): still firing.
    assert events(engine, "pi", (310, -12.5), (320, -11.8), (330, -12.9)) == []
    assert events(engine, "pi", (340, -13)) == [(FIRING, OK, -13, 340)]


def test_below_and_a_band():
    tank = AlertRule(name="tank", sensor="*", metric="temperature", above=28, below=22,
                     hysteresis=0.5)
    engine = AlertEngine([tank])
    assert events(engine, "pi", (0, 25), (1, 21.9)) == [(OK, FIRING, 21.9, 1)]
    assert events(engine, "pi", (2, 22.3), (3, 28.4)) == []  # inside the hysteresis, then high
    assert events(engine, "pi", (4, 25)) == [(FIRING, OK, 25, 4)]


def test_globs_pick_the_series_and_each_series_has_its_own_state():
    engine = AlertEngine([AlertRule(name="hot", agent="pi-*", sensor="*", metric="temp*",
                                    above=30)])
    assert engine.rules_for("pi-1", "shelf", "temperature")
    assert not engine.rules_for("laptop", "shelf", "temperature")
    assert not engine.rules_for("pi-1", "shelf", "humidity")
    assert events(engine, "pi-1", (0, 31)) == [(OK, FIRING, 31, 0)]
    assert events(engine, "pi-2", (0, 29)) == []
    assert events(engine, "pi-1", (0, 99), metric="humidity") == []
    assert [(s.key.agent, s.state) for s in engine.series()] == [("pi-1", FIRING),
                                                                 ("pi-2", OK)]


def test_several_rules_on_one_series_each_keep_their_own_state():
    engine = AlertEngine([AlertRule(name=f"over-{n}", above=n) for n in (10, 20, 30)]
                         + [AlertRule(name="under-0", below=0)])
    assert events(engine, "pi", (0, 5)) == []
    fired = engine.readings("pi", rows((1, 25)))
    assert [(t.rule.name, t.new) for t in fired] == [("over-10", FIRING), ("over-20", FIRING)]
    back = engine.readings("pi", rows((2, 15)))
    assert [(t.rule.name, t.new) for t in back] == [("over-20", OK)]
    flipped = engine.readings("pi", rows((3, -1)))
    assert [(t.rule.name, t.new) for t in flipped] == [("over-10", OK), ("under-0", FIRING)]
    assert {s.key.rule: s.latest for s in engine.series()} == {
        "over-10": -1, "over-20": -1, "over-30": -1, "under-0": -1}


def test_an_older_reading_arriving_late_does_not_rewrite_the_state():
    engine = AlertEngine([AlertRule(name="hot", above=30)])
    assert events(engine, "pi", (100, 31)) == [(OK, FIRING, 31, 100)]
    assert events(engine, "pi", (50, 20)) == []


def test_a_stored_firing_state_is_adopted_and_resolves_once():
    engine = AlertEngine([FREEZER])
    key = SeriesKey("freezer-warm", "pi", "freezer", "temperature")
    engine.adopt(key, FIRING, 1000.0, -5.0)
    assert events(engine, "pi", (900, -20)) == []  # older than the stored transition
    assert events(engine, "pi", (1010, -8)) == []  # still warm: no second firing
    assert events(engine, "pi", (1020, -20)) == [(FIRING, OK, -20, 1020)]
    engine.adopt(SeriesKey("gone-rule", "pi", "s", "m"), FIRING, 1.0, 1.0)
    assert [s.key.rule for s in engine.series()] == ["freezer-warm"]


def test_stale_fires_after_stale_after_and_resolves_when_heard():
    engine = AlertEngine([AlertRule(name="silent", kind="stale", agent="pi-*")])
    seen = {"pi-1": 1000.0, "pi-2": None, "laptop": 0.0}
    assert engine.agents_seen(seen, 60, 1050) == []
    fired = engine.agents_seen(seen, 60, 1061)
    assert [(t.key.agent, t.new, t.value) for t in fired] == [("pi-1", FIRING, 61)]
    assert engine.agents_seen(seen, 60, 1100) == []  # once
    back = engine.agents_seen({"pi-1": 1105.0}, 60, 1106)
    assert [(t.key.agent, t.old, t.new) for t in back] == [("pi-1", FIRING, OK)]


def test_a_restarted_collector_gives_agents_stale_after_to_come_back():
    engine = AlertEngine([AlertRule(name="silent", kind="stale")])
    assert engine.agents_seen({"pi": 0.0}, 60, 1030, listening_since=1000) == []
    assert [t.new for t in engine.agents_seen({"pi": 0.0}, 60, 1061,
                                              listening_since=1000)] == [FIRING]


def test_message_names_alert_agent_sensor_metric_value_and_state():
    key = SeriesKey("freezer-warm", "pi-kitchen", "freezer", "temperature")
    title, body = message(FREEZER, key, "firing", -9.5, 60)
    assert "freezer-warm" in title
    for part in ("agent: pi-kitchen", "sensor: freezer", "metric: temperature",
                 "value: -9.5", "state: firing"):
        assert part in body


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=-16.0, max_value=-8.0, allow_nan=False), max_size=60),
       st.floats(min_value=0.5, max_value=3.0))
def test_firing_and_resolved_alternate_and_never_flap(values, hysteresis):
    """Whatever the values: transitions alternate, firing first; a resolve needs a value
    past the hysteresis; a firing needs breaching readings for `for` seconds."""
    rule = AlertRule(name="r", above=-12, hysteresis=hysteresis, for_seconds=10)
    engine = AlertEngine([rule])
    readings = [(i * 5.0, v) for i, v in enumerate(values)]
    seen = events(engine, "pi", *readings)
    news = [new for _old, new, _v, _ts in seen]
    assert news == [FIRING, OK] * (len(news) // 2) + [FIRING] * (len(news) % 2)
    for _old, new, value, ts in seen:
        if new == OK:
            assert value <= -12 - hysteresis
        else:  # the readings of the last `for` seconds all breached
            held = [v for t, v in readings if ts - rule.for_seconds <= t <= ts]
            assert all(v > -12 for v in held)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-12.9, max_value=-11.0, allow_nan=False), max_size=60))
def test_wobbling_inside_the_hysteresis_after_firing_sends_nothing(values):
    engine = AlertEngine([FREEZER])
    assert events(engine, "pi", (0, -5), (300, -5)) == [(OK, FIRING, -5, 300)]
    assert events(engine, "pi", *[(301 + i, v) for i, v in enumerate(values)]) == []
