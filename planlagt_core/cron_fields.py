"""Syntax check of the fields of a cron expression, before they are passed to croniter.

croniter 7 accepts more than planlagt does (hashed ``H`` and random ``R`` values, ``W``, a
seventh year field), and its error messages do not name the field. So each field is
checked here against this grammar, case-insensitively:

* a list of items separated by commas;
* an item is ``*``, a value, or a range ``start-end``, each optionally followed by a step
  ``/n``; a range whose start is after its end wraps around (``fri-mon``), and one with
  equal bounds (``5-5``) is that one value;
* values are numbers, month names (``jan``-``dec``) or weekday names (``sun``-``sat``,
  where both 0 and 7 are Sunday);
* day-of-month also takes ``L`` (the last day of the month), alone or as a range end;
* day-of-week also takes ``weekday#n`` (the n-th such weekday of the month, n 1-5) and
  ``Lweekday`` (the last such weekday), but not mixed with plain values;
* ``?`` as a whole day-of-month or day-of-week field means the same as ``*``.

When neither day field is ``*`` or ``?``, a day matches if either field matches, as POSIX
specifies. This includes fields that start with ``*``, such as ``*/2``, where Vixie cron and
cronie require both fields to match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import InvalidSchedule

__all__ = ["FIELD_LAYOUT_HINT", "check_cron_fields", "collapse_equal_ranges", "follows_real_time", "invalid_schedule"]

FIELD_COUNT_TEXT = "5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first"
FIELD_LAYOUT_HINT = f"use {FIELD_COUNT_TEXT}"

MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
WEEKDAY_NAMES = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}

MAX_NTH_WEEKDAY = 5

_NUMBER = re.compile(r"[0-9]+", re.ASCII)
_NTH_WEEKDAY = re.compile(r"(?P<weekday>[a-z0-9]+)#(?P<nth>[0-9]+)", re.ASCII | re.IGNORECASE)
_LAST_WEEKDAY = re.compile(r"l(?P<weekday>[a-z0-9]+)", re.ASCII | re.IGNORECASE)
# Quartz writes the last Friday as '5L', croniter as 'L5'. Only the croniter form is accepted.
_QUARTZ_LAST_WEEKDAY = re.compile(r"[a-z0-9]*l", re.ASCII | re.IGNORECASE)
_NEAREST_WEEKDAY = re.compile(r"[0-9]+w|w[0-9]+|lw", re.ASCII | re.IGNORECASE)
_HASHED_OR_RANDOM = re.compile(r"[hr](\(.*\))?(/.*)?", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class CronField:
    """One field of a cron expression: its name, its range of numbers and the names it accepts."""

    name: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)

    def describe_values(self) -> str:
        """Return the valid values as text for error messages, for example '1-12 or jan-dec'."""
        text = f"{self.low}-{self.high}"
        if self.names:
            names = list(self.names)
            text += f" or {names[0]}-{names[-1]}"
        return text


SECOND = CronField("second", 0, 59)
MINUTE = CronField("minute", 0, 59)
HOUR = CronField("hour", 0, 23)
DAY_OF_MONTH = CronField("day-of-month", 1, 31)
MONTH = CronField("month", 1, 12, MONTH_NAMES)
DAY_OF_WEEK = CronField("day-of-week", 0, 7, WEEKDAY_NAMES)

FIVE_FIELDS = (MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK)
SIX_FIELDS = (SECOND, *FIVE_FIELDS)


def invalid_schedule(expression: str, detail: str) -> InvalidSchedule:
    """Build the InvalidSchedule error for ``expression`` with the reason ``detail``."""
    return InvalidSchedule(f"invalid schedule {expression!r}: {detail}", expression=expression)


def _invalid_field(expression: str, detail: str) -> InvalidSchedule:
    return invalid_schedule(expression, f"{detail}; {FIELD_LAYOUT_HINT}")


def check_cron_fields(expression: str, fields: Sequence[str]) -> None:
    """Raise InvalidSchedule unless ``fields`` (5, or 6 with seconds first) follow the grammar above.

    The message names ``expression``, the field and the value, and states the valid values.
    """
    if len(fields) not in (len(FIVE_FIELDS), len(SIX_FIELDS)):
        raise invalid_schedule(expression, f"expected {FIELD_COUNT_TEXT}, got {len(fields)}")

    layout = SIX_FIELDS if len(fields) == len(SIX_FIELDS) else FIVE_FIELDS
    for cron_field, text in zip(layout, fields, strict=True):
        _check_field(expression, cron_field, text)
    _check_day_fields(expression, day_of_month=fields[-3], day_of_week=fields[-1])


def collapse_equal_ranges(fields: Sequence[str]) -> list[str]:
    """Return ``fields`` with each range of equal bounds replaced by its one value.

    '5-5' becomes '5' and 'jan-jan/2' becomes 'jan'. The fields must have passed
    ``check_cron_fields``.
    """
    # NOTE: croniter 7.0.0 expands a range of equal bounds to the whole field, so it fires
    # '5-5 * * * *' every minute and '0 0 * * 7-7' every day.
    layout = SIX_FIELDS if len(fields) == len(SIX_FIELDS) else FIVE_FIELDS
    collapsed = []
    for cron_field, text in zip(layout, fields, strict=True):
        items = [_collapse_equal_range(cron_field, item) for item in text.split(",")]
        collapsed.append(",".join(items))
    return collapsed


def _collapse_equal_range(cron_field: CronField, item: str) -> str:
    base = item.partition("/")[0]
    start, is_range, end = base.partition("-")
    if not is_range or start == "*" or end.lower() == "l":
        return item
    start_value = _value_of(cron_field, start)
    end_value = _value_of(cron_field, end)
    # '0-7' is the whole week, but '7-0' runs from Sunday to Sunday.
    sunday_to_sunday = cron_field is DAY_OF_WEEK and (start_value, end_value) == (7, 0)
    if start_value == end_value or sunday_to_sunday:
        return start
    return item


def _value_of(cron_field: CronField, text: str) -> int:
    """Return the number that the checked value ``text`` stands for, keeping Sunday as 0 or 7."""
    if _NUMBER.fullmatch(text):
        return int(text)
    return cron_field.names[text.lower()]


def follows_real_time(fields: Sequence[str]) -> bool:
    """Return whether the schedule follows real time across UTC offset changes.

    This is the rule of Vixie cron and cronie: a schedule whose minute or hour field starts
    with ``*`` fires at every instant whose wall time matches. Any other schedule is
    fixed-time. A seconds field plays no part.
    """
    minute, hour = fields[-5], fields[-4]
    return minute.startswith("*") or hour.startswith("*")


def _check_field(expression: str, cron_field: CronField, text: str) -> None:
    if text == "?" and cron_field in (DAY_OF_MONTH, DAY_OF_WEEK):
        return
    if "?" in text:
        detail = f"{cron_field.name} field {text!r} uses '?', which is valid only as a whole day field"
        raise invalid_schedule(expression, detail)

    special_items = 0
    items = text.split(",")
    for item in items:
        if not item:
            raise _invalid_field(expression, f"{cron_field.name} field {text!r} has an empty list item")
        if cron_field is DAY_OF_WEEK and _check_special_weekday(expression, item):
            special_items += 1
        else:
            _check_item(expression, cron_field, item)

    if 0 < special_items < len(items):
        detail = f"day-of-week field {text!r} mixes plain weekdays with '#' or 'L' values; split it into two schedules"
        raise invalid_schedule(expression, detail)


def _check_special_weekday(expression: str, item: str) -> bool:
    """Check a ``weekday#n`` or ``Lweekday`` item; return False if ``item`` is neither."""
    if _QUARTZ_LAST_WEEKDAY.fullmatch(item):
        detail = (
            f"day-of-week value {item!r} is not valid; write the last Friday of the month as 'L5' "
            f"(and the last day of the month as day-of-month 'L')"
        )
        raise invalid_schedule(expression, detail)

    nth_match = _NTH_WEEKDAY.fullmatch(item)
    if nth_match is not None:
        _parse_value(expression, DAY_OF_WEEK, nth_match["weekday"])
        nth = int(nth_match["nth"])
        if not 1 <= nth <= MAX_NTH_WEEKDAY:
            detail = f"day-of-week value {item!r} asks for occurrence {nth}, which is out of range 1-{MAX_NTH_WEEKDAY}"
            raise invalid_schedule(expression, detail)
        return True

    last_match = _LAST_WEEKDAY.fullmatch(item)
    if last_match is not None:
        _parse_value(expression, DAY_OF_WEEK, last_match["weekday"])
        return True
    return False


