"""Schedules: the instants at which a job fires.

A schedule is one of these, read in a time zone:

* a cron expression of 5 fields (minute hour day-of-month month day-of-week), or of 6 with
  seconds first as in robfig/cron, Quartz and Spring. ``cron_fields`` describes the syntax,
  which includes ``L`` (last day, last weekday) and ``#`` (n-th weekday);
* a macro: ``@yearly`` (or ``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (or
  ``@midnight``) and ``@hourly``;
* ``@every <duration>``, such as ``@every 90s`` or ``@every 1h30m``, with the units s, m, h
  and d in whole numbers.

A fire time is an instant. The fire times depend only on the expression, the time zone and
the arguments of a call, never on the current time or the TZ environment variable, so every
instance of a service computes the same ones.

Cron schedules follow the classic cron rule across clock changes (``cron_rule`` has the
details). A schedule whose minute or hour field starts with ``*`` follows real time: it skips
wall times in a spring-forward gap and fires in both passes of a repeated hour. Any other
schedule runs a wall time in a gap once, at the end of the gap, and a wall time in a repeated
hour once, on the first pass.

``@every`` schedules run on elapsed time, unaffected by clock changes. Their fire times are
the whole multiples of the interval since 1970-01-01T00:00Z, so instances that start at
different times agree on them.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .cron_fields import FIELD_LAYOUT_HINT, check_cron_fields, invalid_schedule
from .cron_rule import SEARCH_LIMIT_YEARS, CronRule
from .dst import UTC
from .errors import InvalidSchedule

__all__ = ["MACROS", "Schedule", "format_fire_time", "parse_schedule"]

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# An interval longer than a century is almost certainly a typo.
MAX_INTERVAL_S = 36_500 * DURATION_UNITS_S["d"]

UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# The instant from which parse_schedule checks that a cron schedule fires at all.
NEVER_FIRES_CHECK_START = dt.datetime(2000, 1, 1, tzinfo=UTC)

_FIELD_SEPARATOR = re.compile(r"[ \t]+")
_INLINE_ZONE = re.compile(r"(?:CRON_)?TZ=(?P<zone>\S*)", re.IGNORECASE)
_DURATION = re.compile(r"(?:[0-9]+[a-z]+)+", re.ASCII | re.IGNORECASE)
_DURATION_PART = re.compile(r"([0-9]+)([a-z]+)", re.ASCII | re.IGNORECASE)
_DURATION_HINT = "use whole numbers with the units s, m, h and d, for example '90s' or '1h30m'"


class _Rule(Protocol):
    """Fire-time computation behind a Schedule. Instants passed in and returned are in UTC."""

    follows_real_time: bool

    def next_after(self, instant: dt.datetime) -> dt.datetime: ...


class _IntervalRule:
    """The fire times of ``@every``: the whole multiples of ``interval`` since the Unix epoch."""

    follows_real_time = True

    def __init__(self, interval: dt.timedelta) -> None:
        self.interval = interval

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        """Return the first multiple of the interval strictly after the aware ``instant``, in UTC."""
        # Floor division of timedeltas is exact integer arithmetic on microseconds.
        periods = (instant - UNIX_EPOCH) // self.interval
        return UNIX_EPOCH + (periods + 1) * self.interval


class Schedule:
    """A parsed schedule in a time zone. Create one with ``parse_schedule``.

    Schedules are immutable, hashable and thread-safe. Two schedules are equal when their
    expressions (as given) and time zones are equal. Every method that takes an instant
    requires an aware datetime and raises ValueError for a naive one. Fire times are
    returned as aware datetimes in the schedule's zone, with the UTC offset and ``fold`` of
    that instant.

    NOTE: Python compares and subtracts two datetimes that share a tzinfo by wall time,
    ignoring ``fold``, so the two passes of a repeated hour compare equal. Convert fire
    times to UTC, or use ``timestamp()``, before comparing them.
    """

    __slots__ = ("_expression", "_rule", "_timezone")

    _expression: str
    _rule: _Rule
    _timezone: dt.tzinfo

    def __init__(self, expression: str, timezone: dt.tzinfo, rule: _Rule) -> None:
        object.__setattr__(self, "_expression", expression)
        object.__setattr__(self, "_timezone", timezone)
        object.__setattr__(self, "_rule", rule)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Schedule is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Schedule is immutable; cannot delete {name!r}")

    @property
    def expression(self) -> str:
        """The expression as given to ``parse_schedule``."""
        return self._expression

    @property
    def timezone(self) -> dt.tzinfo:
        """The time zone: a ``zoneinfo.ZoneInfo``, or a ``datetime.timezone`` if one was given."""
        return self._timezone

    @property
    def is_interval(self) -> bool:
        """Whether this is an ``@every`` schedule."""
        return isinstance(self._rule, _IntervalRule)

    @property
    def follows_real_time(self) -> bool:
        """Whether fire times follow elapsed time across clock changes (``@every``, or ``*`` minute or hour)."""
        return self._rule.follows_real_time

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        """Return the first fire time strictly after ``instant``.

        Raises InvalidSchedule in the rare case that a cron schedule has no fire time in the
        100 years after ``instant``, which only UTC offset changes of the zone can cause:
        parse_schedule rejects schedules that never match a date.
        """
        fire_time = self._rule.next_after(_to_utc(instant, "instant"))
        return fire_time.astimezone(self._timezone)

    def fire_times(self, after: dt.datetime, count: int) -> list[dt.datetime]:
        """Return the first ``count`` fire times strictly after ``after``, earliest first."""
        if count < 0:
            raise ValueError(f"count must be 0 or more, got {count}")
        fire_times = []
        current = _to_utc(after, "after")
        for _ in range(count):
            current = self._rule.next_after(current)
            fire_times.append(current.astimezone(self._timezone))
        return fire_times

    def fire_times_between(self, start: dt.datetime, end: dt.datetime, limit: int = 10_000) -> list[dt.datetime]:
        """Return the fire times t with ``start`` < t <= ``end``, earliest first.

        At most ``limit`` fire times are returned: the earliest ones. The list is empty if
        ``end`` is not after ``start``.
        """
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, got {limit}")
        current = _to_utc(start, "start")
        stop = _to_utc(end, "end")
        fire_times: list[dt.datetime] = []
        while len(fire_times) < limit:
            current = self._rule.next_after(current)
            if current > stop:
                break
            fire_times.append(current.astimezone(self._timezone))
        return fire_times

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return f"Schedule({self._expression!r}, tz={_zone_name(self._timezone)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (parse_schedule, (self._expression, self._timezone))

    def _identity(self) -> tuple[str, object]:
        return (self._expression, getattr(self._timezone, "key", self._timezone))


def parse_schedule(expression: str, tz: str | dt.tzinfo = "UTC") -> Schedule:
    """Parse a cron expression, macro or ``@every`` interval, read in the time zone ``tz``.

    ``tz`` is an IANA zone name such as ``"Europe/Berlin"``, a ``zoneinfo.ZoneInfo`` or a
    fixed-offset ``datetime.timezone``. Raises InvalidSchedule for a syntax error, an
    unknown zone or a cron schedule that never fires. The message names the expression or
    the zone and states what is valid. A schedule never fires if it has no fire time in the
    100 years from 2000-01-01, a span that contains every calendar of the 28-year cycle.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, not {type(expression).__name__}")
    zone = _resolve_zone(expression, tz)
    rule = _parse_rule(expression, zone)
    schedule = Schedule(expression, zone, rule)
    if isinstance(rule, CronRule):
        _check_fires(schedule)
    return schedule


