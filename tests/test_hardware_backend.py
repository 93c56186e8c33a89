"""The hardware backend, proven off a Pi.

Digital inputs run gpiozero's own code on its MockFactory (chosen the way an
operator chooses lgpio on a Pi 5: `pin_factory:` or GPIOZERO_PIN_FACTORY).
DHT sensors run against tests/fakes/adafruit_dht.py, a stand-in at the
library boundary that behaves as adafruit_dht does; tests/fakes/board.py
replaces SIGTERM's handler on import, as recent Blinka releases do.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from processes import FAKES, wait_until
from sensor_edge.agent.backends import choose_backend
from sensor_edge.agent.backends.hardware import HardwareBackend
from sensor_edge.agent.sampler import Sampler
from sensor_edge.agent.sensors import open_sensors
from sensor_edge.config import ConfigError, load_agent_config
from sensor_edge.runtime.service import StartupError


def agent_config(tmp_path: Path, sensors: list[dict], **extra) -> object:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({
        "agent": {"id": "pi-1"},
        "collector": {"url": "ws://127.0.0.1:9/v1/stream", "token": "t"},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "sensors": sensors, **extra}, sort_keys=False))
    return load_agent_config(str(path))


@pytest.fixture
def fake_dht(monkeypatch):
    """The stand-in adafruit_dht module, imported fresh; SIGTERM's handler restored after."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delenv("FAKE_DHT_DIR", raising=False)
    for name in ("adafruit_dht", "board"):
        sys.modules.pop(name, None)
    handler = signal.getsignal(signal.SIGTERM)
    import adafruit_dht

    yield adafruit_dht
    signal.signal(signal.SIGTERM, handler)
    for name in ("adafruit_dht", "board"):
        sys.modules.pop(name, None)


async def sample(sensors, until, timeout: float, drive=None) -> list:
    """Run a Sampler over ``sensors`` until ``until(emitted)``; return what it emitted.

    ``drive(emitted)``, if given, runs first on a thread of its own, as gpiozero's
    edges do, so it can wait on the readings the sampler emits meanwhile.
    """
    emitted: list = []
    sampler = Sampler(sensors, emitted.extend)
    sampler.start()
    try:
        if drive is not None:
            await asyncio.to_thread(drive, emitted)
        try:
            await asyncio.to_thread(wait_until, lambda: until(emitted), timeout,
                                    what="the readings wanted")
        except AssertionError as e:
            raise AssertionError(f"{e}; emitted: {emitted}") from None
    finally:
        await sampler.stop()
    return emitted, sampler


def of(emitted: list, name: str) -> list:
    return [s for s in emitted if s[0] == name]


# --- digital inputs on gpiozero's MockFactory ------------------------------------------

def test_pin_factory_comes_from_config_then_gpiozero_variable(monkeypatch):
    from gpiozero.pins.mock import MockFactory

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    assert HardwareBackend().pin_factory_name == "mock"
    assert HardwareBackend("lgpio").pin_factory_name == "lgpio"
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY")
    assert HardwareBackend().pin_factory_name is None  # gpiozero's own order: lgpio first
    backend = choose_backend("hardware", "mock")
    try:
        assert isinstance(backend._factory(), MockFactory)
    finally:
        backend.close()


def test_a_pin_factory_that_cannot_load_is_a_one_line_error(tmp_path):
    pytest.importorskip("gpiozero")
    try:
        import lgpio  # noqa: F401
        pytest.skip("lgpio is installed here")
    except ImportError:
        pass
    config = agent_config(tmp_path, [{"name": "hall", "type": "motion", "pin": 17}],
                          backend="hardware", pin_factory="lgpio")
    backend = choose_backend(config.backend, config.pin_factory)
    with pytest.raises(StartupError) as e:
        open_sensors(config.sensors, backend)
    assert "lgpio" in str(e.value) and "python3-lgpio" in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_pin_factory_and_misplaced_debounce_name_file_line_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"agent.yaml:\d+: pin_factory: expected one of"):
        agent_config(tmp_path, [], pin_factory="gpiod")
    with pytest.raises(ConfigError, match=r"agent.yaml:\d+: sensors\[0\].debounce: debounce "
                                          r"applies to motion and button"):
        agent_config(tmp_path, [{"name": "c", "type": "dht22", "pin": 4, "debounce": 0.1}])


