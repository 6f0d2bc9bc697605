"""Redis-specific tests of the Redis backend, against real ``redis-server`` processes.

Generic contract cases live in the conformance suite. These cover what only Redis has:
URL forms and options, TLS, ACL users, password files, Unix sockets, database numbers,
prefixes, server time, fencing tokens across a restart, error translation and redaction.

Tests that need a server of their own (TLS, ACL, restart, pause) start ``redis-server``
from ``PATH`` and fail without it. The others use ``PLANLAGT_TEST_REDIS_URL`` when
it is set.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from planlagt_conformance.servers import (
    REDIS_URL_ENV,
    RedisServer,
    ServerUnavailable,
    free_port,
    get_redis_url,
    redis_url,
)
from planlagt_redis import RedisBackend, RedisOptions, parse_redis_url

from planlagt_core import connect
from planlagt_core.errors import BackendError, BackendUnavailable, InvalidURL, LeaseLost
from planlagt_core.models import InstanceInfo, Outcome, RunRecord, TriggerRequest
from planlagt_core.url import parse_url

KEEP_S = 3600.0
POLL_DEADLINE_S = 10.0
POLL_INTERVAL_S = 0.02


# -- Helpers and fixtures -------------------------------------------------------------


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


def with_options(url: str, **options: str) -> str:
    """Return ``url`` with query options appended."""
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return url + ("&" if "?" in url else "?") + query


def unique_prefix() -> str:
    return f"test-{secrets.token_hex(6)}"


def run_record(job: str, fire_time: float, outcome: Outcome = Outcome.SUCCEEDED, **fields: Any) -> RunRecord:
    return RunRecord(job=job, fire_time=fire_time, instance_id="i1", outcome=outcome, **fields)


def server_time_s(admin: redis.Redis) -> float:
    seconds, microseconds = admin.time()
    return seconds + microseconds / 1_000_000


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The ``redis-server`` binary; tests that start their own server fail without it."""
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail(
            "redis-server is not on PATH, and this test needs a server it can configure (TLS, ACL, restart); "
            "install it, for example `apt-get install redis-server`"
        )
    return found


@pytest.fixture(scope="module")
def shared_url() -> Iterator[str]:
    """A Redis server for tests that only need some server: the environment URL or a local one."""
    with redis_url() as url:
        yield url


