"""Tests of the scheduler's run policies, run context, operator controls, shutdown and fork rules.

Retries are driven by :class:`~planlagt_core.testing.SchedulerTester` on a fake clock. The
rest run real schedulers, with their threads, on shared ``memory://`` stores with short
TTLs, and poll the run history for the expected records. A stall is driven by moving an
:class:`~planlagt_core.clock.OffsetClock` forward while the scheduler runs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from planlagt_memory import MemoryBackend

from planlagt_core.backend import LeaseState
from planlagt_core.clock import FakeClock, OffsetClock, SystemClock
from planlagt_core.context import RunContext
from planlagt_core.errors import BackendUnavailable, SchedulerError
from planlagt_core.job import Job, JobPolicy, build_job
from planlagt_core.keeper import LeaseKeeper
from planlagt_core.listeners import ListenerSet
from planlagt_core.models import InstanceInfo, Outcome, RunRecord
from planlagt_core.runner import FIRE_STATE_MARGIN_S, PendingFire, Runner
from planlagt_core.scheduler import Scheduler
from planlagt_core.testing import SchedulerTester

LEASE_TTL_S = 1.5
HEARTBEAT_S = 0.25
POLL_DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.02
JOB_WAIT_S = 30.0
"""Maximum time a test job blocks, so a failed test never leaves a worker thread hanging."""
SCHEDULING_SLACK_S = 1.0
"""Allowance for thread scheduling delays when a change must take effect within one heartbeat."""
EVERY_SECOND = "* * * * * *"
TESTER_START = datetime(2026, 1, 5, tzinfo=timezone.utc)


# -- Helpers and fixtures ----------------------------------------------------------------


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = POLL_DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns a true value; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def new_store() -> str:
    return f"policies-{secrets.token_hex(6)}"


def history(backend: MemoryBackend, job: str) -> list[RunRecord]:
    """Return the run records of ``job``, oldest fire time first, attempts in order."""
    return sorted(backend.list_runs(job, limit=10_000), key=lambda r: (r.fire_time, r.attempt, r.outcome.value))


def once_at(instant: datetime) -> str:
    """Return a 6-field cron expression that fires at ``instant`` (UTC) and next a year later."""
    utc = instant.astimezone(timezone.utc)
    return f"{utc.second} {utc.minute} {utc.hour} {utc.day} {utc.month} *"


def soon(seconds: float = 2.0) -> datetime:
    """Return the whole UTC second at least ``seconds`` from now."""
    return datetime.fromtimestamp(int(time.time() + seconds) + 1, tz=timezone.utc)


def wait_heartbeats(backend: MemoryBackend, instance_id: str, count: int) -> None:
    """Wait until ``instance_id`` has sent ``count`` more heartbeats."""

    def last_beat() -> float:
        beats = [i.last_heartbeat or 0.0 for i in backend.list_instances() if i.instance_id == instance_id]
        return beats[0] if beats else 0.0

    for _ in range(count):
        before = last_beat()
        wait_for(lambda before=before: last_beat() > before, f"a heartbeat of {instance_id}")


@pytest.fixture
def store() -> str:
    return new_store()


@pytest.fixture
def observer(store: str) -> MemoryBackend:
    """A second backend object on the test's store, as an operator or another process would use."""
    return MemoryBackend(name=store)


@pytest.fixture
def make_scheduler() -> Iterator[Callable[..., Scheduler]]:
    """Build schedulers with the short test TTLs; stop any still running at the end."""
    created: list[Scheduler] = []

    def make(store: str, **options: Any) -> Scheduler:
        options.setdefault("lease_ttl_s", LEASE_TTL_S)
        options.setdefault("heartbeat_s", HEARTBEAT_S)
        options.setdefault("shutdown_grace_s", 5.0)
        scheduler = Scheduler(f"memory://{store}", **options)
        created.append(scheduler)
        return scheduler

    yield make
    for scheduler in created:
        if scheduler.running:
            scheduler.stop(grace_s=0.0)


# -- Retries (SchedulerTester) -----------------------------------------------------------


def failing(calls: list[RunContext]) -> Callable[[RunContext], None]:
    def run(context: RunContext) -> None:
        calls.append(context)
        raise RuntimeError(f"attempt {context.attempt} failed")

    return run


@pytest.mark.fast
def test_retries_share_attempt_limit() -> None:
    calls: list[RunContext] = []
    scheduler = Scheduler(MemoryBackend())
    scheduler.add_job(failing(calls), "*/10 * * * *", name="flaky", max_attempts=3, retry_backoff_s=5.0)
    tester = SchedulerTester(scheduler, start=TESTER_START)

    records = tester.run_until(TESTER_START + timedelta(minutes=10, seconds=30))

    fire_time = (TESTER_START + timedelta(minutes=10)).timestamp()
    attempts = [r for r in records if r.fire_time == fire_time]
    assert [r.attempt for r in attempts] == [1, 2, 3]
    assert [r.outcome for r in attempts] == [Outcome.FAILED] * 3
    assert [c.attempt for c in calls] == [1, 2, 3]
    state = tester.backend.get_fire("flaky", fire_time)
    assert state is not None
    assert state.attempts == 3
    assert state.outcome is Outcome.FAILED


