"""Timing, job sets and counting windows shared by the scheduler cases."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from planlagt_conformance.cases._support import round_up
from planlagt_conformance.instance import JobSpec
from planlagt_conformance.scenario import POLL_INTERVAL_S, Journal, Scenario, expected_fire_times
from planlagt_conformance.scheduler_cases._checks import explained_outcomes
from planlagt_core.backend import Backend, Capabilities
from planlagt_core.errors import BackendUnavailable
from planlagt_core.job import JobPolicy, build_job
from planlagt_core.scheduler import FRESH_VIEW_MARGIN_S

LEASE_TTL_S = 1.0
"""Lease and membership TTL of the instances, unless the backend's minimum is longer."""

HEARTBEATS_PER_TTL = 4
"""Heartbeats (and lease renewals) per TTL: 0.25 s with the 1 s TTL."""

MAX_SKEW_S = 1.0
"""The largest clock error the instances are configured to survive (``max_skew_s``)."""

EVERY_SECOND = "* * * * * *"
EVERY_TWO_SECONDS = "*/2 * * * * *"
SHORT_WORK_S = 0.05

TAKEOVER_TOLERANCE_S = 1.0
"""Delay allowed on top of the scheduler's own bound for a surviving instance to take over work.

The scheduler's part is spelled out in :attr:`SchedulerTiming.takeover_bound_s`. The
tolerance covers what it does not bound: threads waking late, backend round trips of
several Python processes, and SQLite writers queueing for the file's lock. Measured
takeovers ended within 0.1 s of the scheduler's part on a busy two-core machine, so the
tolerance leaves a wide margin for heavier load.
"""

LOST_NOTICE_TOLERANCE_S = 0.5
"""Delay allowed on top of one heartbeat for a resumed process to see its lease as lost."""

SETTLE_TIMEOUT_S = 30.0
"""How long the backend may take to list every started instance as live."""

CLOSE_MARGIN_S = 10.0
"""Extra time, beyond the late-start window and the longest job, for the last fire times to close."""


@dataclass(frozen=True)
class SchedulerTiming:
    """Lease TTL, heartbeat and clock skew of the instances, in seconds."""

    lease_ttl_s: float
    heartbeat_s: float
    max_skew_s: float

    @classmethod
    def for_capabilities(cls, capabilities: Capabilities) -> SchedulerTiming:
        """Return a 1 s TTL, or the backend's minimum TTL when that is longer, with four heartbeats per TTL."""
        ttl = round_up(max(LEASE_TTL_S, capabilities.min_ttl_s), capabilities.ttl_granularity_s)
        return cls(lease_ttl_s=ttl, heartbeat_s=ttl / HEARTBEATS_PER_TTL, max_skew_s=MAX_SKEW_S)

    @property
    def late_start_s(self) -> float:
        """The jobs' default late-start window: how late a fire time may still start."""
        return JobPolicy(lease_ttl_s=self.lease_ttl_s, heartbeat_s=self.heartbeat_s).late_start_window_s(
            self.max_skew_s
        )

    @property
    def takeover_bound_s(self) -> float:
        """Return how soon after a holder dies a survivor must have started its work.

        The dead holder's lease and membership expire within one TTL. A survivor notices
        at its next heartbeat. For a fire time at which no attempt began, it waits for the
        change to last two more heartbeats and ``FRESH_VIEW_MARGIN_S`` (the scheduler's
        confirmation). It tries once more a heartbeat later if the lease was still held.
        ``TAKEOVER_TOLERANCE_S`` comes on top.
        """
        confirmation_s = 2 * self.heartbeat_s + FRESH_VIEW_MARGIN_S
        return self.retry_bound_s + confirmation_s

    @property
    def retry_bound_s(self) -> float:
        """Return how soon after a holder dies a survivor must have retried the attempt it left.

        As :attr:`takeover_bound_s`, without the confirmation: an attempt that began is
        retried as soon as the survivor notices that the holder is gone.
        """
        return self.lease_ttl_s + self.heartbeat_s + self.heartbeat_s + TAKEOVER_TOLERANCE_S

    def close_timeout_s(self, jobs: Iterable[JobSpec]) -> float:
        """Return how long after a window ends its last fire times may take to close."""
        longest_work_s = max((job.work_s for job in jobs), default=0.0)
        return self.late_start_s + self.max_skew_s + longest_work_s + CLOSE_MARGIN_S


