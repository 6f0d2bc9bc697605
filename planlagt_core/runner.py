"""Running one fire time of one job: claim, execute, record.

A claim is a lease on the job's key (or on the fire time, for jobs that may overlap)
followed by a fenced ``begin_attempt``. A completion is a fenced ``finish_fire``. When a
step cannot go ahead now, :meth:`Runner.run` returns a :class:`PendingFire` for the
scheduler to try again later. None means the fire time needs nothing more from this
instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from .backend import Backend, Lease, LeaseState
from .clock import Clock
from .context import RunContext
from .errors import BackendUnavailable, LeaseLost
from .job import Job, OverlapPolicy
from .keeper import LeaseKeeper, RunningAttempt
from .listeners import ListenerSet
from .models import Outcome, RunRecord

__all__ = ["PendingFire", "Runner"]

LOG = logging.getLogger(__name__)

FIRE_STATE_MARGIN_S = 60.0
"""Extra time fire state is kept beyond the last moment any instance could still act on it."""

CLOSED_CACHE_PRUNE_AT = 100_000
"""Size at which the cache of closed fire times drops its expired entries."""

FINISH_RETRY_S = 0.2
"""Pause between tries to record an outcome while the backend is unreachable."""


@dataclass(frozen=True)
class PendingFire:
    """A fire time this instance must come back to.

    ``not_before`` is wall time (Unix seconds). ``attempted`` is true once any attempt is
    known to have begun, which changes when the fire time is given up.
    """

    job: Job
    fire_time: float
    not_before: float
    reason: str
    attempted: bool = False
    check_first: bool = False
    manual: bool = False
    trigger_id: str | None = None
    late_ok: bool = False
    retry_only: bool = False
    next_fire_time: float | None = None
    """The job's fire time after this one, when the caller already computed it (Unix seconds)."""
    confirm_at: float = 0.0
    """Wall time before which a taken-over fire time with no attempt begun is not claimed."""

    @property
    def key(self) -> tuple[str, float]:
        return (self.job.name, self.fire_time)

    def following_fire_time(self) -> float:
        """Return the job's fire time after this one (Unix seconds)."""
        if self.next_fire_time is not None:
            return self.next_fire_time
        return self.job.schedule.next_after(_utc(self.fire_time)).timestamp()

    def later(self, not_before: float, reason: str, **changes: Any) -> PendingFire:
        return replace(self, not_before=not_before, reason=reason, check_first=False, **changes)


