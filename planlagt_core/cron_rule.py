"""Fire times of a cron expression in a time zone, with the cron rule for clock changes.

croniter computes the next matching wall time on naive datetimes, which is plain calendar
arithmetic. This module maps those wall times to instants itself, because croniter 7.0.0
fires a fixed-time schedule in both passes of a repeated hour when given an aware datetime.
The rule is the one of Vixie cron and cronie:

* A real-time schedule, whose minute or hour field starts with ``*``, fires at every instant
  whose wall time matches. It never fires at wall times in a gap, and it fires in both
  passes of a fold.
* Any other schedule is fixed-time and fires once per matching wall time. A wall time in a
  gap fires at the end of the gap, which is the transition instant, so several wall times in
  one gap make one run. A wall time in a fold fires on the first pass only.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence

from croniter import CroniterBadDateError, CroniterError, croniter

from .cron_fields import collapse_equal_ranges, follows_real_time, invalid_schedule
from .dst import gap_end, instants_at, transition_instant, wall_time_of
from .errors import InvalidSchedule

__all__ = ["SEARCH_LIMIT_YEARS", "CronRule"]

# How far ahead a search for the next fire time goes before it gives up. Within 1901-2099
# the calendar repeats every 28 years. A schedule such as '0 0 * 2 1#5' (a fifth Monday in
# February) waits longer around 2100, which is no leap year: from 2072 to 2112.
SEARCH_LIMIT_YEARS = 100

ONE_SECOND = dt.timedelta(seconds=1)

# croniter reads the current time when it gets no start time, so it always gets this one.
_CRONITER_START = dt.datetime(2000, 1, 1)


class CronRule:
    """The fire times of a 5-field, or 6-field with seconds first, cron expression in one zone.

    The fields must have passed ``cron_fields.check_cron_fields``. Instances are thread-safe.
    """

    def __init__(self, expression: str, fields: Sequence[str], zone: dt.tzinfo) -> None:
        self.expression = expression
        self.zone = zone
        self.follows_real_time = follows_real_time(fields)
        try:
            self._iterator = croniter(
                " ".join(collapse_equal_ranges(fields)),
                _CRONITER_START,
                ret_type=dt.datetime,
                second_at_beginning=len(fields) == 6,
                max_years_between_matches=SEARCH_LIMIT_YEARS,
            )
        except CroniterError as exc:
            raise invalid_schedule(expression, f"croniter rejected it: {exc}") from exc
        # A croniter object stores the start time of the current call, so calls are serialized.
        self._lock = threading.Lock()

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        """Return the first fire time strictly after the aware ``instant``, in UTC.

        Raises InvalidSchedule if there is none within SEARCH_LIMIT_YEARS years.
        """
        if self.follows_real_time:
            return self._next_real_time(instant)
        return self._next_fixed_time(instant)

    def _next_wall_time(self, wall: dt.datetime) -> dt.datetime:
        """Return the first matching wall time strictly after ``wall``."""
        with self._lock:
            try:
                return self._iterator.get_next(dt.datetime, start_time=wall)
            except CroniterBadDateError as exc:
                raise self._no_fire_time(wall) from exc

    def _no_fire_time(self, wall: dt.datetime) -> InvalidSchedule:
        detail = f"no fire time in the {SEARCH_LIMIT_YEARS} years after {wall.isoformat()} (wall time in {self.zone})"
        return invalid_schedule(self.expression, detail)

    def _next_fixed_time(self, instant: dt.datetime) -> dt.datetime:
        wall = self._fixed_time_search_start(instant)
        last_year = wall.year + SEARCH_LIMIT_YEARS
        while wall.year <= last_year:
            wall = self._next_wall_time(wall)
            fire_time = self._fixed_fire_time(wall)
            if fire_time > instant:
                return fire_time
        raise self._no_fire_time(wall_time_of(instant, self.zone))

    def _fixed_time_search_start(self, instant: dt.datetime) -> dt.datetime:
        """Return the wall time after which the next fixed-time fire time of ``instant`` lies."""
        local = instant.astimezone(self.zone)
        wall = local.replace(tzinfo=None)
        passes = instants_at(wall, self.zone)
        if local.fold == 0 or len(passes) != 2:
            return wall

        # `instant` is on the second pass of a fold. The wall times of the fold fired on the
        # first pass, so the search skips them instead of stepping through each one. It
        # starts after the last wall time of the first pass.
        transition = transition_instant(passes[0], passes[1], self.zone)
        return wall_time_of(transition - ONE_SECOND, self.zone)

    def _fixed_fire_time(self, wall: dt.datetime) -> dt.datetime:
        """Return the instant at which a fixed-time schedule fires for the wall time ``wall``."""
        passes = instants_at(wall, self.zone)
        if passes:
            return passes[0]
        return gap_end(wall, self.zone)

    def _next_real_time(self, instant: dt.datetime) -> dt.datetime:
        fire_time = self._next_real_time_forward(instant)
        second_pass_fire_time = self._first_fire_time_on_second_pass(instant)
        if second_pass_fire_time is not None and second_pass_fire_time < fire_time:
            return second_pass_fire_time
        return fire_time

    def _next_real_time_forward(self, instant: dt.datetime) -> dt.datetime:
        """Return the first real-time fire time after ``instant`` at a wall time after that of ``instant``."""
        wall = wall_time_of(instant, self.zone)
        last_year = wall.year + SEARCH_LIMIT_YEARS
        while wall.year <= last_year:
            wall = self._next_wall_time(wall)
            passes = instants_at(wall, self.zone)
            later = [candidate for candidate in passes if candidate > instant]
            if later:
                return later[0]
            if not passes:
                # The wall time lies in a gap: continue with the first wall time after the gap.
                wall = wall_time_of(gap_end(wall, self.zone), self.zone) - ONE_SECOND
        raise self._no_fire_time(wall_time_of(instant, self.zone))

    def _first_fire_time_on_second_pass(self, instant: dt.datetime) -> dt.datetime | None:
        """Return the first real-time fire time in the second pass of the fold ``instant`` is in.

        Returns None unless ``instant`` is on the first pass of a fold. The second pass
        repeats wall times up to and including that of ``instant``, which the forward search
        in wall time does not see.
        """
        local = instant.astimezone(self.zone)
        passes = instants_at(local.replace(tzinfo=None), self.zone)
        if local.fold == 1 or len(passes) != 2:
            return None

        transition = transition_instant(passes[0], passes[1], self.zone)
        wall = self._next_wall_time(wall_time_of(transition, self.zone) - ONE_SECOND)
        later = [candidate for candidate in instants_at(wall, self.zone) if candidate > instant]
        return later[0] if later else None