@pytest.mark.fast
def test_retries_back_off_doubling() -> None:
    scheduler = Scheduler(MemoryBackend())
    scheduler.add_job(failing([]), "*/10 * * * *", name="flaky", max_attempts=4, retry_backoff_s=5.0)
    tester = SchedulerTester(scheduler, start=TESTER_START)

    records = tester.run_until(TESTER_START + timedelta(minutes=11))

    starts = [r.started_at for r in records if r.started_at is not None]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]  # type: ignore[operator]
    assert gaps == [5.0, 10.0, 20.0]


@pytest.mark.fast
def test_retry_succeeds_second_attempt() -> None:
    calls: list[int] = []

    def second_time_lucky(context: RunContext) -> None:
        calls.append(context.attempt)
        if context.attempt == 1:
            raise RuntimeError("first attempt failed")

    scheduler = Scheduler(MemoryBackend())
    scheduler.add_job(second_time_lucky, "*/10 * * * *", name="flaky", max_attempts=3, retry_backoff_s=5.0)
    tester = SchedulerTester(scheduler, start=TESTER_START)

    records = tester.run_until(TESTER_START + timedelta(minutes=10, seconds=30))

    assert [(r.attempt, r.outcome) for r in records] == [(1, Outcome.FAILED), (2, Outcome.SUCCEEDED)]
    assert calls == [1, 2]
    state = tester.backend.get_fire("flaky", (TESTER_START + timedelta(minutes=10)).timestamp())
    assert state is not None
    assert state.outcome is Outcome.SUCCEEDED


@pytest.mark.fast
def test_retry_given_up_at_next_fire() -> None:
    scheduler = Scheduler(MemoryBackend())
    scheduler.add_job(failing([]), "* * * * *", name="flaky", max_attempts=5, retry_backoff_s=20.0)
    tester = SchedulerTester(scheduler, start=TESTER_START)

    records = tester.run_until(TESTER_START + timedelta(minutes=1, seconds=30))

    first = (TESTER_START + timedelta(minutes=1)).timestamp()
    second = (TESTER_START + timedelta(minutes=2)).timestamp()
    # Attempt 2 fails at 00:01:20; the next wait (40 s) ends at the next fire time, 00:02:00.
    assert [(r.fire_time, r.attempt) for r in records] == [(first, 1), (first, 2)]
    state = tester.backend.get_fire("flaky", first)
    assert state is not None
    assert state.outcome is Outcome.FAILED
    assert state.attempts == 2

    later = tester.run_until(TESTER_START + timedelta(minutes=2, seconds=10))
    assert [(r.fire_time, r.attempt) for r in later] == [(second, 1)]


