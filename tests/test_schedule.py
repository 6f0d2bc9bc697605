"""Tests of planlagt_core.schedule: cron and @every fire times, clock changes and errors.

Every expected fire time is written out by hand from the schedule rules and from the tz
database rule of its zone. ``TRANSITIONS`` lists the offset changes the cases rely on, and
``test_zone_transition_matches_table`` checks them against zoneinfo, so a tzdata update
that moves one shows up there first.
"""

from __future__ import annotations

import datetime as dt
import pickle
import sys
import threading
import time
from zoneinfo import ZoneInfo

import pytest

from planlagt_core.errors import ConfigurationError, InvalidSchedule
from planlagt_core.schedule import Schedule, format_fire_time, parse_schedule

pytestmark = pytest.mark.fast

UTC = dt.timezone.utc


def at(text: str) -> dt.datetime:
    """Parse an ISO 8601 instant with a UTC offset."""
    instant = dt.datetime.fromisoformat(text)
    assert instant.tzinfo is not None, text
    return instant


def iso_fire_times(expression: str, tz: str, after: str, count: int) -> list[str]:
    schedule = parse_schedule(expression, tz)
    return [fire_time.isoformat() for fire_time in schedule.fire_times(at(after), count)]


# -- Zone transitions the cases below rely on -----------------------------------------------

