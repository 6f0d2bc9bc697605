"""The scheduler: registers jobs and runs each fire time once across all live instances.

Threads, whatever the number of jobs: one timer thread (fire times), one heartbeat thread
(membership, control state, lease renewal, retries), a pool of ``max_workers`` threads
that run jobs, and one event-loop thread when any job is ``async def``.

Only the instance that owns a job (rendezvous hashing over the live instances) claims its
fire times, so other instances make no backend calls for it. When the owner dies, the
next owner takes over the fire times it left open once the dead instance's membership
expires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from types import FrameType
from typing import Any, TypeVar

from .backend import Backend, Feature
from .clock import Clock, SystemClock
from .errors import BackendUnavailable, ConfigurationError, InvalidJob, SchedulerError
from .housekeeping import (
    SUCCESS_AGE_JOB,
    SUCCESS_AGE_SCHEDULE,
    TRIM_JOB,
    TRIM_SCHEDULE,
    check_success_age,
    trim_history,
)
from .job import DEFAULT_LEASE_TTL_S, Job, JobPolicy, MissedPolicy, OverlapPolicy, build_job, definitions_digest
from .keeper import LeaseKeeper
from .listeners import Listener, ListenerSet
from .membership import Membership
from .models import InstanceInfo, TriggerRequest
from .plugins import DEFAULT_URL, connect
from .runner import PendingFire, Runner
from .timer import FireTimer

__all__ = ["Scheduler"]

LOG = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MAX_SKEW_S = 1.0
DEFAULT_HISTORY_MAX_PER_JOB = 1000
DEFAULT_HISTORY_MAX_AGE_S = 30 * 86400.0
DEFAULT_MAX_WORKERS = 8
DEFAULT_SHUTDOWN_GRACE_S = 30.0
MAX_CATCH_UP_FIRE_TIMES = 100
"""Most fire times of one job examined when this instance takes the job over."""

LOOK_BACK_HORIZONS_S = (3600.0, 86400.0, 32 * 86400.0, 367 * 86400.0)
"""Widening windows searched for a job's latest fire time when taking the job over."""
LOOK_BACK_LIMIT = 10_000
"""Most fire times read in one of those windows."""

MAX_PENDING = 100_000
"""Most fire times held while ownership is unknown; beyond it they are dropped and logged."""
FRESH_VIEW_MARGIN_S = 0.5
"""Slack on top of two heartbeats before a membership view counts as stale."""

_STARTED: weakref.WeakSet[Scheduler] = weakref.WeakSet()


def _mark_forked_children() -> None:
    for scheduler in list(_STARTED):
        scheduler._forked_from = scheduler._pid


os.register_at_fork(after_in_child=_mark_forked_children)