@pytest.fixture
def admin(shared_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the shared server, for reading keys behind the backend's back."""
    client = RedisBackend.from_url(parse_url(shared_url))._client
    yield client
    client.close()


@pytest.fixture
def prefix(admin: redis.Redis) -> Iterator[str]:
    """A fresh key prefix; its keys are deleted after the test."""
    chosen = unique_prefix()
    yield chosen
    doomed = list(admin.scan_iter(match=f"{chosen}:*"))
    if doomed:
        admin.delete(*doomed)


@pytest.fixture
def backend(shared_url: str, prefix: str) -> Iterator[RedisBackend]:
    opened = connect(with_options(shared_url, prefix=prefix))
    assert isinstance(opened, RedisBackend)
    yield opened
    opened.close()


@pytest.fixture
def server(redis_binary: str) -> Iterator[RedisServer]:
    """A plain local server owned by one test (for restarts and pauses)."""
    with RedisServer(binary=redis_binary) as started:
        yield started


# -- URL forms and options (no server) ------------------------------------------------


def options_of(url: str) -> RedisOptions:
    return parse_redis_url(parse_url(url))


@pytest.mark.fast
def test_url_defaults():
    options = options_of("redis://")

    assert options.host == "localhost"
    assert options.port == 6379
    assert options.db == 0
    assert options.prefix == "planlagt"
    assert options.password is None
    assert options.ssl is False


@pytest.mark.fast
def test_url_parts_and_options():
    options = options_of("redis://user:pa%40ss@db.example:6380/3?prefix=app&socket_timeout=1.5&connect_timeout=2")

    assert options.host == "db.example"
    assert options.port == 6380
    assert options.db == 3
    assert options.username == "user"
    assert options.password == "pa@ss"
    assert options.prefix == "app"
    assert options.socket_timeout_s == 1.5
    assert options.connect_timeout_s == 2.0


@pytest.mark.fast
def test_url_db_option_without_path():
    assert options_of("redis://h?db=7").db == 7
    assert options_of("redis://h/7?db=7").db == 7


@pytest.mark.fast
def test_rediss_url_tls_options(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    options = options_of(f"rediss://h:6390?ssl_ca_certs={ca}&ssl_cert_reqs=optional&ssl_check_hostname=false")

    assert options.ssl is True
    assert options.ssl_ca_certs == str(ca)
    assert options.ssl_cert_reqs == "optional"
    assert options.ssl_check_hostname is False
    assert options.client_kwargs()["ssl"] is True


@pytest.mark.fast
def test_rediss_cert_reqs_none_skips_hostname_check():
    options = options_of("rediss://h?ssl_cert_reqs=none")

    assert options.ssl_cert_reqs == "none"
    assert options.ssl_check_hostname is False


@pytest.mark.fast
def test_unix_url():
    options = options_of("unix:///run/redis/redis.sock?db=2&prefix=p")

    assert options.unix_socket_path == "/run/redis/redis.sock"
    assert options.db == 2
    assert options.prefix == "p"
    assert "host" not in options.client_kwargs()


@pytest.mark.fast
def test_unix_url_with_password():
    options = options_of("unix://:secret@/run/redis.sock")

    assert options.unix_socket_path == "/run/redis.sock"
    assert options.password == "secret"


@pytest.mark.fast
def test_password_file_is_read(tmp_path: Path):
    secret_file = tmp_path / "redis-password"
    secret_file.write_text("from-file\n")

    options = options_of(f"redis://h?password_file={secret_file}")

    assert options.password == "from-file"


@pytest.mark.fast
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h?bogus=1", "'bogus'"),
        ("redis://h?db=-1", "'db'"),
        ("redis://h?db=x", "'db'"),
        ("redis://h?socket_timeout=0", "'socket_timeout'"),
        ("redis://h?connect_timeout=soon", "'connect_timeout'"),
        ("redis://h?prefix=", "'prefix'"),
        ("redis://h?ssl_ca_certs=/x.pem", "'ssl_ca_certs'"),
        ("rediss://h?ssl_cert_reqs=maybe", "'ssl_cert_reqs'"),
        ("rediss://h?ssl_check_hostname=perhaps", "'ssl_check_hostname'"),
        ("rediss://h?ssl_ca_certs=/does/not/exist.pem", "file not found"),
        ("rediss://h?ssl_cert_reqs=none&ssl_check_hostname=true", "ssl_check_hostname"),
        ("redis://a:1,b:2", "one host"),
        ("redis://h/abc", "not a database number"),
        ("redis://h/1?db=2", "conflicts"),
        ("unix://h/run/redis.sock", "no host"),
        ("unix://", "socket path"),
        ("unix:///run/redis.sock?ssl_cert_reqs=none", "'ssl_cert_reqs'"),
        ("redis://h?password_file=/does/not/exist", "password_file"),
        ("memcached://h", "not a Redis scheme"),
    ],
)
def test_url_invalid(url: str, expected: str):
    with pytest.raises(InvalidURL) as caught:
        options_of(url)

    assert expected in str(caught.value)


@pytest.mark.fast
def test_url_keyfile_needs_certfile(tmp_path: Path):
    key = tmp_path / "key.pem"
    key.write_text("x")

    with pytest.raises(InvalidURL, match="ssl_certfile"):
        options_of(f"rediss://h?ssl_keyfile={key}")


@pytest.mark.fast
def test_url_password_in_both_places(tmp_path: Path):
    secret_file = tmp_path / "pw"
    secret_file.write_text("a")

    with pytest.raises(InvalidURL, match="not both") as caught:
        options_of(f"redis://:inline-secret@h?password_file={secret_file}")

    assert "inline-secret" not in str(caught.value)


@pytest.mark.fast
def test_connect_builds_without_connecting():
    port = free_port()

    backend = connect(f"redis://:hidden@127.0.0.1:{port}/2?prefix=p")

    assert isinstance(backend, RedisBackend)
    assert backend.prefix == "p"
    assert backend.options.db == 2
    assert backend.client_library == "redis"
    assert set(backend.schemes) == {"redis", "rediss", "unix"}
    backend.close()


