"""Membership: heartbeats list the live instances, and expired and departed instances drop out."""

from __future__ import annotations

import time
from dataclasses import replace

from planlagt_conformance.cases._support import Timing, make_instance, poll
from planlagt_conformance.plugin import BackendFactory
from planlagt_core.backend import Backend
from planlagt_core.models import InstanceInfo

DAY_S = 24 * 3600.0


def ids(instances: list[InstanceInfo]) -> list[str]:
    return [instance.instance_id for instance in instances]


def test_heartbeat_returns_live_instances_sorted(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    ttl = timing.long_ttl_s
    info_a = make_instance("instance-a", heartbeat_s=ttl / 4)
    info_b = make_instance("instance-b", heartbeat_s=ttl / 4, job_count=5)

    second.heartbeat(info_b, ttl)
    seen = first.heartbeat(info_a, ttl)

    assert ids(seen) == ["instance-a", "instance-b"]
    assert [replace(instance, last_heartbeat=None) for instance in seen] == [info_a, info_b]


def test_heartbeat_sets_last_heartbeat(backend: Backend, timing: Timing):
    ttl = timing.long_ttl_s
    info = make_instance("instance-a", heartbeat_s=ttl / 4)

    (first,) = backend.heartbeat(info, ttl)
    (second,) = backend.heartbeat(info, ttl)

    assert isinstance(first.last_heartbeat, float)
    assert abs(first.last_heartbeat - time.time()) < DAY_S, (
        f"last_heartbeat {first.last_heartbeat} is not Unix time in seconds"
    )
    assert second.last_heartbeat is not None
    assert second.last_heartbeat >= first.last_heartbeat


def test_heartbeat_replaces_instance_info(backend: Backend, timing: Timing):
    ttl = timing.long_ttl_s
    backend.heartbeat(make_instance("instance-a", heartbeat_s=ttl / 4, job_count=2), ttl)

    seen = backend.heartbeat(make_instance("instance-a", heartbeat_s=ttl / 4, job_count=7), ttl)

    assert [(instance.instance_id, instance.job_count) for instance in seen] == [("instance-a", 7)]


def test_list_instances_matches_heartbeat(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    ttl = timing.long_ttl_s
    first.heartbeat(make_instance("instance-b", heartbeat_s=ttl / 4), ttl)
    seen = first.heartbeat(make_instance("instance-a", heartbeat_s=ttl / 4), ttl)

    listed = second.list_instances()

    assert ids(listed) == ids(seen)
    assert [replace(instance, last_heartbeat=None) for instance in listed] == [
        replace(instance, last_heartbeat=None) for instance in seen
    ]
    assert all(instance.last_heartbeat is not None for instance in listed)


def test_leave_removes_instance_at_once(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    ttl = timing.long_ttl_s
    first.heartbeat(make_instance("instance-a", heartbeat_s=ttl / 4), ttl)
    second.heartbeat(make_instance("instance-b", heartbeat_s=ttl / 4), ttl)

    first.leave("instance-a")

    assert ids(second.list_instances()) == ["instance-b"]
    assert ids(second.heartbeat(make_instance("instance-b", heartbeat_s=ttl / 4), ttl)) == ["instance-b"]
    first.leave("instance-a")
    first.leave("never-joined")


def test_expired_instance_dropped_within_ttl(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    started = time.monotonic()
    first.heartbeat(make_instance("instance-a", heartbeat_s=timing.ttl_s / 2), timing.ttl_s)
    second.heartbeat(make_instance("instance-b", heartbeat_s=timing.long_ttl_s / 4), timing.long_ttl_s)

    gone = poll(lambda: "instance-a" not in ids(second.list_instances()), timing.ttl_s + timing.late_tolerance_s + 2)

    elapsed = time.monotonic() - started
    assert gone, f"instance still listed {elapsed:.2f} s after its last heartbeat with TTL {timing.ttl_s} s"
    assert elapsed >= timing.ttl_s - timing.early_slack_s, f"instance dropped {elapsed:.3f} s after its heartbeat"
    assert elapsed <= timing.ttl_s + timing.late_tolerance_s, f"instance dropped only after {elapsed:.3f} s"
    assert ids(second.list_instances()) == ["instance-b"]
