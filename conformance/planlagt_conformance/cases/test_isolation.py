"""Isolation: backends with one prefix share everything, and see nothing of another prefix."""

from __future__ import annotations

from planlagt_conformance.cases._support import (
    BASE_FIRE_TIME,
    FIRE_KEEP_S,
    Timing,
    make_instance,
    make_record,
    require_feature,
)
from planlagt_conformance.plugin import BackendFactory
from planlagt_core.backend import Backend, Capabilities, Feature
from planlagt_core.models import Outcome, TriggerRequest


def test_backends_with_same_prefix_share_state(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    lease = first.acquire("shared", timing.long_ttl_s, holder="first")
    assert lease is not None

    info = second.inspect("shared")

    assert info is not None, (
        "two backends built from the same URL and prefix do not share state, as clients of one "
        "server must; give the suite a URL every client shares (for memory://, name the store: memory://NAME)"
    )
    assert info.token == lease.token
    assert second.acquire("shared", timing.long_ttl_s) is None


def test_prefixes_isolate_leases(backend: Backend, other_prefix_backend: Backend, timing: Timing):
    mine = backend.acquire("report", timing.long_ttl_s, holder="mine")
    assert mine is not None, "a key of a fresh prefix is held: the prefix isolates nothing"

    assert other_prefix_backend.inspect("report") is None
    theirs = other_prefix_backend.acquire("report", timing.long_ttl_s, holder="theirs")
    assert theirs is not None
    assert other_prefix_backend.release(theirs) is True

    info = backend.inspect("report")
    assert info is not None
    assert (info.token, info.holder) == (mine.token, "mine")
    assert backend.renew(mine).token == mine.token


def test_prefixes_isolate_fire_state_and_runs(backend: Backend, other_prefix_backend: Backend, timing: Timing):
    lease = backend.acquire("report", timing.long_ttl_s)
    assert lease is not None, "a key of a fresh prefix is held: the prefix isolates nothing"
    backend.begin_attempt(lease, "report", BASE_FIRE_TIME, max_attempts=3, keep_s=FIRE_KEEP_S)
    record = make_record("report", BASE_FIRE_TIME)
    backend.record_run(record)

    assert other_prefix_backend.get_fire("report", BASE_FIRE_TIME) is None
    assert other_prefix_backend.list_runs() == []
    skipped = make_record("report", BASE_FIRE_TIME, Outcome.SKIPPED, reason="isolated")
    assert other_prefix_backend.finish_fire(skipped, keep_s=FIRE_KEEP_S) is True

    state = backend.get_fire("report", BASE_FIRE_TIME)
    assert state is not None
    assert (state.attempts, state.outcome) == (1, None)
    assert backend.list_runs() == [record]


def test_prefixes_isolate_membership(backend: Backend, other_prefix_backend: Backend, timing: Timing):
    ttl = timing.long_ttl_s
    backend.heartbeat(make_instance("instance-a", heartbeat_s=ttl / 4), ttl)

    assert other_prefix_backend.list_instances() == []
    theirs = other_prefix_backend.heartbeat(make_instance("instance-b", heartbeat_s=ttl / 4), ttl)
    assert [instance.instance_id for instance in theirs] == ["instance-b"]
    other_prefix_backend.leave("instance-a")

    assert [instance.instance_id for instance in backend.list_instances()] == ["instance-a"]


def test_prefixes_isolate_job_registry(
    backend: Backend, other_prefix_backend: Backend, capabilities: Capabilities, timing: Timing
):
    require_feature(capabilities, Feature.JOB_REGISTRY)
    ttl = timing.long_ttl_s
    backend.heartbeat(make_instance("instance-a", heartbeat_s=ttl / 4), ttl)
    backend.announce_jobs("instance-a", {"report": {"schedule": "0 3 * * *"}})
    other_prefix_backend.heartbeat(make_instance("instance-a", heartbeat_s=ttl / 4), ttl)

    assert other_prefix_backend.list_job_definitions() in ({}, {"instance-a": {}})
    other_prefix_backend.announce_jobs("instance-a", {"other": {"schedule": "* * * * *"}})

    assert backend.list_job_definitions() == {"instance-a": {"report": {"schedule": "0 3 * * *"}}}


def test_prefixes_isolate_control(backend: Backend, other_prefix_backend: Backend, capabilities: Capabilities):
    require_feature(capabilities, Feature.CONTROL)
    request = TriggerRequest(request_id="request-1", job="report", requested_at=BASE_FIRE_TIME)
    backend.set_paused("report", True)
    backend.add_trigger(request)

    state = other_prefix_backend.read_control()
    assert state.paused == frozenset()
    assert state.triggers == ()
    assert other_prefix_backend.remove_trigger("request-1") is False
    other_prefix_backend.set_paused("report", False)

    mine = backend.read_control()
    assert mine.paused == frozenset({"report"})
    assert mine.triggers == (request,)
