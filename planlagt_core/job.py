"""Job definitions and their policies, checked when a job is registered."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import InvalidJob
from .schedule import Schedule, parse_schedule

__all__ = ["Job", "JobPolicy", "MissedPolicy", "OverlapPolicy", "definitions_digest", "schedule_weight"]

DEFAULT_LEASE_TTL_S = 30.0
DEFAULT_MAX_ATTEMPTS = 1
DEFAULT_RETRY_BACKOFF_S = 1.0
MAX_RETRY_BACKOFF_S = 300.0
DEFAULT_MISSED_GRACE_S = 3600.0
WEIGHT_ANCHOR = datetime(2026, 1, 5, tzinfo=timezone.utc)


class OverlapPolicy(str, enum.Enum):
    """The behaviour of a fire time that finds the previous run of its job still going."""

    SKIP = "skip"
    """Skip this fire time, log it and record it as skipped (the default)."""

    ALLOW = "allow"
    """Run anyway: each fire time gets its own lease, so runs of one job may overlap."""


class MissedPolicy(str, enum.Enum):
    """The handling of fire times that could not start within ``late_start_s``."""

    SKIP = "skip"
    """Record each as missed and run none of them (the default)."""

    RUN_LATEST = "run_latest"
    """Record all but the latest as missed; run the latest once if within ``missed_grace_s``."""


@dataclass(frozen=True)
class JobPolicy:
    """How a job is run. Durations are seconds.

    ``lease_ttl_s`` is the TTL of the job's lease and ``heartbeat_s`` the renewal interval
    (default a third of the TTL). ``max_run_time_s`` is when a run is asked to stop (None:
    never). ``max_attempts`` bounds all attempts at one fire time, first run and retries
    together; retries wait ``retry_backoff_s`` doubled after each failure. ``late_start_s``
    is how late a fire time may still start (default: one lease TTL plus four heartbeats
    plus the scheduler's maximum clock skew, the time needed to notice a dead instance
    and confirm it is gone).
    ``min_hold_s`` keeps the job's key blocked that long after a run ends.
    ``max_success_age_s`` flags the job as overdue when its last success is older.
    """

    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    heartbeat_s: float | None = None
    max_run_time_s: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    missed: MissedPolicy = MissedPolicy.SKIP
    late_start_s: float | None = None
    missed_grace_s: float = DEFAULT_MISSED_GRACE_S
    min_hold_s: float = 0.0
    max_success_age_s: float | None = None

    @property
    def effective_heartbeat_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else self.lease_ttl_s / 3

    def late_start_window_s(self, max_skew_s: float) -> float:
        if self.late_start_s is not None:
            return self.late_start_s
        return self.lease_ttl_s + 4 * self.effective_heartbeat_s + max_skew_s

    def backoff_s(self, attempt: int) -> float:
        """Return the wait before the attempt after ``attempt`` (1-based), capped at 300 s."""
        return min(self.retry_backoff_s * 2 ** (attempt - 1), MAX_RETRY_BACKOFF_S)

    def check(self, job: str) -> None:
        """Raise ``InvalidJob`` naming the job and the value for any invalid policy value."""
        _check_positive(job, "lease_ttl_s", self.lease_ttl_s)
        if self.heartbeat_s is not None:
            _check_positive(job, "heartbeat_s", self.heartbeat_s)
            if self.heartbeat_s >= self.lease_ttl_s:
                raise InvalidJob(
                    f"job {job!r}: heartbeat_s={self.heartbeat_s} must be shorter than "
                    f"lease_ttl_s={self.lease_ttl_s}; a third of the TTL is a good value"
                )
        if self.max_run_time_s is not None:
            _check_positive(job, "max_run_time_s", self.max_run_time_s)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidJob(f"job {job!r}: max_attempts must be an integer of at least 1, not {self.max_attempts!r}")
        _check_positive(job, "retry_backoff_s", self.retry_backoff_s)
        if self.late_start_s is not None:
            _check_positive(job, "late_start_s", self.late_start_s)
        _check_positive(job, "missed_grace_s", self.missed_grace_s)
        if self.max_success_age_s is not None:
            _check_positive(job, "max_success_age_s", self.max_success_age_s)
        if not (isinstance(self.min_hold_s, (int, float)) and math.isfinite(self.min_hold_s) and self.min_hold_s >= 0):
            raise InvalidJob(f"job {job!r}: min_hold_s must be zero or a positive number of seconds")

    def to_dict(self) -> dict[str, Any]:
        return {
            "lease_ttl_s": self.lease_ttl_s,
            "heartbeat_s": self.effective_heartbeat_s,
            "max_run_time_s": self.max_run_time_s,
            "max_attempts": self.max_attempts,
            "retry_backoff_s": self.retry_backoff_s,
            "overlap": self.overlap.value,
            "missed": self.missed.value,
            "late_start_s": self.late_start_s,
            "missed_grace_s": self.missed_grace_s,
            "min_hold_s": self.min_hold_s,
            "max_success_age_s": self.max_success_age_s,
        }


@dataclass(frozen=True, eq=False)
class Job:
    """A registered job: a callable, its schedule and its policy.

    The callable takes no argument, or one: the :class:`~planlagt_core.context.RunContext`
    of the run. ``async def`` callables run on the scheduler's event loop thread.
    """

    name: str
    func: Callable[..., Any]
    schedule: Schedule
    policy: JobPolicy
    takes_context: bool
    is_async: bool

    def schedule_weight(self) -> float:
        """Return the job's expected runs per second (see :func:`schedule_weight`)."""
        return schedule_weight(self.schedule)

    @property
    def lease_key(self) -> str:
        return f"job:{self.name}"

    def definition(self) -> dict[str, Any]:
        """Return the JSON-ready definition announced to other instances (no code)."""
        return {
            "name": self.name,
            "schedule": self.schedule.expression,
            "timezone": str(self.schedule.timezone),
            "function": _qualified_name(self.func),
            "policy": self.policy.to_dict(),
        }