def format_fire_time(fire_time: dt.datetime) -> str:
    """Format a fire time as ISO 8601 with its UTC offset, for example '2026-03-29T03:00:00+02:00'."""
    if fire_time.utcoffset() is None:
        raise ValueError(f"fire time must be a timezone-aware datetime, got the naive {fire_time.isoformat()}")
    return fire_time.isoformat()


def _to_utc(instant: dt.datetime, name: str) -> dt.datetime:
    if not isinstance(instant, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(instant).__name__}")
    if instant.utcoffset() is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime, got the naive {instant.isoformat()}; "
            f"attach a zone, for example with .replace(tzinfo=datetime.timezone.utc)"
        )
    return instant.astimezone(UTC)


def _zone_name(zone: dt.tzinfo) -> str:
    return getattr(zone, "key", None) or str(zone)


def _resolve_zone(expression: str, tz: str | dt.tzinfo) -> dt.tzinfo:
    """Return the tzinfo that ``tz`` names, or raise InvalidSchedule naming it."""
    if isinstance(tz, (ZoneInfo, dt.timezone)):
        return tz
    if isinstance(tz, dt.tzinfo):
        # Other implementations (pytz, dateutil) handle ambiguous and missing wall times
        # differently from PEP 495, and the mapping of wall times to instants relies on it.
        detail = f"time zone {tz!r} of type {type(tz).__name__} is not supported; pass an IANA name or a ZoneInfo"
        raise invalid_schedule(expression, detail)
    if not isinstance(tz, str):
        raise TypeError(f"tz must be a str or a tzinfo, not {type(tz).__name__}")

    if tz == "localtime":
        # zoneinfo finds 'localtime' in some time zone paths, and it differs from host to host.
        detail = "time zone 'localtime' names the zone of this host; pass an IANA name such as 'Europe/Berlin'"
        raise invalid_schedule(expression, detail)
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        detail = f"unknown time zone {tz!r}; use an IANA name such as 'Europe/Berlin', 'America/New_York' or 'UTC'"
        raise invalid_schedule(expression, detail) from exc


