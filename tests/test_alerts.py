"""Alerts end to end: a real collector, real receivers (json:// over HTTP, mailto:// over
SMTP), readings sent over the real protocol with chosen values and times."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest
from alert_receivers import HandAgent, JSONReceiver, SMTPReceiver
from conftest import BOTH_BACKENDS, POSTGRES_ONLY, TOKENS
from processes import wait_until
from test_dashboard import browser  # noqa: F401 (fixture)
from test_mqtt import names, shared_subscriber  # noqa: F401 (fixtures)

T0 = 1_700_000_000.0  # reading time: `for` is measured on it, so a test need not wait


def freezer_rule(*urls: str, **overrides) -> dict:
    return {"name": "freezer-warm", "sensor": "freezer", "metric": "temperature",
            "above": -12, "hysteresis": 1.0, "for": 300, "notify": list(urls), **overrides}


def sentinel_rule(*urls: str) -> dict:
    """A rule on another sensor: its message, sent after the readings under test, proves
    that everything they caused has been sent (one receiver sends in order)."""
    return {"name": "sentinel", "sensor": "sentinel", "above": 0, "notify": list(urls)}


@pytest.fixture
def receiver():
    r = JSONReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def smtp():
    s = SMTPReceiver().start()
    yield s
    s.stop()


def metric(collector, name: str) -> float:
    text = collector.get("/metrics")[1].decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_fires_once_past_for_ignores_wobble_resolves_once(make_collector, receiver, smtp):
    collector = make_collector(alerts=[freezer_rule(receiver.url, smtp.url)])
    pi = HandAgent(collector.stream_url, "pi-1", TOKENS["pi-1"])
    pi.send((T0, -18), (T0 + 10, -11), (T0 + 200, -10.5))  # pending, not 300 s yet
    assert collector.json("/api/alerts")["alerts"][0]["state"] == "pending"
    pi.send((T0 + 310, -9.5))
    wait_until(lambda: receiver.received(), 20, what="the firing notification")
    # Wobbling inside the hysteresis (-13 < v <= -12 is not "back"), then a clear recovery.
    pi.send((T0 + 320, -12.5), (T0 + 330, -11.9), (T0 + 340, -12.8), (T0 + 350, -11.5))
    pi.send((T0 + 360, -15))
    wait_until(lambda: len(receiver.received()) >= 2, 20, what="the resolved notification")
    firing, resolved = receiver.received()  # exactly two, in order
    assert "freezer-warm" in firing["title"] and "freezer-warm" in resolved["title"]
    for part in ("agent: pi-1", "sensor: freezer", "metric: temperature", "value: -9.5",
                 "state: firing"):
        assert part in firing["message"]
    assert "state: resolved" in resolved["message"] and "value: -15" in resolved["message"]
    wait_until(lambda: len(smtp.received()) >= 2, 20, what="both mails")
    (subject1, body1), (subject2, body2) = smtp.received()
    assert "freezer-warm" in subject1 and "state: firing" in body1 and "agent: pi-1" in body1
    assert "freezer-warm" in subject2 and "state: resolved" in body2
    [alert] = collector.json("/api/alerts")["alerts"]
    assert alert == {"name": "freezer-warm", "agent": "pi-1", "sensor": "freezer",
                     "metric": "temperature", "state": "ok", "since": T0 + 360, "value": -15}
    assert metric(collector, "sensor_edge_alert_notifications_sent_total") == 4
    pi.close()


def test_wobbling_at_the_threshold_sends_nothing(make_collector, receiver):
    collector = make_collector(alerts=[freezer_rule(receiver.url), sentinel_rule(receiver.url)])
    pi = HandAgent(collector.stream_url, "pi-1", TOKENS["pi-1"])
    # Over the threshold again and again, never for 300 s in a row.
    wobble = [(T0 + 60 * i, -11.5 if i % 4 else -12.5) for i in range(40)]
    pi.send(*wobble)
    pi.send((T0, 1), sensor="sentinel")
    wait_until(lambda: receiver.received(), 20, what="the sentinel's notification")
    assert [m["title"].split()[0] for m in receiver.received()] == ["sentinel"]
    text = collector.get("/metrics")[1].decode()
    assert 'sensor_edge_alert_firing{agent="pi-1",alert="freezer-warm",metric="temperature",' \
           'sensor="freezer"} 0.0' in text
    pi.close()


def test_a_receiver_down_for_a_while_gets_the_message_when_back(make_collector, receiver,
                                                                 smtp):
    collector = make_collector(alerts=[freezer_rule(receiver.url, smtp.url, **{"for": 0})])
    receiver.stop()
    pi = HandAgent(collector.stream_url, "pi-1", TOKENS["pi-1"])
    pi.send((T0, -5))
    # The other receiver is not held up by the one that is down.
    wait_until(lambda: smtp.received(), 20, what="the mail while the webhook is down")
    wait_until(lambda: metric(collector, "sensor_edge_alert_notifications_failed_total") >= 2,
               20, what="failed attempts to be counted")
    assert collector.json("/api/alerts")["alerts"][0]["state"] == "firing"
    receiver.start()  # same port
    wait_until(lambda: receiver.received(), 30, what="the retried notification")
    [message] = receiver.received()
    assert "state: firing" in message["message"]
    pi.close()


def alert_rows(storage: str) -> list[tuple]:
    query = "SELECT rule, agent, state, notified FROM alert_state ORDER BY rule, agent"
    if storage.startswith("postgres"):
        import psycopg

        with psycopg.connect(storage) as db:
            return db.execute(query).fetchall()
    with sqlite3.connect(storage, timeout=10) as db:
        return db.execute(query).fetchall()


@BOTH_BACKENDS
def test_kill_9_while_firing_neither_resends_nor_forgets(make_collector, receiver):
    rules = [freezer_rule(receiver.url, **{"for": 0})]
    collector = make_collector(alerts=rules)
    pi = HandAgent(collector.stream_url, "pi-1", TOKENS["pi-1"])
    pi.send((T0, -5))
    wait_until(lambda: receiver.received(), 20, what="the firing notification")
    wait_until(lambda: alert_rows(collector.storage) == [("freezer-warm", "pi-1", "firing", 1)],
               10, what="the notification to be marked sent")
    pi.close()
    collector.kill()  # SIGKILL
    again = make_collector(alerts=rules, port=collector.port, storage=collector.storage,
                           name="collector-again")
    assert again.json("/api/alerts")["alerts"][0]["state"] == "firing"
    pi = HandAgent(again.stream_url, "pi-1", TOKENS["pi-1"])
    pi.send((T0 + 10, -4))  # still warm: no second firing
    pi.send((T0 + 20, -20))
    wait_until(lambda: len(receiver.received()) >= 2, 20, what="the resolved notification")
    assert [m["message"].splitlines()[1] for m in receiver.received()] == [
        "state: firing", "state: resolved"]
    pi.close()


def test_a_stale_agent_fires_and_resolves(make_collector, receiver):
    collector = make_collector(stale_after=1.0, alerts=[
        {"name": "pi-silent", "kind": "stale", "agent": "pi-2", "notify": [receiver.url]}])
    pi = HandAgent(collector.stream_url, "pi-2", TOKENS["pi-2"])
    pi.send((time.time(), 20))
    pi.close()
    wait_until(lambda: receiver.received(), 20, what="the stale notification")
    [firing] = receiver.received()
    assert "pi-silent" in firing["title"]
    assert "agent: pi-2" in firing["message"] and "state: firing" in firing["message"]
    pi = HandAgent(collector.stream_url, "pi-2", TOKENS["pi-2"])
    pi.send((time.time(), 21))
    wait_until(lambda: len(receiver.received()) >= 2, 20, what="the resolved notification")
    assert "state: resolved" in receiver.received()[1]["message"]
    pi.close()


@POSTGRES_ONLY
def test_two_collectors_on_one_database_notify_once_per_transition(make_collector, receiver):
    rules = [freezer_rule(receiver.url, **{"for": 0}),
             {"name": "pi-silent", "kind": "stale", "agent": "pi-3", "notify": [receiver.url]}]
    one = make_collector(alerts=rules, stale_after=1.0, name="one")
    two = make_collector(alerts=rules, stale_after=1.0, name="two")
    # The freezer warms up, seen by collector one; the agent fails over to two, where
    # it is still warm (two's memory said ok: its firing loses the compare-and-set),
    # then cools down.
    pi = HandAgent(one.stream_url, "pi-1", TOKENS["pi-1"])
    pi.send((T0, -5))
    wait_until(lambda: receiver.received(), 20, what="the firing notification")
    pi.close()
    pi = HandAgent(two.stream_url, "pi-1", TOKENS["pi-1"])
    pi.send((T0 + 10, -4))
    pi.send((T0 + 20, -20))
    wait_until(lambda: len(receiver.received()) >= 2, 20, what="the resolved notification")
    # pi-3 goes silent: both collectors judge it stale, only one tells.
    pi3 = HandAgent(one.stream_url, "pi-3", TOKENS["pi-3"])
    pi3.send((time.time(), 1), sensor="x")
    pi3.close()
    wait_until(lambda: len(receiver.received()) >= 3, 20, what="the stale notification")
    pi3 = HandAgent(two.stream_url, "pi-3", TOKENS["pi-3"])
    pi3.send((time.time(), 1), sensor="x")
    wait_until(lambda: len(receiver.received()) >= 4, 20, what="the stale alert's resolve")
    # Both collectors agree on what is stored; and nothing more came (the sentinel).
    for collector in (one, two):
        wait_until(lambda c=collector: {a["name"]: a["state"] for a in
                                        c.json("/api/alerts")["alerts"]}
                   == {"freezer-warm": "ok", "pi-silent": "ok"}, 10, what="states to agree")
    pi.send((T0 + 30, 1), sensor="freezer")  # a fresh firing, one message
    wait_until(lambda: len(receiver.received()) >= 5, 20, what="the second firing")
    titles = [m["title"].split(":")[0] for m in receiver.received()]
    assert titles == ["freezer-warm firing", "freezer-warm resolved", "pi-silent firing",
                      "pi-silent resolved", "freezer-warm firing"]
    pi.close()
    pi3.close()


def test_each_rule_is_a_problem_binary_sensor_in_home_assistant(
        make_collector, receiver, names, shared_subscriber):  # noqa: F811 (fixtures)
    from test_mqtt import SHARED_BROKER, mqtt_section

    prefix, discovery = names
    sub = shared_subscriber
    collector = make_collector(mqtt=mqtt_section(SHARED_BROKER, prefix, discovery),
                               alerts=[freezer_rule(receiver.url, **{"for": 0}),
                                       {"name": "pi-silent", "kind": "stale"}])
    config_topic = f"{discovery}/binary_sensor/sensor_edge_collector/alert_freezer-warm/config"
    wait_until(lambda: sub.last(config_topic), 15, what="the rule's discovery config")
    config = json.loads(sub.last(config_topic))
    assert config["device_class"] == "problem"
    state_topic = config["state_topic"]
    assert state_topic == f"{prefix}/collector/alerts/freezer-warm"
    assert sub.last(f"{discovery}/binary_sensor/sensor_edge_collector/alert_pi-silent/config")
    wait_until(lambda: sub.last(state_topic), 10, what="the rule's first state")
    assert json.loads(sub.last(state_topic)) == {"state": "OFF", "firing": []}
    pi = HandAgent(collector.stream_url, "pi-1", TOKENS["pi-1"])
    pi.send((T0, -5))
    wait_until(lambda: json.loads(sub.last(state_topic))["state"] == "ON", 10,
               what="the binary sensor to turn on")
    [series] = json.loads(sub.last(state_topic))["firing"]
    assert series["agent"] == "pi-1" and series["value"] == -5
    pi.send((T0 + 10, -20))
    wait_until(lambda: json.loads(sub.last(state_topic))["state"] == "OFF", 10,
               what="the binary sensor to turn off")
    pi.close()


def test_the_dashboard_shows_firing_alerts_at_the_top(
        make_collector, receiver, browser):  # noqa: F811 (a fixture)
    from test_dashboard import text_of

    collector = make_collector(alerts=[freezer_rule(receiver.url, **{"for": 0})])
    pi = HandAgent(collector.stream_url, "pi-1", TOKENS["pi-1"])
    pi.send((T0, -5))
    browser.navigate(collector.base + "/")
    banner = '#alerts .alert[data-alert="freezer-warm"]'
    text = wait_until(lambda: text_of(browser, banner), 20, what="the firing alert on the page")
    assert "freezer-warm firing: pi-1 freezer temperature = -5" in text
    assert browser.evaluate("document.getElementById('alerts').hidden") is False
    assert browser.evaluate(
        "document.getElementById('alerts').compareDocumentPosition("
        "document.getElementById('agents')) & Node.DOCUMENT_POSITION_FOLLOWING")  # above
    pi.send((T0 + 10, -20))
    wait_until(lambda: browser.evaluate("document.getElementById('alerts').hidden"), 20,
               what="the banner to go once resolved")
    assert browser.page_errors() == []
    pi.close()
