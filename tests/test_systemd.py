"""The systemd side: units that verify and are hardened, sd_notify, the installer.

systemd itself is not running here, so the units are checked with
systemd-analyze (skipped only where it is missing), the readiness and watchdog
messages against a datagram socket standing in for $NOTIFY_SOCKET, and the
installer in its --root test mode.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from processes import wait_until
from sensor_edge.runtime import systemd_notify
from sensor_edge.config.model import DEFAULT_AGENT_BUFFER, DEFAULT_COLLECTOR_STORAGE

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
INSTALL = UNITS / "install.sh"
EXPOSURE_LIMITS = {"sensor-collector": 2.5, "sensor-agent": 4.0}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze is not installed")


def unit_settings(name: str) -> dict[str, list[str]]:
    """KEY -> every value it is given in the unit (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS / f"{name}.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                          timeout=60, check=False)


# --- the units -----------------------------------------------------------------------

@needs_systemd_analyze
def test_units_as_installed_pass_systemd_analyze_verify(tmp_path):
    root = tmp_path / "root"
    result = install("--root", str(root))
    assert result.returncode == 0, result.stderr
    # verify --root resolves every dependency inside the root: give it the
    # system's own units, and the programs the venv would hold.
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for program in ("sensor-agent", "sensor-collector"):
        exe = root / "opt/sensor-edge/venv/bin" / program
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    check = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "sensor-agent.service",
         "sensor-collector.service"], capture_output=True, text=True, timeout=60, check=False)
    # Unknown or misspelt keys are only warnings: they must not appear either.
    assert (check.returncode, check.stdout + check.stderr) == (0, "")


@needs_systemd_analyze
@pytest.mark.parametrize("name", sorted(EXPOSURE_LIMITS))
def test_units_are_hardened_within_their_exposure_budget(name):
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", str(UNITS / f"{name}.service")],
        capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"{name}: exposure {exposure}")
    assert exposure <= EXPOSURE_LIMITS[name]


@pytest.mark.parametrize("name,state_file", [("sensor-agent", DEFAULT_AGENT_BUFFER),
                                             ("sensor-collector", DEFAULT_COLLECTOR_STORAGE)])