@pytest.mark.fast
def test_capabilities_declared():
    capabilities = RedisBackend.capabilities

    assert capabilities.durable_fencing_tokens is True
    assert capabilities.server_clock is True
    assert capabilities.multi_host is True
    assert capabilities.min_ttl_s == 0.01
    assert capabilities.ttl_granularity_s == 0.001


@pytest.mark.fast
def test_backend_without_url_describes_options():
    backend = RedisBackend(RedisOptions(host="h", port=1, db=4, username="u", password="hidden"))

    assert backend.url == "redis://u:***@h:1/4"
    assert "hidden" not in repr(backend)


# -- Server harness -------------------------------------------------------------------


@pytest.mark.fast
def test_harness_prefers_environment_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(REDIS_URL_ENV, "redis://192.0.2.1:1/0")

    with redis_url() as url:
        assert url == "redis://192.0.2.1:1/0"
    assert get_redis_url() == "redis://192.0.2.1:1/0"


@pytest.mark.fast
def test_harness_without_server_names_every_way(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ServerUnavailable) as caught, redis_url():
        pass

    message = str(caught.value)
    assert REDIS_URL_ENV in message
    assert "apt-get install redis-server" in message
    assert "conformance/docker-compose.yml" in message


@pytest.mark.redis
def test_harness_kill_and_start_again(server: RedisServer):
    first_pid = server.pid
    assert first_pid is not None

    server.kill()
    assert server.pid is None
    server.start()

    assert server.pid not in (None, first_pid)
    assert server.client().ping() is True


# -- Basic use through connect() ------------------------------------------------------


@pytest.mark.redis
def test_smoke_through_connect(backend: RedisBackend):
    lease = backend.acquire("job:smoke", 30.0, holder="i1")
    assert lease is not None
    assert backend.acquire("job:smoke", 30.0) is None

    renewed = backend.renew(lease)
    assert renewed.token == lease.token
    info = backend.inspect("job:smoke")
    assert info is not None
    assert info.holder == "i1"
    assert info.token == lease.token

    state = backend.begin_attempt(renewed, "smoke", 1_700_000_000.0, max_attempts=3, keep_s=KEEP_S)
    assert state.began_with(lease.token)
    closed = backend.finish_fire(
        run_record("smoke", 1_700_000_000.0, attempt=1, fencing_token=lease.token), lease=renewed, keep_s=KEEP_S
    )
    assert closed is True
    assert backend.release(renewed) is True
    assert backend.inspect("job:smoke") is None

    members = backend.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)
    assert [member.instance_id for member in members] == ["i1"]


@pytest.mark.redis
def test_keys_all_under_prefix(backend: RedisBackend, admin: redis.Redis, prefix: str):
    lease = backend.acquire("job:a", 30.0)
    assert lease is not None
    backend.begin_attempt(lease, "a", 1_700_000_000.0, max_attempts=1, keep_s=KEEP_S)
    backend.finish_fire(run_record("a", 1_700_000_000.0), lease=lease, keep_s=KEEP_S)
    backend.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)
    backend.announce_jobs("i1", {"a": {"cron": "* * * * *"}})
    backend.set_paused("a", True)
    backend.add_trigger(TriggerRequest("r1", "a", 1_700_000_000.0))

    keys = set(admin.scan_iter(match=f"{prefix}:*"))

    assert f"{prefix}:lease:job:a" in keys
    assert f"{prefix}:token:job:a" in keys
    assert f"{prefix}:fire:a:1700000000000" in keys
    assert f"{prefix}:runs:a" in keys
    assert f"{prefix}:members" in keys
    assert f"{prefix}:jobs:i1" in keys
    assert f"{prefix}:paused" in keys
    assert f"{prefix}:triggers" in keys


