"""The workload of measurement 6, shared by planlagt and the peers.

``SHORT_JOBS`` jobs fire every second and work ``SHORT_WORK_S``, less than the spread of
the instance clocks, so a lock released at the end of a run is free again before an
instance whose clock runs behind reaches the same tick. One ``long`` job fires every
``LONG_PERIOD_S`` seconds and works ``LONG_WORK_S``: long enough to be killed mid-run.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["LONG_JOB", "job_schedules", "next_fire_time"]

SHORT_JOBS = 10
SHORT_WORK_S = 0.05
LONG_JOB = "long"
LONG_PERIOD_S = 10
LONG_WORK_S = 3.0
CLOCK_OFFSETS_S = (-0.15, 0.0, 0.15)
LEASE_TTL_S = 2.0
HEARTBEAT_S = 0.5


def short_job_names() -> list[str]:
    return [f"short-{index}" for index in range(SHORT_JOBS)]


def job_schedules() -> dict[str, str]:
    """Return ``{job name: cron expression with seconds}`` for every job of the workload."""
    schedules = {name: "* * * * * *" for name in short_job_names()}
    schedules[LONG_JOB] = f"*/{LONG_PERIOD_S} * * * * *"
    return schedules


def work_seconds(job: str) -> float:
    return LONG_WORK_S if job == LONG_JOB else SHORT_WORK_S


def period_s(job: str) -> int:
    return LONG_PERIOD_S if job == LONG_JOB else 1


def next_fire_time(job: str, now: float) -> int:
    """Return the first fire time of ``job`` after ``now`` (both Unix seconds on one clock)."""
    period = period_s(job)
    return (int(now) // period + 1) * period


def planlagt_jobs() -> list[dict[str, Any]]:
    """Return the workload as job groups of :mod:`bench.instance`."""
    return [
        {"name": "short", "count": SHORT_JOBS, "schedule": "* * * * * *", "work_s": SHORT_WORK_S},
        {"name": LONG_JOB, "schedule": f"*/{LONG_PERIOD_S} * * * * *", "work_s": LONG_WORK_S,
         "max_attempts": 3, "marked": True},
    ]  # fmt: skip


def sleep_until_offset(offset_s: float, instant: float, stop: Any) -> bool:
    """Wait until the clock shifted by ``offset_s`` reads ``instant``; return False when ``stop`` was set."""
    return not stop.wait(max(0.0, instant - (time.time() + offset_s)))
