"""The collector's registry of agents: what it keeps of each committed batch."""

from __future__ import annotations

from sensor_edge.server.ingest.agents import AgentRegistry


def latest(registry: AgentRegistry, agent: str) -> dict:
    return {f"{e['sensor']}/{e['metric']}": (e["value"], e["ts"])
            for e in next(a for a in registry.as_json() if a["id"] == agent)["latest"]}


def test_the_newest_reading_of_each_sensor_and_metric_is_kept_by_ts():
    registry = AgentRegistry(["pi-1"], [])
    registry.stored("pi-1", [
        (1, "climate", "temperature", 20.0, "C", 100.0),
        (2, "climate", "humidity", 40.0, "%", 100.0),
        (3, "climate", "temperature", 21.0, "C", 101.0),
        # Read before seq 3 by the clock (it jumped back): not the newest.
        (4, "climate", "temperature", 19.0, "C", 99.0),
        # Of equal ts, the later seq.
        (5, "climate", "humidity", 41.0, "%", 100.0),
    ], 5, now=200.0)
    assert latest(registry, "pi-1") == {"climate/temperature": (21.0, 101.0),
                                        "climate/humidity": (41.0, 100.0)}
    # A later batch replaces only what it has newer (or as new).
    registry.stored("pi-1", [(6, "climate", "temperature", 18.0, "C", 100.5),
                             (7, "climate", "humidity", 42.0, "%", 100.0),
                             (8, "soc", "temperature", 50.0, "C", 90.0)], 3, now=201.0)
    assert latest(registry, "pi-1") == {"climate/temperature": (21.0, 101.0),
                                        "climate/humidity": (42.0, 100.0),
                                        "soc/temperature": (50.0, 90.0)}
    registry.stored("pi-1", [(9, "climate", "temperature", 22.0, "C", 102.0)], 1, now=202.0)
    assert latest(registry, "pi-1")["climate/temperature"] == (22.0, 102.0)
    entry = next(a for a in registry.as_json() if a["id"] == "pi-1")
    assert (entry["readings"], entry["last_seen"]) == (9, 202.0)


def test_duplicates_count_as_a_sign_of_life_not_as_readings():
    registry = AgentRegistry(["pi-1"], [])
    registry.stored("pi-1", [(1, "s", "m", 1.0, "", 100.0)], 0, now=150.0)
    entry = next(a for a in registry.as_json() if a["id"] == "pi-1")
    assert (entry["readings"], entry["last_seen"]) == (0, 150.0)