def test_edges_on_mock_pins_become_readings_debounced_as_configured(tmp_path):
    debounce = 0.2
    config = agent_config(tmp_path, [
        {"name": "door", "type": "button", "pin": 22, "debounce": "200ms"},
        {"name": "bell", "type": "button", "pin": 23},
        {"name": "hall", "type": "motion", "pin": 17},
    ], backend="hardware", pin_factory="mock")
    backend = choose_backend(config.backend, config.pin_factory)
    sensors = open_sensors(config.sensors, backend)
    pins = backend.pin_factory.pin

    def edges(states, *numbers):
        for state in states:  # a button pulls up: pressed is low
            for pin in numbers:
                pins(pin).drive_low() if state == 0 else pins(pin).drive_high()

    def window_over(emitted, door: int, bell: int, what: str) -> None:
        """Wait for the readings those edges give, then for the door's debounce
        window (from its last reading) to run out: that time passing is what is
        under test, as the next edge must then be reported at once, not settled."""
        wait_until(lambda: len(of(emitted, "door")) >= door and len(of(emitted, "bell")) >= bell,
                   5, what=f"the readings of {what}")
        last = of(emitted, "door")[-1][4]
        wait_until(lambda: time.time() >= last + debounce, debounce + 5, interval=0.01,
                   what=f"the door's debounce window after {what} to end")

    def drive(emitted):
        # A bouncing press then, once the window is over, a bouncing release, on both buttons.
        edges((0, 1, 0, 1, 0), 22, 23)
        window_over(emitted, 1, 5, "the bouncing press")
        edges((1, 0, 1), 22, 23)
        window_over(emitted, 2, 8, "the bouncing release")
        # Pressed and let go within the window: the settled state still arrives.
        edges((0, 1), 22)
        pins(17).drive_high()  # a PIR: motion is high

    emitted, _ = asyncio.run(sample(
        sensors, lambda e: len(of(e, "door")) >= 4 and of(e, "hall"), 10, drive))
    backend.close()
    door = of(emitted, "door")
    assert [s[2] for s in door] == [1.0, 0.0, 1.0, 0.0]
    assert {(s[1], s[3]) for s in door} == {("pressed", "")}
    # Without debounce, every edge of the chatter is a reading.
    assert [s[2] for s in of(emitted, "bell")] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert [(s[1], s[2]) for s in of(emitted, "hall")] == [("motion", 1.0)]
    # The settled release came one debounce window after the press, not before.
    assert door[3][4] - door[2][4] >= debounce - 0.01
    assert all(abs(s[4] - time.time()) < 30 for s in emitted)


def test_a_settle_timer_running_late_reports_no_bounce_of_the_next_window(tmp_path,
                                                                         monkeypatch):
    """A settle timer is a thread and may run late: one armed in a window that has
    ended must not report a bounce inside the next window."""
    import threading

    from sensor_edge.agent import sensors as sensors_module

    timers: list[threading.Timer] = []

    class HeldTimer(threading.Timer):
        def start(self):  # runs when the test says, as a thread of its own
            timers.append(self)

    monkeypatch.setattr(sensors_module.threading, "Timer", HeldTimer)
    debounce = 0.2
    config = agent_config(tmp_path, [{"name": "door", "type": "button", "pin": 22,
                                      "debounce": debounce}],
                          backend="hardware", pin_factory="mock")
    backend = choose_backend(config.backend, config.pin_factory)
    [door] = open_sensors(config.sensors, backend)
    pin = backend.pin_factory.pin(22)
    readings: list = []
    door.on_edge(readings.append)
    try:
        pin.drive_low()  # pressed: reported at once
        pin.drive_high()  # a bounce: a settle timer is armed
        pin.drive_low()
        assert [r[2] for r in readings] == [1.0] and len(timers) == 1
        # The debounce time passing is what is under test.
        wait_until(lambda: time.time() >= readings[0][4] + debounce, debounce + 5,
                   interval=0.01, what="the press's debounce window to end")
        pin.drive_high()  # let go, after the window: reported at once
        pin.drive_low()  # a bounce of that release
        assert [r[2] for r in readings] == [1.0, 0.0]
        stale = timers[0]
        stale.interval = 0  # it was due: it runs now, late
        threading.Thread.start(stale)
        stale.join(5)
        for timer in timers[1:]:  # one armed for the new window runs on time
            threading.Thread.start(timer)
            timer.join(5)
        # The bounce's settled state arrives, one window after the release, not before.
        assert [r[2] for r in readings] == [1.0, 0.0, 1.0]
        assert readings[2][4] - readings[1][4] >= debounce - 0.01
    finally:
        door.close()
        backend.close()


# --- DHT at the adafruit_dht boundary ----------------------------------------------------

