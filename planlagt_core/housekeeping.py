"""Jobs the scheduler registers for itself: trimming run history and checking success age.

They are ordinary jobs, so each of their fire times runs once on one instance, like any
other job. Their names start with ``planlagt.``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .backend import Backend
from .history import History
from .job import Job
from .listeners import ListenerSet

__all__ = ["SUCCESS_AGE_JOB", "TRIM_JOB", "check_success_age", "trim_history"]

LOG = logging.getLogger(__name__)

TRIM_JOB = "planlagt.trim-history"
TRIM_SCHEDULE = "@every 1h"
SUCCESS_AGE_JOB = "planlagt.check-success-age"
SUCCESS_AGE_SCHEDULE = "@every 1m"


def trim_history(backend: Backend, max_per_job: int, max_age_s: float) -> Callable[[], None]:
    """Return the trimming job: keep at most ``max_per_job`` records per job, none older than ``max_age_s``."""

    def trim() -> None:
        deleted = backend.trim_runs(max_per_job=max_per_job, max_age_s=max_age_s)
        LOG.info("Trimmed %d run records (keeping %d per job, %g s at most)", deleted, max_per_job, max_age_s)

    return trim


def check_success_age(
    backend: Backend, jobs: list[Job], listeners: ListenerSet, overdue: dict[str, float | None]
) -> Callable[[], None]:
    """Return the job that flags jobs whose last success is older than their ``max_success_age_s``.

    ``overdue`` is updated in place: job name to age in seconds (None: never succeeded).
    """
    history = History(backend)
    watched = [job for job in jobs if job.policy.max_success_age_s is not None]

    def check() -> None:
        for job in watched:
            limit = job.policy.max_success_age_s
            assert limit is not None
            age = history.success_age_s(job.name)
            if age is not None and age <= limit:
                overdue.pop(job.name, None)
                continue
            overdue[job.name] = age
            shown = "never" if age is None else f"{age:.0f} s ago"
            LOG.warning("Job %r last succeeded %s; its maximum success age is %g s", job.name, shown, limit)
            listeners.success_overdue(job.name, age, limit)

    return check