@pytest.mark.redis
def test_stored_values_are_json(backend: RedisBackend, admin: redis.Redis, prefix: str):
    lease = backend.acquire("job:j", 30.0, holder="host-1")
    assert lease is not None
    backend.begin_attempt(lease, "j", 1_700_000_000.0, max_attempts=2, keep_s=KEEP_S)

    stored_lease = json.loads(admin.get(f"{prefix}:lease:job:j"))
    stored_fire = json.loads(admin.get(f"{prefix}:fire:j:1700000000000"))

    assert stored_lease == {"owner": lease.owner, "token": lease.token, "holder": "host-1"}
    assert stored_fire == {"attempts": 1, "instance_id": "host-1", "outcome": None, "token": lease.token}


@pytest.mark.redis
def test_unusual_text_round_trips(backend: RedisBackend):
    key = 'job:vær "quoted" \\ back/slash\ttab'
    holder = 'host-ø "1"\n'

    lease = backend.acquire(key, 30.0, holder=holder)
    assert lease is not None
    state = backend.begin_attempt(lease, key, 1_700_000_000.25, max_attempts=1, keep_s=KEEP_S)
    info = backend.inspect(key)

    assert info is not None
    assert info.holder == holder
    assert state.instance_id == holder
    assert backend.get_fire(key, 1_700_000_000.25) == state
    assert backend.renew(lease).token == lease.token


# -- Database numbers and prefixes ----------------------------------------------------


@pytest.mark.redis
def test_database_number_selects_db(shared_url: str, prefix: str):
    if parse_url(shared_url).path.strip("/") or "db=" in shared_url:
        pytest.skip(f"{REDIS_URL_ENV} names a database already")
    db5 = RedisBackend.from_url(parse_url(with_options(shared_url, prefix=prefix, db="5")))
    admin5 = redis.Redis(connection_pool=db5._client.connection_pool)
    admin0 = RedisBackend.from_url(parse_url(shared_url))._client
    try:
        assert db5.acquire("job:db", 30.0) is not None

        assert admin5.exists(f"{prefix}:lease:job:db") == 1
        assert admin0.exists(f"{prefix}:lease:job:db") == 0
    finally:
        admin5.delete(f"{prefix}:lease:job:db", f"{prefix}:token:job:db")
        db5.close()
        admin0.close()


@pytest.mark.redis
def test_prefixes_isolate_everything(shared_url: str, admin: redis.Redis):
    first_prefix, second_prefix = unique_prefix(), unique_prefix()
    first = connect(with_options(shared_url, prefix=first_prefix))
    second = connect(with_options(shared_url, prefix=second_prefix))
    try:
        first_lease = first.acquire("job:same", 30.0)
        second_lease = second.acquire("job:same", 30.0)
        assert first_lease is not None
        assert second_lease is not None

        first.record_run(run_record("same", 1_700_000_000.0))
        first.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)
        first.announce_jobs("i1", {"same": {}})
        first.set_paused("same", True)
        first.add_trigger(TriggerRequest("r1", "same", 1_700_000_000.0))
        first.begin_attempt(first_lease, "same", 1_700_000_000.0, max_attempts=1, keep_s=KEEP_S)

        assert second.list_runs() == []
        assert second.list_instances() == []
        assert second.list_job_definitions() == {}
        assert second.read_control().paused == frozenset()
        assert second.read_control().triggers == ()
        assert second.get_fire("same", 1_700_000_000.0) is None
        assert all(key.startswith(f"{first_prefix}:") for key in admin.scan_iter(match=f"{first_prefix}*"))
    finally:
        for chosen in (first_prefix, second_prefix):
            doomed = list(admin.scan_iter(match=f"{chosen}:*"))
            if doomed:
                admin.delete(*doomed)
        first.close()
        second.close()


# -- Server time ----------------------------------------------------------------------


@pytest.mark.redis
def test_inspect_reports_server_ttl(backend: RedisBackend):
    backend.acquire("job:ttl", 30.0)

    info = backend.inspect("job:ttl")

    assert info is not None
    assert 0 < info.ttl_remaining_s <= 30.0
    assert info.released is False


@pytest.mark.redis
def test_lease_expires_on_server(backend: RedisBackend):
    first = backend.acquire("job:short", 0.2)
    assert first is not None

    second = wait_for(lambda: backend.acquire("job:short", 30.0), "the 0.2 s lease to expire on the server")

    assert second.token > first.token


