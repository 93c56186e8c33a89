"""The dashboard in a real headless Chromium, and the /v1/live feed behind it."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest
from browser import Browser, chromium_path
from conftest import BOTH_BACKENDS, TOKENS
from processes import wait_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from sensor_edge.server.storage import Batch, open_storage

SOC_VALUE = '[data-agent="pi-1"][data-sensor="soc"] .value'


def text_of(browser: Browser, selector: str) -> str | None:
    return browser.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
        f" return e ? e.textContent : null; }})()")


def is_number(text: str | None) -> bool:
    return bool(text) and re.fullmatch(r"-?[\d,]+(\.\d+)?", text) is not None


def series_pixels(browser: Browser, agent: str, sensor: str, metric: str,
                  band: bool = False) -> int:
    """How many pixels of a tile's chart have its series colour: the line was drawn
    (opaque), or with ``band`` the min/max band around it (a fifth opaque)."""
    alpha = "data[i + 3] > 35 && data[i + 3] < 70" if band else "data[i + 3] > 200"
    return browser.evaluate(f"""(() => {{
        const tile = document.querySelector(
            '[data-agent="{agent}"][data-sensor="{sensor}"][data-metric="{metric}"]');
        const hex = tile.dataset.color;
        const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
        let count = 0;
        for (const canvas of tile.querySelectorAll("canvas")) {{
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 0; i < data.length; i += 4)
                if ({alpha} && Math.abs(data[i] - want[0]) < 8
                    && Math.abs(data[i + 1] - want[1]) < 8 && Math.abs(data[i + 2] - want[2]) < 8)
                    count++;
        }}
        return count;
    }})()""")


@pytest.fixture
def browser(tmp_path: Path):
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    b = Browser(tmp_path)
    yield b
    b.close()


def test_dashboard_shows_live_values_and_reconnects_after_a_collector_restart(
        make_collector, make_agent, browser, tmp_path):
    collector = make_collector()
    make_agent(collector, "pi-1")
    make_agent(collector, "pi-2")
    wait_until(lambda: {a["id"] for a in collector.json("/api/agents")["agents"]
                        if a["status"] and a["connected"]} == {"pi-1", "pi-2"},
               20, what="both agents connected with a status")

    browser.navigate(collector.base + "/")
    wait_until(lambda: browser.evaluate("document.body.dataset.live") == "true", 20,
               what="the page's live feed")
    first = wait_until(lambda: (t := text_of(browser, SOC_VALUE)) and is_number(t) and t, 20,
                       what="a CPU temperature on screen")
    changed = wait_until(lambda: (t := text_of(browser, SOC_VALUE)) != first and is_number(t)
                         and t, 20, what="the CPU temperature to change on screen")
    assert changed != first

    # Every agent's health, from its status messages.
    card = '[data-agent="pi-1"].agent'
    assert text_of(browser, card + " .badge") == "live"
    health = text_of(browser, card + " .health")
    for label in ("last seen", "clock offset", "backlog", "version 0.1.0", "uptime", "CPU",
                  "clock sync"):
        assert label in health, (label, health)
    wait_until(lambda: "good" in (text_of(browser, '[data-agent="pi-1"][data-sensor="climate"]'
                                                   '[data-metric="temperature"] .reads') or ""),
               15, what="per-sensor read counts")
    # The charts drew their series, from history and live readings.
    wait_until(lambda: series_pixels(browser, "pi-1", "soc", "temperature") > 20, 15,
               what="the CPU temperature chart to draw its line")
    # Two agents, each with a DHT (temperature, humidity) and a CPU temperature at least;
    # a tile appears with its sensor's first good read (mock DHT reads fail now and then).
    wait_until(lambda: browser.evaluate("document.querySelectorAll('.tile canvas').length") >= 6,
               20, what="a chart for each of the agents' sensors")

    shot = browser.screenshot(tmp_path / "dashboard.png")
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000

    # Nothing came from anywhere but the collector: no CDN, works on a LAN.
    origin = collector.base
    outside = [u for u in browser.requested_urls()
               if not (u.startswith(origin + "/") or u == origin)]
    assert outside == []
    assert browser.page_errors() == []

    # The collector goes away and comes back on the same port: the page reconnects alone.
    collector.kill()
    wait_until(lambda: browser.evaluate("document.body.dataset.live") == "false", 15,
               what="the page to notice the collector is gone")
    collector.start()
    wait_until(lambda: browser.evaluate("document.body.dataset.live") == "true", 30,
               what="the page to reconnect")
    before = text_of(browser, SOC_VALUE)
    wait_until(lambda: (t := text_of(browser, SOC_VALUE)) != before and is_number(t), 30,
               what="live values after the reconnect")
    assert [e for e in browser.page_errors() if "WebSocket" not in e] == []


def test_live_feed_pushes_stored_readings_and_refuses_other_origins(make_collector, make_agent):
    collector = make_collector()
    agent = make_agent(collector, "pi-1")
    url = f"ws://127.0.0.1:{collector.port}/v1/live"

    with pytest.raises(InvalidStatus) as refused:
        with connect(url, origin="http://evil.example", open_timeout=5):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        with connect(url, origin=f"http://127.0.0.1:{collector.port + 1}", open_timeout=5):
            pass

    with connect(url, origin=collector.base, open_timeout=5) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "agents"
        # The registry /api/agents shows: every configured agent.
        assert [a["id"] for a in hello["agents"]] == [
            a["id"] for a in collector.json("/api/agents")["agents"]]
        assert {a["id"] for a in hello["agents"]} == set(TOKENS)
        pushed = []
        while len(pushed) < 30:
            message = json.loads(ws.recv(timeout=10))
            if message["type"] == "readings":
                pushed.extend(message["readings"])
    assert set(pushed[0]) == {"agent", "epoch", "seq", "sensor", "metric", "value", "unit", "ts"}
    assert {r["agent"] for r in pushed} == {"pi-1"}
    assert {r["epoch"] for r in pushed} == {agent.epoch()}
    # Each pushed reading is stored, and pushed once.
    seqs = [r["seq"] for r in pushed]
    assert len(seqs) == len(set(seqs))
    assert set(seqs) <= set(collector.stored_seqs("pi-1"))


def test_page_and_assets_ship_with_the_package(make_collector):
    collector = make_collector()
    status, page, headers = collector.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = page.decode()
    assert "/static/uPlot.iife.min.js" in html and "/static/dashboard.js" in html
    for asset, kind in (("uPlot.iife.min.js", "text/javascript"), ("uPlot.min.css", "text/css"),
                        ("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"),
                        ("uPlot.LICENSE.txt", "text/plain")):
        status, body, headers = collector.get("/static/" + asset)
        assert status == 200 and headers["Content-Type"].startswith(kind), asset
        assert body
    # No external references in what we wrote: the page must work with no internet.
    for asset in ("/", "/static/dashboard.js", "/static/dashboard.css"):
        assert not re.search(rb"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", collector.get(asset)[1]), asset
    assert collector.get("/static/nope.js")[0] == 404
    assert collector.get("/static/../http_api.py")[0] == 404


@BOTH_BACKENDS
def test_the_year_view_draws_a_year_of_history_with_its_band(
        storage_url, make_collector, browser):
    """A year of readings (one every 10 minutes, up to a day ago) stored straight into
    the database."""
    now = time.time()
    storage = open_storage(storage_url)
    rows = []
    for i in range(365 * 144):
        ts = now - 366 * 86400 + i * 600
        season = 10 * math.sin(2 * math.pi * i / (365 * 144))
        rows.append((i + 1, "greenhouse", "temperature", 15 + season + 5 * math.sin(i / 23),
                     "C", ts))
    storage.store([Batch("pi-1", "e", rows[i:i + 10_000]) for i in range(0, len(rows), 10_000)],
                  now)
    storage.close()
    collector = make_collector()

    browser.navigate(collector.base + "/?hours=8760")
    tile = '[data-agent="pi-1"][data-sensor="greenhouse"][data-metric="temperature"]'
    points = wait_until(lambda: int(browser.evaluate(
        f"document.querySelector('{tile}')?.dataset.points || 0")), 30,
        what="the year's points")
    step = int(browser.evaluate(f"document.querySelector('{tile}').dataset.step"))
    # About a point per pixel across the year, each from whole 1-hour rollups.
    assert 100 <= points <= 2000 and step % 3600 == 0 and 365 * 86400 / step <= 2001
    wait_until(lambda: series_pixels(browser, "pi-1", "greenhouse", "temperature") > 100, 15,
               what="the mean's line across the year")
    wait_until(lambda: series_pixels(browser, "pi-1", "greenhouse", "temperature", band=True)
               > 500, 15, what="the min/max band around it")
    assert browser.evaluate("document.getElementById('hours').value") == "8760"
    requested = [u for u in browser.requested_urls() if "/api/series?" in u]
    assert requested and "agent=pi-1" in requested[0]
    assert browser.page_errors() == []

    # A range change reloads the charts: nothing was stored in the last hour.
    browser.evaluate("(() => { const s = document.getElementById('hours'); s.value = '1';"
                     " s.dispatchEvent(new Event('change')); })()")
    wait_until(lambda: browser.evaluate(f"document.querySelector('{tile}').dataset.points")
               == "0", 15, what="the hour's (empty) reload")
    wait_until(lambda: series_pixels(browser, "pi-1", "greenhouse", "temperature") == 0, 15,
               what="the chart to empty")