# (zone, transition instant in UTC, wall time just before it, wall time at it)
TRANSITIONS = [
    ("Europe/Berlin", "2026-03-29T01:00:00+00:00", "2026-03-29T01:59:59+01:00", "2026-03-29T03:00:00+02:00"),
    ("Europe/Berlin", "2026-10-25T01:00:00+00:00", "2026-10-25T02:59:59+02:00", "2026-10-25T02:00:00+01:00"),
    ("America/New_York", "2026-03-08T07:00:00+00:00", "2026-03-08T01:59:59-05:00", "2026-03-08T03:00:00-04:00"),
    ("America/New_York", "2026-11-01T06:00:00+00:00", "2026-11-01T01:59:59-04:00", "2026-11-01T01:00:00-05:00"),
    ("Australia/Sydney", "2026-04-04T16:00:00+00:00", "2026-04-05T02:59:59+11:00", "2026-04-05T02:00:00+10:00"),
    ("Australia/Sydney", "2026-10-03T16:00:00+00:00", "2026-10-04T01:59:59+10:00", "2026-10-04T03:00:00+11:00"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00+00:00", "2026-04-05T01:59:59+11:00", "2026-04-05T01:30:00+10:30"),
    ("Australia/Lord_Howe", "2026-10-03T15:30:00+00:00", "2026-10-04T01:59:59+10:30", "2026-10-04T02:30:00+11:00"),
    ("America/Santiago", "2026-04-05T03:00:00+00:00", "2026-04-04T23:59:59-03:00", "2026-04-04T23:00:00-04:00"),
    ("America/Santiago", "2026-09-06T04:00:00+00:00", "2026-09-05T23:59:59-04:00", "2026-09-06T01:00:00-03:00"),
    ("Asia/Beirut", "2026-03-28T22:00:00+00:00", "2026-03-28T23:59:59+02:00", "2026-03-29T01:00:00+03:00"),
    ("Asia/Beirut", "2026-10-24T21:00:00+00:00", "2026-10-24T23:59:59+03:00", "2026-10-24T23:00:00+02:00"),
    ("America/Havana", "2026-03-08T05:00:00+00:00", "2026-03-07T23:59:59-05:00", "2026-03-08T01:00:00-04:00"),
    ("America/Havana", "2026-11-01T05:00:00+00:00", "2026-11-01T00:59:59-04:00", "2026-11-01T00:00:00-05:00"),
]


@pytest.mark.parametrize(
    ("zone", "transition", "wall_before", "wall_at"),
    TRANSITIONS,
    ids=[f"{zone}-{transition[:10]}" for zone, transition, _, _ in TRANSITIONS],
)
def test_zone_transition_matches_table(zone: str, transition: str, wall_before: str, wall_at: str) -> None:
    instant = at(transition)
    before = (instant - dt.timedelta(seconds=1)).astimezone(ZoneInfo(zone))
    after = instant.astimezone(ZoneInfo(zone))
    assert before.isoformat() == wall_before
    assert after.isoformat() == wall_at


# -- Fixed-time schedules: a gap runs once at its end, a fold runs on the first pass ---------

FIXED_TIME_CASES = [
    (
        "berlin-gap",
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T00:00+01:00",
        ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
    ),
    (
        "berlin-fold",
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T00:00+02:00",
        ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
    ),
    (
        "new-york-fold",
        "30 1 * * *",
        "America/New_York",
        "2026-10-31T12:00-04:00",
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00", "2026-11-03T01:30:00-05:00"],
    ),
    (
        "new-york-gap",
        "30 2 * * *",
        "America/New_York",
        "2026-03-07T12:00-05:00",
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
    ),
    (
        "gap-wall-times-coalesce",
        "0,15,30,45 2 * * *",
        "Europe/Berlin",
        "2026-03-29T00:00+01:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00", "2026-03-30T02:15:00+02:00"],
    ),
    (
        "gap-coalesces-with-gap-end",
        "0,30 2,3 * * *",
        "Europe/Berlin",
        "2026-03-29T00:00+01:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00", "2026-03-30T02:00:00+02:00"],
    ),
    (
        "fold-first-pass-only",
        "0,30 2 * * *",
        "Europe/Berlin",
        "2026-10-25T00:00+02:00",
        ["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:00:00+01:00"],
    ),
    (
        "after-instant-on-second-pass",
        "0,30 2 * * *",
        "Europe/Berlin",
        "2026-10-25T02:10+01:00",
        ["2026-10-26T02:00:00+01:00"],
    ),
    (
        "after-gap-end-fire-time",
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-29T03:00+02:00",
        ["2026-03-30T02:30:00+02:00"],
    ),
    (
        "six-fields-gap",
        "15 30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T12:00+01:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:15+02:00"],
    ),
    (
        "sydney-gap",
        "30 2 * * *",
        "Australia/Sydney",
        "2026-10-03T12:00+10:00",
        ["2026-10-04T03:00:00+11:00", "2026-10-05T02:30:00+11:00"],
    ),
    (
        "sydney-fold",
        "30 2 * * *",
        "Australia/Sydney",
        "2026-04-04T12:00+11:00",
        ["2026-04-05T02:30:00+11:00", "2026-04-06T02:30:00+10:00"],
    ),
    (
        "lord-howe-half-hour-gap",
        "15 2 * * *",
        "Australia/Lord_Howe",
        "2026-10-03T12:00+10:30",
        ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"],
    ),
    (
        "lord-howe-half-hour-fold",
        "45 1 * * *",
        "Australia/Lord_Howe",
        "2026-04-04T12:00+11:00",
        ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
    ),
    (
        "santiago-midnight-gap",
        "0 0 * * *",
        "America/Santiago",
        "2026-09-05T12:00-04:00",
        ["2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"],
    ),
    (
        "santiago-midnight-after-fold",
        "0 0 * * *",
        "America/Santiago",
        "2026-04-04T12:00-03:00",
        ["2026-04-05T00:00:00-04:00", "2026-04-06T00:00:00-04:00"],
    ),
    (
        "santiago-fold-before-midnight",
        "30 23 * * *",
        "America/Santiago",
        "2026-04-04T12:00-03:00",
        ["2026-04-04T23:30:00-03:00", "2026-04-05T23:30:00-04:00"],
    ),
    (
        "beirut-midnight-gap",
        "0 0 * * *",
        "Asia/Beirut",
        "2026-03-28T12:00+02:00",
        ["2026-03-29T01:00:00+03:00", "2026-03-30T00:00:00+03:00"],
    ),
    (
        "beirut-fold-before-midnight",
        "30 23 * * *",
        "Asia/Beirut",
        "2026-10-24T12:00+03:00",
        ["2026-10-24T23:30:00+03:00", "2026-10-25T23:30:00+02:00"],
    ),
    (
        "havana-midnight-gap",
        "0 0 * * *",
        "America/Havana",
        "2026-03-07T12:00-05:00",
        ["2026-03-08T01:00:00-04:00", "2026-03-09T00:00:00-04:00"],
    ),
    (
        "havana-midnight-fold",
        "30 0 * * *",
        "America/Havana",
        "2026-10-31T12:00-04:00",
        ["2026-11-01T00:30:00-04:00", "2026-11-02T00:30:00-05:00"],
    ),
]


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected"),
    [case[1:] for case in FIXED_TIME_CASES],
    ids=[case[0] for case in FIXED_TIME_CASES],
)
def test_fixed_time_schedule(expression: str, zone: str, after: str, expected: list[str]) -> None:
    assert iso_fire_times(expression, zone, after, len(expected)) == expected


# Dates of the gap (clocks forward) and the fold (clocks back) per year.
BERLIN_CHANGE_DATES = {
    2025: (dt.date(2025, 3, 30), dt.date(2025, 10, 26)),
    2026: (dt.date(2026, 3, 29), dt.date(2026, 10, 25)),
    2027: (dt.date(2027, 3, 28), dt.date(2027, 10, 31)),
    2028: (dt.date(2028, 3, 26), dt.date(2028, 10, 29)),
}
SYDNEY_CHANGE_DATES = {
    2025: (dt.date(2025, 10, 5), dt.date(2025, 4, 6)),
    2026: (dt.date(2026, 10, 4), dt.date(2026, 4, 5)),
    2027: (dt.date(2027, 10, 3), dt.date(2027, 4, 4)),
    2028: (dt.date(2028, 10, 1), dt.date(2028, 4, 2)),
}
ONE_DAY = dt.timedelta(days=1)


