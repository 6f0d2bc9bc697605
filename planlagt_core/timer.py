"""The fire-time heap: which job fires next, for any number of jobs, on one thread."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone

from .job import Job, MissedPolicy
from .runner import PendingFire

__all__ = ["FireTimer"]

MAX_DUE_PER_POP = 1000
"""Most fire times of one job handed out at once after a long stall; older ones are dropped."""


class FireTimer:
    """Keeps the next fire time of every job in a heap ordered by UTC instant."""

    def __init__(self, jobs: list[Job], now: float) -> None:
        self._counter = itertools.count()
        self._heap: list[tuple[float, int, Job]] = []
        start = _utc(now)
        for job in jobs:
            first = job.schedule.next_after(start).timestamp()
            self._heap.append((first, next(self._counter), job))
        heapq.heapify(self._heap)

    def next_due(self) -> float:
        """Return the earliest next fire time (Unix seconds), or infinity with no jobs."""
        return self._heap[0][0] if self._heap else float("inf")

    def pop_due(self, now: float, owns: Callable[[Job], bool]) -> list[PendingFire]:
        """Advance every job whose fire time is at or before ``now``; return work for owned jobs.

        Jobs this instance does not own advance without producing work (and without any
        backend call). When a job has several due fire times (after a stall), each is
        returned; with ``MissedPolicy.RUN_LATEST`` the latest may start late.
        """
        due: list[PendingFire] = []
        while self._heap and self._heap[0][0] <= now:
            first, _, job = heapq.heappop(self._heap)
            fires, following = self._due_fire_times(job, first, now)
            heapq.heappush(self._heap, (following, next(self._counter), job))
            if owns(job):
                due.extend(_pending(job, fires, following, now))
        return due

    @staticmethod
    def _due_fire_times(job: Job, first: float, now: float) -> tuple[list[float], float]:
        """Return the due fire times from ``first`` on, and the job's next fire time after them."""
        fires = [first]
        while True:
            following = job.schedule.next_after(_utc(fires[-1])).timestamp()
            if following > now or len(fires) >= MAX_DUE_PER_POP:
                return fires, following
            fires.append(following)


def _pending(job: Job, fires: list[float], following: float, now: float) -> list[PendingFire]:
    next_times = [*fires[1:], following]
    items = [
        PendingFire(job=job, fire_time=fire, not_before=now, reason="due", next_fire_time=next_time)
        for fire, next_time in zip(fires, next_times, strict=True)
    ]
    latest = items[-1]
    if job.policy.missed is MissedPolicy.RUN_LATEST and now - latest.fire_time <= job.policy.missed_grace_s:
        items[-1] = replace(latest, late_ok=True)
    return items


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)