@pytest.mark.redis
def test_heartbeat_uses_server_time(backend: RedisBackend, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch):
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86_400.0)
    before = server_time_s(admin)

    members = backend.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)

    after = server_time_s(admin)
    assert members[0].last_heartbeat is not None
    assert before <= members[0].last_heartbeat <= after


@pytest.mark.redis
def test_trim_age_uses_server_time(backend: RedisBackend, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch):
    now = server_time_s(admin)
    backend.record_run(run_record("aged", now - 100.0))
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86_400.0)

    kept = backend.trim_runs(max_per_job=10, max_age_s=1000.0)
    assert kept == 0
    assert len(backend.list_runs("aged")) == 1

    deleted = backend.trim_runs(max_per_job=10, max_age_s=50.0)
    assert deleted == 1
    assert backend.list_runs("aged") == []


@pytest.mark.redis
def test_token_tracks_server_microseconds(backend: RedisBackend, admin: redis.Redis):
    before_us = int(server_time_s(admin) * 1_000_000) - 1

    lease = backend.acquire("job:clock", 30.0)

    assert lease is not None
    assert lease.token >= before_us


# -- Fencing tokens -------------------------------------------------------------------


@pytest.mark.redis
def test_tokens_strictly_increase(backend: RedisBackend):
    tokens = []
    for _ in range(50):
        lease = backend.acquire("job:tokens", 30.0)
        assert lease is not None
        tokens.append(lease.token)
        assert backend.release(lease) is True

    assert all(later > earlier for earlier, later in itertools.pairwise(tokens))


@pytest.mark.redis
def test_tokens_increase_after_restart_without_persistence(server: RedisServer):
    backend = connect(server.url)
    try:
        before = backend.acquire("job:restart", 60.0)
        assert before is not None

        server.restart()
        admin = server.client()
        assert admin.dbsize() == 0

        after = backend.acquire("job:restart", 60.0)
        assert after is not None
        assert after.token > before.token
        with pytest.raises(LeaseLost):
            backend.renew(before)
        admin.close()
    finally:
        backend.close()


@pytest.mark.redis
def test_restart_with_persistence_keeps_lease(redis_binary: str):
    with RedisServer(persistence=True, binary=redis_binary) as server:
        backend = connect(server.url)
        try:
            lease = backend.acquire("job:kept", 60.0)
            assert lease is not None

            server.restart()

            assert backend.acquire("job:kept", 60.0) is None
            renewed = backend.renew(lease)
            assert renewed.token == lease.token
            backend.release(renewed)
            later = backend.acquire("job:kept", 60.0)
            assert later is not None
            assert later.token > lease.token
        finally:
            backend.close()


@pytest.mark.redis
def test_release_with_keep_blocks_key(backend: RedisBackend):
    lease = backend.acquire("job:keep", 30.0, holder="i1")
    assert lease is not None

    assert backend.release(lease, keep_s=0.3) is True

    info = backend.inspect("job:keep")
    assert info is not None
    assert info.released is True
    assert info.token == lease.token
    assert info.holder == "i1"
    assert backend.acquire("job:keep", 30.0) is None
    with pytest.raises(LeaseLost) as caught:
        backend.renew(lease)
    assert caught.value.key == "job:keep"
    assert caught.value.token == lease.token
    assert backend.release(lease) is False

    later = wait_for(lambda: backend.acquire("job:keep", 30.0), "the kept key to expire")
    assert later.token > lease.token


# -- Fire state and history -----------------------------------------------------------


@pytest.mark.redis
def test_fire_state_expires_after_keep(backend: RedisBackend, admin: redis.Redis, prefix: str):
    lease = backend.acquire("job:f", 30.0)
    assert lease is not None

    backend.begin_attempt(lease, "f", 1_700_000_000.0, max_attempts=1, keep_s=30.0)

    ttl_ms = admin.pttl(f"{prefix}:fire:f:1700000000000")
    assert 0 < ttl_ms <= 30_000


