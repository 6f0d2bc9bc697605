"""Tests of the ``sqlite`` backend: URLs, every operation, and processes sharing one file.

Expiry is tested with short real TTLs, polling for the condition with a deadline. The
``multiprocess`` tests start processes with the ``spawn`` method (fresh interpreters, as
separate programs would be) and, for the fork test, with ``fork``.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from planlagt_sqlite import SQLiteBackend

from planlagt_core import connect
from planlagt_core.backend import Feature
from planlagt_core.errors import BackendError, BackendUnavailable, ConfigurationError, InvalidURL, LeaseLost
from planlagt_core.models import InstanceInfo, Outcome, RunRecord, TriggerRequest

FIRE_TIME = 1_700_000_000.0
KEEP_S = 3600.0
POLL_DEADLINE_S = 10.0
POLL_INTERVAL_S = 0.005
PROCESS_COUNT = 8
ROUND_COUNT = 20
PROCESS_TIMEOUT_S = 120.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it is true; fail the test after ``POLL_DEADLINE_S``."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {POLL_DEADLINE_S} s waiting until {what}")
        time.sleep(POLL_INTERVAL_S)


def run(job: str, fire_time: float, outcome: Outcome = Outcome.SUCCEEDED, **fields) -> RunRecord:
    return RunRecord(job=job, fire_time=fire_time, instance_id="i1", outcome=outcome, **fields)


def instance(instance_id: str, heartbeat_s: float = 0.05) -> InstanceInfo:
    return InstanceInfo(instance_id=instance_id, hostname="h", pid=1, heartbeat_s=heartbeat_s)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "planlagt.db"


@pytest.fixture
def backend(db_path: Path) -> Iterator[SQLiteBackend]:
    opened = SQLiteBackend(db_path)
    yield opened
    opened.close()
    assert opened.connections.open_count == 0


# -- URLs ----------------------------------------------------------------------------


@pytest.mark.fast
def test_url_relative_path_uses_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    backend = connect("sqlite:///data/planlagt.db")

    assert isinstance(backend, SQLiteBackend)
    assert backend.path == str(tmp_path / "data" / "planlagt.db")


@pytest.mark.fast
def test_url_four_slashes_is_absolute(tmp_path: Path):
    backend = connect(f"sqlite:///{tmp_path}/planlagt.db")

    assert isinstance(backend, SQLiteBackend)
    assert backend.path == str(tmp_path / "planlagt.db")
    assert str(tmp_path).startswith("/")


@pytest.mark.fast
def test_url_options_are_applied(tmp_path: Path):
    backend = connect(f"sqlite:///{tmp_path}/x.db?prefix=app1&busy_timeout=0.5")

    assert backend.prefix == "app1"
    assert backend.connections.busy_timeout_s == 0.5
    assert backend.url == f"sqlite:///{tmp_path}/x.db?prefix=app1&busy_timeout=0.5"


@pytest.mark.fast
def test_url_does_not_create_file(tmp_path: Path):
    connect(f"sqlite:///{tmp_path}/x.db")

    assert not (tmp_path / "x.db").exists()


@pytest.mark.fast
@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite://", "path is missing"),
        ("sqlite:///", "path is missing"),
        ("sqlite:///:memory:", "use memory://"),
        ("sqlite://localhost/x.db", "names a file, not a host"),
        ("sqlite://user:secret@/x.db", "no users or passwords"),
        ("sqlite:///x.db?password_file=/etc/secret", "no users or passwords"),
        ("sqlite:///x.db?colour=red", "unknown option 'colour'"),
        ("sqlite:///x.db?busy_timeout=-1", "busy_timeout"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///x.db?prefix=", "prefix"),
        ("sqlite:///data/", "names a directory"),
    ],
)
def test_url_errors_name_the_fault(url: str, fragment: str):
    with pytest.raises(InvalidURL) as caught:
        connect(url)

    assert fragment in str(caught.value)
    assert "secret" not in str(caught.value).replace("password_file=/etc/secret", "")


@pytest.mark.fast
def test_constructor_rejects_bad_busy_timeout(db_path: Path):
    with pytest.raises(ConfigurationError, match="busy_timeout_s"):
        SQLiteBackend(db_path, busy_timeout_s=0)


@pytest.mark.fast
def test_capabilities_declare_one_host():
    caps = SQLiteBackend.capabilities

    assert caps.multi_process is True
    assert caps.multi_host is False
    assert caps.server_clock is True
    assert caps.durable_fencing_tokens is True
    assert caps.features == frozenset(Feature)


# -- File, connections and errors ----------------------------------------------------


@pytest.mark.fast
def test_first_use_creates_wal_file(backend: SQLiteBackend, db_path: Path):
    backend.list_instances()

    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM planlagt_schema_version").fetchall() == [(1,)]
    finally:
        raw.close()


@pytest.mark.fast
def test_durable_tokens_across_reopen(db_path: Path):
    first = SQLiteBackend(db_path)
    lease = first.acquire("k", 60.0)
    first.release(lease)
    first.close()

    second = SQLiteBackend(db_path)
    try:
        again = second.acquire("k", 60.0)
        assert again is not None
        assert again.token == lease.token + 1
    finally:
        second.close()


@pytest.mark.fast
def test_prefix_isolates_in_one_file(db_path: Path):
    app1 = SQLiteBackend(db_path, prefix="app1")
    app2 = SQLiteBackend(db_path, prefix="app2")
    try:
        app1.set_paused("job", True)
        app1.record_run(run("job", FIRE_TIME))
        app1.heartbeat(instance("i1"), 60.0)

        assert app1.acquire("k", 60.0) is not None
        assert app2.acquire("k", 60.0) is not None
        assert app2.read_control().paused == frozenset()
        assert app2.list_runs() == []
        assert app2.list_instances() == []
        assert len(app1.list_runs()) == 1
    finally:
        app1.close()
        app2.close()


@pytest.mark.fast
def test_closed_backend_raises(backend: SQLiteBackend):
    backend.list_instances()
    backend.close()
    backend.close()

    with pytest.raises(BackendError, match="is closed"):
        backend.list_instances()


@pytest.mark.fast
def test_threads_get_own_connections(backend: SQLiteBackend):
    backend.list_instances()
    opened = threading.Event()
    finish = threading.Event()

    def use_backend() -> None:
        backend.list_instances()
        opened.set()
        finish.wait(POLL_DEADLINE_S)

    thread = threading.Thread(target=use_backend)
    thread.start()
    try:
        assert opened.wait(POLL_DEADLINE_S)
        assert backend.connections.open_count == 2
    finally:
        finish.set()
        thread.join()


@pytest.mark.fast
def test_lock_held_past_busy_timeout_is_unavailable(db_path: Path):
    backend = SQLiteBackend(db_path, busy_timeout_s=0.05)
    backend.list_instances()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendUnavailable) as caught:
            backend.acquire("k", 60.0)
        assert "locked" in str(caught.value)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert backend.acquire("k", 60.0) is not None
    backend.close()


@pytest.mark.fast
def test_missing_directory_is_unavailable(tmp_path: Path):
    backend = SQLiteBackend(tmp_path / "missing" / "planlagt.db")

    with pytest.raises(BackendUnavailable) as caught:
        backend.list_instances()

    assert str(tmp_path / "missing" / "planlagt.db") in str(caught.value)
    assert backend.connections.open_count == 0


@pytest.mark.fast
def test_newer_schema_version_is_rejected(db_path: Path):
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE planlagt_schema_version (version INTEGER NOT NULL)")
    raw.execute("INSERT INTO planlagt_schema_version VALUES (99)")
    raw.commit()
    raw.close()
    backend = SQLiteBackend(db_path)

    with pytest.raises(BackendError, match="schema version 99"):
        backend.list_instances()


# -- Leases --------------------------------------------------------------------------


@pytest.mark.fast
def test_acquire_blocks_second_caller(backend: SQLiteBackend):
    lease = backend.acquire("k", 60.0, holder="i1")

    assert lease is not None
    assert lease.holder == "i1"
    assert lease.remaining_s() > 59.0
    assert backend.acquire("k", 60.0) is None


@pytest.mark.fast
def test_lease_expires_and_token_increases(backend: SQLiteBackend):
    first = backend.acquire("k", 0.05)

    wait_until(lambda: backend.inspect("k") is None, "the lease expired")
    second = backend.acquire("k", 60.0)

    assert second is not None
    assert second.token > first.token


@pytest.mark.fast
def test_renew_restarts_ttl(backend: SQLiteBackend):
    lease = backend.acquire("k", 0.5)
    renewed = backend.renew(lease, 60.0)
    info = backend.inspect("k")

    assert renewed.ttl_s == 60.0
    assert renewed.valid_until > lease.valid_until
    assert info is not None
    assert info.ttl_remaining_s > 59.0


@pytest.mark.fast
def test_renew_after_expiry_raises(backend: SQLiteBackend):
    lease = backend.acquire("k", 0.05)
    wait_until(lambda: backend.inspect("k") is None, "the lease expired")

    with pytest.raises(LeaseLost) as caught:
        backend.renew(lease)

    assert caught.value.key == "k"
    assert caught.value.token == lease.token


@pytest.mark.fast
def test_stale_holder_leaves_new_holder(backend: SQLiteBackend):
    old = backend.acquire("k", 0.05)
    wait_until(lambda: backend.inspect("k") is None, "the lease expired")
    new = backend.acquire("k", 60.0, holder="i2")

    with pytest.raises(LeaseLost):
        backend.renew(old)

    assert backend.release(old) is False
    info = backend.inspect("k")
    assert info is not None
    assert info.token == new.token
    assert info.holder == "i2"


@pytest.mark.fast
def test_release_frees_key(backend: SQLiteBackend):
    lease = backend.acquire("k", 60.0)

    assert backend.release(lease) is True
    assert backend.release(lease) is False
    assert backend.inspect("k") is None
    assert backend.acquire("k", 60.0) is not None


@pytest.mark.fast
def test_release_with_keep_blocks_key(backend: SQLiteBackend):
    lease = backend.acquire("k", 60.0)

    assert backend.release(lease, keep_s=0.2) is True
    info = backend.inspect("k")
    assert info is not None
    assert info.released is True
    assert backend.acquire("k", 60.0) is None
    with pytest.raises(LeaseLost):
        backend.renew(lease)
    assert backend.release(lease) is False

    wait_until(lambda: backend.acquire("k", 60.0) is not None, "the kept key was free again")


@pytest.mark.fast
def test_inspect_reports_holder(backend: SQLiteBackend):
    lease = backend.acquire("k", 60.0, holder="i1")
    info = backend.inspect("k")

    assert info is not None
    assert info.token == lease.token
    assert info.holder == "i1"
    assert 0 < info.ttl_remaining_s <= 60.0
    assert info.released is False
    assert backend.inspect("other") is None


@pytest.mark.fast
def test_acquire_rejects_short_ttl(backend: SQLiteBackend):
    with pytest.raises(ConfigurationError, match="minimum"):
        backend.acquire("k", 0.001)


@pytest.mark.fast
def test_acquire_from_threads_has_one_winner(backend: SQLiteBackend):
    thread_count = 16
    barrier = threading.Barrier(thread_count)
    winners = []
    errors = []

    def contend() -> None:
        barrier.wait()
        try:
            lease = backend.acquire("k", 60.0)
        except Exception as exc:  # reported by the assert below
            errors.append(exc)
            return
        if lease is not None:
            winners.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(thread_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(winners) == 1


# -- Fire state ----------------------------------------------------------------------


@pytest.mark.fast
def test_begin_attempt_counts_attempts(backend: SQLiteBackend):
    lease = backend.acquire("job", 60.0, holder="i1")

    first = backend.begin_attempt(lease, "job", FIRE_TIME, max_attempts=2, keep_s=KEEP_S)
    second = backend.begin_attempt(lease, "job", FIRE_TIME, max_attempts=2, keep_s=KEEP_S)
    third = backend.begin_attempt(lease, "job", FIRE_TIME, max_attempts=2, keep_s=KEEP_S)

    assert first.attempts == 1
    assert first.began_with(lease.token)
    assert first.instance_id == "i1"
    assert second.attempts == 2
    assert second.began_with(lease.token)
    assert third == second
    assert backend.get_fire("job", FIRE_TIME) == second


@pytest.mark.fast
def test_begin_attempt_with_lost_lease_writes_nothing(backend: SQLiteBackend):
    lease = backend.acquire("job", 60.0)
    backend.release(lease)

    with pytest.raises(LeaseLost):
        backend.begin_attempt(lease, "job", FIRE_TIME, max_attempts=3, keep_s=KEEP_S)

    assert backend.get_fire("job", FIRE_TIME) is None


@pytest.mark.fast
def test_finish_fire_closes_once(backend: SQLiteBackend):
    lease = backend.acquire("job", 60.0, holder="i1")
    backend.begin_attempt(lease, "job", FIRE_TIME, max_attempts=3, keep_s=KEEP_S)

    assert backend.finish_fire(run("job", FIRE_TIME, attempt=1), lease=lease, keep_s=KEEP_S) is True
    assert backend.finish_fire(run("job", FIRE_TIME, Outcome.FAILED), lease=lease, keep_s=KEEP_S) is False

    state = backend.get_fire("job", FIRE_TIME)
    assert state is not None
    assert state.outcome is Outcome.SUCCEEDED
    assert state.attempts == 1
    assert [record.outcome for record in backend.list_runs("job")] == [Outcome.SUCCEEDED]
    after = backend.begin_attempt(lease, "job", FIRE_TIME, max_attempts=3, keep_s=KEEP_S)
    assert not after.began_with(lease.token)


@pytest.mark.fast
def test_finish_fire_fenced_by_lost_lease(backend: SQLiteBackend):
    lease = backend.acquire("job", 60.0)
    backend.begin_attempt(lease, "job", FIRE_TIME, max_attempts=3, keep_s=KEEP_S)
    backend.release(lease)

    with pytest.raises(LeaseLost):
        backend.finish_fire(run("job", FIRE_TIME), lease=lease, keep_s=KEEP_S)

    state = backend.get_fire("job", FIRE_TIME)
    assert state is not None
    assert state.outcome is None
    assert backend.list_runs("job") == []


@pytest.mark.fast
def test_finish_fire_without_lease(backend: SQLiteBackend):
    assert backend.finish_fire(run("job", FIRE_TIME, Outcome.SKIPPED, reason="paused"), keep_s=KEEP_S) is True

    state = backend.get_fire("job", FIRE_TIME)
    assert state is not None
    assert state.outcome is Outcome.SKIPPED
    assert state.attempts == 0
    assert backend.list_runs("job")[0].reason == "paused"


@pytest.mark.fast
def test_fire_state_expires_after_keep(backend: SQLiteBackend, db_path: Path):
    lease = backend.acquire("job", 60.0)
    backend.begin_attempt(lease, "job", FIRE_TIME, max_attempts=3, keep_s=0.05)

    wait_until(lambda: backend.get_fire("job", FIRE_TIME) is None, "the fire state expired")
    backend.begin_attempt(lease, "job", FIRE_TIME + 60, max_attempts=3, keep_s=KEEP_S)

    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("SELECT fire_ms FROM planlagt_fires").fetchall() == [(int((FIRE_TIME + 60) * 1000),)]
    finally:
        raw.close()


@pytest.mark.fast
def test_fire_times_keyed_by_millisecond(backend: SQLiteBackend):
    lease = backend.acquire("job", 60.0)
    backend.begin_attempt(lease, "job", FIRE_TIME + 0.0001, max_attempts=3, keep_s=KEEP_S)

    assert backend.get_fire("job", FIRE_TIME) is not None
    assert backend.get_fire("job", FIRE_TIME + 0.002) is None
    assert backend.get_fire("other", FIRE_TIME) is None


# -- Run history ---------------------------------------------------------------------


@pytest.mark.fast
def test_list_runs_newest_first_with_bounds(backend: SQLiteBackend):
    for minute in range(5):
        backend.record_run(run("a", FIRE_TIME + 60 * minute))
    backend.record_run(run("b", FIRE_TIME + 30))

    everything = backend.list_runs()
    only_a = backend.list_runs("a", since=FIRE_TIME + 60, until=FIRE_TIME + 180)

    assert [r.fire_time for r in everything] == [FIRE_TIME + s for s in (240, 180, 120, 60, 30, 0)]
    assert [r.fire_time for r in only_a] == [FIRE_TIME + 180, FIRE_TIME + 120, FIRE_TIME + 60]
    assert [r.fire_time for r in backend.list_runs("a", limit=2)] == [FIRE_TIME + 240, FIRE_TIME + 180]


@pytest.mark.fast
def test_list_runs_same_fire_time_newest_record_first(backend: SQLiteBackend):
    backend.record_run(run("a", FIRE_TIME, Outcome.FAILED, attempt=1))
    backend.record_run(run("a", FIRE_TIME, Outcome.SUCCEEDED, attempt=2))

    assert [r.attempt for r in backend.list_runs("a")] == [2, 1]


@pytest.mark.fast
def test_run_record_round_trips(backend: SQLiteBackend):
    record = run("a", FIRE_TIME, Outcome.FAILED, attempt=2, fencing_token=7, error_message="ünïcode", manual=True)
    backend.record_run(record)

    assert backend.list_runs("a") == [record]


@pytest.mark.fast
def test_trim_runs_by_count_and_age(backend: SQLiteBackend):
    now = time.time()
    for minute in range(5):
        backend.record_run(run("a", now - 60 * minute))
    backend.record_run(run("b", now - 7200))
    backend.record_run(run("b", now))

    deleted = backend.trim_runs(max_per_job=3, max_age_s=3600.0)

    assert deleted == 3
    assert [r.fire_time for r in backend.list_runs("a")] == [now, now - 60, now - 120]
    assert [r.fire_time for r in backend.list_runs("b")] == [now]


# -- Membership and job registry -----------------------------------------------------


@pytest.mark.fast
def test_heartbeat_returns_live_sorted(backend: SQLiteBackend):
    before = time.time()
    backend.heartbeat(instance("i2"), 60.0)
    live = backend.heartbeat(instance("i1"), 60.0)

    assert [info.instance_id for info in live] == ["i1", "i2"]
    assert all(before <= info.last_heartbeat <= time.time() for info in live)
    assert backend.list_instances() == live


@pytest.mark.fast
def test_heartbeat_drops_expired_with_definitions(backend: SQLiteBackend, db_path: Path):
    backend.heartbeat(instance("old"), 0.1)
    backend.announce_jobs("old", {"job": {"schedule": "* * * * *"}})
    backend.heartbeat(instance("new"), 60.0)
    backend.announce_jobs("new", {"job": {"schedule": "*/5 * * * *"}})

    wait_until(lambda: len(backend.list_instances()) == 1, "the old instance expired")
    assert backend.list_job_definitions() == {"new": {"job": {"schedule": "*/5 * * * *"}}}
    live = backend.heartbeat(instance("new"), 60.0)

    assert [info.instance_id for info in live] == ["new"]
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("SELECT instance_id FROM planlagt_job_definitions").fetchall() == [("new",)]
    finally:
        raw.close()


@pytest.mark.fast
def test_leave_removes_instance_and_definitions(backend: SQLiteBackend):
    backend.heartbeat(instance("i1"), 60.0)
    backend.announce_jobs("i1", {"job": {}})
    backend.leave("i1")

    assert backend.list_instances() == []
    assert backend.list_job_definitions() == {}


@pytest.mark.fast
def test_announce_jobs_replaces(backend: SQLiteBackend):
    backend.heartbeat(instance("i1"), 60.0)
    backend.announce_jobs("i1", {"a": {"schedule": "@hourly"}, "b": {"schedule": "@daily"}})
    backend.announce_jobs("i1", {"c": {"schedule": "@weekly", "tags": ["x", 1]}})

    assert backend.list_job_definitions() == {"i1": {"c": {"schedule": "@weekly", "tags": ["x", 1]}}}


@pytest.mark.fast
def test_announce_jobs_rejects_non_json(backend: SQLiteBackend):
    with pytest.raises(ConfigurationError, match="not JSON"):
        backend.announce_jobs("i1", {"a": {"when": object()}})


# -- Control state -------------------------------------------------------------------


@pytest.mark.fast
def test_set_paused_idempotent(backend: SQLiteBackend):
    backend.set_paused("a", True)
    backend.set_paused("a", True)
    backend.set_paused("b", True)
    backend.set_paused("b", False)
    backend.set_paused("c", False)

    assert backend.read_control().paused == frozenset({"a"})


@pytest.mark.fast
def test_triggers_add_once_and_remove(backend: SQLiteBackend):
    later = TriggerRequest(request_id="r2", job="a", requested_at=FIRE_TIME + 5, requested_by="ops")
    earlier = TriggerRequest(request_id="r1", job="b", requested_at=FIRE_TIME)
    backend.add_trigger(later)
    backend.add_trigger(earlier)
    backend.add_trigger(TriggerRequest(request_id="r2", job="a", requested_at=FIRE_TIME + 99))

    assert backend.read_control().triggers == (earlier, later)
    assert backend.remove_trigger("r1") is True
    assert backend.remove_trigger("r1") is False
    assert backend.read_control().triggers == (later,)


# -- Several processes ---------------------------------------------------------------
# The worker functions are module-level so that spawned processes can import them.


def _contend_in_rounds(path: str, barrier, results, rounds: int) -> None:
    """Try to acquire one key in every round; the winner releases it after the round."""
    backend = SQLiteBackend(path, busy_timeout_s=30.0)
    try:
        for round_number in range(rounds):
            barrier.wait()
            lease = backend.acquire("shared", 60.0, holder=str(os.getpid()))
            results.put((round_number, os.getpid(), None if lease is None else lease.token))
            barrier.wait()
            if lease is not None:
                backend.release(lease)
    finally:
        backend.close()


def _start_on_new_file(path: str, barrier, results, index: int) -> None:
    """Use a file no process has prepared yet, all processes at once."""
    backend = SQLiteBackend(path, busy_timeout_s=30.0)
    try:
        barrier.wait()
        lease = backend.acquire(f"key-{index}", 60.0)
        backend.heartbeat(InstanceInfo(instance_id=f"i{index}", heartbeat_s=1.0), 60.0)
        results.put((index, None if lease is None else lease.token))
    finally:
        backend.close()


def _run_processes(target: Callable[..., None], args_for: Callable[[int], tuple], context) -> None:
    processes = [context.Process(target=target, args=args_for(index)) for index in range(PROCESS_COUNT)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(PROCESS_TIMEOUT_S)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert [process.exitcode for process in processes] == [0] * PROCESS_COUNT


def _drain(results, count: int) -> list[tuple]:
    return [results.get(timeout=PROCESS_TIMEOUT_S) for _ in range(count)]


@pytest.mark.multiprocess
def test_processes_one_winner_per_round(db_path: Path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESS_COUNT, timeout=PROCESS_TIMEOUT_S)
    results = context.Queue()

    _run_processes(_contend_in_rounds, lambda _: (str(db_path), barrier, results, ROUND_COUNT), context)
    outcomes = _drain(results, PROCESS_COUNT * ROUND_COUNT)

    for round_number in range(ROUND_COUNT):
        tokens = [token for number, _, token in outcomes if number == round_number and token is not None]
        assert len(tokens) == 1, f"round {round_number} had {len(tokens)} winners"
    winning_tokens = sorted(token for _, _, token in outcomes if token is not None)
    assert winning_tokens == list(range(1, ROUND_COUNT + 1))


@pytest.mark.multiprocess
def test_processes_prepare_new_file_at_once(db_path: Path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESS_COUNT, timeout=PROCESS_TIMEOUT_S)
    results = context.Queue()

    _run_processes(_start_on_new_file, lambda index: (str(db_path), barrier, results, index), context)
    outcomes = _drain(results, PROCESS_COUNT)

    assert sorted(outcomes) == [(index, 1) for index in range(PROCESS_COUNT)]
    reader = SQLiteBackend(db_path)
    try:
        assert len(reader.list_instances()) == PROCESS_COUNT
    finally:
        reader.close()
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM planlagt_schema_version").fetchall() == [(1,)]
    finally:
        raw.close()


def _use_inherited_backend(backend: SQLiteBackend, results) -> None:
    lease = backend.acquire("child", 60.0)
    results.put((lease is not None, backend.connections.open_count))
    backend.close()


@pytest.mark.multiprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_opens_own_connection(backend: SQLiteBackend):
    backend.acquire("parent", 60.0)
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    child = context.Process(target=_use_inherited_backend, args=(backend, results))
    child.start()
    acquired, child_open_count = results.get(timeout=PROCESS_TIMEOUT_S)
    child.join(PROCESS_TIMEOUT_S)

    assert child.exitcode == 0
    assert acquired is True
    assert child_open_count == 1
    assert backend.inspect("child") is not None
    assert backend.acquire("parent", 60.0) is None
    assert backend.connections.open_count == 1
