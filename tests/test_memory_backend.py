"""Tests of the ``memory://`` backend: URLs, shared stores, and every operation under a FakeClock."""

from __future__ import annotations

import threading

import pytest
from planlagt_memory import MemoryBackend, clear_shared_stores

from planlagt_core import connect
from planlagt_core.backend import Feature
from planlagt_core.clock import FakeClock
from planlagt_core.errors import ConfigurationError, InvalidURL, LeaseLost
from planlagt_core.models import InstanceInfo, Outcome, RunRecord, TriggerRequest

pytestmark = pytest.mark.fast

START = 1_700_000_000.0
KEEP_S = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock)


@pytest.fixture(autouse=True)
def _forget_named_stores():
    yield
    clear_shared_stores()


def run(job: str, fire_time: float, outcome: Outcome = Outcome.SUCCEEDED, **fields) -> RunRecord:
    return RunRecord(job=job, fire_time=fire_time, instance_id="i1", outcome=outcome, **fields)


def instance(instance_id: str, heartbeat_s: float = 1.0) -> InstanceInfo:
    return InstanceInfo(instance_id=instance_id, hostname="h", pid=1, heartbeat_s=heartbeat_s)


# -- URLs and stores ---------------------------------------------------------------


def test_url_without_name_gets_private_store():
    first = connect("memory://")
    second = connect("memory://")

    assert first.acquire("k", 10.0) is not None
    assert second.acquire("k", 10.0) is not None


def test_url_with_name_shares_store():
    first = connect("memory://shared")
    second = connect("memory://shared")

    assert first.acquire("k", 10.0) is not None
    assert second.acquire("k", 10.0) is None
    assert second.inspect("k") is not None


def test_url_prefix_isolates_within_store():
    first = connect("memory://shared?prefix=app1")
    second = connect("memory://shared?prefix=app2")
    first.set_paused("job", True)

    assert second.acquire("k", 10.0) is not None
    assert first.acquire("k", 10.0) is not None
    assert second.read_control().paused == frozenset()
    assert first.read_control().paused == frozenset({"job"})


def test_url_shows_name_and_prefix():
    backend = connect("memory://shared?prefix=app1")

    assert isinstance(backend, MemoryBackend)
    assert backend.url == "memory://shared?prefix=app1"
    assert backend.name == "shared"
    assert backend.prefix == "app1"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("memory://shared?colour=red", "unknown option 'colour'"),
        ("memory://shared?prefix=", "prefix"),
        ("memory://user:secret@shared", "no user or password"),
        ("memory://shared?password_file=/tmp/x", "no user or password"),
        ("memory://shared:6379", "no port"),
        ("memory://a,b", "one store name"),
        ("memory://shared/path", "no path"),
    ],
)
def test_url_errors_name_the_fault(url: str, fragment: str):
    with pytest.raises(InvalidURL) as caught:
        connect(url)

    assert fragment in str(caught.value)
    assert "secret" not in str(caught.value)


def test_named_store_keeps_its_clock(clock: FakeClock):
    first = MemoryBackend(clock, name="timed")
    from_url = connect("memory://timed")

    assert from_url.clock is clock
    assert first.acquire("k", 1.0) is not None
    clock.advance(1.0)
    assert from_url.acquire("k", 1.0) is not None


def test_named_store_rejects_other_clock(clock: FakeClock):
    MemoryBackend(clock, name="timed")

    with pytest.raises(ConfigurationError, match="another clock"):
        MemoryBackend(FakeClock(), name="timed")


def test_clear_shared_stores_starts_names_empty():
    connect("memory://shared").set_paused("job", True)
    clear_shared_stores()

    assert connect("memory://shared").read_control().paused == frozenset()


def test_capabilities_declare_one_process():
    caps = MemoryBackend.capabilities

    assert caps.multi_process is False
    assert caps.multi_host is False
    assert caps.durable_fencing_tokens is False
    assert caps.features == frozenset(Feature)


# -- Leases --------------------------------------------------------------------------


def test_acquire_blocks_second_caller(backend: MemoryBackend):
    lease = backend.acquire("k", 5.0, holder="i1")

    assert lease is not None
    assert lease.holder == "i1"
    assert backend.acquire("k", 5.0) is None


def test_acquire_tokens_increase(backend: MemoryBackend, clock: FakeClock):
    tokens = []
    for _ in range(3):
        lease = backend.acquire("k", 1.0)
        assert lease is not None
        tokens.append(lease.token)
        clock.advance(1.0)

    assert tokens == sorted(set(tokens))


