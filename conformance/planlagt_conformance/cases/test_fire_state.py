"""Fire state: attempts counted under a lease, a fire time closed exactly once, fenced writes."""

from __future__ import annotations

import threading

import pytest

from planlagt_conformance.cases._support import (
    BARRIER_TIMEOUT_S,
    BASE_FIRE_TIME,
    FIRE_KEEP_S,
    Timing,
    acquire_when_free,
    make_record,
)
from planlagt_conformance.plugin import BackendFactory
from planlagt_core.backend import Backend, Lease
from planlagt_core.errors import LeaseLost
from planlagt_core.models import Outcome

JOB = "nightly-report"
FIRE = BASE_FIRE_TIME
CLOSING_THREADS = 8


def acquire_job(backend: Backend, timing: Timing, holder: str) -> Lease:
    lease = backend.acquire(JOB, timing.long_ttl_s, holder=holder)
    assert lease is not None, f"the job key {JOB!r} is unexpectedly held"
    return lease


def begin(backend: Backend, lease: Lease, max_attempts: int = 3, fire_time: float = FIRE):
    return backend.begin_attempt(lease, JOB, fire_time, max_attempts=max_attempts, keep_s=FIRE_KEEP_S)


# -- begin_attempt ----------------------------------------------------------------


def test_begin_attempt_counts_up_to_max_attempts(backend: Backend, timing: Timing):
    last_token = None
    for attempt in (1, 2, 3):
        lease = acquire_job(backend, timing, f"instance-{attempt}")
        state = begin(backend, lease)

        assert state.attempts == attempt
        assert state.outcome is None
        assert state.token == lease.token
        assert state.instance_id == f"instance-{attempt}"
        assert state.began_with(lease.token)
        assert backend.get_fire(JOB, FIRE) == state
        assert backend.release(lease) is True
        last_token = lease.token

    lease = acquire_job(backend, timing, "instance-4")
    exhausted = begin(backend, lease)

    assert exhausted.attempts == 3
    assert exhausted.token == last_token
    assert not exhausted.began_with(lease.token)
    assert backend.get_fire(JOB, FIRE) == exhausted


def test_begin_attempt_counts_on_under_higher_max(backend: Backend, timing: Timing):
    first = acquire_job(backend, timing, "instance-a")
    assert begin(backend, first, max_attempts=1).attempts == 1
    assert backend.release(first) is True

    second = acquire_job(backend, timing, "instance-b")
    state = begin(backend, second, max_attempts=2)

    assert state.attempts == 2
    assert state.began_with(second.token)


def test_begin_attempt_on_closed_fire_time_changes_nothing(backend: Backend, timing: Timing):
    first = acquire_job(backend, timing, "instance-a")
    begin(backend, first)
    assert backend.finish_fire(make_record(JOB, FIRE), lease=first, keep_s=FIRE_KEEP_S) is True
    closed = backend.get_fire(JOB, FIRE)
    assert backend.release(first) is True

    second = acquire_job(backend, timing, "instance-b")
    state = begin(backend, second)

    assert state == closed
    assert state.outcome is Outcome.SUCCEEDED
    assert state.attempts == 1
    assert not state.began_with(second.token)


def test_fire_times_and_jobs_are_independent(backend: Backend, timing: Timing):
    lease = acquire_job(backend, timing, "instance-a")

    begin(backend, lease, fire_time=FIRE)
    begin(backend, lease, fire_time=FIRE)
    later = begin(backend, lease, fire_time=FIRE + 60)

    assert later.attempts == 1
    assert backend.get_fire(JOB, FIRE).attempts == 2
    assert backend.get_fire(JOB, FIRE + 0.123) is None
    assert backend.get_fire("other-job", FIRE) is None


def test_fire_time_with_milliseconds_round_trips(backend: Backend, timing: Timing):
    lease = acquire_job(backend, timing, "instance-a")

    state = begin(backend, lease, fire_time=FIRE + 0.123)

    assert backend.get_fire(JOB, FIRE + 0.123) == state
    assert backend.get_fire(JOB, FIRE) is None


# -- finish_fire ------------------------------------------------------------------


