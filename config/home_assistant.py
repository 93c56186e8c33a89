"""What Home Assistant is told about our metrics and names. Pure: no I/O.

What the config loader and the MQTT bridge share:

- :func:`entity`: the entity, device class and unit Home Assistant gets for a
  metric in a unit (the facts are the metric table in :mod:`.sensor_types`);
- :func:`ha_id`: how a name becomes part of a discovery topic or a ``unique_id``
  (the loader refuses agent ids that would meet);
- :class:`EntityIds`: distinct, stable ids for names that ``ha_id`` would merge.
"""

from __future__ import annotations

import hashlib
import re
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
HASH_LENGTHS = (8, 16, 64)


class EntityIds:
    """The object id of every (agent, sensor, metric) seen, distinct and stable.

    An entity's ``unique_id`` is ``sensor_edge_<ha_id(agent)>_<object id>`` and its
    discovery topic ends in ``<ha_id(agent)>/<object id>/config``. The object id is
    ``ha_id(sensor + "_" + metric)``, as it always was, unless another name known
    here gives the same ``unique_id``: of the names that meet, the one with the
    fewest characters ``ha_id`` had to replace keeps it (ties: the first in code-point
    order of agent, sensor, metric), and each other one gets ``_`` and the first 8
    hex digits of the SHA-256 of its raw names. So the outcome depends only on
    which names are known, never on the order they came in.
    """

    def __init__(self) -> None:
        self._ids: dict[Key, str] = {}  # key -> object id
        self._owners: dict[str, Key] = {}  # unique_id -> key
        # plain unique_id -> every key it stands for, the one that keeps it first
        self._meeting: dict[str, list[Key]] = {}

    def __contains__(self, key: Key) -> bool:
        return key in self._ids

    def object_id(self, key: Key) -> str:
        return self._ids[key]

    def unique_id(self, key: Key) -> str:
        return _unique_id(key[0], self._ids[key])

    def disambiguated(self, key: Key) -> bool:
        """True if the key's object id carries a hash, because another name meets it."""
        return self._ids[key] != _plain_object_id(key)

    def owner(self, agent: str, object_id: str) -> Key | None:
        """The key whose discovery topic is this agent's ``object_id`` now, if any."""
        key = self._owners.get(_unique_id(agent, object_id))
        if key is None or ha_id(key[0]) != ha_id(agent) or self._ids[key] != object_id:
            return None  # free, or that unique_id is another agent's different topic
        return key

    def add(self, key: Key) -> dict[Key, str | None]:
        """Learn a key; return every key whose object id is new or changed, with its old one."""
        if key in self._ids:
            return {}
        meeting = self._meeting.setdefault(_unique_id(key[0], _plain_object_id(key)), [])
        meeting.append(key)
        meeting.sort(key=_precedence)
        before = {k: self._ids.get(k) for k in meeting}
        for k in meeting:
            old = self._ids.pop(k, None)
            if old is not None:
                del self._owners[_unique_id(k[0], old)]
        for rank, k in enumerate(meeting):
            plain = _plain_object_id(k)
            candidates = [plain] if rank == 0 else []
            candidates += [f"{plain}_{_digest(k)[:n]}" for n in HASH_LENGTHS]
            # A name made to equal another's hashed id pushes it to a longer hash.
            chosen = next(c for c in candidates if _unique_id(k[0], c) not in self._owners)
            self._ids[k] = chosen
            self._owners[_unique_id(k[0], chosen)] = k
        return {k: old for k, old in before.items() if old != self._ids[k]}


def _plain_object_id(key: Key) -> str:
    _agent, sensor, metric = key
    return ha_id(f"{sensor}_{metric}")


def _unique_id(agent: str, object_id: str) -> str:
    # Independent of the topic prefixes, so re-pointing a collector keeps HA's entity history.
    return f"sensor_edge_{ha_id(agent)}_{object_id}"


def _precedence(key: Key) -> tuple[int, Key]:
    replaced = sum(len(_NOT_IN_ID.findall(part)) for part in key)
    return replaced, key


def _digest(key: Key) -> str:
    # NUL separates: no name on the wire can hold one.
    raw = "\0".join(key).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()