class Scheduler:
    """Runs registered jobs on their schedules, once per fire time across all instances.

    ``backend`` is a URL or a :class:`Backend`; when None, ``PLANLAGT_BACKEND`` is used,
    else the embedded SQLite backend in ``./planlagt.db``. Durations are seconds.
    ``lease_ttl_s`` and ``heartbeat_s`` are defaults for jobs and also set the membership
    TTL and the heartbeat interval of this instance. ``max_skew_s`` is the largest
    difference between instance clocks the guarantees must survive.

    Raises ``ConfigurationError`` (or a subclass) for bad values, before anything starts.
    A started scheduler cannot be used in a forked child: create and start a new one there.
    """

    def __init__(
        self,
        backend: str | Backend | None = None,
        *,
        instance_id: str | None = None,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        heartbeat_s: float | None = None,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        max_workers: int = DEFAULT_MAX_WORKERS,
        shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        history_max_per_job: int = DEFAULT_HISTORY_MAX_PER_JOB,
        history_max_age_s: float = DEFAULT_HISTORY_MAX_AGE_S,
    ) -> None:
        self._defaults = JobPolicy(lease_ttl_s=lease_ttl_s, heartbeat_s=heartbeat_s)
        self._defaults.check("(scheduler defaults)")
        _check_settings(max_skew_s, max_workers, shutdown_grace_s)
        _check_retention(history_max_per_job, history_max_age_s)
        self.history_max_per_job = history_max_per_job
        self.history_max_age_s = history_max_age_s
        self.overdue: dict[str, float | None] = {}
        """Jobs whose last success is older than their max_success_age_s, as last checked here."""
        self._owns_backend = not isinstance(backend, Backend)
        self.backend = _resolve_backend(backend)
        self.backend.check_ttl(lease_ttl_s)
        self._instance_id_given = instance_id or os.environ.get("PLANLAGT_INSTANCE_ID")
        self.instance_id = self._instance_id_given or _default_instance_id()
        Backend.check_key(self.backend, self.instance_id)
        self.max_skew_s = max_skew_s
        self.max_workers = max_workers
        self.shutdown_grace_s = shutdown_grace_s
        self.clock: Clock = clock or SystemClock()
        self.listeners = ListenerSet(listeners)
        self._jobs: dict[str, Job] = {}
        self._pid = os.getpid()
        self._forked_from: int | None = None
        self._state = "new"
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._pending: dict[tuple[str, float], PendingFire] = {}
        self._inflight: set[tuple[str, float]] = set()
        self._dropped_pending = 0
        self._failed_beats = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._membership: Membership | None = None
        self._keeper, self._runner = self._build_runner()
        self._timer: FireTimer | None = None
        self.last_backend_contact: float | None = None

    def _build_runner(self) -> tuple[LeaseKeeper, Runner]:
        keeper = LeaseKeeper(self.backend, self.clock, self.instance_id)
        runner = Runner(
            backend=self.backend,
            clock=self.clock,
            keeper=keeper,
            listeners=self.listeners,
            instance_id=self.instance_id,
            max_skew_s=self.max_skew_s,
            call_async=self._call_async,
        )
        return keeper, runner

    def __repr__(self) -> str:
        return f"<Scheduler {self.instance_id} {self._state} jobs={len(self._jobs)} backend={self.backend.url}>"

    # -- Registration --------------------------------------------------------------

    def job(self, schedule: str, **options: Any) -> Callable[[F], F]:
        """Decorator form of :meth:`add_job`; returns the function unchanged."""

        def register(func: F) -> F:
            self.add_job(func, schedule, **options)
            return func

        return register

    def add_job(
        self,
        func: Callable[..., Any],
        schedule: str,
        *,
        name: str | None = None,
        tz: str = "UTC",
        lease_ttl_s: float | None = None,
        heartbeat_s: float | None = None,
        max_run_time_s: float | None = None,
        max_attempts: int = 1,
        retry_backoff_s: float = 1.0,
        overlap: str | OverlapPolicy = OverlapPolicy.SKIP,
        missed: str | MissedPolicy = MissedPolicy.SKIP,
        late_start_s: float | None = None,
        missed_grace_s: float = 3600.0,
        min_hold_s: float = 0.0,
        max_success_age_s: float | None = None,
    ) -> Job:
        """Register ``func`` to run on ``schedule`` (cron, ``@daily``, ``@every 90s``) in zone ``tz``.

        ``name`` defaults to the function's qualified name and must be unique. Policy
        values are described on :class:`~planlagt_core.job.JobPolicy`. Raises
        ``InvalidJob`` or ``InvalidSchedule`` naming the bad value; jobs cannot be added
        after :meth:`start`.
        """
        self._check_usable()
        if self._state != "new":
            raise SchedulerError(f"cannot add job {name or func!r}: the scheduler is already {self._state}")
        policy = JobPolicy(
            lease_ttl_s=lease_ttl_s if lease_ttl_s is not None else self._defaults.lease_ttl_s,
            heartbeat_s=heartbeat_s if heartbeat_s is not None else self._defaults.heartbeat_s,
            max_run_time_s=max_run_time_s,
            max_attempts=max_attempts,
            retry_backoff_s=retry_backoff_s,
            overlap=_enum(OverlapPolicy, overlap, "overlap", name),
            missed=_enum(MissedPolicy, missed, "missed", name),
            late_start_s=late_start_s,
            missed_grace_s=missed_grace_s,
            min_hold_s=min_hold_s,
            max_success_age_s=max_success_age_s,
        )
        job = build_job(func, schedule, name=name, tz=tz, policy=policy)
        self._check_against_backend(job)
        if job.name in self._jobs:
            raise InvalidJob(f"a job named {job.name!r} is already registered; give each job a unique name")
        self._jobs[job.name] = job
        return job

    @property
    def jobs(self) -> dict[str, Job]:
        return dict(self._jobs)

    def _register_housekeeping(self) -> None:
        """Add the trimming and success-age jobs, which run once per fire time like any job."""
        if self.backend.capabilities.supports(Feature.RUN_RETENTION) and TRIM_JOB not in self._jobs:
            trim = trim_history(self.backend, self.history_max_per_job, self.history_max_age_s)
            self.add_job(trim, TRIM_SCHEDULE, name=TRIM_JOB)
        watched = [job for job in self._jobs.values() if job.policy.max_success_age_s is not None]
        if watched and SUCCESS_AGE_JOB not in self._jobs:
            check = check_success_age(self.backend, watched, self.listeners, self.overdue)
            self.add_job(check, SUCCESS_AGE_SCHEDULE, name=SUCCESS_AGE_JOB)

    def _check_against_backend(self, job: Job) -> None:
        try:
            self.backend.check_ttl(job.policy.lease_ttl_s)
        except ConfigurationError as exc:
            raise InvalidJob(f"job {job.name!r}: {exc}") from None
        if job.policy.min_hold_s > 0 and not self.backend.capabilities.supports(Feature.MIN_HOLD):
            raise InvalidJob(f"job {job.name!r}: min_hold_s needs a backend with the min_hold capability")

    # -- Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler's threads and return. Raises ``SchedulerError`` if already started."""
        self._check_usable()
        if self._state != "new":
            raise SchedulerError(f"scheduler {self.instance_id} cannot start: it is {self._state}")
        if os.getpid() != self._pid:
            self._adopt_process()
        self._register_housekeeping()
        self._state = "running"
        _STARTED.add(self)
        jobs = list(self._jobs.values())
        weights = {job.name: job.schedule_weight() for job in jobs}
        self._membership = Membership(self.backend, self._instance_info(jobs), self.membership_ttl_s, weights)
        self._announce(jobs)
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="planlagt-worker")
        if any(job.is_async for job in jobs):
            self._start_loop()
        self._timer = FireTimer(jobs, self.clock.time())
        self._spawn("planlagt-heartbeat", self._heartbeat_loop)
        self._spawn("planlagt-timer", self._timer_loop)
        LOG.info(
            "Scheduler %s started with %d jobs on %s (lease TTL %g s, heartbeat %g s)",
            self.instance_id, len(jobs), self.backend.url, self._defaults.lease_ttl_s, self.heartbeat_s,
        )  # fmt: skip

    def _adopt_process(self) -> None:
        """Take a new default instance id in a process forked before start, so workers differ."""
        self._pid = os.getpid()
        if not self._instance_id_given:
            self.instance_id = _default_instance_id()
        self._keeper, self._runner = self._build_runner()

    def run(self) -> None:
        """Start, then block until SIGTERM, SIGINT or :meth:`stop`; then shut down gracefully."""
        self._check_usable()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        if self._state == "new":
            self.start()
        while not self._stop_event.is_set():
            self._stop_event.wait(1.0)
        self.stop()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, let running jobs finish for ``grace_s`` (default ``shutdown_grace_s``), release.

        Fire times queued on this instance but not yet claimed stay open for the instances
        that take over its jobs.

        Jobs still running after the grace period are asked to stop through their context.
        Their leases are no longer renewed and expire on the backend, so another instance
        may retry them. Safe to call more than once.
        """
        self._check_usable()
        if self._state in ("stopping", "stopped"):
            return
        started = self._state == "running"
        self._state = "stopping"
        self._stop_event.set()
        self._wake.set()
        if started:
            self._shutdown(self.shutdown_grace_s if grace_s is None else grace_s)
        self._state = "stopped"
        LOG.info("Scheduler %s stopped", self.instance_id)

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def heartbeat_s(self) -> float:
        return self._defaults.effective_heartbeat_s

    @property
    def membership_ttl_s(self) -> float:
        return self._defaults.lease_ttl_s

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def live_instances(self) -> tuple[str, ...]:
        """The live instances as of this instance's last heartbeat, sorted by id."""
        return () if self._membership is None else self._membership.view.live

    @property
    def job_owners(self) -> dict[str, str]:
        """Job name to the instance that owns it, as of this instance's last heartbeat."""
        return {} if self._membership is None else dict(self._membership.view.owners)

    @property
    def owned_jobs(self) -> frozenset[str]:
        """The jobs this instance owns, as of its last heartbeat."""
        return frozenset() if self._membership is None else self._membership.view.owned

    @property
    def lease_renewal_failures(self) -> int:
        """Lease renewals that failed since start (lost and at risk alike)."""
        return self._keeper.renewal_failures

    # -- Operator API --------------------------------------------------------------

    def pause(self, job: str) -> None:
        """Pause ``job`` on every instance (honoured within one heartbeat)."""
        self._check_usable()
        self.backend.set_paused(self._known(job), True)

    def resume(self, job: str) -> None:
        """Resume a paused job on every instance."""
        self._check_usable()
        self.backend.set_paused(self._known(job), False)

    def trigger(self, job: str) -> TriggerRequest:
        """Ask the instance that owns ``job`` to run it once now; return the request."""
        self._check_usable()
        request = TriggerRequest(
            request_id=secrets.token_hex(8),
            job=self._known(job),
            requested_at=self.clock.time(),
            requested_by=self.instance_id,
        )
        self.backend.add_trigger(request)
        return request

    def healthy(self) -> bool:
        """Return whether the loops run and the backend replied within the last heartbeat TTL."""
        self._check_usable()
        if self._state != "running" or not all(thread.is_alive() for thread in self._threads):
            return False
        contact = self.last_backend_contact
        return contact is not None and self.clock.monotonic() - contact <= self.membership_ttl_s

    def _known(self, job: str) -> str:
        if job not in self._jobs:
            raise InvalidJob(f"unknown job {job!r}; known jobs: {', '.join(sorted(self._jobs)) or 'none'}")
        return job

    # -- Threads -------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=self._guarded(name, target), name=f"{name}-{self.instance_id}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guarded(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception:
                LOG.critical("Scheduler thread %s of instance %s crashed", name, self.instance_id, exc_info=True)
                raise

        return run

    def _timer_loop(self) -> None:
        assert self._timer is not None
        while not self._stop_event.is_set():
            try:
                due = self._timer.pop_due(self.clock.time(), self._due)
                waiting = self._jobs_in_takeover() if due else frozenset()
                for pending in due:
                    self._dispatch(pending, behind_takeover=pending.job.name in waiting)
            except Exception:
                LOG.exception("Timer of instance %s failed; it carries on at the next fire time", self.instance_id)
            wait_s = min(self._timer.next_due() - self.clock.time(), self.heartbeat_s)
            self.clock.wait(self._stop_event, max(wait_s, 0.0))

    def _heartbeat_loop(self) -> None:
        next_beat = self.clock.monotonic()
        next_renewal = next_beat
        while not self._stop_event.is_set():
            # Cleared before the work, so a wake-up that arrives during it is not lost.
            self._wake.clear()
            pending_wait_s = self.heartbeat_s
            try:
                if self.clock.monotonic() >= next_beat:
                    self._beat()
                    next_beat = self.clock.monotonic() + self.heartbeat_s
                next_renewal = self._keeper.tick()
                pending_wait_s = self._dispatch_pending()
            except Exception:
                LOG.exception("Heartbeat of instance %s failed unexpectedly; trying again", self.instance_id)
                next_beat = self.clock.monotonic() + self.heartbeat_s
            wait_s = min(next_beat, next_renewal) - self.clock.monotonic()
            wait_s = min(wait_s, pending_wait_s)
            if self._stop_event.is_set():
                break
            self.clock.wait(self._wake, max(wait_s, 0.01))

    def _beat(self) -> None:
        assert self._membership is not None
        try:
            view, gained = self._membership.beat()
        except BackendUnavailable as exc:
            self._failed_beats += 1
            # One warning per outage, then every hundredth failure, so a long outage does
            # not flood the log.
            level = logging.WARNING if self._failed_beats == 1 or self._failed_beats % 100 == 0 else logging.DEBUG
            LOG.log(
                level,
                "Heartbeat of instance %s failed (%d in a row); no job starts until the backend is back: %s",
                self.instance_id, self._failed_beats, exc,
            )  # fmt: skip
            return
        if self._failed_beats:
            LOG.info(
                "Backend reachable again from instance %s after %d failed heartbeats",
                self.instance_id,
                self._failed_beats,
            )
            self._failed_beats = 0
        self.last_backend_contact = self.clock.monotonic()
        if gained:
            self._catch_up(gained)
        try:
            self._take_triggers(view.control.triggers)
        except BackendUnavailable as exc:
            LOG.warning("Could not take trigger requests on instance %s: %s", self.instance_id, exc)

    def _owns(self, job: Job) -> bool:
        assert self._membership is not None
        return job.name in self._membership.view.owned

    def _view_is_fresh(self) -> bool:
        """Return whether the last heartbeat is recent enough to trust who owns which job.

        After a pause of the process or an outage of the backend, another instance may own
        this instance's jobs by now. Nothing is claimed until the next heartbeat settles it.
        """
        contact = self.last_backend_contact
        return contact is not None and self.clock.monotonic() - contact <= 2 * self.heartbeat_s + FRESH_VIEW_MARGIN_S

    def _due(self, job: Job) -> bool:
        """Return whether the timer should hand out a due fire time of ``job`` (owned, or ownership unknown)."""
        return not self._view_is_fresh() or self._owns(job)

    def _dispatch(self, pending: PendingFire, *, behind_takeover: bool = False) -> None:
        """Submit a due fire time, or queue it while ownership is unknown or older ones of its job go first.

        ``behind_takeover`` means older fire times of the job, just taken over, wait in the
        queue. They run first, so that the due one cannot close them as missed.
        """
        if self._view_is_fresh() and not behind_takeover:
            self._submit(pending)
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._dropped_pending += 1
                if self._dropped_pending in (1, 10, 100, 1000) or self._dropped_pending % 10_000 == 0:
                    LOG.error(
                        "Instance %s has %d fire times waiting for the backend; dropped %d so far, unrecorded",
                        self.instance_id, len(self._pending), self._dropped_pending,
                    )  # fmt: skip
                return
            self._pending[pending.key] = pending

    def _jobs_in_takeover(self) -> frozenset[str]:
        """Return the jobs with taken-over fire times waiting in the queue."""
        with self._lock:
            return frozenset(pending.job.name for pending in self._pending.values() if pending.check_first)

    def _paused(self, job: Job) -> bool:
        assert self._membership is not None
        return job.name in self._membership.view.control.paused

    def _submit(self, pending: PendingFire) -> None:
        with self._lock:
            if pending.key in self._inflight or self._pool is None or self._stop_event.is_set():
                if pending.key not in self._inflight:
                    self._pending[pending.key] = pending
                return
            self._pending.pop(pending.key, None)
            self._inflight.add(pending.key)
        self._pool.submit(self._work, pending)

    def _work(self, pending: PendingFire) -> None:
        if self._stop_event.is_set():
            # Stopping: fire times still queued are left unclaimed, so another instance can take them.
            with self._lock:
                self._inflight.discard(pending.key)
            return
        try:
            if self._paused(pending.job) and not pending.manual:
                follow_up = self._runner.skip_paused(pending)
            else:
                follow_up = self._runner.run(pending)
        except Exception:
            LOG.exception("Unexpected error handling job %r fire time %s", pending.job.name, pending.fire_time)
            follow_up = pending.later(self.clock.time() + pending.job.policy.effective_heartbeat_s, "unexpected error")
        with self._lock:
            self._inflight.discard(pending.key)
            if follow_up is not None:
                self._pending[follow_up.key] = follow_up
        if follow_up is not None or self._pending:
            self._wake.set()

    def _dispatch_pending(self) -> float:
        """Submit the queued fire times that can run now; return the seconds until the next one can.

        Returns infinity while nothing is queued, the scheduler stops, or the view is stale
        (the next heartbeat settles ownership first).
        """
        if not self._pending or self._stop_event.is_set() or not self._view_is_fresh():
            return float("inf")
        now = self.clock.time()
        with self._lock:
            ready, next_ready = self._ready_pending(now)

        dropped = False
        for pending in ready.values():
            if pending.manual or self._owns(pending.job):
                self._submit(pending)
            else:
                with self._lock:
                    self._pending.pop(pending.key, None)
                dropped = True
        # A dropped entry may leave a later one of its job ready at once.
        return 0.0 if dropped else next_ready - now

    def _ready_pending(self, now: float) -> tuple[dict[str, PendingFire], float]:
        """Return the queued entry to run now per job, and the wall time the next one becomes ready.

        One entry per job at a time, oldest fire time first, so that fire times left open by
        a dead instance run in order instead of racing for the job's lease. A taken-over fire
        time that waits for the takeover to be confirmed holds back the job's later ones.
        Call with ``_lock`` held.
        """
        blocked = {name for name, _fire in self._inflight}
        ready: dict[str, PendingFire] = {}
        next_ready = float("inf")
        for pending in sorted(self._pending.values(), key=lambda p: p.fire_time):
            name = pending.job.name
            if name in blocked or name in ready:
                continue
            if pending.not_before <= now:
                ready[name] = pending
                continue
            next_ready = min(next_ready, pending.not_before)
            if pending.check_first:
                blocked.add(name)
        return ready, next_ready

    def _catch_up(self, gained: frozenset[str]) -> None:
        """Queue the recent fire times of jobs this instance just took over, to finish what is open.

        Fire times from before the earliest start of the instances seen live with the job
        are taken up only when an attempt began at them (``retry_only``). Nothing may have
        been there to claim them, so a newly started cluster, or a job newly added in a
        deploy, does not replay its late-start window.
        """
        assert self._membership is not None
        now = self.clock.time()
        # A fire time at which an attempt began is retried at once: its fencing keeps the
        # retry from overlapping or repeating a completion. Any other waits until the change
        # has lasted two heartbeats. An instance that only missed a beat (or a backend that
        # restarted and lost the membership) comes back by then, takes its jobs back, and
        # these entries are dropped unrun.
        confirm_s = 2 * self.heartbeat_s + FRESH_VIEW_MARGIN_S
        for name in gained:
            job = self._jobs[name]
            since = self._membership.served_since(name) or now
            for fire in _recent_fire_times(job, now, job.policy.late_start_window_s(self.max_skew_s)):
                key = (name, fire)
                with self._lock:
                    if key in self._pending or key in self._inflight:
                        continue
                    self._pending[key] = PendingFire(
                        job=job,
                        fire_time=key[1],
                        not_before=now,
                        confirm_at=now + confirm_s,
                        reason="takeover",
                        check_first=True,
                        retry_only=fire < since,
                    )

    def _take_triggers(self, triggers: tuple[TriggerRequest, ...]) -> None:
        assert self._membership is not None
        view = self._membership.view
        for request in triggers:
            job = self._jobs.get(request.job)
            if job is None or view.owner(request.job) != self.instance_id:
                continue
            if not self.backend.remove_trigger(request.request_id):
                continue
            LOG.info(
                "Manual run of job %r requested by %s (request %s)", job.name, request.requested_by, request.request_id
            )
            pending = PendingFire(
                job=job,
                fire_time=request.requested_at,
                not_before=0.0,
                reason="manual",
                manual=True,
                trigger_id=request.request_id,
            )
            self._submit(pending)

    # -- Shutdown ------------------------------------------------------------------

    def _shutdown(self, grace_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout=max(self.heartbeat_s, 1.0) * 2)
        deadline = self.clock.monotonic() + grace_s
        while self._busy() and self.clock.monotonic() < deadline:
            self._keeper.tick()
            self._stop_event.wait(min(0.1, self.heartbeat_s))
        if self._busy():
            LOG.warning(
                "Instance %s shutting down with %d runs still going after %g s; their leases expire on the backend",
                self.instance_id, len(self._keeper.running()), grace_s,
            )  # fmt: skip
            self._keeper.request_stop_all("scheduler shutting down")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._membership is not None:
            self._membership.leave()
        if self._loop is not None and not self._busy():
            # With coroutines still running the loop keeps going (its thread is a daemon):
            # stopping it would leave their worker threads waiting forever.
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._owns_backend:
            self.backend.close()
        _STARTED.discard(self)

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._inflight)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        LOG.info("Received %s; stopping scheduler %s", signal.Signals(signum).name, self.instance_id)
        self._stop_event.set()

    # -- Helpers -------------------------------------------------------------------

    def _instance_info(self, jobs: list[Job]) -> InstanceInfo:
        return InstanceInfo(
            instance_id=self.instance_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.clock.time(),
            heartbeat_s=self.heartbeat_s,
            jobs_digest=definitions_digest(jobs),
            job_count=len(jobs),
        )

    def _announce(self, jobs: list[Job]) -> None:
        if not self.backend.capabilities.supports(Feature.JOB_REGISTRY):
            return
        try:
            self.backend.announce_jobs(self.instance_id, {job.name: job.definition() for job in jobs})
        except BackendUnavailable as exc:
            LOG.warning("Could not announce job definitions of instance %s: %s", self.instance_id, exc)

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        thread = threading.Thread(target=loop.run_forever, name=f"planlagt-asyncio-{self.instance_id}", daemon=True)
        thread.start()

    def _call_async(self, coroutine: Any) -> Any:
        if self._loop is None:
            return asyncio.run(coroutine)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _check_usable(self) -> None:
        if self._forked_from is not None and os.getpid() != self._forked_from:
            raise SchedulerError(
                f"scheduler {self.instance_id} was started in process {self._forked_from} and cannot be used in "
                f"forked child {os.getpid()}; create and start a new Scheduler in the child (for gunicorn, "
                "in a post_fork hook or at app start-up, not at import time with --preload)"
            )


