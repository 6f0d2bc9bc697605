"""Reading run history: last runs, runs of one job, runs in a time range, counts by outcome.

Run records are written by the scheduler through the backend (``finish_fire`` and
``record_run``); this module only reads them. Times are Unix seconds (UTC).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from .backend import Backend
from .models import Outcome, RunRecord

__all__ = ["History"]

SCAN_LIMIT = 10_000
"""Most records read by one query that has to scan (last success, counts)."""


class History:
    """Queries over the run history of one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def last_run(self, job: str) -> RunRecord | None:
        """Return the record with the latest fire time of ``job``, or None."""
        records = self.backend.list_runs(job, limit=1)
        return records[0] if records else None

    def last_runs(self, jobs: Iterable[str]) -> dict[str, RunRecord | None]:
        """Return the latest record of each job (one backend call per job)."""
        return {job: self.last_run(job) for job in jobs}

    def last_success(self, job: str, *, scan_limit: int = SCAN_LIMIT) -> RunRecord | None:
        """Return the latest succeeded record of ``job`` among its newest ``scan_limit`` records."""
        for record in self.backend.list_runs(job, limit=scan_limit):
            if record.outcome is Outcome.SUCCEEDED:
                return record
        return None

    def success_age_s(self, job: str, now: float | None = None) -> float | None:
        """Return seconds since the last successful run of ``job`` ended, or None if none is recorded."""
        record = self.last_success(job)
        if record is None:
            return None
        ended = (record.started_at or record.fire_time) + (record.duration_s or 0.0)
        return (time.time() if now is None else now) - ended

    def runs(self, job: str, *, limit: int = 100) -> list[RunRecord]:
        """Return the newest ``limit`` records of ``job``, newest fire time first."""
        return self.backend.list_runs(job, limit=limit)

    def between(self, since: float, until: float, *, job: str | None = None, limit: int = 1000) -> list[RunRecord]:
        """Return records whose fire time is in ``[since, until]``, newest first."""
        return self.backend.list_runs(job, limit=limit, since=since, until=until)

    def counts(self, *, job: str | None = None, since: float | None = None) -> Counter[Outcome]:
        """Count records by outcome (at most ``SCAN_LIMIT`` newest records are read)."""
        records = self.backend.list_runs(job, limit=SCAN_LIMIT, since=since)
        return Counter(record.outcome for record in records)