@pytest.mark.parametrize("year", sorted(BERLIN_CHANGE_DATES))
def test_berlin_fixed_time_across_years(year: int) -> None:
    gap_date, fold_date = BERLIN_CHANGE_DATES[year]
    schedule = parse_schedule("30 2 * * *", "Europe/Berlin")

    # Clocks go from 02:00 to 03:00 at 01:00 UTC, so wall time 02:30 runs at 03:00+02:00.
    assert at(f"{gap_date}T00:30:00+00:00").astimezone(schedule.timezone).isoformat() == f"{gap_date}T01:30:00+01:00"
    assert at(f"{gap_date}T01:00:00+00:00").astimezone(schedule.timezone).isoformat() == f"{gap_date}T03:00:00+02:00"
    gap_fires = schedule.fire_times(at(f"{gap_date}T00:00:00+01:00"), 2)
    assert [t.isoformat() for t in gap_fires] == [f"{gap_date}T03:00:00+02:00", f"{gap_date + ONE_DAY}T02:30:00+02:00"]

    # Clocks go from 03:00 back to 02:00 at 01:00 UTC, so 02:30 runs once, at +02:00.
    assert at(f"{fold_date}T01:00:00+00:00").astimezone(schedule.timezone).isoformat() == f"{fold_date}T02:00:00+01:00"
    fold_fires = schedule.fire_times(at(f"{fold_date}T00:00:00+02:00"), 2)
    expected_fold_fires = [f"{fold_date}T02:30:00+02:00", f"{fold_date + ONE_DAY}T02:30:00+01:00"]
    assert [t.isoformat() for t in fold_fires] == expected_fold_fires


@pytest.mark.parametrize("year", sorted(SYDNEY_CHANGE_DATES))
def test_sydney_fixed_time_across_years(year: int) -> None:
    gap_date, fold_date = SYDNEY_CHANGE_DATES[year]
    schedule = parse_schedule("30 2 * * *", "Australia/Sydney")

    # Clocks go from 02:00 to 03:00 at 16:00 UTC the day before.
    gap_transition = at(f"{gap_date - ONE_DAY}T16:00:00+00:00")
    before_gap = (gap_transition - dt.timedelta(seconds=1)).astimezone(schedule.timezone)
    assert before_gap.isoformat() == f"{gap_date}T01:59:59+10:00"
    assert gap_transition.astimezone(schedule.timezone).isoformat() == f"{gap_date}T03:00:00+11:00"
    gap_fires = schedule.fire_times(at(f"{gap_date}T00:00:00+10:00"), 2)
    assert [t.isoformat() for t in gap_fires] == [f"{gap_date}T03:00:00+11:00", f"{gap_date + ONE_DAY}T02:30:00+11:00"]

    # Clocks go from 03:00 back to 02:00 at 16:00 UTC the day before.
    fold_transition = at(f"{fold_date - ONE_DAY}T16:00:00+00:00")
    assert fold_transition.astimezone(schedule.timezone).isoformat() == f"{fold_date}T02:00:00+10:00"
    fold_fires = schedule.fire_times(at(f"{fold_date}T00:00:00+11:00"), 2)
    expected_fold_fires = [f"{fold_date}T02:30:00+11:00", f"{fold_date + ONE_DAY}T02:30:00+10:00"]
    assert [t.isoformat() for t in fold_fires] == expected_fold_fires


# -- Real-time schedules: a '*' minute or hour field fires at every matching instant ----------