@pytest.mark.redis
def test_fenced_writes_need_lease(backend: RedisBackend):
    lease = backend.acquire("job:fenced", 30.0)
    assert lease is not None
    backend.release(lease)

    with pytest.raises(LeaseLost) as begin_error:
        backend.begin_attempt(lease, "fenced", 1_700_000_000.0, max_attempts=1, keep_s=KEEP_S)
    with pytest.raises(LeaseLost) as finish_error:
        backend.finish_fire(run_record("fenced", 1_700_000_000.0), lease=lease, keep_s=KEEP_S)

    assert begin_error.value.token == lease.token
    assert finish_error.value.key == "job:fenced"
    assert backend.get_fire("fenced", 1_700_000_000.0) is None
    assert backend.list_runs("fenced") == []


@pytest.mark.redis
def test_trim_keeps_indexes_consistent(backend: RedisBackend, admin: redis.Redis, prefix: str):
    for job in ("a", "b"):
        for offset in range(3):
            backend.record_run(run_record(job, 1_700_000_000.0 + offset))

    deleted = backend.trim_runs(max_per_job=1, max_age_s=10**9)

    assert deleted == 4
    assert [(run.job, run.fire_time) for run in backend.list_runs()] == [
        ("b", 1_700_000_002.0),
        ("a", 1_700_000_002.0),
    ]
    assert admin.zcard(f"{prefix}:runs") == 2


@pytest.mark.redis
def test_equal_fire_times_list_newest_first(backend: RedisBackend):
    for attempt in range(1, 4):
        backend.record_run(run_record("same", 1_700_000_000.0, Outcome.FAILED, attempt=attempt))

    attempts = [run.attempt for run in backend.list_runs("same")]

    assert attempts == [3, 2, 1]


@pytest.mark.redis
def test_invalid_stored_data_raises_backend_error(backend: RedisBackend, admin: redis.Redis, prefix: str):
    admin.set(f"{prefix}:fire:bad:1700000000000", "not json")
    admin.set(f"{prefix}:lease:job:bad", "[1, 2]")

    with pytest.raises(BackendError, match="invalid fire state") as fire_error:
        backend.get_fire("bad", 1_700_000_000.0)
    with pytest.raises(BackendError) as lease_error:
        backend.inspect("job:bad")

    assert not isinstance(fire_error.value, BackendUnavailable)
    assert not isinstance(lease_error.value, BackendUnavailable)


# -- Membership -----------------------------------------------------------------------


@pytest.mark.redis
def test_heartbeat_drops_expired_member_and_jobs(backend: RedisBackend, admin: redis.Redis, prefix: str):
    backend.heartbeat(InstanceInfo("i2", heartbeat_s=0.01), 0.05)
    backend.announce_jobs("i2", {"b": {"cron": "* * * * *"}})

    def only_self() -> bool:
        members = backend.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)
        return [member.instance_id for member in members] == ["i1"]

    wait_for(only_self, "instance i2 to expire")

    assert admin.exists(f"{prefix}:jobs:i2") == 0
    assert admin.hexists(f"{prefix}:instances", "i2") is False
    assert backend.list_job_definitions() == {}


@pytest.mark.redis
def test_heartbeat_is_one_round_trip(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch):
    backend.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)
    sent: list[str] = []
    original = redis.Redis.execute_command

    def counting(client: redis.Redis, *args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return original(client, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counting)

    backend.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)

    assert sent == ["EVALSHA"]


# -- Connections: TLS, ACL, password file, Unix socket --------------------------------


@pytest.mark.redis
def test_tls_with_ca(redis_binary: str):
    with RedisServer(tls=True, binary=redis_binary) as server:
        backend = connect(server.url)
        try:
            assert server.url.startswith("rediss://")
            assert backend.acquire("job:tls", 30.0) is not None
        finally:
            backend.close()


@pytest.mark.redis
def test_tls_without_ca_is_rejected(redis_binary: str):
    with RedisServer(tls=True, binary=redis_binary) as server:
        backend = connect(f"rediss://127.0.0.1:{server.port}")
        unverified = connect(f"rediss://127.0.0.1:{server.port}?ssl_cert_reqs=none")
        try:
            with pytest.raises(BackendUnavailable, match="certificate"):
                backend.acquire("job:tls", 30.0)
            assert unverified.acquire("job:tls", 30.0) is not None
        finally:
            backend.close()
            unverified.close()