def test_finish_fire_closes_once(backend: Backend, timing: Timing):
    lease = acquire_job(backend, timing, "instance-a")
    begin(backend, lease)
    first = make_record(JOB, FIRE, Outcome.SUCCEEDED, fencing_token=lease.token)
    second = make_record(JOB, FIRE, Outcome.FAILED, fencing_token=lease.token, error_type="RuntimeError")
    missed = make_record(JOB, FIRE, Outcome.MISSED, reason="no instance was live")

    assert backend.finish_fire(first, lease=lease, keep_s=FIRE_KEEP_S) is True
    assert backend.finish_fire(second, lease=lease, keep_s=FIRE_KEEP_S) is False, "a closed fire time was closed again"
    assert backend.finish_fire(missed, keep_s=FIRE_KEEP_S) is False, "a closed fire time was closed again"

    state = backend.get_fire(JOB, FIRE)
    assert state is not None
    assert state.outcome is Outcome.SUCCEEDED
    assert state.attempts == 1
    assert backend.list_runs(JOB) == [first]


def test_finish_fire_without_lease_closes_skipped_fire_time(backend: Backend):
    skipped = make_record(JOB, FIRE, Outcome.SKIPPED, attempt=0, reason="previous run still going")

    assert backend.finish_fire(skipped, keep_s=FIRE_KEEP_S) is True

    state = backend.get_fire(JOB, FIRE)
    assert state is not None
    assert state.outcome is Outcome.SKIPPED
    assert state.attempts == 0
    assert backend.list_runs(JOB) == [skipped]


def test_finish_fire_from_many_threads_closes_once(backend_factory: BackendFactory):
    backends = [backend_factory(), backend_factory()]
    records = [
        make_record(JOB, FIRE, Outcome.MISSED, instance_id=f"instance-{index}") for index in range(CLOSING_THREADS)
    ]
    results: list[bool | None] = [None] * CLOSING_THREADS
    errors: list[str] = []
    start = threading.Barrier(CLOSING_THREADS, timeout=BARRIER_TIMEOUT_S)

    def close(index: int) -> None:
        try:
            start.wait()
            results[index] = backends[index % 2].finish_fire(records[index], keep_s=FIRE_KEEP_S)
        except Exception as exc:
            errors.append(f"thread {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=close, args=(index,)) for index in range(CLOSING_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert results.count(True) == 1, f"finish_fire returned {results}"
    winner = records[results.index(True)]
    assert backends[0].list_runs(JOB) == [winner]
    state = backends[0].get_fire(JOB, FIRE)
    assert state is not None
    assert state.outcome is Outcome.MISSED


# -- Fencing ----------------------------------------------------------------------


def test_fenced_writes_with_released_lease_raise(backend: Backend, timing: Timing):
    lease = acquire_job(backend, timing, "instance-a")
    begun = begin(backend, lease)
    assert backend.release(lease) is True

    with pytest.raises(LeaseLost) as raised:
        begin(backend, lease)
    assert raised.value.key == JOB
    with pytest.raises(LeaseLost):
        begin(backend, lease, fire_time=FIRE + 60)
    with pytest.raises(LeaseLost):
        backend.finish_fire(make_record(JOB, FIRE), lease=lease, keep_s=FIRE_KEEP_S)

    assert backend.get_fire(JOB, FIRE) == begun
    assert backend.get_fire(JOB, FIRE + 60) is None
    assert backend.list_runs(JOB) == []


def test_fenced_writes_by_expired_holder_raise(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    stale = first.acquire(JOB, timing.ttl_s, holder="instance-a")
    assert stale is not None
    begin(first, stale)
    fresh, _ = acquire_when_free(second, JOB, timing.long_ttl_s, timing.ttl_s + timing.late_tolerance_s)
    assert fresh is not None

    with pytest.raises(LeaseLost):
        begin(first, stale)
    with pytest.raises(LeaseLost):
        first.finish_fire(make_record(JOB, FIRE, instance_id="instance-a"), lease=stale, keep_s=FIRE_KEEP_S)
    state = second.get_fire(JOB, FIRE)
    assert state is not None
    assert (state.attempts, state.token, state.outcome) == (1, stale.token, None)

    assert begin(second, fresh).began_with(fresh.token)
    closing = make_record(JOB, FIRE, instance_id="poller", attempt=2)
    assert second.finish_fire(closing, lease=fresh, keep_s=FIRE_KEEP_S) is True
    assert second.list_runs(JOB) == [closing]


def test_get_fire_of_unknown_fire_time_is_none(backend: Backend):
    assert backend.get_fire(JOB, FIRE) is None
