"""Job registry (``Feature.JOB_REGISTRY``) and control state (``Feature.CONTROL``)."""

from __future__ import annotations

import threading
import time

import pytest

from planlagt_conformance.cases._support import (
    BARRIER_TIMEOUT_S,
    BASE_FIRE_TIME,
    Timing,
    make_instance,
    poll,
    require_feature,
)
from planlagt_conformance.plugin import BackendFactory
from planlagt_core.backend import Backend, Capabilities, Feature
from planlagt_core.models import TriggerRequest

REMOVING_THREADS = 8

NIGHTLY = {"schedule": "0 3 * * *", "timezone": "Europe/Oslo", "max_attempts": 3, "tags": ["nattlig", "ø"]}
HOURLY = {"schedule": "0 * * * *", "timezone": "UTC", "retry": {"delay_s": 1.5, "enabled": True}, "owner": None}


@pytest.fixture
def registry(backend: Backend, capabilities: Capabilities) -> Backend:
    require_feature(capabilities, Feature.JOB_REGISTRY)
    return backend


@pytest.fixture
def control(backend: Backend, capabilities: Capabilities) -> Backend:
    require_feature(capabilities, Feature.CONTROL)
    return backend


def join(backend: Backend, instance_id: str, ttl_s: float) -> None:
    backend.heartbeat(make_instance(instance_id, heartbeat_s=ttl_s / 4), ttl_s)


def trigger(request_id: str, job: str = "nightly") -> TriggerRequest:
    return TriggerRequest(request_id=request_id, job=job, requested_at=BASE_FIRE_TIME, requested_by="operator")


# -- Job registry -----------------------------------------------------------------


def test_announce_replaces_definitions(registry: Backend, timing: Timing):
    join(registry, "instance-a", timing.long_ttl_s)

    registry.announce_jobs("instance-a", {"nightly": NIGHTLY, "hourly": HOURLY})
    assert registry.list_job_definitions() == {"instance-a": {"nightly": NIGHTLY, "hourly": HOURLY}}

    registry.announce_jobs("instance-a", {"hourly": HOURLY})
    assert registry.list_job_definitions() == {"instance-a": {"hourly": HOURLY}}


def test_definitions_listed_per_live_instance(registry: Backend, backend_factory: BackendFactory, timing: Timing):
    other = backend_factory()
    join(registry, "instance-a", timing.long_ttl_s)
    join(other, "instance-b", timing.long_ttl_s)

    registry.announce_jobs("instance-a", {"nightly": NIGHTLY})
    other.announce_jobs("instance-b", {"nightly": NIGHTLY, "hourly": HOURLY})

    expected = {"instance-a": {"nightly": NIGHTLY}, "instance-b": {"nightly": NIGHTLY, "hourly": HOURLY}}
    assert registry.list_job_definitions() == expected
    assert other.list_job_definitions() == expected


def test_definitions_of_departed_instance_disappear(registry: Backend, timing: Timing):
    join(registry, "instance-a", timing.long_ttl_s)
    join(registry, "instance-b", timing.long_ttl_s)
    registry.announce_jobs("instance-a", {"nightly": NIGHTLY})
    registry.announce_jobs("instance-b", {"hourly": HOURLY})

    registry.leave("instance-a")

    assert registry.list_job_definitions() == {"instance-b": {"hourly": HOURLY}}


def test_definitions_of_expired_instance_disappear(registry: Backend, timing: Timing):
    join(registry, "instance-a", timing.ttl_s)
    join(registry, "instance-b", timing.long_ttl_s)
    registry.announce_jobs("instance-a", {"nightly": NIGHTLY})
    registry.announce_jobs("instance-b", {"hourly": HOURLY})
    started = time.monotonic()

    gone = poll(lambda: "instance-a" not in registry.list_job_definitions(), timing.ttl_s + timing.late_tolerance_s)

    assert gone, f"definitions of an instance still listed {time.monotonic() - started:.2f} s after its TTL began"
    assert registry.list_job_definitions() == {"instance-b": {"hourly": HOURLY}}


# -- Control state ----------------------------------------------------------------


def test_control_state_starts_empty(control: Backend):
    state = control.read_control()

    assert state.paused == frozenset()
    assert state.triggers == ()


def test_pause_and_resume_are_idempotent(control: Backend, backend_factory: BackendFactory):
    observer = backend_factory()

    control.set_paused("nightly", True)
    control.set_paused("nightly", True)
    control.set_paused("hourly", True)
    assert observer.read_control().paused == frozenset({"nightly", "hourly"})

    control.set_paused("nightly", False)
    control.set_paused("nightly", False)
    control.set_paused("never-paused", False)
    assert observer.read_control().paused == frozenset({"hourly"})


def test_add_trigger_is_idempotent_per_request_id(control: Backend, backend_factory: BackendFactory):
    observer = backend_factory()
    first = trigger("request-1")
    second = trigger("request-2", job="hourly")

    control.add_trigger(first)
    control.add_trigger(first)
    control.add_trigger(second)

    triggers = observer.read_control().triggers
    assert sorted(triggers, key=lambda request: request.request_id) == [first, second]


def test_remove_trigger_returns_true_once(control: Backend):
    control.add_trigger(trigger("request-1"))
    control.add_trigger(trigger("request-2"))

    assert control.remove_trigger("request-1") is True
    assert control.remove_trigger("request-1") is False
    assert control.remove_trigger("never-added") is False
    assert [request.request_id for request in control.read_control().triggers] == ["request-2"]


def test_remove_trigger_from_many_threads_once(control: Backend, backend_factory: BackendFactory):
    backends = [control, backend_factory()]
    control.add_trigger(trigger("request-1"))
    results: list[bool | None] = [None] * REMOVING_THREADS
    errors: list[str] = []
    start = threading.Barrier(REMOVING_THREADS, timeout=BARRIER_TIMEOUT_S)

    def remove(index: int) -> None:
        try:
            start.wait()
            results[index] = backends[index % 2].remove_trigger("request-1")
        except Exception as exc:
            errors.append(f"thread {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=remove, args=(index,)) for index in range(REMOVING_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert results.count(True) == 1, f"remove_trigger returned {results}"
    assert control.read_control().triggers == ()