def _check_item(expression: str, cron_field: CronField, item: str) -> None:
    _reject_unsupported_item(expression, cron_field, item)

    base, has_step, step = item.partition("/")
    if has_step:
        _check_step(expression, cron_field, item, step)
    if base == "*":
        return
    if cron_field is DAY_OF_MONTH and base.lower() == "l" and not has_step:
        return

    start, is_range, end = base.partition("-")
    if not start or (is_range and not end):
        detail = f"{cron_field.name} field item {item!r} is not valid; expected {cron_field.describe_values()}"
        raise _invalid_field(expression, detail)
    _parse_value(expression, cron_field, start)
    if is_range and not (cron_field is DAY_OF_MONTH and end.lower() == "l"):
        _parse_value(expression, cron_field, end)


def _reject_unsupported_item(expression: str, cron_field: CronField, item: str) -> None:
    if _HASHED_OR_RANDOM.fullmatch(item):
        detail = (
            f"{cron_field.name} value {item!r} is hashed (H) or random (R), which is not supported "
            f"because every instance must compute the same fire times; write the value explicitly"
        )
        raise invalid_schedule(expression, detail)
    if cron_field is DAY_OF_MONTH and _NEAREST_WEEKDAY.fullmatch(item):
        detail = f"day-of-month value {item!r} uses W (nearest weekday), which is not supported; list the days"
        raise invalid_schedule(expression, detail)