def build_job(
    func: Callable[..., Any],
    schedule: str,
    *,
    name: str | None,
    tz: str,
    policy: JobPolicy,
) -> Job:
    """Check a job definition and return the :class:`Job`.

    Raises ``InvalidJob`` for a non-callable, a bad name, a signature that takes more than
    one required argument, or a bad policy value. Raises ``InvalidSchedule`` for a bad
    schedule.
    """
    if not callable(func):
        raise InvalidJob(f"job {name or schedule!r}: expected a function or other callable, got {func!r}")
    job_name = name if name is not None else _qualified_name(func)
    _check_name(job_name)
    policy.check(job_name)
    if not isinstance(schedule, str):
        raise InvalidJob(f"job {job_name!r}: schedule must be a cron expression string, not {schedule!r}")
    parsed = parse_schedule(schedule, tz)
    return Job(
        name=job_name,
        func=func,
        schedule=parsed,
        policy=policy,
        takes_context=_takes_context(job_name, func),
        is_async=asyncio.iscoroutinefunction(func) or asyncio.iscoroutinefunction(getattr(func, "__call__", None)),  # noqa: B004
    )


def schedule_weight(schedule: Schedule) -> float:
    """Return a schedule's expected runs per second, the same on every instance.

    Measured between the first two fire times after a fixed instant (Monday
    2026-01-05T00:00Z), so it does not depend on when an instance starts.
    """
    first = schedule.next_after(WEIGHT_ANCHOR)
    second = schedule.next_after(first)
    return 1.0 / max((second - first).total_seconds(), 1.0)


def definitions_digest(jobs: list[Job]) -> str:
    """Return a short hash of the definitions of ``jobs``, the same on every instance."""
    text = json.dumps(sorted((job.definition() for job in jobs), key=lambda d: d["name"]), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise InvalidJob(f"job name must be a non-empty string, not {name!r}")
    if name != name.strip() or any(not ch.isprintable() for ch in name):
        raise InvalidJob(f"job name {name!r} must not start or end with whitespace or contain control characters")
    if len(name) > 200:
        raise InvalidJob(f"job name {name[:40]!r}... is {len(name)} characters; the maximum is 200")


def _check_positive(job: str, option: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise InvalidJob(f"job {job!r}: {option} must be a positive number of seconds, not {value!r}")


def _takes_context(name: str, func: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    required_keyword = [p for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if len(positional) > 1 or required_keyword:
        raise InvalidJob(
            f"job {name!r}: {_qualified_name(func)}{signature} must take no argument or one (the run context)"
        )
    return len(positional) == 1 or any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())


def _qualified_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{qualname}" if module else qualname
