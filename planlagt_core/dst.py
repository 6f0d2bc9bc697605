"""Mapping between wall-clock times in a time zone and instants, around UTC offset changes.

A *wall time* is a naive datetime as a clock in the zone shows it. An *instant* is an aware
datetime in UTC. When a zone moves its clocks forward, the wall times in between are skipped
(a gap) and map to no instant. When it moves them back, the wall times of the repeated
interval (a fold) map to two instants. Every other wall time maps to exactly one.

Zone rules come from the tzinfo object, never from the process's TZ environment variable.
The functions rely on PEP 495 ``fold`` support, which ``zoneinfo.ZoneInfo`` and
``datetime.timezone`` provide.
"""

from __future__ import annotations

import datetime as dt
import math

__all__ = ["UTC", "gap_end", "instants_at", "transition_instant", "utc_offset_at", "wall_time_of"]

UTC = dt.timezone.utc


def wall_time_of(instant: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """Return the naive wall-clock time that clocks in ``zone`` show at ``instant``."""
    return instant.astimezone(zone).replace(tzinfo=None)


def utc_offset_at(timestamp: int, zone: dt.tzinfo) -> dt.timedelta | None:
    """Return the UTC offset of ``zone`` at a Unix time in whole seconds."""
    return dt.datetime.fromtimestamp(timestamp, zone).utcoffset()


def instants_at(wall: dt.datetime, zone: dt.tzinfo) -> list[dt.datetime]:
    """Return the UTC instants at which clocks in ``zone`` show ``wall``, earliest first.

    The list is empty for a wall time in a gap, has two instants for a wall time in a fold
    and one otherwise.
    """
    found: list[dt.datetime] = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        # A wall time in a gap converts to an instant whose own wall time differs from it.
        if wall_time_of(instant, zone) == wall and instant not in found:
            found.append(instant)
    found.sort()
    return found


def gap_end(wall: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """Return the instant at which the gap containing ``wall`` ends, in UTC.

    That instant is the transition itself: the first instant after the clocks jumped
    forward. ``wall`` must lie in a gap, that is ``instants_at(wall, zone)`` is empty.
    """
    # PEP 495 reads a wall time in a gap with the offset from before the jump (fold=0) or
    # from after it (fold=1). The two readings lie on either side of the transition.
    readings = sorted(wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    return transition_instant(readings[0], readings[1], zone)


def transition_instant(before: dt.datetime, after: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """Return the first instant in (``before``, ``after``] with the UTC offset in force at ``after``.

    The offsets at ``before`` and ``after`` must differ. With exactly one transition between
    them, the result is that transition. The search is a bisection over whole seconds, which
    is exact because the tz database (TZif files) stores transition times in whole seconds.
    """
    target = after.astimezone(zone).utcoffset()
    low = math.floor(before.timestamp())
    high = math.ceil(after.timestamp())
    if utc_offset_at(low, zone) == target:
        raise ValueError(f"the UTC offset in {zone} does not change between {before} and {after}")

    # Invariant: the offset at `low` differs from `target`, the offset at `high` equals it.
    while high - low > 1:
        middle = (low + high) // 2
        if utc_offset_at(middle, zone) == target:
            high = middle
        else:
            low = middle
    return dt.datetime.fromtimestamp(high, UTC)
