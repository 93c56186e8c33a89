"""What Home Assistant is told about our metrics and names. Pure: no I/O.

What the config loader and the MQTT bridge share:

- :func:`entity`: the entity, device class and unit Home Assistant gets for a
  metric in a unit (the facts are the metric table in :mod:`.sensor_types`);
- :func:`ha_id`: how a name becomes part of a discovery topic or a ``unique_id``
  (the loader refuses agent ids that would meet);
- :class:`EntityIds`: distinct ids for names that ``ha_id`` would merge, the first
  seen keeping its id for good (the bridge stores them).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sensor_edge.config.sensor_types import BINARY_SENSOR, METRICS, SENSOR

@dataclass(frozen=True)
class Entity:
    """How one (metric, unit) is announced to Home Assistant."""

    component: str
    device_class: str | None
    unit: str | None  # unit_of_measurement; None: leave it out
    # The metric has a device class, but not for this unit: announced without one,
    # since Home Assistant refuses a config whose unit its device class does not know.
    unit_refused: bool = False


def entity(metric: str, unit: str) -> Entity:
    """The component, device class and unit Home Assistant gets for a metric in a unit."""
    kind = METRICS.get(metric)
    if kind is None:
        return Entity(SENSOR, None, unit or None)
    if kind.binary:
        return Entity(BINARY_SENSOR, kind.ha_device_class, None)
    ha_unit = kind.ha_unit(unit)
    if ha_unit is None:
        return Entity(SENSOR, None, unit or None, unit_refused=True)
    return Entity(SENSOR, kind.ha_device_class, ha_unit)


# Discovery topics allow only these in a node or object id; unique_ids use the same.
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9_-]")


def ha_id(name: str) -> str:
    """A name as Home Assistant's discovery topics allow it: any other character becomes '_'.

    Not one-to-one ('pi.hall' and 'pi_hall' both give 'pi_hall'): the loader refuses
    agent ids that meet this way, and :class:`EntityIds` separates sensor names that do.
    """
    return _NOT_IN_ID.sub("_", name)


# (agent, sensor, metric)
Key = tuple[str, str, str]
# (agent, sensor, metric, object_id, unique_id): one name's id, as storage keeps it.
Assignment = tuple[str, str, str, str, str]
# Hex digits of the SHA-256 a hashed object id ends in, tried in turn.
HASH_LENGTHS = (8, 16, 64)


class EntityIds:
    """The object id of every (agent, sensor, metric) known: the first seen keeps its id.

    An entity's ``unique_id`` is ``sensor_edge_<ha_id(agent)>_<object id>`` and its
    discovery topic ends in ``<ha_id(agent)>/<object id>/config``. A name's object id
    is ``ha_id(sensor + "_" + metric)`` unless that ``unique_id`` is already held, by
    a name seen earlier; then ``_`` and the first 8 hex digits of the SHA-256 of its
    raw names are added (16, then 64, then a counter, should those be held too).
    Once given, an id never changes: Home Assistant keeps an entity's history under
    its ``unique_id``.

    Pure: the assignments come from storage (:meth:`learn`) and the new ones this
    proposes are only the bridge's claims until storage has them, since another
    collector on the same database may have given that name or that id first.
    """

    def __init__(self, assignments: Iterable[Assignment] = ()) -> None:
        self._ids: dict[Key, str] = {}  # key -> object id
        self._holders: dict[str, Key] = {}  # unique_id -> key
        self.learn(assignments)

    def __contains__(self, key: Key) -> bool:
        return key in self._ids

    def object_id(self, key: Key) -> str:
        return self._ids[key]

    def unique_id(self, key: Key) -> str:
        return unique_id(key[0], self._ids[key])

    def disambiguated(self, key: Key) -> bool:
        """True if the key's object id carries a hash: another name had its plain one."""
        return self._ids[key] != _plain_object_id(key)

    def learn(self, assignments: Iterable[Assignment]) -> None:
        """Take ids storage holds (given by this collector or another) as final."""
        for agent, sensor, metric, object_id, _unique_id in assignments:
            key = (agent, sensor, metric)
            known = self._ids.get(key)
            if known is not None and known != object_id:
                raise ValueError(f"{key} is stored with two object ids: {known!r}, "
                                 f"{object_id!r}")
            self._ids[key] = object_id
            self._holders[unique_id(agent, object_id)] = key

    def propose(self, keys: Iterable[Key]) -> list[Assignment]:
        """An id for each key not known yet, in order: the first of its candidates whose
        ``unique_id`` is neither held nor proposed for an earlier key here."""
        proposed: list[Assignment] = []
        taken: set[str] = set()
        for key in dict.fromkeys(keys):
            if key in self._ids:
                continue
            for candidate in _candidates(key):
                uid = unique_id(key[0], candidate)
                if uid not in self._holders and uid not in taken:
                    taken.add(uid)
                    proposed.append((*key, candidate, uid))
                    break
        return proposed


def unique_id(agent: str, object_id: str) -> str:
    """The ``unique_id`` of an agent's entity with this object id."""
    # Independent of the topic prefixes, so re-pointing a collector keeps HA's entity history.
    return f"sensor_edge_{ha_id(agent)}_{object_id}"


def _plain_object_id(key: Key) -> str:
    _agent, sensor, metric = key
    return ha_id(f"{sensor}_{metric}")


def _candidates(key: Key) -> Iterator[str]:
    """A key's object ids in order of preference; endless, so a name never runs out even
    when others took (or were made to take) its first choices."""
    plain = _plain_object_id(key)
    digest = _digest(key)
    yield plain
    for n in HASH_LENGTHS:
        yield f"{plain}_{digest[:n]}"
    for n in itertools.count(2):
        yield f"{plain}_{digest}_{n}"


def _digest(key: Key) -> str:
    # NUL separates: no name on the wire can hold one.
    raw = "\0".join(key).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()