def _check_step(expression: str, cron_field: CronField, item: str, step: str) -> None:
    max_step = cron_field.high - cron_field.low + 1
    if _NUMBER.fullmatch(step) is None:
        detail = f"{cron_field.name} field item {item!r} has step {step!r}, which is not a whole number"
        raise invalid_schedule(expression, detail)

    if not 1 <= int(step) <= max_step:
        detail = f"{cron_field.name} field item {item!r} has step {int(step)}, which is out of range 1-{max_step}"
        if cron_field in (SECOND, MINUTE, HOUR):
            detail += "; for longer intervals use '@every', for example '@every 90m'"
        raise invalid_schedule(expression, detail)


def _parse_value(expression: str, cron_field: CronField, text: str) -> int:
    """Return the number that ``text`` stands for, or raise InvalidSchedule."""
    if _NUMBER.fullmatch(text) is not None:
        value = int(text)
    elif text.lower() in cron_field.names:
        value = cron_field.names[text.lower()]
    else:
        detail = f"{cron_field.name} field value {text!r} is not valid; expected {cron_field.describe_values()}"
        raise _invalid_field(expression, detail)

    if not cron_field.low <= value <= cron_field.high:
        detail = f"{cron_field.name} field value {value} is out of range {cron_field.low}-{cron_field.high}"
        raise _invalid_field(expression, detail)
    return value


def _check_day_fields(expression: str, day_of_month: str, day_of_week: str) -> None:
    # NOTE: croniter 7.0.0 gets a '#' or 'L' weekday with a restricted day-of-month wrong:
    # '0 0 13 * 5#2' fires on second Fridays only, ignoring the 13th, and '0 0 15 * L5' finds
    # no date at all. POSIX cron would fire on the union of the two fields.
    special_weekday = any("#" in item or item.lower().startswith("l") for item in day_of_week.split(","))
    if special_weekday and day_of_month not in ("*", "?"):
        detail = (
            f"day-of-week value {day_of_week!r} ('#' or 'L') cannot be combined with the restricted "
            f"day-of-month {day_of_month!r}; set day-of-month to '*' or split it into two schedules"
        )
        raise invalid_schedule(expression, detail)