class Runner:
    """Runs attempts for one scheduler. Thread-safe: called from the worker pool."""

    def __init__(
        self,
        *,
        backend: Backend,
        clock: Clock,
        keeper: LeaseKeeper,
        listeners: ListenerSet,
        instance_id: str,
        max_skew_s: float,
        call_async: Callable[[Any], Any],
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._keeper = keeper
        self._listeners = listeners
        self._instance_id = instance_id
        self._max_skew_s = max_skew_s
        self._call_async = call_async
        self._closed: dict[tuple[str, float], float] = {}
        self._closed_lock = threading.Lock()

    # -- Entry point ---------------------------------------------------------------

    def run(self, pending: PendingFire) -> PendingFire | None:
        """Take ``pending`` as far as it can go now; return what is left to do, if anything."""
        try:
            return self._run(pending)
        except BackendUnavailable as exc:
            LOG.warning(
                "Backend unavailable for job %r fire time %s on instance %s; no run starts until it is back: %s",
                pending.job.name,
                _iso(pending.fire_time),
                self._instance_id,
                exc,
            )
            return pending.later(self._clock.time() + pending.job.policy.effective_heartbeat_s, "backend unavailable")

    def skip_paused(self, pending: PendingFire) -> PendingFire | None:
        """Record a fire time of a paused job as skipped."""
        try:
            self._close(pending, Outcome.SKIPPED, reason="job is paused")
        except BackendUnavailable:
            return pending.later(self._clock.time() + pending.job.policy.effective_heartbeat_s, "paused")
        return None

    def _run(self, pending: PendingFire) -> PendingFire | None:
        if pending.check_first and not pending.manual:
            state = self._backend.get_fire(pending.job.name, pending.fire_time)
            if state is not None and state.outcome is not None:
                return None
            if self._knows_closed(pending):
                return None
            if state is not None and state.attempts:
                pending = replace(pending, attempted=True)
            elif pending.retry_only:
                return None
            elif self._clock.time() > self._state_kept_until(pending):
                # Taking over an old fire time only to retry an attempt that began. With no
                # state, it may have completed long ago and its state expired since.
                return None
            elif self._clock.time() < pending.confirm_at:
                # The previous owner may only have missed heartbeats, or the backend may have
                # restarted empty: wait until the ownership change is confirmed.
                return replace(
                    pending, not_before=pending.confirm_at, reason="waiting for the takeover to be confirmed"
                )
        expired = self._expired(pending)
        if expired is not None:
            return expired
        lease = self._backend.acquire(
            self.lease_key(pending), pending.job.policy.lease_ttl_s, holder=self._holder(pending)
        )
        if lease is None:
            return self._on_busy(pending)
        return self._claimed(pending, lease)

    # -- Claiming ------------------------------------------------------------------

    def lease_key(self, pending: PendingFire) -> str:
        job = pending.job
        if job.policy.overlap is OverlapPolicy.ALLOW:
            return f"{job.lease_key}@{round(pending.fire_time * 1000)}"
        return job.lease_key

    def _holder(self, pending: PendingFire) -> str:
        return json.dumps(
            {
                "instance": self._instance_id,
                "fire_ms": round(pending.fire_time * 1000),
                "since": round(self._clock.time(), 3),
                "manual": pending.manual,
            }
        )

    def _claimed(self, pending: PendingFire, lease: Lease) -> PendingFire | None:
        job = pending.job
        released = False
        try:
            state = self._backend.begin_attempt(
                lease, job.name, pending.fire_time, max_attempts=job.policy.max_attempts, keep_s=self.keep_s(pending)
            )
            if state.began_with(lease.token):
                released = True
                return self._execute(pending, lease, state.attempts)
            if state.outcome is not None:
                self._remember_closed(pending)
            if state.outcome is None:
                self._close(
                    pending, Outcome.FAILED, lease=lease, reason="attempt limit reached", attempt=state.attempts
                )
            return None
        except LeaseLost:
            LOG.warning("Lease of job %r was lost right after it was acquired; trying again later", job.name)
            return pending.later(self._clock.time() + job.policy.effective_heartbeat_s, "lease lost while claiming")
        finally:
            if not released:
                self._release(lease, 0.0)

    def _on_busy(self, pending: PendingFire) -> PendingFire | None:
        job = pending.job
        retry_at = self._clock.time() + job.policy.effective_heartbeat_s
        info = self._backend.inspect(self.lease_key(pending))
        if info is None or info.released:
            return pending.later(retry_at, "key busy")
        if pending.manual:
            return pending.later(retry_at, "waiting for the running attempt to finish")
        holder = _parse_holder(info.holder)
        held_fire_ms = holder.get("fire_ms")
        fire_ms = round(pending.fire_time * 1000)
        if not isinstance(held_fire_ms, int) or held_fire_ms == fire_ms:
            return pending.later(retry_at, "another attempt holds the lease", attempted=True)
        if held_fire_ms > fire_ms:
            if not pending.attempted:
                self._close(pending, Outcome.MISSED, reason="a later fire time of the job started first")
            return None
        if pending.attempted:
            return pending.later(retry_at, "previous run still going")
        reason = f"previous run (fire time {_iso(held_fire_ms / 1000)} on {holder.get('instance')}) still going"
        LOG.info("Skipping job %r fire time %s: %s", job.name, _iso(pending.fire_time), reason)
        self._close(pending, Outcome.SKIPPED, reason=reason)
        return None

    def _expired(self, pending: PendingFire) -> PendingFire | None:
        """Give up a fire time whose window has passed; return None when it should go ahead."""
        if pending.manual or pending.late_ok:
            return None
        now = self._clock.time()
        job = pending.job
        if pending.attempted:
            deadline = pending.following_fire_time()
            if now < deadline:
                return None
            return self._give_up(pending)
        if now <= pending.fire_time + job.policy.late_start_window_s(self._max_skew_s):
            return None
        self._close(
            pending, Outcome.MISSED, reason=f"not started within {job.policy.late_start_window_s(self._max_skew_s):g} s"
        )
        return None

    def _give_up(self, pending: PendingFire) -> PendingFire | None:
        """Close an attempted fire time whose retry window passed, under the job's lease."""
        job = pending.job
        lease = self._backend.acquire(self.lease_key(pending), job.policy.lease_ttl_s, holder=self._holder(pending))
        if lease is None:
            # A holder of the job's key may still finish this fire time. Close it once the
            # key is free, unless that takes longer than the retry window plus two TTLs.
            deadline = pending.following_fire_time() + 2 * job.policy.lease_ttl_s
            now = self._clock.time()
            if now < deadline:
                return pending.later(now + job.policy.effective_heartbeat_s, "closing after the retry window")
            LOG.warning(
                "Job %r fire time %s stays open: its key was held past the retry window",
                job.name,
                _iso(pending.fire_time),
            )
            return None
        try:
            self._close(pending, Outcome.FAILED, lease=lease, reason="retry window closed: the next fire time arrived")
        except LeaseLost:
            pass
        finally:
            self._release(lease, 0.0)
        return None

    # -- Running -------------------------------------------------------------------

    def _execute(self, pending: PendingFire, lease: Lease, attempt: int) -> PendingFire | None:
        job = pending.job
        context = RunContext(
            job=job.name,
            fire_time=_utc(pending.fire_time).astimezone(job.schedule.timezone),
            attempt=attempt,
            fencing_token=lease.token,
            instance_id=self._instance_id,
            manual=pending.manual,
        )
        running = self._keeper.add(lease, context, job.policy.effective_heartbeat_s, job.policy.max_run_time_s)
        started_at = self._clock.time()
        try:
            error = self._call(job, context, started_at)
        finally:
            lease = self._keeper.remove(running)
        duration = self._clock.time() - started_at
        try:
            return self._after_run(pending, lease, running, error, started_at, duration)
        finally:
            self._release(lease, job.policy.min_hold_s)

    def _call(self, job: Job, context: RunContext, started_at: float) -> BaseException | None:
        LOG.info(
            "Run started: job %r fire time %s attempt %d instance %s token %d%s",
            job.name,
            context.fire_time.isoformat(),
            context.attempt,
            self._instance_id,
            context.fencing_token,
            " (manual)" if context.manual else "",
        )
        self._listeners.run_started(context)
        try:
            result = job.func(context) if job.takes_context else job.func()
            if job.is_async or asyncio.iscoroutine(result):
                self._call_async(result)
        except Exception as exc:
            return exc
        return None

    def _after_run(
        self,
        pending: PendingFire,
        lease: Lease,
        running: RunningAttempt,
        error: BaseException | None,
        started_at: float,
        duration: float,
    ) -> PendingFire | None:
        job = pending.job
        attempt = running.context.attempt
        base = self._record(
            pending, Outcome.SUCCEEDED, attempt=attempt, token=lease.token, started_at=started_at, duration=duration
        )
        if running.context.lease_state is LeaseState.LOST:
            self._record_attempt(replace(base, outcome=Outcome.LEASE_LOST, reason="lease lost during the run"), error)
            return self._after_lost_lease(pending)
        if error is not None:
            failed = replace(
                base, outcome=Outcome.FAILED, error_type=type(error).__name__, error_message=str(error)[:2000]
            )
            LOG.error(
                "Run failed: job %r fire time %s attempt %d/%d instance %s after %.3f s: %s: %s",
                job.name, _iso(pending.fire_time), attempt, job.policy.max_attempts,
                self._instance_id, duration, type(error).__name__, error,
            )  # fmt: skip
            retry = self._retry(pending, attempt)
            if retry is not None:
                self._record_attempt(failed, error)
                return retry
            self._finish(failed, lease, error, self.keep_s(pending))
            return None
        outcome = Outcome.TIMED_OUT if running.timed_out else Outcome.SUCCEEDED
        self._finish(replace(base, outcome=outcome), lease, None, self.keep_s(pending))
        return None

    def _after_lost_lease(self, pending: PendingFire) -> PendingFire:
        """Come back to a fire time whose attempt lost its lease.

        Another instance may have taken the fire time over. If not, this instance retries
        it within the attempt limit and before the next fire time, or closes it then.
        """
        retry_at = self._clock.time() + pending.job.policy.effective_heartbeat_s
        return pending.later(retry_at, "lease lost during the run", attempted=True)

    def _retry(self, pending: PendingFire, attempt: int) -> PendingFire | None:
        job = pending.job
        if attempt >= job.policy.max_attempts:
            return None
        retry_at = self._clock.time() + job.policy.backoff_s(attempt)
        if not pending.manual and retry_at >= pending.following_fire_time():
            return None
        LOG.info(
            "Retrying job %r fire time %s in %.1f s (attempt %d failed)",
            job.name,
            _iso(pending.fire_time),
            retry_at - self._clock.time(),
            attempt,
        )
        return pending.later(retry_at, "retry after failure", attempted=True)

    # -- Recording -----------------------------------------------------------------

    def _finish(self, record: RunRecord, lease: Lease, error: BaseException | None, keep_s: float) -> None:
        """Close the fire time under ``lease``, trying again while the backend is unreachable."""
        while True:
            sent_at = self._clock.monotonic()
            try:
                self._backend.finish_fire(record, lease=lease, keep_s=keep_s)
                self._remember_closed_key((record.job, record.fire_time), keep_s)
                break
            except LeaseLost:
                LOG.error(
                    "Job %r fire time %s attempt %d finished but its lease was lost first; "
                    "the outcome %s is recorded as lease_lost, not as a completion",
                    record.job, _iso(record.fire_time), record.attempt, record.outcome.value,
                )  # fmt: skip
                record = replace(
                    record,
                    outcome=Outcome.LEASE_LOST,
                    reason=f"finished as {record.outcome.value} after the lease was lost",
                )
                self._safe_record_run(record)
                break
            except BackendUnavailable as exc:
                if sent_at + FINISH_RETRY_S >= lease.valid_until:
                    LOG.error(
                        "Could not record the outcome of job %r fire time %s before its lease ran out: %s; "
                        "the fire time stays open",
                        record.job,
                        _iso(record.fire_time),
                        exc,
                    )
                    record = replace(
                        record,
                        outcome=Outcome.LEASE_LOST,
                        reason=f"finished as {record.outcome.value}; backend unreachable until the lease ran out",
                    )
                    break
                time.sleep(FINISH_RETRY_S)
        self._log_end(record)
        self._listeners.run_finished(record)
        if error is not None:
            self._listeners.run_failed(record, error)

    def _record_attempt(self, record: RunRecord, error: BaseException | None) -> None:
        self._safe_record_run(record)
        self._log_end(record)
        self._listeners.run_finished(record)
        if error is not None:
            self._listeners.run_failed(record, error)

    def _safe_record_run(self, record: RunRecord) -> None:
        try:
            self._backend.record_run(record)
        except BackendUnavailable as exc:
            LOG.error(
                "Could not record run of job %r fire time %s (%s): %s",
                record.job,
                _iso(record.fire_time),
                record.outcome.value,
                exc,
            )

    def _close(
        self, pending: PendingFire, outcome: Outcome, *, lease: Lease | None = None, reason: str, attempt: int = 0
    ) -> None:
        record = self._record(
            pending, outcome, attempt=attempt, token=None if lease is None else lease.token, reason=reason
        )
        closed = self._backend.finish_fire(record, lease=lease, keep_s=self.keep_s(pending))
        if closed:
            level = logging.WARNING if outcome in (Outcome.MISSED, Outcome.FAILED) else logging.INFO
            LOG.log(
                level,
                "Job %r fire time %s %s on instance %s: %s",
                pending.job.name,
                _iso(pending.fire_time),
                outcome.value,
                self._instance_id,
                reason,
            )
            self._listeners.run_finished(record)

    def _record(
        self,
        pending: PendingFire,
        outcome: Outcome,
        *,
        attempt: int,
        token: int | None,
        started_at: float | None = None,
        duration: float | None = None,
        reason: str | None = None,
    ) -> RunRecord:
        return RunRecord(
            job=pending.job.name,
            fire_time=pending.fire_time,
            instance_id=self._instance_id,
            outcome=outcome,
            attempt=attempt,
            fencing_token=token,
            started_at=started_at,
            duration_s=duration,
            reason=reason,
            manual=pending.manual,
            trigger_id=pending.trigger_id,
        )

    def _log_end(self, record: RunRecord) -> None:
        level = logging.INFO if record.outcome is Outcome.SUCCEEDED else logging.WARNING
        LOG.log(
            level,
            "Run ended: job %r fire time %s attempt %d instance %s outcome %s duration %.3f s",
            record.job, _iso(record.fire_time), record.attempt, self._instance_id,
            record.outcome.value, record.duration_s or 0.0,
        )  # fmt: skip

    def _release(self, lease: Lease, keep_s: float) -> None:
        try:
            self._backend.release(lease, keep_s=keep_s)
        except BackendUnavailable as exc:
            LOG.warning(
                "Could not release the lease on %r (token %d); it expires by its TTL: %s", lease.key, lease.token, exc
            )

    # -- Fire times this instance saw closed ----------------------------------------

    def _remember_closed(self, pending: PendingFire) -> None:
        self._remember_closed_key(pending.key, self.keep_s(pending))

    def _remember_closed_key(self, key: tuple[str, float], keep_s: float) -> None:
        """Remember a closed fire time for as long as the backend is asked to keep its state.

        A backend that loses its data (a Redis server restarted without persistence) also
        loses fire states. This local copy keeps the instance that closed a fire time from
        running it again when the job comes back to it.
        """
        now = self._clock.time()
        with self._closed_lock:
            self._closed[key] = now + keep_s
            if len(self._closed) > CLOSED_CACHE_PRUNE_AT:
                self._closed = {k: until for k, until in self._closed.items() if until > now}

    def _knows_closed(self, pending: PendingFire) -> bool:
        with self._closed_lock:
            until = self._closed.get(pending.key)
        return until is not None and until > self._clock.time()

    # -- Fire state retention ------------------------------------------------------

    def _state_kept_until(self, pending: PendingFire) -> float:
        """Return the wall time until which a closed fire time's state is surely still stored.

        Every close keeps the state for :meth:`keep_s`, which exceeds the late-start window
        plus ``FIRE_STATE_MARGIN_S`` counted from the fire time. Up to this moment, a fire
        time with no state was never closed, and one past its late-start window is closed
        as missed. Ownership that moved back and forth during an outage can leave a fire
        time unclaimed until its window passed.
        """
        return pending.fire_time + pending.job.policy.late_start_window_s(self._max_skew_s) + FIRE_STATE_MARGIN_S

    def keep_s(self, pending: PendingFire) -> float:
        """Return how long the backend keeps a fire time's state: past every retry and late start."""
        job = pending.job
        now = self._clock.time()
        next_fire = pending.following_fire_time()
        window = job.policy.late_start_window_s(self._max_skew_s) + job.policy.lease_ttl_s + 2 * self._max_skew_s
        return max(next_fire - now, 0.0) + window + FIRE_STATE_MARGIN_S


def _parse_holder(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _iso(timestamp: float) -> str:
    return _utc(timestamp).isoformat()
