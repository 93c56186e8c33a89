"""One cadence: the sensors due together are read in one tick and handed on together;
periodic readings share frames, an edge goes out at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import yaml
from processes import wait_until
from sensor_edge.agent import agent as agent_module
from sensor_edge.agent.agent import Agent
from sensor_edge.agent.backends.mock import MockBackend
from sensor_edge.agent.sampler import Sampler
from sensor_edge.agent.sensors import open_sensors
from sensor_edge.config import load_agent_config
from sensor_edge.config.model import SensorConfig


def test_sensors_due_together_are_handed_on_together():
    backend = MockBackend(seed=7)
    sensors = open_sensors([
        SensorConfig("soc-1", "cpu_temperature", interval=0.5),
        SensorConfig("soc-2", "cpu_temperature", interval=0.5),
        SensorConfig("hall", "motion", pin=17, interval=0.5),
        SensorConfig("climate", "dht22", pin=4, interval=2.0),  # on a read thread
    ], backend)
    ticks: list[list] = []

    async def run() -> Sampler:
        sampler = Sampler(sensors, ticks.append)
        sampler.start()
        deadline = time.monotonic() + 20
        while sum(1 for t in ticks if any(s[0] == "climate" for s in t)) < 3:
            assert time.monotonic() < deadline, f"ticks so far: {ticks}"
            await asyncio.sleep(0.05)
        await sampler.stop()
        return sampler

    sampler = asyncio.run(run())
    backend.close()
    for tick in ticks:
        names = {s[0] for s in tick}
        # The quick ones always come together; a DHT read joins the tick it falls in.
        assert {"soc-1", "soc-2", "hall"} <= names, names
        assert len(tick) == len(names) + ("climate" in names)  # one read each (DHT: two rows)
    assert len(ticks) >= 8
    with_dht = [t for t in ticks if any(s[0] == "climate" for s in t)]
    assert len(with_dht) >= 3 - sampler.stats["climate"].failed


def test_periodic_readings_linger_and_an_edge_takes_them_along(make_collector, tmp_path: Path,
                                                               monkeypatch):
    collector = make_collector()
    monkeypatch.setattr(agent_module, "LINGER", 30.0)  # readings wait up to 30 s for a frame
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "agent": {"id": "pi-1"},
        "collector": {"url": collector.stream_url, "token": "token-for-pi-1-0123456789"},
        "buffer": {"path": str(tmp_path / "buffer"), "sync_interval": 600},
        "backend": "mock",
        "sensors": [{"name": "soc", "type": "cpu_temperature", "interval": 0.2},
                    {"name": "door", "type": "button", "pin": 27}],
    }))

    def stored() -> list[dict]:
        return collector.json("/api/readings?agent=pi-1")["readings"]

    async def run() -> None:
        agent = Agent(load_agent_config(str(config)), backend="mock")
        await agent.start()
        agent.backend._stop.set()  # no random edges: this test drives the button
        try:
            await asyncio.to_thread(wait_until, lambda: agent.uplink.connected, 15,
                                    what="the agent to connect")
            await asyncio.sleep(1.0)  # what the first frame after welcome took is stored
            first = len(await asyncio.to_thread(stored))
            await asyncio.sleep(3.0)
            taken = agent.buffer.last_seq
            assert len(await asyncio.to_thread(stored)) == first, "periodic readings lingered"
            assert taken > first + 10
            agent.backend.drive(27, True)  # pressed
            rows = await asyncio.to_thread(
                wait_until, lambda: [r for r in stored() if r["sensor"] == "door"], 10,
                what="the edge, at once")
            edge = rows[0]
            assert (edge["metric"], edge["value"]) == ("pressed", 1.0)
            # It took every reading taken before it along.
            assert {r["seq"] for r in await asyncio.to_thread(stored)} >= \
                set(range(1, edge["seq"] + 1))
        finally:
            await agent.stop()

    asyncio.run(run())