def test_dht_failures_are_counted_dropped_and_never_repeated_as_new(tmp_path, fake_dht):
    # One failure of each kind between two good reads, then good ones only.
    fake_dht.SCRIPT = ["checksum", "ok", "none", "buffer", "hot", "notfound"] + ["ok"] * 20
    good = 2
    config = agent_config(tmp_path, [
        {"name": "climate", "type": "dht22", "pin": 4, "interval": 2},
        # Asked for 1 s: the library caches for 2 s, so a fresh read comes every 2 s.
        {"name": "old", "type": "dht11", "pin": 5, "interval": 1},
    ], backend="hardware")
    backend = choose_backend(config.backend)
    sensors = open_sensors(config.sensors, backend)

    def done(emitted):
        return all(len([s for s in of(emitted, n) if s[1] == "temperature"]) >= good
                   for n in ("climate", "old"))

    emitted, sampler = asyncio.run(sample(sensors, done, 40))
    backend.close()
    for name, pin in (("climate", 4), ("old", 5)):
        temperatures = [s[2] for s in emitted if s[0] == name and s[1] == "temperature"]
        humidities = [s[2] for s in emitted if s[0] == name and s[1] == "humidity"]
        # Only the fresh good measurements, each once: 20.0 C / 40.0 %, then 20.1 / 40.1.
        assert temperatures[:good] == [20.0, 20.1] and humidities[:good] == [40.0, 40.1]
        stats = sampler.stats[name]
        assert stats.good >= good
        assert {k: stats.failures.get(k) for k in
                ("checksum", "no_data", "timeout", "implausible", "not_found")} == \
            {"checksum": 1, "no_data": 1, "timeout": 1, "implausible": 1, "not_found": 1}
        events = [(e, t) for p, e, t in fake_dht.EVENTS if p == pin]
        # The agent reads temperature first: a cached one would be a read begun
        # inside the library's window, answering with an old value or None.
        starts = [t for e, t in events if e.startswith("temperature:")]
        assert ("temperature:cached" not in {e for e, _ in events})
        assert min(b - a for a, b in itertools.pairwise(starts)) > 2.0
        assert events[-1][0] == "exit"  # the pin is free for the next start
    assert not fake_dht.HELD


def test_opening_stops_at_a_held_pin_and_releases_the_pins_already_taken(tmp_path, fake_dht):
    fake_dht.HELD.add(5)  # a leftover libgpiod_pulsein of an agent killed with -9
    config = agent_config(tmp_path, [
        {"name": "climate", "type": "dht22", "pin": 4},
        {"name": "cellar", "type": "dht22", "pin": 5},
    ], backend="hardware")
    with pytest.raises(StartupError) as e:
        open_sensors(config.sensors, choose_backend(config.backend))
    assert "'cellar'" in str(e.value) and "GPIO5" in str(e.value)
    assert fake_dht.HELD == {5}  # pin 4 was taken, then given back with exit()
    assert [e for p, e, _ in fake_dht.EVENTS if p == 4] == ["open", "exit"]


# --- a real agent process with a hardware DHT --------------------------------------------

def test_sigterm_stops_an_agent_with_a_hardware_dht_cleanly(make_collector, make_agent):
    """Blinka's import replaces SIGTERM's handler; the agent's own must win, and exit()."""
    collector = make_collector()
    agent = make_agent(collector, "pi-3", mock=False,
                       sensors=[{"name": "climate", "type": "dht22", "pin": 4, "interval": 2}])
    state = agent.fake_dht_dir
    rows = wait_until(lambda: collector.json("/api/readings?agent=pi-3&sensor=climate")
                      ["readings"], 20, what="DHT readings from the hardware path")
    assert (rows[0]["metric"], rows[0]["value"], rows[0]["unit"]) in {
        ("temperature", 20.0, "C"), ("humidity", 40.0, "%")}
    status = wait_until(lambda: collector.agent_entry("pi-3")["status"], 20, what="pi-3's status")
    assert status["backend"] == "hardware"
    assert "--mock" not in agent.args

    started = time.monotonic()
    code = agent.terminate()
    elapsed = time.monotonic() - started
    events = (state / "pin4.events").read_text().split("\n")
    assert code == 0, agent.log()[-2000:]  # the stand-in's handler would exit 143
    assert elapsed < 5
    assert any(line.split()[1:2] == ["exit"] for line in events if line)
    assert not (state / "pin4.held").exists()
    assert "Traceback" not in agent.log()

    # exit() freed the pin: a restart takes it again and reads on.
    before = len(collector.stored_seqs("pi-3"))
    agent.start()
    wait_until(lambda: len(collector.stored_seqs("pi-3")) > before, 20,
               what="readings after the restart")
    # Killed with -9 there is no exit(): the pin stays held, and the next start says so.
    agent.kill()
    assert (state / "pin4.held").exists()
    result = subprocess.run(
        [sys.executable, "-m", "sensor_edge.agent", "--config", str(agent.config_path)],
        capture_output=True, text=True, timeout=30, check=False, env=agent.environment())
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(error) == 1 and "GPIO4" in error[0] and "libgpiod_pulsein" in error[0]
    assert "Traceback" not in result.stderr
