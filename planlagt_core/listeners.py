"""Hooks for run start, run end and run failure.

Subclass :class:`Listener` and override what you need, then pass it to the scheduler.
Listener methods run on scheduler threads; one that raises is logged and never stops the
scheduler or changes a run's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .context import RunContext
from .models import RunRecord

__all__ = ["Listener"]

LOG = logging.getLogger(__name__)


class Listener:
    """Receives run events. Every method is a no-op by default."""

    def run_started(self, context: RunContext) -> None:
        """Called in the worker thread just before the job function runs."""

    def run_finished(self, record: RunRecord) -> None:
        """Called for every run record this instance writes: attempts, skips and misses."""

    def run_failed(self, record: RunRecord, error: BaseException) -> None:
        """Called when a job function raised, after ``run_finished`` for the same record."""

    def success_overdue(self, job: str, age_s: float | None, max_age_s: float) -> None:
        """Called when a job's last success is older than its ``max_success_age_s``.

        ``age_s`` is None when no success is recorded at all. Called by the one instance
        that runs the periodic check, once per check.
        """


class ListenerSet:
    """Calls every listener, logging and swallowing what they raise."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._listeners = list(listeners)

    @property
    def listeners(self) -> list[Listener]:
        return list(self._listeners)

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def run_started(self, context: RunContext) -> None:
        for listener in self._listeners:
            try:
                listener.run_started(context)
            except Exception:
                LOG.exception("Listener %r failed in run_started for job %r", listener, context.job)

    def run_finished(self, record: RunRecord) -> None:
        for listener in self._listeners:
            try:
                listener.run_finished(record)
            except Exception:
                LOG.exception("Listener %r failed in run_finished for job %r", listener, record.job)

    def run_failed(self, record: RunRecord, error: BaseException) -> None:
        for listener in self._listeners:
            try:
                listener.run_failed(record, error)
            except Exception:
                LOG.exception("Listener %r failed in run_failed for job %r", listener, record.job)

    def success_overdue(self, job: str, age_s: float | None, max_age_s: float) -> None:
        for listener in self._listeners:
            try:
                listener.success_overdue(job, age_s, max_age_s)
            except Exception:
                LOG.exception("Listener %r failed in success_overdue for job %r", listener, job)
