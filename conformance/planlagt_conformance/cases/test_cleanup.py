"""Cleanup: ``close()`` stops helper threads and closes connections, and may be called twice."""

from __future__ import annotations

import threading

from planlagt_conformance.cases._support import BASE_FIRE_TIME, FIRE_KEEP_S, Timing, make_instance, make_record
from planlagt_conformance.plugin import (
    ResourceSnapshot,
    check_no_leaks,
    new_prefix,
    open_backend,
    with_prefix,
)
from planlagt_core.backend import Backend, Capabilities, Feature
from planlagt_core.models import Outcome, TriggerRequest

USING_THREADS = 4


def use_every_operation(backend: Backend, capabilities: Capabilities, timing: Timing, name: str) -> None:
    """Call every operation once, so connections, scripts and helper threads get started."""
    ttl = timing.long_ttl_s
    lease = backend.acquire(f"key-{name}", ttl, holder=name)
    assert lease is not None
    lease = backend.renew(lease)
    backend.inspect(f"key-{name}")
    backend.begin_attempt(lease, f"key-{name}", BASE_FIRE_TIME, max_attempts=1, keep_s=FIRE_KEEP_S)
    backend.finish_fire(make_record(f"key-{name}", BASE_FIRE_TIME), lease=lease, keep_s=FIRE_KEEP_S)
    backend.get_fire(f"key-{name}", BASE_FIRE_TIME)
    backend.record_run(make_record(f"key-{name}", BASE_FIRE_TIME, Outcome.FAILED))
    backend.list_runs()
    keep_s = timing.ttl_s if capabilities.supports(Feature.MIN_HOLD) else 0.0
    backend.release(lease, keep_s=keep_s)

    backend.heartbeat(make_instance(name, heartbeat_s=ttl / 4), ttl)
    backend.list_instances()
    if capabilities.supports(Feature.JOB_REGISTRY):
        backend.announce_jobs(name, {"report": {"schedule": "0 3 * * *"}})
        backend.list_job_definitions()
    if capabilities.supports(Feature.CONTROL):
        backend.set_paused(f"key-{name}", True)
        backend.add_trigger(TriggerRequest(request_id=name, job="report", requested_at=BASE_FIRE_TIME))
        backend.read_control()
        backend.remove_trigger(name)
    if capabilities.supports(Feature.RUN_RETENTION):
        backend.trim_runs(max_per_job=10, max_age_s=3600.0)
    backend.leave(name)


def use_from_threads(backend: Backend, capabilities: Capabilities, timing: Timing) -> list[str]:
    """Use ``backend`` from several threads at once and return the errors raised."""
    errors: list[str] = []

    def use(index: int) -> None:
        try:
            use_every_operation(backend, capabilities, timing, f"thread-{index}")
        except Exception as exc:
            errors.append(f"thread {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=use, args=(index,)) for index in range(USING_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_close_leaves_no_threads_or_connections(backend_url: str, capabilities: Capabilities, timing: Timing):
    baseline = ResourceSnapshot.take()
    backend = open_backend(with_prefix(backend_url, new_prefix(backend_url)))
    try:
        use_every_operation(backend, capabilities, timing, "main")
        errors = use_from_threads(backend, capabilities, timing)
    finally:
        backend.close()

    assert errors == []
    check_no_leaks(baseline)


def test_close_twice_is_harmless(backend_url: str, capabilities: Capabilities, timing: Timing):
    backend = open_backend(with_prefix(backend_url, new_prefix(backend_url)))
    use_every_operation(backend, capabilities, timing, "main")

    backend.close()
    backend.close()


def test_context_manager_closes_backend(backend_url: str, capabilities: Capabilities, timing: Timing):
    baseline = ResourceSnapshot.take()

    with open_backend(with_prefix(backend_url, new_prefix(backend_url))) as backend:
        use_every_operation(backend, capabilities, timing, "main")

    check_no_leaks(baseline)