REAL_TIME_CASES = [
    (
        "berlin-gap-skipped",
        "*/15 * * * *",
        "Europe/Berlin",
        "2026-03-29T01:40+01:00",
        ["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:15:00+02:00"],
    ),
    (
        "berlin-fold-from-end-of-first-pass",
        "*/15 * * * *",
        "Europe/Berlin",
        "2026-10-25T02:50+02:00",
        ["2026-10-25T02:00:00+01:00", "2026-10-25T02:15:00+01:00"],
    ),
    (
        "berlin-fold-from-second-pass",
        "*/15 * * * *",
        "Europe/Berlin",
        "2026-10-25T02:20+01:00",
        ["2026-10-25T02:30:00+01:00", "2026-10-25T02:45:00+01:00", "2026-10-25T03:00:00+01:00"],
    ),
    (
        "hourly-fold",
        "0 * * * *",
        "Europe/Berlin",
        "2026-10-25T01:30+02:00",
        ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"],
    ),
    (
        "hour-star-gap",
        "30 * * * *",
        "Europe/Berlin",
        "2026-03-29T01:00+01:00",
        ["2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"],
    ),
    (
        "minute-star-fixed-hour-fold",
        "*/30 2 * * *",
        "Europe/Berlin",
        "2026-10-25T01:50+02:00",
        [
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T02:30:00+01:00",
            "2026-10-26T02:00:00+01:00",
        ],
    ),
    (
        "minute-star-fixed-hour-gap",
        "*/30 2 * * *",
        "Europe/Berlin",
        "2026-03-29T00:00+01:00",
        ["2026-03-30T02:00:00+02:00"],
    ),
    (
        "six-fields-fold",
        "0 */30 * * * *",
        "Europe/Berlin",
        "2026-10-25T01:50+02:00",
        [
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T02:30:00+01:00",
            "2026-10-25T03:00:00+01:00",
        ],
    ),
    (
        "sub-second-after",
        "*/15 * * * *",
        "Europe/Berlin",
        "2026-10-25T02:44:59.500000+02:00",
        ["2026-10-25T02:45:00+02:00", "2026-10-25T02:00:00+01:00"],
    ),
    (
        "sydney-fold",
        "*/30 * * * *",
        "Australia/Sydney",
        "2026-04-05T01:50+11:00",
        [
            "2026-04-05T02:00:00+11:00",
            "2026-04-05T02:30:00+11:00",
            "2026-04-05T02:00:00+10:00",
            "2026-04-05T02:30:00+10:00",
            "2026-04-05T03:00:00+10:00",
        ],
    ),
    (
        "sydney-gap",
        "*/30 * * * *",
        "Australia/Sydney",
        "2026-10-04T01:20+10:00",
        ["2026-10-04T01:30:00+10:00", "2026-10-04T03:00:00+11:00"],
    ),
    (
        "lord-howe-half-hour-fold",
        "*/15 * * * *",
        "Australia/Lord_Howe",
        "2026-04-05T01:20+11:00",
        [
            "2026-04-05T01:30:00+11:00",
            "2026-04-05T01:45:00+11:00",
            "2026-04-05T01:30:00+10:30",
            "2026-04-05T01:45:00+10:30",
            "2026-04-05T02:00:00+10:30",
        ],
    ),
    (
        "lord-howe-half-hour-gap",
        "*/10 * * * *",
        "Australia/Lord_Howe",
        "2026-10-04T01:55+10:30",
        ["2026-10-04T02:30:00+11:00", "2026-10-04T02:40:00+11:00"],
    ),
    (
        "santiago-midnight-fold",
        "*/30 * * * *",
        "America/Santiago",
        "2026-04-04T22:50-03:00",
        [
            "2026-04-04T23:00:00-03:00",
            "2026-04-04T23:30:00-03:00",
            "2026-04-04T23:00:00-04:00",
            "2026-04-04T23:30:00-04:00",
            "2026-04-05T00:00:00-04:00",
        ],
    ),
    (
        "santiago-midnight-gap",
        "0 * * * *",
        "America/Santiago",
        "2026-09-05T22:30-04:00",
        ["2026-09-05T23:00:00-04:00", "2026-09-06T01:00:00-03:00", "2026-09-06T02:00:00-03:00"],
    ),
]


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected"),
    [case[1:] for case in REAL_TIME_CASES],
    ids=[case[0] for case in REAL_TIME_CASES],
)
def test_real_time_schedule(expression: str, zone: str, after: str, expected: list[str]) -> None:
    assert iso_fire_times(expression, zone, after, len(expected)) == expected


def test_real_time_repeated_hour_both_passes() -> None:
    schedule = parse_schedule("*/15 * * * *", "Europe/Berlin")
    fires = schedule.fire_times_between(at("2026-10-25T01:59:59+02:00"), at("2026-10-25T02:59:59+01:00"))
    assert [t.isoformat() for t in fires] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:15:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:45:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:15:00+01:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T02:45:00+01:00",
    ]


def test_real_time_skips_gap_wall_times() -> None:
    schedule = parse_schedule("*/15 * * * *", "Europe/Berlin")
    assert schedule.next_after(at("2026-03-29T01:45+01:00")).isoformat() == "2026-03-29T03:00:00+02:00"

    fires = schedule.fire_times_between(at("2026-03-29T00:00+01:00"), at("2026-03-29T04:00+02:00"))
    assert len(fires) == 12  # 00:15 to 01:45 (7 fires), then 03:00 to 04:00 (5 fires)
    assert not [t for t in fires if t.hour == 2]


def test_fire_time_carries_zone_and_fold() -> None:
    zone = ZoneInfo("Europe/Berlin")
    first_pass, second_pass = parse_schedule("0 * * * *", "Europe/Berlin").fire_times(at("2026-10-25T01:30+02:00"), 2)
    assert first_pass.tzinfo is zone
    assert second_pass.tzinfo is zone
    assert (first_pass.hour, first_pass.fold) == (2, 0)
    assert (second_pass.hour, second_pass.fold) == (2, 1)
    # Python subtracts datetimes that share a tzinfo by wall time, so compare in UTC.
    assert second_pass.astimezone(UTC) - first_pass.astimezone(UTC) == dt.timedelta(hours=1)


def test_never_fires_in_zone_gap() -> None:
    # Under the EU rule, Berlin's clocks jump from 02:00 to 03:00 on the last Sunday of March.
    with pytest.raises(InvalidSchedule, match="never fires") as raised:
        parse_schedule("* 2 * 3 L0", "Europe/Berlin")
    assert "Europe/Berlin" in str(raised.value)
    assert parse_schedule("* 2 * 3 L0", "UTC").next_after(at("2026-01-01T00:00+00:00")).isoformat() == (
        "2026-03-29T02:00:00+00:00"
    )