def _parse_rule(expression: str, zone: dt.tzinfo) -> _Rule:
    text = expression.strip(" \t")
    if not text:
        detail = f"it is empty; {FIELD_LAYOUT_HINT}, a macro such as '@daily', or '@every 1h'"
        raise invalid_schedule(expression, detail)

    inline_zone = _INLINE_ZONE.match(text)
    if inline_zone is not None:
        detail = (
            f"an inline TZ= or CRON_TZ= prefix is not supported; remove it and pass the time zone "
            f"separately, as tz={inline_zone['zone']!r}"
        )
        raise invalid_schedule(expression, detail)

    if text.startswith("@"):
        return _parse_macro(expression, text, zone)
    fields = _FIELD_SEPARATOR.split(text)
    check_cron_fields(expression, fields)
    return CronRule(expression, fields, zone)


def _parse_macro(expression: str, text: str, zone: dt.tzinfo) -> _Rule:
    word, *rest = _FIELD_SEPARATOR.split(text, maxsplit=1)
    argument = rest[0] if rest else ""
    macro = word.lower()
    if macro == "@every":
        return _IntervalRule(_parse_interval(expression, argument))
    if macro == "@reboot":
        detail = "@reboot is not supported, because a service of many instances has no single boot"
        raise invalid_schedule(expression, f"{detail}; use a cron expression or @every")
    if macro not in MACROS:
        valid = ", ".join(MACROS)
        raise invalid_schedule(expression, f"unknown macro {word!r}; valid macros are {valid} and '@every <duration>'")

    if argument:
        raise invalid_schedule(expression, f"{word} takes no argument, got {argument!r}")
    return CronRule(expression, MACROS[macro].split(), zone)


def _parse_interval(expression: str, duration: str) -> dt.timedelta:
    """Return the interval that the ``@every`` argument ``duration`` stands for."""
    if not duration:
        raise invalid_schedule(expression, "@every needs a duration, for example '@every 90s' or '@every 1h30m'")
    if _DURATION.fullmatch(duration) is None:
        raise invalid_schedule(expression, f"duration {duration!r} is not valid; {_describe_duration_error(duration)}")

    total_s = 0
    for number, unit in _DURATION_PART.findall(duration):
        unit_s = DURATION_UNITS_S.get(unit.lower())
        if unit_s is None:
            raise invalid_schedule(expression, f"duration {duration!r} has the unknown unit {unit!r}; {_DURATION_HINT}")
        total_s += int(number) * unit_s

    if total_s < 1:
        raise invalid_schedule(expression, f"duration {duration!r} is zero; the interval must be at least 1s")
    if total_s > MAX_INTERVAL_S:
        max_days = MAX_INTERVAL_S // DURATION_UNITS_S["d"]
        raise invalid_schedule(expression, f"duration {duration!r} is longer than the maximum of {max_days}d")
    return dt.timedelta(seconds=total_s)


def _describe_duration_error(duration: str) -> str:
    if "." in duration or "," in duration:
        return "fractions are not supported, so write '1h30m' for '1.5h'"
    if duration.startswith("-"):
        return "the interval must be positive, at least 1s"
    return _DURATION_HINT


def _check_fires(schedule: Schedule) -> None:
    """Raise InvalidSchedule if the cron ``schedule`` has no fire time after NEVER_FIRES_CHECK_START."""
    try:
        schedule.next_after(NEVER_FIRES_CHECK_START)
    except InvalidSchedule as exc:
        detail = (
            f"it never fires: no fire time in the {SEARCH_LIMIT_YEARS} years from "
            f"{NEVER_FIRES_CHECK_START.date().isoformat()} in time zone {_zone_name(schedule.timezone)}; "
            f"check the day-of-month, month and day-of-week fields"
        )
        raise invalid_schedule(schedule.expression, detail) from exc
