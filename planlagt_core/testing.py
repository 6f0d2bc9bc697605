"""Test helpers for users of planlagt: run a scheduler's jobs at chosen instants, without sleeping.

Example::

    from datetime import datetime, timezone
    from planlagt_core.testing import SchedulerTester

    tester = SchedulerTester(scheduler, start=datetime(2026, 3, 28, tzinfo=timezone.utc))
    records = tester.run_until(datetime(2026, 3, 30, tzinfo=timezone.utc))
    assert [r.fire_time for r in records if r.job == "nightly"] == [...]

The tester uses the scheduler's registered jobs and policies (schedule, time zone,
attempts, overlap) but never its backend: runs go through a private ``memory://`` store
driven by a :class:`~planlagt_core.clock.FakeClock`. Jobs run one at a time on the calling
thread, in fire-time order; a job that takes a run context sees the fake clock's instant
as its fire time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import datetime, timezone

from .clock import FakeClock
from .errors import ConfigurationError
from .job import Job
from .keeper import LeaseKeeper
from .listeners import Listener, ListenerSet
from .models import RunRecord
from .runner import PendingFire, Runner
from .scheduler import Scheduler

__all__ = ["SchedulerTester"]

TEST_INSTANCE_ID = "test-instance"


class _Collector(Listener):
    def __init__(self) -> None:
        self.records: list[RunRecord] = []

    def run_finished(self, record: RunRecord) -> None:
        self.records.append(record)


class SchedulerTester:
    """Runs the jobs of ``scheduler`` whose fire times fall after ``start``, on demand.

    ``start`` is an aware datetime; the clock starts there. Nothing here starts a thread.
    """

    def __init__(self, scheduler: Scheduler, *, start: datetime) -> None:
        from planlagt_memory import MemoryBackend

        if start.tzinfo is None:
            raise ConfigurationError(f"start must be an aware datetime (with a time zone), not {start!r}")
        self.clock = FakeClock(start.timestamp())
        self.backend = MemoryBackend(clock=self.clock)
        self._collector = _Collector()
        self._jobs = list(scheduler.jobs.values())
        self._runner = Runner(
            backend=self.backend,
            clock=self.clock,
            keeper=LeaseKeeper(self.backend, self.clock, TEST_INSTANCE_ID),
            listeners=ListenerSet([self._collector, *scheduler.listeners.listeners]),
            instance_id=TEST_INSTANCE_ID,
            max_skew_s=scheduler.max_skew_s,
            call_async=asyncio.run,
        )
        self._counter = itertools.count()
        self._queue: list[tuple[float, int, PendingFire]] = []
        for job in self._jobs:
            self._push_next(job, start.timestamp())

    @property
    def records(self) -> list[RunRecord]:
        """Every run record written so far, in the order they were written."""
        return list(self._collector.records)

    def run_until(self, until: datetime) -> list[RunRecord]:
        """Run every fire time (and retry) due up to and including ``until``; return their records."""
        if until.tzinfo is None:
            raise ConfigurationError(f"until must be an aware datetime (with a time zone), not {until!r}")
        end = until.timestamp()
        if end < self.clock.time():
            raise ConfigurationError(f"cannot run backwards: {until.isoformat()} is before the tester's clock")
        first = len(self._collector.records)
        while self._queue and self._queue[0][0] <= end:
            due, _, pending = heapq.heappop(self._queue)
            self.clock.set(max(due, self.clock.time()))
            if pending.reason == "due":
                self._push_next(pending.job, pending.fire_time)
            self._follow(pending)
        self.clock.set(end)
        return self._collector.records[first:]

    def _follow(self, pending: PendingFire) -> None:
        follow_up = self._runner.run(pending)
        if follow_up is not None:
            at = max(follow_up.not_before, self.clock.time() + 1e-6)
            heapq.heappush(self._queue, (at, next(self._counter), follow_up))

    def _push_next(self, job: Job, after: float) -> None:
        fire = job.schedule.next_after(datetime.fromtimestamp(after, tz=timezone.utc)).timestamp()
        pending = PendingFire(job=job, fire_time=fire, not_before=fire, reason="due")
        heapq.heappush(self._queue, (fire, next(self._counter), pending))

    def __repr__(self) -> str:
        now = datetime.fromtimestamp(self.clock.time(), tz=timezone.utc).isoformat()
        return f"<SchedulerTester at {now} jobs={len(self._jobs)}>"