# -- Cron syntax and calendar -----------------------------------------------------------------

CALENDAR_CASES = [
    (
        "seconds-first",
        "*/30 * * * * *",
        "UTC",
        "2026-01-01T00:00:10+00:00",
        ["2026-01-01T00:00:30+00:00", "2026-01-01T00:01:00+00:00", "2026-01-01T00:01:30+00:00"],
    ),
    (
        "seconds-first-fixed",
        "5 30 9 * * *",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-01T09:30:05+00:00", "2026-01-02T09:30:05+00:00"],
    ),
    (
        "last-day-leap-year",
        "0 12 L * *",
        "UTC",
        "2028-01-31T12:00+00:00",
        ["2028-02-29T12:00:00+00:00", "2028-03-31T12:00:00+00:00", "2028-04-30T12:00:00+00:00"],
    ),
    (
        "last-day-of-february",
        "0 0 L 2 *",
        "UTC",
        "2026-03-01T00:00+00:00",
        ["2027-02-28T00:00:00+00:00", "2028-02-29T00:00:00+00:00"],
    ),
    (
        "second-monday",
        "0 9 * * 1#2",
        "Europe/Berlin",
        "2026-01-01T00:00+01:00",
        [
            "2026-01-12T09:00:00+01:00",
            "2026-02-09T09:00:00+01:00",
            "2026-03-09T09:00:00+01:00",
            "2026-04-13T09:00:00+02:00",
        ],
    ),
    (
        "fifth-sunday",
        "0 0 * * 0#5",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-03-29T00:00:00+00:00", "2026-05-31T00:00:00+00:00", "2026-08-30T00:00:00+00:00"],
    ),
    (
        "last-friday",
        "0 18 * * L5",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-30T18:00:00+00:00", "2026-02-27T18:00:00+00:00", "2026-03-27T18:00:00+00:00"],
    ),
    (
        "day-of-month-or-weekday",
        "0 0 13 * 5",
        "UTC",
        "2026-01-01T00:00+00:00",
        [
            "2026-01-02T00:00:00+00:00",
            "2026-01-09T00:00:00+00:00",
            "2026-01-13T00:00:00+00:00",
            "2026-01-16T00:00:00+00:00",
        ],
    ),
    (
        "day-step-or-weekday",
        "0 0 */10 * 1",
        "UTC",
        "2026-01-01T00:00+00:00",
        [
            "2026-01-05T00:00:00+00:00",
            "2026-01-11T00:00:00+00:00",
            "2026-01-12T00:00:00+00:00",
            "2026-01-19T00:00:00+00:00",
            "2026-01-21T00:00:00+00:00",
        ],
    ),
    (
        "last-day-or-friday",
        "0 0 L * 5",
        "UTC",
        "2026-01-20T00:00+00:00",
        [
            "2026-01-23T00:00:00+00:00",
            "2026-01-30T00:00:00+00:00",
            "2026-01-31T00:00:00+00:00",
            "2026-02-06T00:00:00+00:00",
        ],
    ),
    (
        "weekday-range-wraps",
        "0 0 * * fri-mon",
        "UTC",
        "2026-01-01T00:00+00:00",
        [
            "2026-01-02T00:00:00+00:00",
            "2026-01-03T00:00:00+00:00",
            "2026-01-04T00:00:00+00:00",
            "2026-01-05T00:00:00+00:00",
            "2026-01-09T00:00:00+00:00",
        ],
    ),
    (
        "month-names-any-case",
        "0 0 1 JAN,jul *",
        "UTC",
        "2026-02-01T00:00+00:00",
        ["2026-07-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"],
    ),
    (
        "sunday-as-7",
        "0 0 * * 7",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
    ),
    (
        "question-mark-day",
        "0 0 ? * MON",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-05T00:00:00+00:00", "2026-01-12T00:00:00+00:00"],
    ),
    (
        "range-with-step",
        "10-50/20 * * * *",
        "UTC",
        "2026-01-01T00:00+00:00",
        [
            "2026-01-01T00:10:00+00:00",
            "2026-01-01T00:30:00+00:00",
            "2026-01-01T00:50:00+00:00",
            "2026-01-01T01:10:00+00:00",
        ],
    ),
    (
        "equal-range-is-one-value",
        "5-5 * * * *",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-01T00:05:00+00:00", "2026-01-01T01:05:00+00:00"],
    ),
    (
        "equal-range-with-step",
        "5-5/10 * * * *",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-01T00:05:00+00:00", "2026-01-01T01:05:00+00:00"],
    ),
    (
        "equal-weekday-range",
        "0 0 * * 7-7",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
    ),
    (
        "sunday-to-sunday-range",
        "0 0 * * 7-0",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
    ),
    (
        "whole-week-range",
        "0 0 * * 0-7",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00", "2026-01-04T00:00:00+00:00"],
    ),
    (
        "tabs-and-spaces",
        " 0\t0  1 1 * ",
        "UTC",
        "2026-01-01T00:00+00:00",
        ["2027-01-01T00:00:00+00:00"],
    ),
]


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected"),
    [case[1:] for case in CALENDAR_CASES],
    ids=[case[0] for case in CALENDAR_CASES],
)
def test_cron_calendar(expression: str, zone: str, after: str, expected: list[str]) -> None:
    assert iso_fire_times(expression, zone, after, len(expected)) == expected