@pytest.mark.redis
def test_tls_client_certificate_required(redis_binary: str):
    with RedisServer(tls=True, tls_client_certs=True, binary=redis_binary) as server:
        with_cert = connect(server.url)
        without_cert = connect(f"rediss://127.0.0.1:{server.port}?ssl_ca_certs={server.ca_path}")
        try:
            assert with_cert.acquire("job:mtls", 30.0) is not None
            with pytest.raises(BackendUnavailable):
                without_cert.acquire("job:mtls", 30.0)
        finally:
            with_cert.close()
            without_cert.close()


@pytest.mark.redis
def test_acl_user_and_password(redis_binary: str):
    with RedisServer(acl_user=("scheduler", "acl-secret"), binary=redis_binary) as server:
        backend = connect(server.url)
        anonymous = connect(f"redis://127.0.0.1:{server.port}")
        wrong = connect(f"redis://scheduler:wrong@127.0.0.1:{server.port}")
        try:
            assert server.url.startswith("redis://scheduler:")
            assert backend.acquire("job:acl", 30.0) is not None

            with pytest.raises(BackendError, match="authentication") as anonymous_error:
                anonymous.acquire("job:acl", 30.0)
            with pytest.raises(BackendError, match="authentication") as wrong_error:
                wrong.acquire("job:acl", 30.0)
            assert not isinstance(anonymous_error.value, BackendUnavailable)
            assert not isinstance(wrong_error.value, BackendUnavailable)
        finally:
            for opened in (backend, anonymous, wrong):
                opened.close()


@pytest.mark.redis
def test_acl_missing_permission(redis_binary: str):
    with RedisServer(password="admin-secret", binary=redis_binary) as server:
        admin = server.client()
        admin.acl_setuser("narrow", enabled=True, passwords=["+narrow-secret"], keys=["other:*"], commands=["+@all"])
        backend = connect(f"redis://narrow:narrow-secret@127.0.0.1:{server.port}")
        try:
            with pytest.raises(BackendError, match="permission") as caught:
                backend.acquire("job:acl", 30.0)
            assert not isinstance(caught.value, BackendUnavailable)
        finally:
            backend.close()
            admin.close()


@pytest.mark.redis
def test_password_file(redis_binary: str, tmp_path: Path):
    secret_file = tmp_path / "redis-password"
    secret_file.write_text("file-secret\n")
    with RedisServer(password="file-secret", binary=redis_binary) as server:
        backend = connect(f"redis://127.0.0.1:{server.port}?password_file={secret_file}")
        try:
            assert backend.acquire("job:pwfile", 30.0) is not None
        finally:
            backend.close()


@pytest.mark.redis
def test_unix_socket_with_db(redis_binary: str):
    with RedisServer(unix_socket=True, binary=redis_binary) as server:
        backend = connect(server.url_for(db=2))
        admin = server.client(db=2)
        try:
            assert server.url.startswith("unix:///")
            assert backend.acquire("job:unix", 30.0) is not None
            assert admin.exists("planlagt:lease:job:unix") == 1
        finally:
            backend.close()
            admin.close()


# -- Unreachable servers --------------------------------------------------------------


@pytest.mark.redis
def test_paused_server_is_unavailable_then_recovers(server: RedisServer):
    backend = connect(with_options(server.url, socket_timeout="0.3"))
    try:
        lease = backend.acquire("job:pause", 60.0)
        assert lease is not None

        server.pause()
        try:
            with pytest.raises(BackendUnavailable) as caught:
                backend.renew(lease)
        finally:
            server.resume()

        assert f"127.0.0.1:{server.port}" in str(caught.value)
        assert isinstance(caught.value.__cause__, redis.RedisError)
        assert backend.renew(lease).token == lease.token
    finally:
        backend.close()


@pytest.mark.redis
def test_stopped_server_is_unavailable_then_recovers(server: RedisServer):
    backend = connect(with_options(server.url, connect_timeout="0.5"))
    try:
        assert backend.acquire("job:stop", 60.0) is not None

        server.stop()
        with pytest.raises(BackendUnavailable, match="unavailable"):
            backend.inspect("job:stop")
        server.start()

        assert backend.acquire("job:after", 60.0) is not None
    finally:
        backend.close()