def _recent_fire_times(job: Job, now: float, window_s: float) -> list[float]:
    """Return the fire times of the last ``window_s`` seconds, plus the latest one before them.

    The latest fire time at or before ``now`` may still be retried until the next one
    arrives, however long ago it was, so it is always included.
    """
    end = datetime.fromtimestamp(now, tz=timezone.utc)
    for horizon_s in (window_s, *LOOK_BACK_HORIZONS_S):
        start = datetime.fromtimestamp(now - max(horizon_s, window_s), tz=timezone.utc)
        fires = job.schedule.fire_times_between(start, end, limit=LOOK_BACK_LIMIT)
        if fires:
            recent = [fire.timestamp() for fire in fires if fire.timestamp() >= now - window_s]
            return recent[-MAX_CATCH_UP_FIRE_TIMES:] if recent else [fires[-1].timestamp()]
    return []


def _resolve_backend(backend: str | Backend | None) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if backend is None and not os.environ.get("PLANLAGT_BACKEND"):
        LOG.info("No backend given; using the embedded SQLite backend %s", DEFAULT_URL)
        return connect(DEFAULT_URL)
    return connect(backend)


def _check_retention(max_per_job: int, max_age_s: float) -> None:
    if not isinstance(max_per_job, int) or isinstance(max_per_job, bool) or max_per_job < 1:
        raise ConfigurationError(f"history_max_per_job must be an integer of at least 1, not {max_per_job!r}")
    if not isinstance(max_age_s, (int, float)) or isinstance(max_age_s, bool) or not max_age_s > 0:
        raise ConfigurationError(f"history_max_age_s must be a positive number of seconds, not {max_age_s!r}")


def _check_settings(max_skew_s: float, max_workers: int, shutdown_grace_s: float) -> None:
    if not isinstance(max_skew_s, (int, float)) or isinstance(max_skew_s, bool) or not 0 <= max_skew_s < 3600:
        raise ConfigurationError(f"max_skew_s must be a number of seconds from 0 to 3600, not {max_skew_s!r}")
    if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
        raise ConfigurationError(f"max_workers must be an integer of at least 1, not {max_workers!r}")
    if not isinstance(shutdown_grace_s, (int, float)) or isinstance(shutdown_grace_s, bool) or shutdown_grace_s < 0:
        raise ConfigurationError(
            f"shutdown_grace_s must be zero or a positive number of seconds, not {shutdown_grace_s!r}"
        )


E = TypeVar("E", OverlapPolicy, MissedPolicy)


def _enum(kind: type[E], value: str | E, option: str, job: str | None) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise InvalidJob(f"job {job or '(unnamed)'!r}: {option}={value!r} is not one of {choices}") from None


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
