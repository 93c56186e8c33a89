"""The `alert_state` table: each alert series' last stored transition.

Shared by every collector on one database, so the write of a transition is a
compare-and-set (``UPDATE ... WHERE state = <the old state>``): when several
collectors see the same transition, one row changes and only the collector
that changed it sends the notification. ``notified`` is 0 from that write
until every receiver has the message, so a collector killed in between sends
it at its next start. The SQL suits SQLite and PostgreSQL alike; ``mark`` is
the driver's placeholder.
"""

from __future__ import annotations

from typing import Any

# (rule, agent, sensor, metric): the series; state is 'ok' or 'firing'.
ALERT_STATE_COLUMNS = ("rule", "agent", "sensor", "metric", "state", "since", "value",
                       "notified")
_KEY = "rule = {m} AND agent = {m} AND sensor = {m} AND metric = {m}"


def load(db: Any) -> list[tuple]:
    """Every stored series, as tuples in :data:`ALERT_STATE_COLUMNS` order."""
    return db.execute(f"SELECT {', '.join(ALERT_STATE_COLUMNS)} FROM alert_state").fetchall()


def transition(db: Any, mark: str, key: tuple[str, str, str, str], old: str, new: str,
               since: float, value: float | None, notified: bool) -> bool:
    """Move a series from ``old`` to ``new`` unless another writer got there first;
    whether this call did it. Run inside a transaction."""
    db.execute(f"INSERT INTO alert_state ({', '.join(ALERT_STATE_COLUMNS)}) "
               f"VALUES ({', '.join([mark] * 8)}) ON CONFLICT DO NOTHING",
               (*key, "ok", since, None, 1))
    changed = db.execute(
        f"UPDATE alert_state SET state = {mark}, since = {mark}, value = {mark}, "
        f"notified = {mark} WHERE {_KEY.format(m=mark)} AND state = {mark}",
        (new, since, value, int(notified), *key, old)).rowcount
    return changed == 1


def mark_notified(db: Any, mark: str, key: tuple[str, str, str, str], state: str,
                  since: float) -> None:
    """Every receiver has the notification of the transition to ``state`` at ``since``."""
    db.execute(f"UPDATE alert_state SET notified = 1 WHERE {_KEY.format(m=mark)} "
               f"AND state = {mark} AND since = {mark}", (*key, state, since))
