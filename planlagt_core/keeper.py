"""Keeping the leases of running attempts: renewal, lease state and maximum run time.

The scheduler's heartbeat thread calls :meth:`LeaseKeeper.tick`; nothing here starts a
thread. A lease whose renewal cannot reach the backend is *at risk* until its local
deadline (``Lease.valid_until``) passes, then *lost*; a lease the backend reports gone is
lost at once. A lost lease is never renewed again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .backend import Backend, Lease, LeaseState
from .clock import Clock
from .context import RunContext
from .errors import BackendUnavailable, LeaseLost

__all__ = ["LeaseKeeper", "RunningAttempt"]

LOG = logging.getLogger(__name__)

AT_RISK_RETRY_S = 0.5
"""Longest wait before a renewal that could not reach the backend is tried again, in seconds."""


@dataclass
class RunningAttempt:
    """One attempt in progress on this instance, as the heartbeat thread tracks it."""

    lease: Lease
    context: RunContext
    heartbeat_s: float
    started_monotonic: float
    next_renew: float
    run_deadline: float | None
    timed_out: bool = False
    removed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held for a whole renewal, so that :meth:`LeaseKeeper.remove` waits for one in flight."""


class LeaseKeeper:
    """Renews the leases of running attempts and reports each change to their contexts."""

    def __init__(self, backend: Backend, clock: Clock, instance_id: str) -> None:
        self._backend = backend
        self._clock = clock
        self._instance_id = instance_id
        self._attempts: dict[int, RunningAttempt] = {}
        self._lock = threading.Lock()
        self.renewal_failures = 0
        """Renewals that failed since start, lost and at-risk alike (for metrics)."""

    def add(
        self, lease: Lease, context: RunContext, heartbeat_s: float, max_run_time_s: float | None
    ) -> RunningAttempt:
        now = self._clock.monotonic()
        attempt = RunningAttempt(
            lease=lease,
            context=context,
            heartbeat_s=heartbeat_s,
            started_monotonic=now,
            next_renew=now + heartbeat_s,
            run_deadline=None if max_run_time_s is None else now + max_run_time_s,
        )
        with self._lock:
            self._attempts[id(attempt)] = attempt
        return attempt

    def remove(self, attempt: RunningAttempt) -> Lease:
        """Stop keeping ``attempt``; return its latest lease.

        Waits for a renewal in flight, so none is sent or reported after this returns: the
        caller may release the lease at once.
        """
        with self._lock:
            self._attempts.pop(id(attempt), None)
        with attempt.lock:
            attempt.removed = True
            return attempt.lease

    def running(self) -> list[RunningAttempt]:
        with self._lock:
            return list(self._attempts.values())

    def tick(self) -> float:
        """Renew due leases, expire overdue ones, enforce run time; return the next due time.

        The return value is monotonic time; with nothing running it is infinity.
        """
        next_due = float("inf")
        for attempt in self.running():
            self._check_deadlines(attempt)
            if attempt.context.lease_state is not LeaseState.LOST and self._clock.monotonic() >= attempt.next_renew:
                self._renew(attempt)
            next_due = min(next_due, self._next_due(attempt))
        return next_due

    def request_stop_all(self, reason: str) -> None:
        for attempt in self.running():
            attempt.context.request_stop(reason)

    def _next_due(self, attempt: RunningAttempt) -> float:
        due = attempt.next_renew
        if attempt.context.lease_state is not LeaseState.LOST:
            due = min(due, attempt.lease.valid_until)
        if attempt.run_deadline is not None and not attempt.timed_out:
            due = min(due, attempt.run_deadline)
        return due

    def _check_deadlines(self, attempt: RunningAttempt) -> None:
        now = self._clock.monotonic()
        context = attempt.context
        if context.lease_state is not LeaseState.LOST and now >= attempt.lease.valid_until:
            self._mark_lost(attempt, "its TTL ran out without a successful renewal")
        if attempt.run_deadline is not None and not attempt.timed_out and now >= attempt.run_deadline:
            attempt.timed_out = True
            run_time = now - attempt.started_monotonic
            LOG.warning(
                "Run of job %r (fire time %s, attempt %d, instance %s) passed its maximum run time "
                "after %.1f s; asking it to stop, lease kept until it returns",
                context.job,
                context.fire_time.isoformat(),
                context.attempt,
                self._instance_id,
                run_time,
            )
            context.request_stop(f"maximum run time exceeded after {run_time:.1f} s")

    def _renew(self, attempt: RunningAttempt) -> None:
        error: LeaseLost | BackendUnavailable | None = None
        with attempt.lock:
            if attempt.removed:
                return
            sent_at = self._clock.monotonic()
            try:
                attempt.lease = self._backend.renew(attempt.lease)
            except (LeaseLost, BackendUnavailable) as exc:
                error = exc

        if isinstance(error, LeaseLost):
            self.renewal_failures += 1
            self._mark_lost(attempt, "the backend reports it expired or taken by another holder")
            return
        if isinstance(error, BackendUnavailable):
            self.renewal_failures += 1
            self._mark_at_risk(attempt, error)
            attempt.next_renew = sent_at + min(attempt.heartbeat_s, AT_RISK_RETRY_S)
            return
        attempt.next_renew = sent_at + attempt.heartbeat_s
        if attempt.context.lease_state is LeaseState.AT_RISK:
            LOG.info("Lease of job %r is held again after the backend came back", attempt.context.job)
        attempt.context.set_lease_state(LeaseState.HELD)

    def _mark_at_risk(self, attempt: RunningAttempt, exc: BaseException) -> None:
        if attempt.context.lease_state is LeaseState.HELD:
            LOG.warning(
                "Lease of job %r (attempt %d, token %d) is at risk: renewal failed: %s",
                attempt.context.job,
                attempt.context.attempt,
                attempt.lease.token,
                exc,
            )
        attempt.context.set_lease_state(LeaseState.AT_RISK)

    def _mark_lost(self, attempt: RunningAttempt, why: str) -> None:
        context = attempt.context
        LOG.error(
            "Lease of job %r lost (fire time %s, attempt %d, token %d, instance %s): %s; "
            "this attempt cannot record a completion",
            context.job,
            context.fire_time.isoformat(),
            context.attempt,
            attempt.lease.token,
            self._instance_id,
            why,
        )
        context.set_lease_state(LeaseState.LOST)