@pytest.mark.redis
def test_closed_backend_rejects_calls(backend: RedisBackend):
    backend.close()
    backend.close()

    with pytest.raises(BackendError, match="closed"):
        backend.inspect("job:closed")


# -- Threads and fork -----------------------------------------------------------------


@pytest.mark.redis
def test_threads_race_for_one_key(backend: RedisBackend):
    start = threading.Barrier(16)
    results: list[object] = []
    lock = threading.Lock()

    def contend() -> None:
        start.wait()
        lease = backend.acquire("job:race", 30.0)
        with lock:
            results.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 16
    assert sum(result is not None for result in results) == 1


@pytest.mark.redis
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_usable_after_fork(backend: RedisBackend):
    parent_lease = backend.acquire("job:parent", 30.0)
    assert parent_lease is not None
    read_end, write_end = os.pipe()

    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            info = backend.inspect("job:parent")
            child_lease = backend.acquire("job:child", 30.0)
            report = {"token": info.token if info else None, "child": child_lease is not None}
            os.write(write_end, json.dumps(report).encode())
            status = 0
        finally:
            os._exit(status)

    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"token": parent_lease.token, "child": True}
    assert backend.renew(parent_lease).token == parent_lease.token
    assert backend.inspect("job:child") is not None


# -- Redaction ------------------------------------------------------------------------


def assert_secret_absent(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


def error_texts(error: BaseException) -> list[str]:
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    if error.__cause__ is not None:
        texts += [str(error.__cause__), repr(error.__cause__)]
    return texts


@pytest.mark.redis
def test_password_never_shown(redis_binary: str, caplog: pytest.LogCaptureFixture):
    sentinel = f"sentinel-{secrets.token_hex(8)}"
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="the-real-password", binary=redis_binary) as server:
        wrong = connect(f"redis://:{sentinel}@127.0.0.1:{server.port}/0?prefix=p")
        with pytest.raises(BackendError) as auth_error:
            wrong.acquire("job:secret", 30.0)
        shown = [repr(wrong), str(wrong), wrong.url, repr(wrong.options), repr(wrong._client)]
        wrong.close()

    unreachable = connect(f"redis://user:{sentinel}@127.0.0.1:{free_port()}?connect_timeout=0.5")
    with pytest.raises(BackendUnavailable) as unavailable_error:
        unreachable.inspect("job:secret")
    unreachable.close()

    with pytest.raises(InvalidURL) as url_error:
        connect(f"redis://:{sentinel}@127.0.0.1:1?bogus=1")

    assert_secret_absent(
        sentinel,
        *shown,
        *error_texts(auth_error.value),
        *error_texts(unavailable_error.value),
        *error_texts(url_error.value),
        caplog.text,
    )
    assert "***" in str(auth_error.value)


@pytest.mark.redis
def test_password_absent_from_logs_of_working_backend(redis_binary: str, caplog: pytest.LogCaptureFixture):
    sentinel = f"sentinel-{secrets.token_hex(8)}"
    caplog.set_level(logging.DEBUG)
    with RedisServer(password=sentinel, binary=redis_binary) as server:
        backend = connect(server.url)
        lease = backend.acquire("job:logged", 30.0)
        assert lease is not None
        backend.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)
        backend.close()

    assert caplog.records
    assert_secret_absent(sentinel, caplog.text, repr(backend), str(backend))


@pytest.mark.redis
def test_password_file_content_never_shown(redis_binary: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    sentinel = f"sentinel-{secrets.token_hex(8)}"
    secret_file = tmp_path / "pw"
    secret_file.write_text(sentinel)
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="another", binary=redis_binary) as server:
        backend = connect(f"redis://127.0.0.1:{server.port}?password_file={secret_file}")
        with pytest.raises(BackendError) as caught:
            backend.acquire("job:secret", 30.0)
        shown = [repr(backend), str(backend), repr(backend.options)]
        backend.close()

    assert_secret_absent(sentinel, *shown, *error_texts(caught.value), caplog.text)