def test_retry_limit_shared_across_instances(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    release = threading.Event()
    started_on: list[str] = []

    def hang_on_first(context: RunContext) -> None:
        started_on.append(context.instance_id)
        if context.instance_id == "first":
            release.wait(JOB_WAIT_S)
            return
        raise RuntimeError("second attempt failed")

    fire = soon()
    first = make_scheduler(store, instance_id="first")
    first.add_job(hang_on_first, once_at(fire), name="shared", max_attempts=2, retry_backoff_s=0.1)
    first.start()
    wait_for(lambda: started_on == ["first"], "the first attempt to start")

    second = make_scheduler(store, instance_id="second")
    second.add_job(hang_on_first, once_at(fire), name="shared", max_attempts=2, retry_backoff_s=0.1)
    second.start()
    first.stop(grace_s=0.0)
    wait_for(lambda: observer.get_fire("shared", fire.timestamp()).outcome is not None, "the fire time to close")
    release.set()

    state = observer.get_fire("shared", fire.timestamp())
    assert started_on == ["first", "second"]
    assert state.attempts == 2
    assert state.outcome is Outcome.FAILED
    wait_for(lambda: len(history(observer, "shared")) >= 2, "the first attempt's record")
    records = [r for r in history(observer, "shared") if r.fire_time == fire.timestamp()]
    assert [(r.instance_id, r.attempt, r.outcome) for r in records] == [
        ("first", 1, Outcome.LEASE_LOST),
        ("second", 2, Outcome.FAILED),
    ]


# -- Overlap -----------------------------------------------------------------------------


def test_overlap_skip_records_reason(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    release = threading.Event()
    first_fire: list[float] = []

    def long_first_run(context: RunContext) -> None:
        if not first_fire:
            first_fire.append(context.fire_time.timestamp())
            release.wait(JOB_WAIT_S)

    scheduler = make_scheduler(store, instance_id="overlap-skip")
    scheduler.add_job(long_first_run, EVERY_SECOND, name="slow")
    scheduler.start()
    skipped = wait_for(
        lambda: [r for r in history(observer, "slow") if r.outcome is Outcome.SKIPPED and r.fire_time > first_fire[0]],
        "a fire time skipped because the previous run is still going",
    )
    release.set()

    assert "still going" in (skipped[0].reason or "")
    assert "overlap-skip" in (skipped[0].reason or "")
    assert skipped[0].attempt == 0
    finished = wait_for(
        lambda: [
            r for r in history(observer, "slow") if r.fire_time == first_fire[0] and r.outcome is not Outcome.SKIPPED
        ],
        "the long run to finish",
    )
    assert finished[0].outcome is Outcome.SUCCEEDED


def test_overlap_allow_runs_concurrently(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    lock = threading.Lock()
    running: list[float] = []
    peak: list[int] = [0]
    overlapped = threading.Event()

    def overlapping(context: RunContext) -> None:
        with lock:
            running.append(context.fire_time.timestamp())
            peak[0] = max(peak[0], len(running))
            if len(running) >= 2:
                overlapped.set()
        overlapped.wait(JOB_WAIT_S)
        with lock:
            running.remove(context.fire_time.timestamp())

    scheduler = make_scheduler(store, instance_id="overlap-allow")
    scheduler.add_job(overlapping, EVERY_SECOND, name="parallel", overlap="allow")
    scheduler.start()
    wait_for(overlapped.is_set, "two runs of one job at once")
    wait_for(
        lambda: sum(r.outcome is Outcome.SUCCEEDED for r in history(observer, "parallel")) >= 2,
        "two overlapping runs to succeed",
    )

    assert peak[0] >= 2
    assert [r for r in history(observer, "parallel") if r.outcome is Outcome.SKIPPED] == []


# -- Missed fire times after a stall -----------------------------------------------------

MINUTE_S = 60
STALL_BASE = datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()
"""A minute boundary M: the scheduler's wall clock starts at M + 58 s."""
STALL_JUMP_S = 270.0
"""Moves the wall clock from about M + 60 s to M + 330 s, past four fire times of a per-minute job."""


def closed_records(backend: MemoryBackend, job: str, fire_times: list[float]) -> list[RunRecord]:
    """Return the records of ``fire_times`` once every one of them is closed, else an empty list."""
    for fire in fire_times:
        state = backend.get_fire(job, fire)
        if state is None or state.outcome is None:
            return []
    return [r for r in history(backend, job) if r.fire_time in fire_times]


MISSED_CASES = [
    ("skip", 300.0, [Outcome.MISSED] * 4),
    ("run_latest", 300.0, [Outcome.MISSED] * 3 + [Outcome.SUCCEEDED]),
    ("run_latest", 10.0, [Outcome.MISSED] * 4),
]


@pytest.mark.parametrize(
    ("policy", "grace_s", "expected"), MISSED_CASES, ids=["skip", "run-latest", "run-latest-past-grace"]
)
def test_missed_after_stall(
    policy: str,
    grace_s: float,
    expected: list[Outcome],
    store: str,
    observer: MemoryBackend,
    make_scheduler: Callable[..., Scheduler],
) -> None:
    clock = OffsetClock(STALL_BASE + 58.0 - time.time())
    scheduler = make_scheduler(store, instance_id="stalled", clock=clock)
    scheduler.add_job(
        lambda: None, "* * * * *", name="minutely", late_start_s=5.0, missed=policy, missed_grace_s=grace_s
    )
    first = STALL_BASE + MINUTE_S
    stalled = [STALL_BASE + MINUTE_S * n for n in (2, 3, 4, 5)]

    scheduler.start()
    wait_for(
        lambda: any(r.fire_time == first and r.outcome is Outcome.SUCCEEDED for r in history(observer, "minutely")),
        "the fire time before the stall to run",
    )
    # The run's record is written under its lease, just before the release; a stall that
    # starts in between would make the latest stalled fire time find the run still going.
    wait_for(lambda: observer.inspect("job:minutely") is None, "the run before the stall to release its lease")
    clock.offset_s += STALL_JUMP_S
    records = wait_for(lambda: closed_records(observer, "minutely", stalled), "every fire time of the stall to close")

    assert [r.fire_time for r in records] == stalled
    assert [r.outcome for r in records] == expected
    for record in records:
        if record.outcome is Outcome.MISSED:
            assert "5 s" in (record.reason or "")


# -- Fire times taken over after their late-start window ---------------------------------


def takeover_runner(backend: MemoryBackend, clock: FakeClock) -> Runner:
    return Runner(
        backend=backend,
        clock=clock,
        keeper=LeaseKeeper(backend, clock, "heir"),
        listeners=ListenerSet([]),
        instance_id="heir",
        max_skew_s=1.0,
        call_async=asyncio.run,
    )


def takeover_of(job: Job, fire_time: float) -> PendingFire:
    return PendingFire(job=job, fire_time=fire_time, not_before=0.0, reason="takeover", check_first=True)


@pytest.mark.fast
def test_late_takeover_records_missed() -> None:
    clock = FakeClock(TESTER_START.timestamp())
    backend = MemoryBackend(clock=clock)
    calls: list[RunContext] = []
    job = build_job(calls.append, "* * * * * *", name="ticker", tz="UTC", policy=JobPolicy(lease_ttl_s=1.0))
    window_s = job.policy.late_start_window_s(1.0)
    fire_time = clock.time()
    clock.advance(window_s + 1.0)

    follow_up = takeover_runner(backend, clock).run(takeover_of(job, fire_time))

    assert follow_up is None
    assert calls == []
    state = backend.get_fire("ticker", fire_time)
    assert state is not None
    assert state.outcome is Outcome.MISSED


@pytest.mark.fast
def test_takeover_skips_fire_past_retention() -> None:
    clock = FakeClock(TESTER_START.timestamp())
    backend = MemoryBackend(clock=clock)
    job = build_job(lambda: None, "* * * * * *", name="ticker", tz="UTC", policy=JobPolicy(lease_ttl_s=1.0))
    fire_time = clock.time()
    clock.advance(job.policy.late_start_window_s(1.0) + FIRE_STATE_MARGIN_S + 1.0)

    follow_up = takeover_runner(backend, clock).run(takeover_of(job, fire_time))

    # Its state may have expired after a close long ago: nothing is recorded for it now.
    assert follow_up is None
    assert backend.get_fire("ticker", fire_time) is None
    assert backend.list_runs("ticker") == []


@pytest.mark.fast
def test_takeover_retries_attempt_unconfirmed() -> None:
    clock = FakeClock(TESTER_START.timestamp())
    backend = MemoryBackend(clock=clock)
    calls: list[RunContext] = []
    policy = JobPolicy(lease_ttl_s=1.0, max_attempts=3)
    job = build_job(calls.append, "* * * * *", name="ticker", tz="UTC", policy=policy)
    fire_time = clock.time()
    # A dead instance began an attempt, and its lease expired.
    lease = backend.acquire(job.lease_key, 1.0, holder="dead")
    assert lease is not None
    backend.begin_attempt(lease, "ticker", fire_time, max_attempts=3, keep_s=600.0)
    clock.advance(1.5)
    pending = replace(takeover_of(job, fire_time), confirm_at=clock.time() + 1.0)

    follow_up = takeover_runner(backend, clock).run(pending)

    assert follow_up is None
    assert [context.attempt for context in calls] == [2]
    state = backend.get_fire("ticker", fire_time)
    assert state is not None
    assert state.outcome is Outcome.SUCCEEDED


@pytest.mark.fast
def test_takeover_waits_confirmation_without_attempt() -> None:
    clock = FakeClock(TESTER_START.timestamp())
    backend = MemoryBackend(clock=clock)
    calls: list[RunContext] = []
    job = build_job(calls.append, "* * * * *", name="ticker", tz="UTC", policy=JobPolicy(lease_ttl_s=1.0))
    fire_time = clock.time()
    confirm_at = clock.time() + 1.0
    runner = takeover_runner(backend, clock)

    follow_up = runner.run(replace(takeover_of(job, fire_time), confirm_at=confirm_at))

    assert follow_up is not None
    assert follow_up.not_before == confirm_at
    assert follow_up.check_first
    assert calls == []
    assert backend.get_fire("ticker", fire_time) is None

    clock.set(confirm_at)
    assert runner.run(follow_up) is None
    assert [context.attempt for context in calls] == [1]


@dataclass(frozen=True)
class Regained:
    """Jobs that moved to a peer that then died, and when the peer was listed."""

    started_at: float
    moved: list[str]
    joined_at: float
    left_at: float


REGAIN_WORK_S = 0.8
"""Run time of the regained jobs: most of each second, so a due run holds the job's lease most of the time."""


def working() -> None:
    time.sleep(REGAIN_WORK_S)


def regain_from_dead_peer(store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]) -> Regained:
    """Run one instance, let a peer take some of its jobs and die, and wait for the jobs to come back.

    The peer announces itself once and never runs anything, so the fire times of its jobs
    stay open until the instance takes the jobs back and replays their late-start window.
    Returns once a fire time of every moved job from the peer's time has closed.
    """
    scheduler = make_scheduler(store, instance_id="first")
    for index in range(4):
        scheduler.add_job(working, EVERY_SECOND, name=f"job-{index}", late_start_s=10.0)
    scheduler.start()
    first = next(i for i in observer.list_instances() if i.instance_id == "first")

    peer = InstanceInfo(
        instance_id="peer", started_at=time.time(), heartbeat_s=HEARTBEAT_S, jobs_digest=first.jobs_digest
    )
    observer.heartbeat(peer, LEASE_TTL_S)
    wait_for(lambda: "peer" in scheduler.live_instances, "the peer to join")
    moved = sorted(name for name, owner in scheduler.job_owners.items() if owner == "peer")
    joined_at = time.time()
    wait_for(lambda: "peer" not in scheduler.live_instances, "the peer's membership to expire")
    left_at = time.time()
    for name in moved:
        wait_for(
            lambda name=name: any(joined_at <= r.fire_time < left_at for r in history(observer, name)),
            f"a fire time of {name} left to the peer to close after the job came back",
        )
    return Regained(first.started_at, moved, joined_at, left_at)


def test_regain_skips_fires_before_start(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    regained = regain_from_dead_peer(store, observer, make_scheduler)

    # Replaying the late-start window must not reach back to before any instance was there.
    records = [record for name in regained.moved for record in history(observer, name)]
    early = [(r.job, r.fire_time) for r in records if r.fire_time < regained.started_at]
    assert regained.moved
    assert early == []


def test_regain_runs_left_fires_in_order(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    regained = regain_from_dead_peer(store, observer, make_scheduler)
    left = [float(second) for second in range(math.ceil(regained.joined_at), math.floor(regained.left_at) + 1)]
    for name in regained.moved:
        wait_for(
            lambda name=name: {r.fire_time for r in history(observer, name)} >= set(left),
            f"every fire time of {name} left to the peer to close",
        )

    # Fire times that came due while the takeover waited for confirmation run after the
    # older ones, so none of those is closed as missed.
    for name in regained.moved:
        outcomes = {r.fire_time: r.outcome for r in history(observer, name) if r.fire_time in left}
        assert list(outcomes.values()) == [Outcome.SUCCEEDED] * len(left), f"{name}: {outcomes}"


# -- Maximum run time --------------------------------------------------------------------


def test_max_run_time_keeps_lease(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    release = threading.Event()
    seen: dict[str, Any] = {}
    stop_seen = threading.Event()

    def overrun(context: RunContext) -> None:
        if seen:
            return
        seen["token"] = context.fencing_token
        seen["fire"] = context.fire_time.timestamp()
        deadline = time.monotonic() + JOB_WAIT_S
        while not context.stop_requested and time.monotonic() < deadline:
            context.wait(1.0)
        seen["stop_requested"] = context.stop_requested
        seen["reason"] = context.stop_reason
        seen["state"] = context.lease_state
        stop_seen.set()
        release.wait(JOB_WAIT_S)

    scheduler = make_scheduler(store, instance_id="overrun")
    scheduler.add_job(overrun, EVERY_SECOND, name="overrun", max_run_time_s=0.3)
    scheduler.start()
    wait_for(stop_seen.is_set, "the run to be asked to stop")

    # The lease must outlive several TTLs after the stop request while the function runs.
    held_until = time.monotonic() + 3 * LEASE_TTL_S
    while time.monotonic() < held_until:
        info = observer.inspect("job:overrun")
        assert info is not None
        assert info.token == seen["token"]
        time.sleep(POLL_INTERVAL_S)
    release.set()

    assert seen["stop_requested"] is True
    assert "maximum run time" in seen["reason"]
    assert seen["state"] is LeaseState.HELD
    records = wait_for(
        lambda: [r for r in history(observer, "overrun") if r.fire_time == seen["fire"]], "the overrun's record"
    )
    assert [r.outcome for r in records] == [Outcome.TIMED_OUT]
    state = observer.get_fire("overrun", seen["fire"])
    assert state is not None
    assert state.outcome is Outcome.TIMED_OUT


# -- Async jobs --------------------------------------------------------------------------


def test_async_job_runs(store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]) -> None:
    threads: list[str] = []

    async def coroutine_job(context: RunContext) -> None:
        await asyncio.sleep(0.01)
        asyncio.get_running_loop()
        threads.append(threading.current_thread().name)

    scheduler = make_scheduler(store, instance_id="async")
    scheduler.add_job(coroutine_job, EVERY_SECOND, name="coroutine")
    scheduler.start()
    try:
        records = wait_for(
            lambda: [r for r in history(observer, "coroutine") if r.outcome is Outcome.SUCCEEDED], "an async run"
        )
    finally:
        # A grace period lets a coroutine in flight finish: see test_stop_during_async_run_exits.
        scheduler.stop(grace_s=5.0)

    assert records[0].attempt == 1
    assert threads
    assert threads[0].startswith("planlagt-asyncio")


def test_async_job_failure_recorded(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("async job failed")

    scheduler = make_scheduler(store, instance_id="async-broken")
    scheduler.add_job(broken, EVERY_SECOND, name="broken")
    scheduler.start()
    try:
        records = wait_for(
            lambda: [r for r in history(observer, "broken") if r.outcome is Outcome.FAILED], "a failed async run"
        )
    finally:
        scheduler.stop(grace_s=5.0)

    assert records[0].error_type == "ValueError"
    assert records[0].error_message == "async job failed"


ASYNC_STOP_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import threading

    from planlagt_core.scheduler import Scheduler

    started = threading.Event()


    async def slow() -> None:
        started.set()
        await asyncio.sleep(1.0)


    scheduler = Scheduler("memory://", instance_id="async-stop", lease_ttl_s=1.5, heartbeat_s=0.25)
    scheduler.add_job(slow, "* * * * * *", name="slow")
    scheduler.start()
    assert started.wait(30)
    scheduler.stop(grace_s=0.0)
    print("stopped", flush=True)
    """
)


def test_stop_during_async_run_exits() -> None:
    # Run in a child process, because a worker thread that never ends blocks interpreter exit.
    try:
        result = subprocess.run(
            [sys.executable, "-c", ASYNC_STOP_SCRIPT], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process did not exit within {exc.timeout} s of stop(); output: {exc.stdout!r}")

    assert result.stdout.strip() == "stopped"
    assert result.returncode == 0, result.stderr[-2000:]


# -- Run context -------------------------------------------------------------------------


def test_context_fields(store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]) -> None:
    seen: list[dict[str, Any]] = []

    def inspect_context(context: RunContext) -> None:
        if seen:
            return
        info = observer.inspect("job:context")
        seen.append(
            {
                "job": context.job,
                "fire_time": context.fire_time,
                "attempt": context.attempt,
                "token": context.fencing_token,
                "held_token": None if info is None else info.token,
                "state": context.lease_state,
                "instance": context.instance_id,
                "manual": context.manual,
                "stop_requested": context.stop_requested,
            }
        )

    scheduler = make_scheduler(store, instance_id="context")
    scheduler.add_job(inspect_context, EVERY_SECOND, name="context", tz="Europe/Berlin")
    scheduler.start()
    records = wait_for(
        lambda: [r for r in history(observer, "context") if r.outcome is Outcome.SUCCEEDED], "a run with a context"
    )
    fields = seen[0]
    fire_time: datetime = fields["fire_time"]
    record = next(r for r in records if r.fire_time == fire_time.timestamp())

    assert fields["job"] == "context"
    assert fire_time.utcoffset() is not None
    assert getattr(fire_time.tzinfo, "key", None) == "Europe/Berlin"
    assert fire_time.microsecond == 0
    assert fields["attempt"] == 1
    assert fields["token"] == fields["held_token"]
    assert fields["token"] == record.fencing_token
    assert fields["state"] is LeaseState.HELD
    assert fields["instance"] == "context"
    assert fields["manual"] is False
    assert fields["stop_requested"] is False


def test_context_wait_wakes_on_stop(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    seen: dict[str, Any] = {}

    def waiting(context: RunContext) -> None:
        if seen:
            return
        seen["quiet"] = context.wait(0.01)
        seen["woke"] = context.wait(JOB_WAIT_S)
        seen["stop_requested"] = context.stop_requested

    scheduler = make_scheduler(store, instance_id="waiter")
    scheduler.add_job(waiting, EVERY_SECOND, name="waiting", max_run_time_s=0.3)
    scheduler.start()
    wait_for(lambda: "stop_requested" in seen, "the run to return")

    assert seen["quiet"] is False
    assert seen["woke"] is True
    assert seen["stop_requested"] is True


# -- Lease lost during a run -------------------------------------------------------------


def test_lease_taken_marks_context_lost(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    started = threading.Event()
    seen: dict[str, Any] = {}

    def held_then_taken(context: RunContext) -> None:
        started.set()
        deadline = time.monotonic() + JOB_WAIT_S
        while context.lease_state is not LeaseState.LOST and time.monotonic() < deadline:
            context.wait(1.0)
        seen["state"] = context.lease_state
        seen["stop_requested"] = context.stop_requested
        seen["token"] = context.fencing_token

    fire = soon()
    scheduler = make_scheduler(store, instance_id="victim")
    scheduler.add_job(held_then_taken, once_at(fire), name="taken")
    scheduler.start()
    assert started.wait(POLL_DEADLINE_S)

    # Another holder takes the key, as after an expiry the victim did not notice.
    with observer.store.lock:
        del observer.store.namespace(observer.prefix).leases["job:taken"]
    thief = observer.acquire("job:taken", 60.0, holder="thief")
    assert thief is not None
    wait_for(lambda: "state" in seen, "the run to see its lease lost")
    records = wait_for(
        lambda: [r for r in history(observer, "taken") if r.fire_time == fire.timestamp()], "the lost run's record"
    )

    assert seen["state"] is LeaseState.LOST
    assert seen["stop_requested"] is True
    assert thief.token > seen["token"]
    assert [r.outcome for r in records] == [Outcome.LEASE_LOST]
    state = observer.get_fire("taken", fire.timestamp())
    assert state is not None
    assert state.outcome is None
    assert observer.inspect("job:taken").holder == "thief"


class RenewalOutage(MemoryBackend):
    """A memory backend whose renewals fail as if the server were unreachable, once ``down`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.down = threading.Event()

    def _do_renew(self, lease: Any, ttl_s: float) -> Any:
        if self.down.is_set():
            raise BackendUnavailable("renewal failed: backend unreachable (test outage)", backend=self.url)
        return super()._do_renew(lease, ttl_s)


def test_renewal_outage_marks_lost(store: str, observer: MemoryBackend) -> None:
    backend = RenewalOutage(store)
    started = threading.Event()
    states: list[LeaseState] = []

    def watch_states(context: RunContext) -> None:
        started.set()
        deadline = time.monotonic() + JOB_WAIT_S
        while context.lease_state is not LeaseState.LOST and time.monotonic() < deadline:
            if context.wait(1.0):
                states.append(context.lease_state)

    fire = soon()
    scheduler = Scheduler(backend, instance_id="outage", lease_ttl_s=LEASE_TTL_S, heartbeat_s=HEARTBEAT_S)
    scheduler.add_job(watch_states, once_at(fire), name="outage")
    scheduler.start()
    try:
        assert started.wait(POLL_DEADLINE_S)
        backend.down.set()
        records = wait_for(
            lambda: [r for r in history(observer, "outage") if r.fire_time == fire.timestamp()],
            "the run to end after its lease ran out",
        )
    finally:
        scheduler.stop(grace_s=0.0)

    assert states == [LeaseState.AT_RISK, LeaseState.LOST]
    assert [r.outcome for r in records] == [Outcome.LEASE_LOST]


class BlockingRenewals(MemoryBackend):
    """A memory backend whose renewals wait until ``proceed`` is set."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.renewing = threading.Event()
        self.proceed = threading.Event()
        self.renewals = 0

    def _do_renew(self, lease: Any, ttl_s: float) -> Any:
        self.renewals += 1
        self.renewing.set()
        self.proceed.wait(JOB_WAIT_S)
        return super()._do_renew(lease, ttl_s)


@pytest.mark.fast
def test_keeper_remove_waits_for_renewal() -> None:
    backend = BlockingRenewals()
    keeper = LeaseKeeper(backend, SystemClock(), "keeper")
    lease = backend.acquire("job:renewed", 5.0)
    assert lease is not None
    context = RunContext(
        job="renewed", fire_time=TESTER_START, attempt=1, fencing_token=lease.token, instance_id="keeper"
    )
    attempt = keeper.add(lease, context, heartbeat_s=0.01, max_run_time_s=None)
    attempt.next_renew = 0.0
    ticker = threading.Thread(target=keeper.tick)
    ticker.start()
    assert backend.renewing.wait(POLL_DEADLINE_S)

    removed: list[Any] = []
    remover = threading.Thread(target=lambda: removed.append(keeper.remove(attempt)))
    remover.start()
    remover.join(0.2)
    assert remover.is_alive(), "remove returned while a renewal was in flight"
    backend.proceed.set()
    remover.join(POLL_DEADLINE_S)
    ticker.join(POLL_DEADLINE_S)

    assert removed and removed[0].valid_until > lease.valid_until
    keeper._renew(attempt)
    assert backend.renewals == 1


# -- Pause and resume --------------------------------------------------------------------


def test_pause_skips_then_resume(store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]) -> None:
    scheduler = make_scheduler(store, instance_id="pausable")
    scheduler.add_job(lambda: None, EVERY_SECOND, name="pausable")
    scheduler.start()
    wait_for(
        lambda: any(r.outcome is Outcome.SUCCEEDED for r in history(observer, "pausable")), "a run before the pause"
    )

    paused_at = time.time()
    observer.set_paused("pausable", True)
    wait_for(
        lambda: (
            sum(r.outcome is Outcome.SKIPPED and r.fire_time > paused_at for r in history(observer, "pausable")) >= 3
        ),
        "three fire times skipped while paused",
    )
    resumed_at = time.time()
    observer.set_paused("pausable", False)
    wait_for(
        lambda: any(
            r.outcome is Outcome.SUCCEEDED and r.fire_time > resumed_at + HEARTBEAT_S + SCHEDULING_SLACK_S
            for r in history(observer, "pausable")
        ),
        "a run after resuming",
    )

    records = history(observer, "pausable")
    while_paused = [r for r in records if paused_at + HEARTBEAT_S + SCHEDULING_SLACK_S <= r.fire_time <= resumed_at]
    assert while_paused
    for record in while_paused:
        assert record.outcome is Outcome.SKIPPED
        assert "paused" in (record.reason or "")
    after_resume = [r for r in records if r.fire_time >= resumed_at + HEARTBEAT_S + SCHEDULING_SLACK_S]
    assert [r for r in after_resume if r.outcome is not Outcome.SUCCEEDED] == []


# -- Manual trigger ----------------------------------------------------------------------


def test_trigger_runs_once_manual(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    calls: list[bool] = []

    def manual(context: RunContext) -> None:
        calls.append(context.manual)

    scheduler = make_scheduler(store, instance_id="triggered")
    scheduler.add_job(manual, once_at(datetime.now(timezone.utc) + timedelta(days=100)), name="manual")
    scheduler.start()
    request = scheduler.trigger("manual")
    records = wait_for(lambda: [r for r in history(observer, "manual") if r.manual], "the manual run to be recorded")
    wait_heartbeats(observer, "triggered", 3)

    records = [r for r in history(observer, "manual") if r.manual]
    assert len(records) == 1
    assert records[0].outcome is Outcome.SUCCEEDED
    assert records[0].trigger_id == request.request_id
    assert calls == [True]
    assert observer.read_control().triggers == ()


# -- Rolling deploy ----------------------------------------------------------------------


def test_rolling_deploy_warns_once_per_fire(
    store: str,
    observer: MemoryBackend,
    make_scheduler: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="planlagt_core.membership")
    runs: list[tuple[float, str]] = []
    lock = threading.Lock()

    def deployed(context: RunContext) -> None:
        with lock:
            runs.append((context.fire_time.timestamp(), context.instance_id))

    old = make_scheduler(store, instance_id="deploy-old")
    old.add_job(deployed, EVERY_SECOND, name="deployed", max_attempts=1)
    new = make_scheduler(store, instance_id="deploy-new")
    new.add_job(deployed, EVERY_SECOND, name="deployed", max_attempts=2)
    old.start()
    new.start()
    warning = wait_for(
        lambda: [r for r in caplog.records if "defined differently" in r.getMessage()],
        "a warning about the differing definitions",
    )
    wait_heartbeats(observer, "deploy-old", 2)
    wait_heartbeats(observer, "deploy-new", 2)
    window_start = time.time()
    wait_for(lambda: sum(fire > window_start for fire, _ in runs) >= 5, "five runs after both instances settled")
    window_end = time.time() - LEASE_TTL_S

    message = warning[0].getMessage()
    assert warning[0].levelno == logging.WARNING
    assert "deploy-old" in message
    assert "deploy-new" in message
    assert "'deployed'" in message
    completions: dict[float, int] = {}
    for record in history(observer, "deployed"):
        if record.outcome is Outcome.SUCCEEDED:
            completions[record.fire_time] = completions.get(record.fire_time, 0) + 1
    fire_times = [fire for fire in completions if window_start < fire <= window_end]
    assert fire_times
    for fire in fire_times:
        assert completions[fire] == 1
    assert len(runs) == len({fire for fire, _ in runs})


# -- Graceful stop -----------------------------------------------------------------------


def test_stop_lets_running_job_finish(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def finishing(context: RunContext) -> None:
        if started.is_set():
            return
        started.set()
        release.wait(JOB_WAIT_S)
        finished.set()

    scheduler = make_scheduler(store, instance_id="graceful")
    scheduler.add_job(finishing, EVERY_SECOND, name="finishing")
    scheduler.start()
    assert started.wait(POLL_DEADLINE_S)
    stopper = threading.Thread(target=scheduler.stop, kwargs={"grace_s": JOB_WAIT_S})
    stopper.start()
    wait_for(lambda: not scheduler.running, "the scheduler to start stopping")
    held_while_stopping = observer.inspect("job:finishing")
    release.set()
    stopper.join(JOB_WAIT_S)

    assert not stopper.is_alive()
    assert held_while_stopping is not None
    assert finished.is_set()
    outcomes = [r.outcome for r in history(observer, "finishing")]
    assert Outcome.SUCCEEDED in outcomes
    assert observer.inspect("job:finishing") is None
    assert "graceful" not in [i.instance_id for i in observer.list_instances()]


def test_stop_leaves_queued_fires_unclaimed(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    started = threading.Event()
    release = threading.Event()
    queued_runs: list[RunContext] = []

    def blocking() -> None:
        started.set()
        release.wait(JOB_WAIT_S)

    # One worker: the second job's fire time waits in the queue behind the first job's run.
    scheduler = make_scheduler(store, instance_id="one-worker", max_workers=1)
    fire = soon()
    scheduler.add_job(blocking, once_at(fire), name="a-blocking")
    scheduler.add_job(queued_runs.append, once_at(fire), name="b-queued")
    scheduler.start()
    assert started.wait(POLL_DEADLINE_S)
    stopper = threading.Thread(target=scheduler.stop, kwargs={"grace_s": JOB_WAIT_S})
    stopper.start()
    wait_for(lambda: not scheduler.running, "the scheduler to start stopping")
    release.set()
    stopper.join(JOB_WAIT_S)

    assert not stopper.is_alive()
    assert queued_runs == []
    assert observer.get_fire("b-queued", fire.timestamp()) is None
    assert [r.outcome for r in history(observer, "a-blocking")] == [Outcome.SUCCEEDED]


def test_stop_after_grace_requests_stop(
    store: str, observer: MemoryBackend, make_scheduler: Callable[..., Scheduler]
) -> None:
    started = threading.Event()
    seen: dict[str, Any] = {}

    def stubborn(context: RunContext) -> None:
        if started.is_set():
            return
        started.set()
        deadline = time.monotonic() + JOB_WAIT_S
        while not context.stop_requested and time.monotonic() < deadline:
            context.wait(1.0)
        seen["reason"] = context.stop_reason

    scheduler = make_scheduler(store, instance_id="stubborn")
    scheduler.add_job(stubborn, EVERY_SECOND, name="stubborn")
    scheduler.start()
    assert started.wait(POLL_DEADLINE_S)
    scheduler.stop(grace_s=0.3)
    wait_for(lambda: "reason" in seen, "the running job to be asked to stop")

    assert "shutting down" in (seen["reason"] or "")
    assert "stubborn" not in [i.instance_id for i in observer.list_instances()]


# -- Fork --------------------------------------------------------------------------------

CHILD_TIMEOUT_S = 10
"""SIGALRM ends a forked child that hangs after this many seconds."""

CHILD_CALLS: dict[str, Callable[[Scheduler], Any]] = {
    "add_job": lambda s: s.add_job(lambda: None, "@daily", name="added-in-child"),
    "job": lambda s: s.job("@daily", name="decorated-in-child")(lambda: None),
    "start": lambda s: s.start(),
    "stop": lambda s: s.stop(),
    "run": lambda s: s.run(),
    "trigger": lambda s: s.trigger("forked"),
    "pause": lambda s: s.pause("forked"),
    "resume": lambda s: s.resume("forked"),
    "healthy": lambda s: s.healthy(),
}


def call_in_child(work: Callable[[], str]) -> tuple[str, int]:
    """Fork; run ``work`` in the child and return what it wrote and the child's wait status."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            signal.alarm(CHILD_TIMEOUT_S)
            os.write(write_end, work().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks).decode(), status


@pytest.mark.fast
@pytest.mark.parametrize("call", list(CHILD_CALLS))
def test_forked_child_rejects_call(call: str, make_scheduler: Callable[..., Scheduler]) -> None:
    scheduler = make_scheduler(new_store(), instance_id="forked")
    scheduler.add_job(lambda: None, "@daily", name="forked")
    scheduler.start()

    def work() -> str:
        try:
            CHILD_CALLS[call](scheduler)
        except SchedulerError as exc:
            return json.dumps({"error": "SchedulerError", "message": str(exc)})
        except Exception as exc:
            return json.dumps({"error": type(exc).__name__, "message": str(exc)})
        return json.dumps({"error": None, "message": ""})

    output, status = call_in_child(work)

    assert os.WIFEXITED(status), f"child ended by signal {os.WTERMSIG(status)} (hung in {call}?)"
    result = json.loads(output)
    assert result["error"] == "SchedulerError"
    assert "create and start a new Scheduler in the child" in result["message"]
    assert str(os.getpid()) in result["message"]
    assert scheduler.running


@pytest.mark.fast
def test_unstarted_scheduler_starts_in_child() -> None:
    scheduler = Scheduler("memory://", instance_id="fresh", lease_ttl_s=LEASE_TTL_S, heartbeat_s=HEARTBEAT_S)
    ran = threading.Event()
    scheduler.add_job(lambda: ran.set(), EVERY_SECOND, name="child-job")

    def work() -> str:
        scheduler.start()
        try:
            return "ran" if ran.wait(CHILD_TIMEOUT_S - 2) else "did not run"
        finally:
            scheduler.stop(grace_s=0.0)

    output, status = call_in_child(work)

    assert os.WIFEXITED(status)
    assert output == "ran"
    assert not scheduler.running