def test_seconds_field_fires_at_0_and_30() -> None:
    schedule = parse_schedule("*/30 * * * * *")
    fires = schedule.fire_times_between(at("2026-01-01T00:00:00+00:00"), at("2026-01-01T00:05:00+00:00"))
    assert len(fires) == 10
    assert {t.second for t in fires} == {0, 30}


MACRO_CASES = [
    ("@yearly", "UTC", "2026-03-01T00:00+00:00", ["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"]),
    ("@annually", "UTC", "2026-03-01T00:00+00:00", ["2027-01-01T00:00:00+00:00"]),
    ("@monthly", "UTC", "2026-03-15T00:00+00:00", ["2026-04-01T00:00:00+00:00", "2026-05-01T00:00:00+00:00"]),
    ("@weekly", "UTC", "2026-01-01T00:00+00:00", ["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"]),
    ("@daily", "Europe/Berlin", "2026-03-28T12:00+01:00", ["2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]),
    ("@midnight", "UTC", "2026-01-01T00:00+00:00", ["2026-01-02T00:00:00+00:00"]),
    ("@Daily", "UTC", "2026-01-01T00:00+00:00", ["2026-01-02T00:00:00+00:00"]),
    (
        "@hourly",
        "Europe/Berlin",
        "2026-10-25T01:30+02:00",
        ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"],
    ),
]


@pytest.mark.parametrize(("expression", "zone", "after", "expected"), MACRO_CASES, ids=[c[0] for c in MACRO_CASES])
def test_macro(expression: str, zone: str, after: str, expected: list[str]) -> None:
    assert iso_fire_times(expression, zone, after, len(expected)) == expected


# -- @every: multiples of the interval since the Unix epoch -----------------------------------


def test_every_grid_independent_of_after() -> None:
    # 2026-01-01T00:00Z is 1767225600 s after the epoch, 300 s past a multiple of 660 s.
    schedule = parse_schedule("@every 11m")
    assert schedule.is_interval
    early = [t.isoformat() for t in schedule.fire_times(at("2026-01-01T00:00+00:00"), 3)]
    late = [t.isoformat() for t in schedule.fire_times(at("2026-01-01T00:10+00:00"), 3)]
    assert early == ["2026-01-01T00:05:00+00:00", "2026-01-01T00:16:00+00:00", "2026-01-01T00:27:00+00:00"]
    assert late == ["2026-01-01T00:16:00+00:00", "2026-01-01T00:27:00+00:00", "2026-01-01T00:38:00+00:00"]


def test_every_excludes_fire_time_equal_to_after() -> None:
    # 1767225600 s is a multiple of 90 s and of 5400 s.
    assert iso_fire_times("@every 90s", "UTC", "2026-01-01T00:00+00:00", 2) == [
        "2026-01-01T00:01:30+00:00",
        "2026-01-01T00:03:00+00:00",
    ]
    assert iso_fire_times("@every 1h30m", "UTC", "2026-01-01T00:00+00:00", 2) == [
        "2026-01-01T01:30:00+00:00",
        "2026-01-01T03:00:00+00:00",
    ]


def test_every_combined_units_from_epoch() -> None:
    # 1d2h3m4s is 93784 s.
    assert iso_fire_times("@every 1d2h3m4s", "UTC", "1970-01-01T00:00+00:00", 2) == [
        "1970-01-02T02:03:04+00:00",
        "1970-01-03T04:06:08+00:00",
    ]


def test_every_before_epoch() -> None:
    assert iso_fire_times("@every 1h", "UTC", "1969-12-31T23:30+00:00", 1) == ["1970-01-01T00:00:00+00:00"]


def test_every_runs_on_elapsed_time() -> None:
    assert iso_fire_times("@every 1h", "Europe/Berlin", "2026-03-29T01:30+01:00", 2) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T04:00:00+02:00",
    ]
    assert iso_fire_times("@every 1h", "Europe/Berlin", "2026-10-25T01:30+02:00", 3) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    # One day of elapsed time from midnight UTC, shown in Berlin time.
    assert iso_fire_times("@every 1d", "Europe/Berlin", "2026-03-28T12:00+01:00", 2) == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-30T02:00:00+02:00",
    ]


# -- Errors -----------------------------------------------------------------------------------

