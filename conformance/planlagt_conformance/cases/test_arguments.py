"""Invalid arguments raise ``ConfigurationError`` and write nothing, and unusual valid keys work."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from planlagt_conformance.cases._support import (
    BASE_FIRE_TIME,
    FIRE_KEEP_S,
    Timing,
    make_instance,
    make_record,
    require_feature,
)
from planlagt_core.backend import MAX_KEY_LENGTH, Backend, Capabilities, Feature, Lease
from planlagt_core.errors import ConfigurationError
from planlagt_core.models import Outcome, TriggerRequest

INVALID_TTLS = [0, -1.0, math.nan, math.inf]
UNUSUAL_KEYS = ["job", "job*", "job?", "jo[b]", "job:1", "job/1", "{job}", "job%", "job\\", "jøb ü", "job 1", "JOB"]

# A lease object that no backend issued, for calls that must reject their other arguments first.
UNISSUED_LEASE = Lease(key="report", token=1, owner="0" * 32, ttl_s=60.0, valid_until=0.0)

Call = Callable[[Backend, Timing], Any]

EMPTY_KEY_CALLS: dict[str, tuple[Feature | None, Call]] = {
    "acquire": (None, lambda b, t: b.acquire("", t.long_ttl_s)),
    "inspect": (None, lambda b, t: b.inspect("")),
    "begin_attempt": (
        None,
        lambda b, t: b.begin_attempt(UNISSUED_LEASE, "", BASE_FIRE_TIME, max_attempts=1, keep_s=FIRE_KEEP_S),
    ),
    "finish_fire": (None, lambda b, t: b.finish_fire(make_record("", BASE_FIRE_TIME), keep_s=FIRE_KEEP_S)),
    "get_fire": (None, lambda b, t: b.get_fire("", BASE_FIRE_TIME)),
    "record_run": (None, lambda b, t: b.record_run(make_record("", BASE_FIRE_TIME))),
    "list_runs": (None, lambda b, t: b.list_runs("")),
    "heartbeat": (None, lambda b, t: b.heartbeat(make_instance("", heartbeat_s=1.0), t.long_ttl_s)),
    "leave": (None, lambda b, t: b.leave("")),
    "announce_jobs": (Feature.JOB_REGISTRY, lambda b, t: b.announce_jobs("", {})),
    "set_paused": (Feature.CONTROL, lambda b, t: b.set_paused("", True)),
    "add_trigger": (
        Feature.CONTROL,
        lambda b, t: b.add_trigger(TriggerRequest(request_id="", job="report", requested_at=BASE_FIRE_TIME)),
    ),
    "remove_trigger": (Feature.CONTROL, lambda b, t: b.remove_trigger("")),
}


@pytest.mark.parametrize("operation", sorted(EMPTY_KEY_CALLS))
def test_empty_key_rejected(backend: Backend, capabilities: Capabilities, timing: Timing, operation: str):
    feature, call = EMPTY_KEY_CALLS[operation]
    if feature is not None:
        require_feature(capabilities, feature)

    with pytest.raises(ConfigurationError):
        call(backend, timing)


@pytest.mark.parametrize("ttl", INVALID_TTLS, ids=repr)
def test_invalid_ttl_rejected(backend: Backend, timing: Timing, ttl: float):
    lease = backend.acquire("report", timing.long_ttl_s)
    assert lease is not None

    with pytest.raises(ConfigurationError):
        backend.acquire("other", ttl)
    with pytest.raises(ConfigurationError):
        backend.renew(lease, ttl_s=ttl)
    with pytest.raises(ConfigurationError):
        backend.heartbeat(make_instance("instance-a", heartbeat_s=0.1), ttl)

    assert backend.inspect("other") is None
    info = backend.inspect("report")
    assert info is not None
    assert info.token == lease.token, "a rejected renewal must leave the lease as it was"
    assert backend.list_instances() == []


def test_ttl_below_minimum_names_both_values(backend: Backend, capabilities: Capabilities):
    minimum = capabilities.min_ttl_s
    if not minimum > 0:
        pytest.skip("capability min_ttl_s is 0, so no positive TTL is below it")
    below = minimum / 2

    with pytest.raises(ConfigurationError) as raised:
        backend.acquire("report", below)

    assert f"{below}" in str(raised.value)
    assert f"{minimum}" in str(raised.value)
    assert backend.inspect("report") is None


@pytest.mark.parametrize("factor", [1.0, 2.0], ids=["equal", "longer"])
def test_heartbeat_not_below_ttl_rejected(backend: Backend, timing: Timing, factor: float):
    ttl = timing.long_ttl_s

    with pytest.raises(ConfigurationError):
        backend.heartbeat(make_instance("instance-a", heartbeat_s=ttl * factor), ttl)

    assert backend.list_instances() == []


def test_nonpositive_heartbeat_rejected(backend: Backend, timing: Timing):
    with pytest.raises(ConfigurationError):
        backend.heartbeat(make_instance("instance-a", heartbeat_s=0.0), timing.long_ttl_s)

    assert backend.list_instances() == []


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_max_attempts_below_one_rejected(backend: Backend, timing: Timing, max_attempts: int):
    lease = backend.acquire("report", timing.long_ttl_s)
    assert lease is not None

    with pytest.raises(ConfigurationError):
        backend.begin_attempt(lease, "report", BASE_FIRE_TIME, max_attempts=max_attempts, keep_s=FIRE_KEEP_S)

    assert backend.get_fire("report", BASE_FIRE_TIME) is None


@pytest.mark.parametrize("keep_s", [-1.0, math.nan, math.inf], ids=repr)
def test_invalid_release_keep_rejected(backend: Backend, timing: Timing, keep_s: float):
    lease = backend.acquire("report", timing.long_ttl_s)
    assert lease is not None

    with pytest.raises(ConfigurationError):
        backend.release(lease, keep_s=keep_s)

    info = backend.inspect("report")
    assert info is not None
    assert (info.token, info.released) == (lease.token, False)


def test_lease_lost_outcome_cannot_close_fire_time(backend: Backend):
    with pytest.raises(ConfigurationError):
        backend.finish_fire(make_record("report", BASE_FIRE_TIME, Outcome.LEASE_LOST), keep_s=FIRE_KEEP_S)

    assert backend.get_fire("report", BASE_FIRE_TIME) is None
    assert backend.list_runs("report") == []


def test_list_runs_limit_below_one_rejected(backend: Backend):
    with pytest.raises(ConfigurationError):
        backend.list_runs(limit=0)


def test_nul_character_in_key_rejected(backend: Backend, timing: Timing):
    with pytest.raises(ConfigurationError):
        backend.acquire("report\x00", timing.long_ttl_s)
    with pytest.raises(ConfigurationError):
        backend.record_run(make_record("report\x00", BASE_FIRE_TIME))


def test_longest_key_accepted(backend: Backend, timing: Timing):
    key = "k" * MAX_KEY_LENGTH

    lease = backend.acquire(key, timing.long_ttl_s)
    backend.record_run(make_record(key, BASE_FIRE_TIME))

    assert lease is not None
    info = backend.inspect(key)
    assert info is not None
    assert info.token == lease.token
    assert [record.job for record in backend.list_runs(key)] == [key]
    with pytest.raises(ConfigurationError):
        backend.acquire(key + "k", timing.long_ttl_s)


def test_unusual_keys_are_distinct(backend: Backend, timing: Timing):
    leases = {key: backend.acquire(key, timing.long_ttl_s, holder=key) for key in UNUSUAL_KEYS}
    for key in UNUSUAL_KEYS:
        backend.record_run(make_record(key, BASE_FIRE_TIME))

    for key, lease in leases.items():
        assert lease is not None, f"key {key!r} was not free: it collides with another key"
        info = backend.inspect(key)
        assert info is not None
        assert (info.token, info.holder) == (lease.token, key)
        assert [record.job for record in backend.list_runs(key)] == [key], f"run history of {key!r} mixes in others"