def test_units_notify_never_give_up_and_own_their_directories(name, state_file):
    s = unit_settings(name)
    assert s["Type"] == ["notify"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["Restart"] == ["always"]
    assert s["StartLimitIntervalSec"] == ["0"]
    assert "network-online.target" in s["After"] and s["Wants"] == ["network-online.target"]
    assert s["User"] == [name] and s["Group"] == [name]
    # The default paths of the config live in the directories systemd creates.
    assert s["StateDirectory"] == [Path(state_file).parent.name]
    assert Path(state_file).parent == Path("/var/lib") / s["StateDirectory"][0]
    assert s["ConfigurationDirectory"] == ["sensor-edge"]
    role = name.removeprefix("sensor-")
    assert s["ExecStart"] == [
        f"/opt/sensor-edge/venv/bin/{name} --config /etc/sensor-edge/{role}.yaml"]
    assert s["CapabilityBoundingSet"] == [""]


def test_agent_unit_grants_exactly_the_gpio_i2c_spi_devices_and_waits_for_the_clock():
    s = unit_settings("sensor-agent")
    assert s["SupplementaryGroups"] == ["gpio i2c spi"]
    assert s["DevicePolicy"] == ["closed"]
    assert sorted(s["DeviceAllow"]) == ["/dev/gpiomem rw", "char-gpiochip rw", "char-i2c rw",
                                        "char-spi rw"]
    assert "time-sync.target" in s["After"]
    # It reports clock_synced from adjtimex, which ProtectClock= would forbid.
    assert "adjtimex" in s["SystemCallFilter"] and "ProtectClock" not in s
    assert "time-sync.target" not in " ".join(s.get("Wants", []) + s.get("Requires", []))
    # lgpio writes its notification pipes in the working directory.
    assert s["WorkingDirectory"] == [f"/run/{s['RuntimeDirectory'][0]}"]
    assert f"LG_WD=/run/{s['RuntimeDirectory'][0]}" in s["Environment"]
    collector = unit_settings("sensor-collector")
    assert "SupplementaryGroups" not in collector and collector["PrivateDevices"] == ["yes"]


# --- sd_notify -----------------------------------------------------------------------

@pytest.fixture
def notify_socket(monkeypatch):
    """A datagram socket standing in for systemd's; yields (socket, received())."""
    directory = tempfile.mkdtemp(prefix="sd-", dir="/tmp")  # AF_UNIX paths are short
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    messages: list[str] = []

    def received() -> list[str]:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    yield sock, received
    sock.close()
    shutil.rmtree(directory)


def test_notify_sends_one_datagram_of_fields(notify_socket):
    _, received = notify_socket
    assert systemd_notify.notify("READY=1", "STATUS=serving")
    assert received() == ["READY=1\nSTATUS=serving"]


def test_notify_reaches_an_abstract_namespace_socket(monkeypatch):
    name = f"sensor-edge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd_notify.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_is_a_no_op_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd_notify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert systemd_notify.notify("READY=1") is False  # logged, never raised


def test_watchdog_period_is_half_the_timeout_for_this_process_only(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd_notify.watchdog_period() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd_notify.watchdog_period() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd_notify.watchdog_period() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd_notify.watchdog_period() is None


def test_watchdog_pings_come_from_the_event_loop(notify_socket):
    """A loop blocked for a while sends nothing meanwhile: systemd would restart it."""
    sock, _ = notify_socket
    sock.setblocking(True)
    sock.settimeout(0.1)
    arrivals: list[float] = []
    done = threading.Event()

    def listen():  # timestamps each datagram as it arrives, off the loop under test
        while not done.is_set():
            try:
                if sock.recv(4096) == b"WATCHDOG=1":
                    arrivals.append(time.monotonic())
            except TimeoutError:
                pass

    async def scenario():
        task = asyncio.create_task(systemd_notify.watchdog(0.05))
        await asyncio.sleep(0.5)
        time.sleep(0.8)  # noqa: ASYNC251 -- the event loop hangs, on purpose
        await asyncio.sleep(0.5)
        task.cancel()

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        asyncio.run(scenario())
    finally:
        done.set()
        listener.join()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 10
    assert max(gaps) >= 0.75  # silence while the loop was stuck
    assert sorted(gaps)[-2] < 0.75  # and only then


@pytest.mark.parametrize("program", ["collector", "agent"])
def test_services_report_ready_watchdog_and_stopping(program, monkeypatch, make_collector,
                                                     make_agent):
    name = f"sensor-edge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(0.2)
        collector = make_collector(start=program == "agent")
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
        service = collector.start() if program == "collector" else make_agent(collector)
        messages: list[str] = []

        def receive(what: str):
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
            return [m for m in messages if what in m]

        ready = wait_until(lambda: receive("READY=1"), 20, interval=0,
                           what=f"{program}'s READY=1")
        assert ready[0].split("\n")[0] == "READY=1"
        wait_until(lambda: len(receive("WATCHDOG=1")) >= 5, 20, interval=0,
                   what="watchdog pings")
        # READY came first: the watchdog starts once the service serves.
        assert messages.index(ready[0]) < messages.index("WATCHDOG=1")
        if program == "agent":
            # The unit's status line shows readings flowing to the collector.
            def flowing():
                lines = [m.removeprefix("STATUS=") for m in receive("STATUS=connected")]
                return lines and int(lines[-1].split(", ")[-1].split()[0]) > 0 and lines[-1]
            line = wait_until(flowing, 20, interval=0, what="a status line with readings sent")
            assert re.fullmatch(r"connected; \d+ good reads \(\d+ failed\), \d+ readings sent",
                                line)
        assert service.terminate() == 0
        wait_until(lambda: receive("STOPPING=1"), 5, interval=0, what="STOPPING=1")


# --- the installer -------------------------------------------------------------------

def would_run(output: str) -> list[str]:
    return [line.removeprefix("would run: ") for line in output.splitlines()
            if line.startswith("would run: ")]


def test_installer_test_mode_writes_units_and_configs_and_runs_nothing(tmp_path):
    root = tmp_path / "root"
    result = install("--root", str(root))
    assert result.returncode == 0, result.stderr
    etc = root / "etc"
    for role in ("agent", "collector"):
        unit = etc / f"systemd/system/sensor-{role}.service"
        assert unit.read_text() == (UNITS / f"sensor-{role}.service").read_text()
        config = etc / f"sensor-edge/{role}.yaml"
        assert config.read_text() == (REPO / f"config/{role}.example.yaml").read_text()
        assert config.stat().st_mode & 0o777 == 0o640  # tokens: not world-readable
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == sorted([
        "etc/sensor-edge/agent.yaml", "etc/sensor-edge/agent.yaml.example",
        "etc/sensor-edge/collector.yaml", "etc/sensor-edge/collector.yaml.example",
        "etc/systemd/system/sensor-agent.service",
        "etc/systemd/system/sensor-collector.service"])
    commands = would_run(result.stdout)
    assert "python3 -m venv --system-site-packages /opt/sensor-edge/venv" in commands
    assert (f"/opt/sensor-edge/venv/bin/pip install --quiet --upgrade {REPO}[dht,onewire,i2c]"
            in commands)
    assert "systemctl enable sensor-agent.service" in commands
    assert "systemctl enable sensor-collector.service" in commands
    users = {c.split()[-1]: c for c in commands if c.startswith("useradd")}
    for user in set(users) | {"sensor-agent", "sensor-collector"}:
        exists = subprocess.run(["getent", "passwd", user], capture_output=True,
                                check=False).returncode == 0
        assert (user in users) != exists
    if "sensor-agent" in users:
        assert "--groups gpio,i2c,spi" in users["sensor-agent"]
        assert "--shell /usr/sbin/nologin" in users["sensor-agent"]
    if "sensor-collector" in users:
        assert "gpio" not in users["sensor-collector"]
    assert not any(c.startswith("systemctl start") for c in commands)  # enabled, not started


def test_installer_is_idempotent_and_keeps_an_edited_config(tmp_path):
    root = tmp_path / "root"
    assert install("--root", str(root), "--agent").returncode == 0
    config = root / "etc/sensor-edge/agent.yaml"
    edited = config.read_text().replace("pi-kitchen", "pi-cellar")
    config.write_text(edited)
    # Pretend the first run made the venv: the second one only upgrades the package.
    python = root / "opt/sensor-edge/venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    again = install("--root", str(root), "--agent")
    assert again.returncode == 0, again.stderr
    assert config.read_text() == edited
    assert "kept /etc/sensor-edge/agent.yaml" in again.stdout
    commands = would_run(again.stdout)
    assert not any("-m venv" in c for c in commands)
    assert any(c.startswith("/opt/sensor-edge/venv/bin/pip install") for c in commands)
    assert not (root / "etc/sensor-edge/collector.yaml").exists()
    assert (root / "etc/systemd/system/sensor-agent.service").exists()
    assert not (root / "etc/systemd/system/sensor-collector.service").exists()


def test_installer_uninstall_keeps_configs_and_purge_removes_them(tmp_path):
    root = tmp_path / "root"
    assert install("--root", str(root)).returncode == 0
    (root / "opt/sensor-edge/venv/bin").mkdir(parents=True)
    (root / "var/lib/sensor-agent").mkdir(parents=True)
    (root / "var/lib/sensor-agent/buffer.db").write_text("")
    removed = install("--root", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert "systemctl disable --now sensor-agent.service" in would_run(removed.stdout)
    assert not list((root / "etc/systemd/system").iterdir())
    assert not (root / "opt/sensor-edge").exists()
    assert (root / "etc/sensor-edge/agent.yaml").exists()
    assert (root / "var/lib/sensor-agent/buffer.db").exists()
    purged = install("--root", str(root), "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/sensor-edge").exists()
    assert not (root / "var/lib/sensor-agent").exists()


def test_installer_refuses_what_it_does_not_know(tmp_path):
    result = install("--root", str(tmp_path), "--agnet")
    assert result.returncode == 2
    assert result.stderr.strip() == "install.sh: unknown option --agnet (see --help)"
    assert install("--root", str(tmp_path), "--purge").returncode == 2
    assert not list(tmp_path.iterdir())


# --- docs/raspberry-pi.md ----------------------------------------------------------------

def guide_commands() -> list[str]:
    """The `$ ` lines of the guide's console blocks."""
    text = (REPO / "docs/raspberry-pi.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, re.DOTALL)
    return [line[2:].strip() for block in blocks for line in block.splitlines()
            if line.startswith("$ ")]


def test_every_command_of_the_pi_guide_is_run_here(tmp_path):
    """Each command is run by this test, or run/printed by the installer's test mode."""
    commands = guide_commands()
    assert len(commands) >= 8
    root = tmp_path / "root"
    shown: set[str] = set()  # what the installer runs or tells the operator to run
    exercised = []
    for command in commands:
        if command.startswith("sudo systemd/install.sh"):
            result = install(*command.split()[2:], "--root", str(root))
            assert result.returncode == 0, (command, result.stderr)
            shown |= {line.strip().removeprefix("would run: ")
                      for line in result.stdout.splitlines()}
            exercised.append(command)
    for command in commands:
        if command in exercised:
            continue
        argv = command.split()
        if argv[0] == "systemd-analyze":
            if SYSTEMD_ANALYZE is None:
                pytest.skip("systemd-analyze is not installed")
            result = subprocess.run([SYSTEMD_ANALYZE, *argv[1:-1], f"{root}{argv[-1]}"],
                                    capture_output=True, text=True, timeout=60, check=False)
            name = Path(argv[-1]).stem
            exposure = float(re.search(r"exposure level for \S+: (\d+\.\d+)",
                                       result.stdout).group(1))
            assert exposure <= EXPOSURE_LIMITS[name], command
        elif "sensor-agent probe" in command:
            assert command in shown, command
            # As the operator runs it, on the config the installer wrote (off a Pi,
            # backend auto chooses the mock).
            config = root / argv[argv.index("--config") + 1].lstrip("/")
            text = config.read_text().replace("/var/lib/sensor-agent", str(tmp_path))
            config.write_text(text)
            result = subprocess.run(
                [sys.executable, "-m", "sensor_edge.agent", *argv[4:-2], "--config",
                 str(config)], capture_output=True, text=True, timeout=60, check=False)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "all 4 sensors read well" in result.stdout
        else:
            # systemctl and journalctl need systemd as PID 1: the installer prints
            # them as next steps, for the units it installed.
            assert command in shown, f"{command!r}: no test runs it"
            assert {"sensor-agent", "sensor-collector"} & set(argv), command
        exercised.append(command)
    assert sorted(exercised) == sorted(commands)