INVALID_CASES = [
    ("61 * * * *", ["minute field value 61 is out of range 0-59", "6 with seconds first"]),
    ("* * *", ["expected 5 fields", "got 3"]),
    ("0 0 * * * * *", ["got 7"]),
    ("", ["empty"]),
    ("0 24 * * *", ["hour field value 24 is out of range 0-23"]),
    ("0 0 0 * *", ["day-of-month field value 0 is out of range 1-31"]),
    ("0 0 32 * *", ["day-of-month field value 32"]),
    ("0 0 * 13 *", ["month field value 13 is out of range 1-12"]),
    ("0 0 * foo *", ["month field value 'foo'", "jan-dec"]),
    ("0 0 * * 8", ["day-of-week field value 8 is out of range 0-7"]),
    ("60 * * * * *", ["second field value 60 is out of range 0-59"]),
    ("*/0 * * * *", ["'*/0'", "step 0"]),
    ("*/90 * * * *", ["'*/90'", "step 90", "@every"]),
    ("-5 * * * *", ["'-5'"]),
    ("1,,2 * * * *", ["empty list item"]),
    ("0 0 31 2 *", ["never fires"]),
    ("0 0 30 2 *", ["never fires"]),
    ("@reboot", ["@reboot is not supported"]),
    ("TZ=Europe/Berlin 0 0 * * *", ["TZ=", "tz='Europe/Berlin'"]),
    ("CRON_TZ=Asia/Tokyo 0 0 * * *", ["CRON_TZ=", "tz='Asia/Tokyo'"]),
    ("@fortnightly", ["unknown macro '@fortnightly'", "@hourly"]),
    ("@daily 5", ["@daily takes no argument", "'5'"]),
    ("0 0 13 * 5#2", ["'5#2'", "'13'"]),
    ("0 0 1-7 * L5", ["'L5'", "'1-7'"]),
    ("0 0 * * 1#6", ["'1#6'", "occurrence 6"]),
    ("0 0 * * 1,5#3", ["'1,5#3'", "mixes"]),
    ("0 0 * * 5L", ["'5L'", "'L5'"]),
    ("H * * * *", ["'H'", "hashed"]),
    ("R 0 * * *", ["'R'", "random"]),
    ("0 0 15W * *", ["'15W'", "nearest weekday"]),
    ("? * * * *", ["minute field '?'"]),
    ("@every", ["@every needs a duration"]),
    ("@every 0s", ["'0s'", "at least 1s"]),
    ("@every 1.5h", ["'1.5h'", "fractions"]),
    ("@every -5m", ["'-5m'", "positive"]),
    ("@every 5w", ["unknown unit 'w'"]),
    ("@every 5ms", ["unknown unit 'ms'"]),
    ("@every 5", ["'5'", "units s, m, h and d"]),
    ("@every 36501d", ["'36501d'", "maximum"]),
]


@pytest.mark.parametrize(("expression", "fragments"), INVALID_CASES, ids=[case[0] or "empty" for case in INVALID_CASES])
def test_invalid_expression(expression: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidSchedule) as raised:
        parse_schedule(expression)
    message = str(raised.value)
    assert message.startswith(f"invalid schedule {expression!r}: ")
    assert raised.value.expression == expression
    for fragment in fragments:
        assert fragment in message


def test_invalid_schedule_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_schedule("61 * * * *")
    assert issubclass(InvalidSchedule, ConfigurationError)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "europe/berlin", "Europe", "../etc/passwd", "", "localtime"])
def test_invalid_time_zone(zone: str) -> None:
    with pytest.raises(InvalidSchedule) as raised:
        parse_schedule("0 0 * * *", zone)
    assert repr(zone) in str(raised.value)
    assert "'0 0 * * *'" in str(raised.value)