def short_jobs(count: int, *, prefix: str = "tick", schedule: str = EVERY_SECOND, **options: object) -> list[JobSpec]:
    """Return ``count`` jobs named ``{prefix}-01``, ``{prefix}-02`` and so on, working ``SHORT_WORK_S`` per run."""
    return [
        JobSpec(name=f"{prefix}-{index:02d}", schedule=schedule, work_s=SHORT_WORK_S, **options)  # type: ignore[arg-type]
        for index in range(1, count + 1)
    ]


def lease_key_of(job: JobSpec) -> str:
    """Return the key of the lease the scheduler takes for ``job`` (jobs whose runs do not overlap)."""
    return build_job(lambda: None, job.schedule, name=job.name, tz="UTC", policy=JobPolicy()).lease_key


def live_instances(observer: Backend) -> set[str] | None:
    """Return the ids the backend lists as live, or None while it cannot be reached."""
    try:
        return {instance.instance_id for instance in observer.list_instances()}
    except BackendUnavailable:
        return None


def wait_for_members(observer: Backend, instance_ids: Iterable[str], scenario: Scenario) -> float:
    """Wait until the backend lists exactly ``instance_ids`` as live; return the wall time at which it did."""
    expected = set(instance_ids)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while live_instances(observer) != expected:
        scenario.check_running()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the backend listed {sorted(live_instances(observer) or [])} as live, not {sorted(expected)}, "
                f"after {SETTLE_TIMEOUT_S:g} s\n{scenario.describe_logs()}"
            )
        time.sleep(POLL_INTERVAL_S)
    return time.time()


def settled_window_start(observer: Backend, instance_ids: Iterable[str], scenario: Scenario) -> float:
    """Return the first whole second at which every instance's view of the members is current.

    Every instance refreshes its view within one heartbeat of the backend listing all of
    them. An instance whose clock runs ahead claims a fire time up to ``max_skew_s`` early,
    so the window starts that much later too.
    """
    listed_at = wait_for_members(observer, instance_ids, scenario)
    return float(math.ceil(listed_at + scenario.heartbeat_s + scenario.max_skew_s))


def run_window(
    scenario: Scenario, jobs: Sequence[JobSpec], start: float, end: float, timing: SchedulerTiming
) -> list[tuple[str, float]]:
    """Wait until ``end`` and until every fire time of ``jobs`` from ``start`` to ``end`` is closed.

    Fire times the journal explains staying open (see :func:`explain`) need not close.
    Returns the keys of the fire times.
    """
    keys = expected_fire_times(jobs, start, end)
    scenario.sleep_until_wall(end)

    def may_stay_open(journal: Journal) -> list[tuple[str, float]]:
        return [key for key, outcomes in explain(journal, keys, timing).items() if "open" in outcomes]

    scenario.wait_for_closed(keys, timing.close_timeout_s(jobs), may_stay_open)
    return keys


def explain(
    journal: Journal, keys: Iterable[tuple[str, float]], timing: SchedulerTiming
) -> dict[tuple[str, float], set[str]]:
    """Return :func:`~planlagt_conformance.scheduler_cases._checks.explained_outcomes` for the instances' timing.

    A fire time's attempt begins at most one late-start window after it, which bounds how
    far before a kill an attempt the journal does not show can lie.
    """
    return explained_outcomes(journal, keys, lease_ttl_s=timing.lease_ttl_s, fault_window_s=timing.late_start_s)
