"""The `ha_entity_ids` table: the Home Assistant id each (agent, sensor, metric) was given.

Ids are given first come, first served and never change (config/home_assistant.py,
``EntityIds``), so they must outlive a restart and be the same for every
collector on one database. Both rest on the table's two keys, (agent, sensor,
metric) and ``unique_id``: a claim is an ``INSERT ... ON CONFLICT DO NOTHING``,
and what is read back afterwards is the winner, whether this claim or another's.
The SQL suits SQLite and PostgreSQL alike; ``mark`` is the driver's placeholder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HA_ENTITY_ID_COLUMNS = ("agent", "sensor", "metric", "object_id", "unique_id")
_COLUMNS = ", ".join(HA_ENTITY_ID_COLUMNS)


def load(db: Any) -> list[tuple]:
    """Every stored id, as tuples in :data:`HA_ENTITY_ID_COLUMNS` order."""
    return db.execute(f"SELECT {_COLUMNS} FROM ha_entity_ids").fetchall()


def claim(db: Any, mark: str, proposals: Iterable[tuple]) -> list[tuple]:
    """Store each proposed id (a row in :data:`HA_ENTITY_ID_COLUMNS` order) unless its
    name or its ``unique_id`` is taken; return, for each, the stored rows of that name
    and of whoever holds that ``unique_id``: the proposal itself if it won."""
    found: dict[tuple, None] = {}
    for row in proposals:
        agent, sensor, metric, _object_id, unique_id = row
        db.execute(f"INSERT INTO ha_entity_ids ({_COLUMNS}) VALUES ({', '.join([mark] * 5)}) "
                   "ON CONFLICT DO NOTHING", tuple(row))
        winners = db.execute(
            f"SELECT {_COLUMNS} FROM ha_entity_ids WHERE (agent = {mark} AND sensor = {mark} "
            f"AND metric = {mark}) OR unique_id = {mark}",
            (agent, sensor, metric, unique_id)).fetchall()
        found.update(dict.fromkeys(tuple(w) for w in winners))
    return list(found)