def test_unsupported_tzinfo_type() -> None:
    class HomemadeZone(dt.tzinfo):
        def utcoffset(self, _: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(hours=1)

    with pytest.raises(InvalidSchedule, match="HomemadeZone"):
        parse_schedule("0 0 * * *", HomemadeZone())


@pytest.mark.parametrize("method", ["next_after", "fire_times", "fire_times_between"])
def test_naive_datetime_rejected(method: str) -> None:
    schedule = parse_schedule("0 0 * * *")
    naive = dt.datetime(2026, 1, 1)
    calls = {
        "next_after": lambda: schedule.next_after(naive),
        "fire_times": lambda: schedule.fire_times(naive, 1),
        "fire_times_between": lambda: schedule.fire_times_between(naive, at("2026-02-01T00:00+00:00")),
    }
    with pytest.raises(ValueError, match="timezone-aware"):
        calls[method]()


# -- API behaviour ----------------------------------------------------------------------------


def test_next_after_is_strictly_after() -> None:
    schedule = parse_schedule("0 0 * * *")
    assert schedule.next_after(at("2026-01-01T00:00+00:00")).isoformat() == "2026-01-02T00:00:00+00:00"
    assert schedule.next_after(at("2025-12-31T23:59:59.999999+00:00")).isoformat() == "2026-01-01T00:00:00+00:00"


def test_next_after_accepts_any_offset() -> None:
    schedule = parse_schedule("30 2 * * *", "Europe/Berlin")
    # 2026-03-28T02:00+01:00 written in New York time.
    assert schedule.next_after(at("2026-03-27T21:00-04:00")).isoformat() == "2026-03-28T02:30:00+01:00"


def test_fire_times_between_bounds_and_limit() -> None:
    schedule = parse_schedule("0 * * * *")
    start, end = at("2026-01-01T00:00+00:00"), at("2026-01-01T03:00+00:00")
    assert [t.hour for t in schedule.fire_times_between(start, end)] == [1, 2, 3]
    assert [t.hour for t in schedule.fire_times_between(start, end, limit=2)] == [1, 2]
    assert schedule.fire_times_between(end, start) == []
    assert schedule.fire_times_between(start, end, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        schedule.fire_times_between(start, end, limit=-1)


def test_fire_times_count() -> None:
    schedule = parse_schedule("0 * * * *")
    assert schedule.fire_times(at("2026-01-01T00:00+00:00"), 0) == []
    with pytest.raises(ValueError, match="count"):
        schedule.fire_times(at("2026-01-01T00:00+00:00"), -1)


def test_format_fire_time() -> None:
    fire_time = parse_schedule("30 2 * * *", "Europe/Berlin").next_after(at("2026-03-29T00:00+01:00"))
    assert format_fire_time(fire_time) == "2026-03-29T03:00:00+02:00"
    with pytest.raises(ValueError):
        format_fire_time(dt.datetime(2026, 1, 1))


def test_schedule_attributes() -> None:
    schedule = parse_schedule(" 0 9 * * 1 ", "Europe/Oslo")
    assert schedule.expression == " 0 9 * * 1 "
    assert schedule.timezone is ZoneInfo("Europe/Oslo")
    assert not schedule.is_interval
    assert not schedule.follows_real_time
    assert parse_schedule("*/5 * * * *").follows_real_time
    assert parse_schedule("0 0 * * *").timezone is ZoneInfo("UTC")


def test_tzinfo_objects_accepted() -> None:
    berlin = parse_schedule("30 2 * * *", ZoneInfo("Europe/Berlin"))
    assert berlin.next_after(at("2026-03-29T00:00+01:00")).isoformat() == "2026-03-29T03:00:00+02:00"
    fixed = parse_schedule("30 2 * * *", dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert fixed.next_after(at("2026-03-29T00:00+00:00")).isoformat() == "2026-03-30T02:30:00+05:30"


def test_schedule_equality_and_hash() -> None:
    first = parse_schedule("*/5 * * * *", "Europe/Berlin")
    second = parse_schedule("*/5 * * * *", ZoneInfo("Europe/Berlin"))
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1
    assert first != parse_schedule("*/5 * * * *", "Europe/Paris")
    assert first != parse_schedule("*/5  * * * *", "Europe/Berlin")
    assert repr(first) == "Schedule('*/5 * * * *', tz='Europe/Berlin')"


def test_schedule_immutable() -> None:
    schedule = parse_schedule("0 0 * * *")
    with pytest.raises(AttributeError):
        schedule.expression = "0 1 * * *"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        schedule._rule = None  # type: ignore[assignment]


def test_schedule_pickles() -> None:
    schedule = parse_schedule("30 2 * * *", "Europe/Berlin")
    copy = pickle.loads(pickle.dumps(schedule))
    assert isinstance(copy, Schedule)
    assert copy == schedule
    assert copy.next_after(at("2026-03-29T00:00+01:00")).isoformat() == "2026-03-29T03:00:00+02:00"


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="time.tzset is Unix only")
@pytest.mark.parametrize("process_zone", ["Pacific/Kiritimati", "America/St_Johns", "Europe/Berlin"])
def test_result_independent_of_tz_environment(monkeypatch: pytest.MonkeyPatch, process_zone: str) -> None:
    monkeypatch.setenv("TZ", process_zone)
    time.tzset()
    try:
        fixed = iso_fire_times("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00+01:00", 3)
        real = iso_fire_times("*/15 * * * *", "Europe/Berlin", "2026-03-29T01:40+01:00", 2)
        every = iso_fire_times("@every 11m", "UTC", "2026-01-01T00:00+00:00", 1)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert fixed == ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    assert real == ["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00"]
    assert every == ["2026-01-01T00:05:00+00:00"]


def test_clock_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> float:
        raise AssertionError("the schedule read the current time")

    monkeypatch.setattr(sys.modules["croniter.croniter"], "time", fail)
    schedule = parse_schedule("30 2 * * *", "Europe/Berlin")
    assert schedule.next_after(at("2026-03-28T00:00+01:00")).isoformat() == "2026-03-28T02:30:00+01:00"


def test_next_after_thread_safe() -> None:
    schedule = parse_schedule("*/15 * * * *", "Europe/Berlin")
    starts = [at("2026-10-25T00:00+02:00") + dt.timedelta(minutes=7 * i) for i in range(40)]
    expected = [schedule.next_after(start) for start in starts]
    results: dict[int, list[list[dt.datetime]]] = {}

    def worker(thread_id: int) -> None:
        results[thread_id] = [[schedule.next_after(start) for start in starts] for _ in range(5)]

    threads = [threading.Thread(target=worker, args=(thread_id,)) for thread_id in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    for rounds in results.values():
        for fire_times in rounds:
            assert fire_times == expected