def test_lease_expires_on_fake_clock(backend: MemoryBackend, clock: FakeClock):
    backend.acquire("k", 5.0)
    clock.advance(4.999)
    assert backend.acquire("k", 5.0) is None

    clock.advance(0.001)
    assert backend.inspect("k") is None
    assert backend.acquire("k", 5.0) is not None


def test_lease_valid_until_uses_store_clock(backend: MemoryBackend, clock: FakeClock):
    clock.advance(7.0)
    lease = backend.acquire("k", 5.0)

    assert lease is not None
    assert lease.valid_until == pytest.approx(12.0)
    assert lease.remaining_s(clock.monotonic()) == pytest.approx(5.0)


def test_renew_restarts_ttl(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("k", 5.0)
    clock.advance(4.0)
    renewed = backend.renew(lease)
    clock.advance(4.0)

    assert renewed.valid_until == pytest.approx(9.0)
    assert backend.acquire("k", 5.0) is None


def test_renew_with_new_ttl(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("k", 5.0)
    renewed = backend.renew(lease, 20.0)
    clock.advance(10.0)

    assert renewed.ttl_s == 20.0
    assert backend.inspect("k") is not None


def test_renew_after_expiry_raises(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("k", 5.0)
    clock.advance(5.0)

    with pytest.raises(LeaseLost) as caught:
        backend.renew(lease)

    assert caught.value.key == "k"
    assert caught.value.token == lease.token


def test_renew_of_stale_holder_leaves_new_holder(backend: MemoryBackend, clock: FakeClock):
    old = backend.acquire("k", 5.0)
    clock.advance(5.0)
    new = backend.acquire("k", 5.0, holder="i2")

    with pytest.raises(LeaseLost):
        backend.renew(old)

    assert backend.release(old) is False
    info = backend.inspect("k")
    assert info is not None
    assert info.token == new.token
    assert info.holder == "i2"


def test_release_frees_key(backend: MemoryBackend):
    lease = backend.acquire("k", 5.0)

    assert backend.release(lease) is True
    assert backend.release(lease) is False
    assert backend.acquire("k", 5.0) is not None


def test_release_with_keep_blocks_key(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("k", 5.0)

    assert backend.release(lease, keep_s=30.0) is True
    info = backend.inspect("k")
    assert info is not None
    assert info.released is True
    assert info.ttl_remaining_s == pytest.approx(30.0)
    assert backend.acquire("k", 5.0) is None
    with pytest.raises(LeaseLost):
        backend.renew(lease)
    assert backend.release(lease) is False

    clock.advance(30.0)
    assert backend.acquire("k", 5.0) is not None


def test_inspect_reports_holder(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("k", 5.0, holder="i1")
    clock.advance(2.0)
    info = backend.inspect("k")

    assert info is not None
    assert info.token == lease.token
    assert info.holder == "i1"
    assert info.ttl_remaining_s == pytest.approx(3.0)
    assert info.released is False
    assert backend.inspect("other") is None


def test_acquire_rejects_short_ttl(backend: MemoryBackend):
    with pytest.raises(ConfigurationError, match="minimum"):
        backend.acquire("k", 0.0001)


def test_acquire_from_threads_has_one_winner(backend: MemoryBackend):
    thread_count = 16
    barrier = threading.Barrier(thread_count)
    winners = []

    def contend() -> None:
        barrier.wait()
        lease = backend.acquire("k", 60.0)
        if lease is not None:
            winners.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(thread_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(winners) == 1


# -- Fire state ----------------------------------------------------------------------


def test_begin_attempt_counts_attempts(backend: MemoryBackend):
    lease = backend.acquire("job", 5.0, holder="i1")

    first = backend.begin_attempt(lease, "job", START, max_attempts=2, keep_s=KEEP_S)
    second = backend.begin_attempt(lease, "job", START, max_attempts=2, keep_s=KEEP_S)
    third = backend.begin_attempt(lease, "job", START, max_attempts=2, keep_s=KEEP_S)

    assert first.attempts == 1
    assert first.began_with(lease.token)
    assert first.instance_id == "i1"
    assert second.attempts == 2
    assert second.began_with(lease.token)
    assert third.attempts == 2
    assert backend.get_fire("job", START) == second


def test_begin_attempt_with_lost_lease_writes_nothing(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("job", 5.0)
    clock.advance(5.0)

    with pytest.raises(LeaseLost):
        backend.begin_attempt(lease, "job", START, max_attempts=3, keep_s=KEEP_S)

    assert backend.get_fire("job", START) is None


def test_finish_fire_closes_once(backend: MemoryBackend):
    lease = backend.acquire("job", 5.0, holder="i1")
    backend.begin_attempt(lease, "job", START, max_attempts=3, keep_s=KEEP_S)

    assert backend.finish_fire(run("job", START, attempt=1), lease=lease, keep_s=KEEP_S) is True
    assert backend.finish_fire(run("job", START, Outcome.FAILED), lease=lease, keep_s=KEEP_S) is False

    state = backend.get_fire("job", START)
    assert state is not None
    assert state.outcome is Outcome.SUCCEEDED
    assert state.attempts == 1
    assert [record.outcome for record in backend.list_runs("job")] == [Outcome.SUCCEEDED]
    after = backend.begin_attempt(lease, "job", START, max_attempts=3, keep_s=KEEP_S)
    assert not after.began_with(lease.token)


def test_finish_fire_fenced_by_lost_lease(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("job", 5.0)
    backend.begin_attempt(lease, "job", START, max_attempts=3, keep_s=KEEP_S)
    clock.advance(5.0)

    with pytest.raises(LeaseLost):
        backend.finish_fire(run("job", START), lease=lease, keep_s=KEEP_S)

    state = backend.get_fire("job", START)
    assert state is not None
    assert state.outcome is None
    assert backend.list_runs("job") == []


def test_finish_fire_without_lease(backend: MemoryBackend):
    assert backend.finish_fire(run("job", START, Outcome.MISSED), keep_s=KEEP_S) is True

    state = backend.get_fire("job", START)
    assert state is not None
    assert state.outcome is Outcome.MISSED
    assert state.attempts == 0


def test_finish_fire_rejects_lease_lost_outcome(backend: MemoryBackend):
    with pytest.raises(ConfigurationError, match="cannot close"):
        backend.finish_fire(run("job", START, Outcome.LEASE_LOST), keep_s=KEEP_S)


def test_fire_state_expires_after_keep(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("job", 100.0)
    backend.begin_attempt(lease, "job", START, max_attempts=3, keep_s=10.0)
    clock.advance(9.0)
    assert backend.get_fire("job", START) is not None

    clock.advance(1.0)
    assert backend.get_fire("job", START) is None


def test_expired_fire_states_are_deleted_on_write(backend: MemoryBackend, clock: FakeClock):
    lease = backend.acquire("job", 100.0)
    for minute in range(5):
        backend.begin_attempt(lease, "job", START + 60 * minute, max_attempts=1, keep_s=10.0)
    clock.advance(10.0)
    backend.begin_attempt(lease, "job", START + 600, max_attempts=1, keep_s=10.0)

    assert len(backend.store.namespace(backend.prefix).fires) == 1


def test_fire_times_keyed_by_millisecond(backend: MemoryBackend):
    lease = backend.acquire("job", 5.0)
    backend.begin_attempt(lease, "job", START + 0.0001, max_attempts=3, keep_s=KEEP_S)

    assert backend.get_fire("job", START) is not None
    assert backend.get_fire("job", START + 0.002) is None
    assert backend.get_fire("other", START) is None


# -- Run history ---------------------------------------------------------------------


def test_list_runs_newest_first_with_bounds(backend: MemoryBackend):
    for minute in range(5):
        backend.record_run(run("a", START + 60 * minute))
    backend.record_run(run("b", START + 30))

    everything = backend.list_runs()
    only_a = backend.list_runs("a", since=START + 60, until=START + 180)

    assert [r.fire_time for r in everything] == [START + s for s in (240, 180, 120, 60, 30, 0)]
    assert [r.fire_time for r in only_a] == [START + 180, START + 120, START + 60]
    assert [r.fire_time for r in backend.list_runs("a", limit=2)] == [START + 240, START + 180]


def test_list_runs_same_fire_time_newest_record_first(backend: MemoryBackend):
    backend.record_run(run("a", START, Outcome.FAILED, attempt=1))
    backend.record_run(run("a", START, Outcome.SUCCEEDED, attempt=2))

    assert [r.attempt for r in backend.list_runs("a")] == [2, 1]


def test_run_record_round_trips(backend: MemoryBackend):
    record = run("a", START, Outcome.FAILED, attempt=2, fencing_token=7, error_type="ValueError", manual=True)
    backend.record_run(record)

    assert backend.list_runs("a") == [record]


def test_trim_runs_by_count_and_age(backend: MemoryBackend, clock: FakeClock):
    for minute in range(5):
        backend.record_run(run("a", START - 60 * minute))
    backend.record_run(run("b", START - 3600))
    backend.record_run(run("b", START))

    deleted = backend.trim_runs(max_per_job=3, max_age_s=1800.0)

    assert deleted == 3
    assert [r.fire_time for r in backend.list_runs("a")] == [START, START - 60, START - 120]
    assert [r.fire_time for r in backend.list_runs("b")] == [START]


# -- Membership and job registry -----------------------------------------------------


def test_heartbeat_returns_live_sorted(backend: MemoryBackend, clock: FakeClock):
    backend.heartbeat(instance("i2"), 5.0)
    clock.advance(1.0)
    live = backend.heartbeat(instance("i1"), 5.0)

    assert [info.instance_id for info in live] == ["i1", "i2"]
    assert live[0].last_heartbeat == START + 1.0
    assert live[1].last_heartbeat == START
    assert backend.list_instances() == live


def test_heartbeat_drops_expired_with_definitions(backend: MemoryBackend, clock: FakeClock):
    backend.heartbeat(instance("old"), 5.0)
    backend.announce_jobs("old", {"job": {"schedule": "* * * * *"}})
    clock.advance(3.0)
    backend.heartbeat(instance("new"), 5.0)
    backend.announce_jobs("new", {"job": {"schedule": "*/5 * * * *"}})
    clock.advance(2.0)

    assert [info.instance_id for info in backend.list_instances()] == ["new"]
    assert backend.list_job_definitions() == {"new": {"job": {"schedule": "*/5 * * * *"}}}
    live = backend.heartbeat(instance("new"), 5.0)
    assert [info.instance_id for info in live] == ["new"]
    assert "old" not in backend.store.namespace(backend.prefix).job_definitions


def test_heartbeat_rejects_interval_not_below_ttl(backend: MemoryBackend):
    with pytest.raises(ConfigurationError, match="heartbeat interval"):
        backend.heartbeat(instance("i1", heartbeat_s=5.0), 5.0)


def test_leave_removes_instance_and_definitions(backend: MemoryBackend):
    backend.heartbeat(instance("i1"), 5.0)
    backend.announce_jobs("i1", {"job": {}})
    backend.leave("i1")

    assert backend.list_instances() == []
    assert backend.list_job_definitions() == {}


def test_announce_jobs_replaces_and_copies(backend: MemoryBackend):
    definitions = {"a": {"schedule": "@hourly"}, "b": {"schedule": "@daily"}}
    backend.heartbeat(instance("i1"), 5.0)
    backend.announce_jobs("i1", definitions)
    definitions["a"]["schedule"] = "changed"
    backend.announce_jobs("i1", {"c": {"schedule": "@weekly"}})
    backend.announce_jobs("i1", {"a": {"schedule": "@hourly"}})

    assert backend.list_job_definitions() == {"i1": {"a": {"schedule": "@hourly"}}}


def test_announce_jobs_rejects_non_json(backend: MemoryBackend):
    with pytest.raises(ConfigurationError, match="not JSON"):
        backend.announce_jobs("i1", {"a": {"when": object()}})


# -- Control state -------------------------------------------------------------------


def test_set_paused_idempotent(backend: MemoryBackend):
    backend.set_paused("a", True)
    backend.set_paused("a", True)
    backend.set_paused("b", True)
    backend.set_paused("b", False)
    backend.set_paused("c", False)

    assert backend.read_control().paused == frozenset({"a"})


def test_triggers_add_once_and_remove(backend: MemoryBackend):
    later = TriggerRequest(request_id="r2", job="a", requested_at=START + 5, requested_by="ops")
    earlier = TriggerRequest(request_id="r1", job="b", requested_at=START)
    backend.add_trigger(later)
    backend.add_trigger(earlier)
    backend.add_trigger(TriggerRequest(request_id="r2", job="a", requested_at=START + 99))

    assert backend.read_control().triggers == (earlier, later)
    assert backend.remove_trigger("r1") is True
    assert backend.remove_trigger("r1") is False
    assert backend.read_control().triggers == (later,)
