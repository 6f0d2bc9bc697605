"""PostgreSQL-specific tests of the PostgreSQL backend, against real ``postgres`` and ``pgbouncer`` processes.

Generic contract cases live in the conformance suite. These cover what only PostgreSQL has.
Among them: URL forms and libpq options, schemas and prefixes, passwords and their
redaction, the 64-bit advisory lock keys and their collisions, and one connection per
lease. Also the TTL (a paused or killed holder, a terminated connection), server restarts
and pauses, tables created on first use by several processes at once, the server clock,
and PgBouncer.

The tests start their own server (``initdb`` from the Debian ``postgresql`` package) and
fail without one, because most need a superuser connection or a server they can restart.
NOTE: only PostgreSQL 15 runs here; a server older than 14 is simulated by raising the
version the backend requires, not tested for real.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from planlagt_conformance.cases._workers import backend_spec, run_workers
from planlagt_conformance.postgres_server import (
    PASSWORD_USER,
    POSTGRES_URL_ENV,
    PgBouncerServer,
    PostgresServer,
    find_postgres_bindir,
    get_postgres_url,
    postgres_url,
)
from planlagt_conformance.servers import ServerUnavailable, free_port
from planlagt_postgres import (
    PostgresBackend,
    PostgresOptions,
    ServerTooOld,
    TransactionPoolingError,
    advisory_key,
    parse_postgres_url,
)
from planlagt_postgres import connections as connections_module
from planlagt_postgres.keys import LOCK_NAMESPACE, pg_locks_ids
from psycopg.conninfo import conninfo_to_dict

from planlagt_core import connect
from planlagt_core.backend import Lease, LeaseState
from planlagt_core.clock import SystemClock
from planlagt_core.context import RunContext
from planlagt_core.errors import BackendError, BackendUnavailable, InvalidURL, LeaseLost
from planlagt_core.keeper import LeaseKeeper
from planlagt_core.models import InstanceInfo, Outcome, RunRecord
from planlagt_core.url import parse_url

TTL_S = 1.0
LONG_TTL_S = 60.0
KEEP_S = 3600.0
EXPIRY_TOLERANCE_S = 1.0
"""How much later than its TTL a key may become free: server timer, polling, a loaded machine."""

EARLY_SLACK_S = 0.05
POLL_DEADLINE_S = 15.0
POLL_INTERVAL_S = 0.02
FIRE_TIME = 1_700_000_000.0


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
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return url + ("&" if "?" in url else "?") + query


def unique_prefix() -> str:
    return f"test-{secrets.token_hex(6)}"


def open_backend(url: str, **options: str) -> PostgresBackend:
    backend = connect(with_options(url, **{"prefix": unique_prefix(), **options}))
    assert isinstance(backend, PostgresBackend)
    return backend


def options_of(url: str) -> PostgresOptions:
    return parse_postgres_url(parse_url(url))


def libpq_of(url: str) -> dict[str, Any]:
    return conninfo_to_dict(options_of(url).conninfo())


def run_record(job: str, fire_time: float = FIRE_TIME, outcome: Outcome = Outcome.SUCCEEDED) -> RunRecord:
    return RunRecord(job=job, fire_time=fire_time, instance_id="i1", outcome=outcome)


def lock_session_pid(backend: PostgresBackend, key: str) -> int:
    """Return the server process id recorded for the lease on ``key``."""
    tables = backend.statements().tables
    with backend._connection("test") as connection:
        row = connection.execute(
            psycopg.sql.SQL("SELECT pid FROM {} WHERE prefix = %s AND key = %s").format(tables.leases),
            (backend.prefix, key),
        ).fetchone()
    assert row is not None, f"no lease row for {key!r}"
    return int(row[0])


def terminate(server: PostgresServer, pid: int) -> None:
    with server.admin_connection() as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        wait_for(
            lambda: admin.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (pid,)
            ).fetchone()[0],
            f"server process {pid} to end",
        )


def acquire_when_free(backend: PostgresBackend, key: str, deadline_s: float) -> tuple[Lease, float]:
    """Poll ``acquire`` until it succeeds; return the lease and the monotonic time it returned."""
    lease = wait_for(lambda: backend.acquire(key, LONG_TTL_S), f"key {key!r} to become free", deadline_s)
    return lease, time.monotonic()


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this module's own: the tests restart, pause and administer it."""
    if find_postgres_bindir() is None:
        pytest.fail(
            "initdb and postgres were not found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH), and these "
            "tests need a server they can restart; install PostgreSQL 14 or newer, for example "
            "`apt-get install postgresql`"
        )
    with PostgresServer() as started:
        yield started


@pytest.fixture
def running_server(server: PostgresServer) -> PostgresServer:
    """The module's server, started again if an earlier test left it stopped or paused."""
    if server.pid is None:
        server.start()
    return server


@pytest.fixture
def backend(running_server: PostgresServer) -> Iterator[PostgresBackend]:
    opened = open_backend(running_server.url)
    yield opened
    opened.close()


@pytest.fixture
def other(running_server: PostgresServer, backend: PostgresBackend) -> Iterator[PostgresBackend]:
    """A second client of the same prefix, as another instance would be."""
    opened = open_backend(running_server.url, prefix=backend.prefix)
    yield opened
    opened.close()


# -- URL forms and options (no server) ------------------------------------------------


@pytest.mark.fast
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_url_schemes_build_conninfo(scheme: str):
    parameters = libpq_of(f"{scheme}://alice@db.example:6543/orders")

    assert parameters["host"] == "db.example"
    assert parameters["port"] == "6543"
    assert parameters["user"] == "alice"
    assert parameters["dbname"] == "orders"
    assert parameters["application_name"] == "planlagt"
    assert parameters["keepalives"] == "1"
    assert "password" not in parameters


@pytest.mark.fast
def test_url_libpq_options_pass_through(tmp_path: Path):
    root = tmp_path / "root.pem"
    url = (
        f"postgresql://db.example/orders?sslmode=verify-full&sslrootcert={root}&options=-c%20search_path%3Dapp"
        "&target_session_attrs=read-write&application_name=billing&keepalives_idle=30&connect_timeout=3"
    )

    parameters = libpq_of(url)

    assert parameters["sslmode"] == "verify-full"
    assert parameters["sslrootcert"] == str(root)
    assert parameters["options"] == "-c search_path=app"
    assert parameters["target_session_attrs"] == "read-write"
    assert parameters["application_name"] == "billing"
    assert parameters["keepalives_idle"] == "30"
    assert parameters["connect_timeout"] == "3"


@pytest.mark.fast
def test_url_several_hosts():
    parameters = libpq_of("postgresql://primary.example:5432,standby.example:5433/orders")

    assert parameters["host"] == "primary.example,standby.example"
    assert parameters["port"] == "5432,5433"


@pytest.mark.fast
def test_url_unix_socket_directory():
    assert libpq_of("postgresql://%2Fvar%2Frun%2Fpostgresql/orders")["host"] == "/var/run/postgresql"
    assert libpq_of("postgresql:///orders?host=/tmp/sockets")["host"] == "/tmp/sockets"


@pytest.mark.fast
def test_url_own_options():
    options = options_of(
        "postgres://h/d?prefix=billing&schema=cron&socket_timeout=2.5&connect_timeout=1.5&max_idle_connections=2"
    )

    assert (options.prefix, options.schema) == ("billing", "cron")
    assert (options.socket_timeout_s, options.connect_timeout_s, options.max_idle_connections) == (2.5, 1.5, 2)
    assert conninfo_to_dict(options.conninfo())["connect_timeout"] == "2"
    assert options_of("postgresql://h/d").schema is None


@pytest.mark.fast
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h/d", "not a PostgreSQL scheme"),
        ("postgresql://h/d?bogus=1", "unknown option 'bogus'"),
        ("postgresql://h/d?sslmode=sometimes", "option 'sslmode'"),
        ("postgresql://h/d?schema=bad-name", "option 'schema'"),
        ("postgresql://h/d?dbname=other", "dbname is given both"),
        ("postgresql://h/d?host=other", "host is given both"),
        ("postgresql://h/d?socket_timeout=0", "option 'socket_timeout'"),
        ("postgresql://h/a/b", "not a database name"),
    ],
)
def test_url_invalid(url: str, expected: str):
    with pytest.raises(InvalidURL, match=expected):
        options_of(url)


@pytest.mark.fast
def test_password_file_is_read(tmp_path: Path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n", encoding="utf-8")

    options = options_of(f"postgresql://u@h/d?password_file={secret}")

    assert options.password == "s3cret"
    assert conninfo_to_dict(options.conninfo())["password"] == "s3cret"
    assert "s3cret" not in repr(options)


@pytest.mark.fast
def test_password_in_both_places_rejected(tmp_path: Path):
    secret = tmp_path / "pw"
    secret.write_text("x", encoding="utf-8")

    with pytest.raises(InvalidURL, match="not both") as caught:
        options_of(f"postgresql://u:inline-secret@h/d?password_file={secret}")

    assert "inline-secret" not in str(caught.value)


@pytest.mark.fast
def test_backend_url_is_redacted():
    backend = connect("postgresql://u:hunter2@h:1/d?prefix=p")

    assert backend.url == "postgresql://u:***@h:1/d?prefix=p"
    assert "hunter2" not in repr(backend)
    assert PostgresBackend(PostgresOptions(libpq={"host": "h", "user": "u"}, password="hunter2")).url == (
        "postgresql://u:***@h/"
    )


@pytest.mark.fast
def test_capabilities_declared():
    capabilities = PostgresBackend.capabilities

    assert capabilities.min_ttl_s == 1.0
    assert capabilities.ttl_granularity_s == 0.001
    assert capabilities.durable_fencing_tokens is True
    assert capabilities.session_bound_leases is False
    assert capabilities.multi_host is True
    assert capabilities.server_clock is True
    assert PostgresBackend.schemes == ("postgresql", "postgres")


# -- Advisory lock keys (no server) ----------------------------------------------------


@pytest.mark.fast
def test_advisory_keys_distinct_for_many_names():
    names = [f"job-{index}" for index in range(200_000)]

    keys = {advisory_key(LOCK_NAMESPACE, "public", "planlagt", name) for name in names}

    assert len(keys) == len(names), "two of 200,000 names share an advisory key"
    assert all(-(2**63) <= key < 2**63 for key in keys)


@pytest.mark.fast
def test_advisory_key_depends_on_every_part():
    base = advisory_key(LOCK_NAMESPACE, "public", "planlagt", "report")

    assert advisory_key(LOCK_NAMESPACE, "public", "planlagt", "report") == base
    assert advisory_key(LOCK_NAMESPACE, "other", "planlagt", "report") != base
    assert advisory_key(LOCK_NAMESPACE, "public", "other", "report") != base
    assert advisory_key(LOCK_NAMESPACE, "public", "planlagt", "report2") != base
    assert advisory_key(LOCK_NAMESPACE, "public", "planlagtreport", "") != base


@pytest.mark.fast
def test_pg_locks_ids_split_the_key():
    assert pg_locks_ids(0x0000_0001_0000_0002) == (1, 2)
    assert pg_locks_ids(-1) == (0xFFFF_FFFF, 0xFFFF_FFFF)
    assert pg_locks_ids(-(2**63)) == (0x8000_0000, 0)


# -- Server harness -------------------------------------------------------------------


@pytest.mark.fast
def test_harness_prefers_environment_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(POSTGRES_URL_ENV, "postgresql://u@192.0.2.1:1/d")

    with postgres_url() as url:
        assert url == "postgresql://u@192.0.2.1:1/d"
    assert get_postgres_url() == "postgresql://u@192.0.2.1:1/d"


@pytest.mark.fast
def test_harness_without_binaries_names_every_way(monkeypatch: pytest.MonkeyPatch):
    import planlagt_conformance.postgres_server as harness

    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    monkeypatch.setattr(harness, "find_postgres_bindir", lambda: None)

    with pytest.raises(ServerUnavailable) as caught, postgres_url():
        pass

    message = str(caught.value)
    assert POSTGRES_URL_ENV in message
    assert "apt-get install postgresql" in message
    assert "conformance/docker-compose.yml" in message


@pytest.mark.postgres
def test_harness_runs_as_unprivileged_user(running_server: PostgresServer):
    with running_server.admin_connection() as admin:
        directory = admin.execute("SHOW data_directory").fetchone()[0]

    owner = os.stat(directory).st_uid
    if os.geteuid() == 0:
        assert owner != 0, "the data directory of a server started as root must belong to an unprivileged user"
    assert Path(directory).is_relative_to(running_server.directory)


# -- libpq options against the server ----------------------------------------------------


@pytest.mark.postgres
def test_libpq_options_reach_server(running_server: PostgresServer):
    name = f"planlagt-test-{secrets.token_hex(3)}"
    backend = open_backend(running_server.url, application_name=name, options="-c%20work_mem%3D5MB")
    try:
        lease = backend.acquire("report", LONG_TTL_S)
        assert lease is not None
        held = backend.leases._find(lease)
        assert held is not None
        settings = held.session.connection.execute(
            "SELECT current_setting('application_name'), current_setting('work_mem')"
        ).fetchone()
    finally:
        backend.close()

    assert settings == (name, "5MB")


@pytest.mark.postgres
def test_several_hosts_tried_in_order(running_server: PostgresServer):
    url = f"postgresql://planlagt@127.0.0.1:{free_port()},127.0.0.1:{running_server.port}/planlagt"
    backend = open_backend(url, connect_timeout="2")
    try:
        assert backend.acquire("report", LONG_TTL_S) is not None
    finally:
        backend.close()


@pytest.mark.postgres
def test_sslmode_require_without_tls_fails(running_server: PostgresServer):
    backend = open_backend(running_server.url, sslmode="require")
    try:
        with pytest.raises(BackendError) as caught:
            backend.inspect("report")
    finally:
        backend.close()

    assert "SSL" in str(caught.value)


# -- Tables, schemas and prefixes ------------------------------------------------------


@pytest.mark.postgres
def test_tables_created_in_schema_option(running_server: PostgresServer):
    schema = f"cron_{secrets.token_hex(4)}"
    backend = open_backend(running_server.url, schema=schema)
    try:
        assert backend.acquire("report", LONG_TTL_S) is not None
        backend.record_run(run_record("report"))
    finally:
        backend.close()

    with running_server.admin_connection() as admin:
        tables = {row[0] for row in admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
        count = admin.execute(f"SELECT count(*) FROM {schema}.planlagt_runs").fetchone()[0]
        version = admin.execute(f"SELECT array_agg(version) FROM {schema}.planlagt_schema_version").fetchone()[0]
    assert {"planlagt_leases", "planlagt_fencing_tokens", "planlagt_fires", "planlagt_runs"} <= tables
    assert count == 1
    assert version == [1]


@pytest.mark.postgres
def test_schemas_isolate_everything(running_server: PostgresServer):
    prefix = unique_prefix()
    first = open_backend(running_server.url, prefix=prefix, schema=f"one_{secrets.token_hex(3)}")
    second = open_backend(running_server.url, prefix=prefix, schema=f"two_{secrets.token_hex(3)}")
    try:
        assert first.acquire("report", LONG_TTL_S) is not None
        first.record_run(run_record("report"))
        first.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), LONG_TTL_S)

        assert second.inspect("report") is None
        assert second.acquire("report", LONG_TTL_S) is not None
        assert second.list_runs() == []
        assert second.list_instances() == []
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_rows_carry_prefix(backend: PostgresBackend, running_server: PostgresServer):
    lease = backend.acquire("report", LONG_TTL_S)
    assert lease is not None
    backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=1, keep_s=KEEP_S)

    with running_server.admin_connection() as admin:
        leases = admin.execute("SELECT prefix FROM public.planlagt_leases WHERE key = 'report'").fetchall()
        fires = admin.execute("SELECT prefix FROM public.planlagt_fires WHERE job = 'report'").fetchall()

    assert (backend.prefix,) in leases
    assert (backend.prefix,) in fires


@pytest.mark.postgres
@pytest.mark.parametrize("schema", [None, "fresh_schema"], ids=["search-path", "new-schema"])
def test_first_use_by_processes_on_empty_database(running_server: PostgresServer, tmp_path: Path, schema: str | None):
    database = f"empty_{secrets.token_hex(4)}"
    with running_server.admin_connection("postgres") as admin:
        admin.execute(f'CREATE DATABASE {database} OWNER "planlagt"')
    url = running_server.url_for(database=database) + "?prefix=first-use"
    if schema is not None:
        url += f"&schema={schema}"
    names = [f"process-{index}" for index in range(6)]
    arguments = [
        {"url": url, "backend_spec": backend_spec(PostgresBackend), "name": name, "ttl_s": LONG_TTL_S} for name in names
    ]

    results = run_workers("first_use", arguments, tmp_path)

    assert sum(result["won_shared"] for result in results) == 1
    assert all(result["acquired_own"] for result in results)
    with running_server.admin_connection(database) as admin:
        stored_schema = schema or "public"
        versions = admin.execute(f"SELECT count(*) FROM {stored_schema}.planlagt_schema_version").fetchone()[0]
        runs = admin.execute(f"SELECT count(*) FROM {stored_schema}.planlagt_runs").fetchone()[0]
    assert versions == 1
    assert runs == len(names)


# -- Passwords and redaction -----------------------------------------------------------


def error_texts(error: BaseException) -> list[str]:
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    if error.__cause__ is not None:
        texts += [str(error.__cause__), repr(error.__cause__)]
    return texts


@pytest.mark.postgres
def test_password_user_connects(running_server: PostgresServer, tmp_path: Path):
    secret_file = tmp_path / "pw"
    secret_file.write_text(running_server.password + "\n", encoding="utf-8")
    inline = open_backend(running_server.url_for(PASSWORD_USER, password=running_server.password), schema="pw_inline")
    from_file = open_backend(
        running_server.url_for(PASSWORD_USER) + f"?password_file={secret_file}", schema="pw_inline"
    )
    try:
        lease = inline.acquire("report", LONG_TTL_S)
        assert lease is not None
        info = from_file.inspect("report")
    finally:
        inline.close()
        from_file.close()

    assert info is None, "backends with different prefixes must not see each other's leases"
    assert running_server.password not in inline.url


@pytest.mark.postgres
def test_wrong_password_is_backend_error_without_secret(
    running_server: PostgresServer, caplog: pytest.LogCaptureFixture
):
    sentinel = f"sentinel-{secrets.token_hex(8)}"
    caplog.set_level(logging.DEBUG)
    backend = open_backend(running_server.url_for(PASSWORD_USER, password=sentinel))
    try:
        with pytest.raises(BackendError) as caught:
            backend.acquire("report", LONG_TTL_S)
        shown = [repr(backend), str(backend), backend.url, repr(backend.options)]
    finally:
        backend.close()

    assert not isinstance(caught.value, BackendUnavailable), "a wrong password is not a passing outage"
    assert "authentication failed" in str(caught.value)
    assert "***" in str(caught.value)
    for text in [*shown, *error_texts(caught.value), caplog.text]:
        assert sentinel not in text


@pytest.mark.postgres
def test_unreachable_server_is_unavailable_without_secret():
    sentinel = f"sentinel-{secrets.token_hex(8)}"
    backend = connect(f"postgresql://u:{sentinel}@127.0.0.1:{free_port()}/d?connect_timeout=1")
    try:
        with pytest.raises(BackendUnavailable) as caught:
            backend.inspect("report")
    finally:
        backend.close()

    for text in error_texts(caught.value):
        assert sentinel not in text


# -- One connection per lease, re-entrancy and collisions ------------------------------


@pytest.mark.postgres
def test_two_attempts_in_one_process_never_share_lock(backend: PostgresBackend, other: PostgresBackend):
    lease = backend.acquire("report", LONG_TTL_S)
    assert lease is not None

    assert backend.acquire("report", LONG_TTL_S) is None, "the same backend acquired a held key again"
    assert other.acquire("report", LONG_TTL_S) is None, "a second backend in this process acquired a held key"

    results: list[Lease | None] = []
    threads = [threading.Thread(target=lambda: results.append(backend.acquire("report", LONG_TTL_S))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [None] * 8


@pytest.mark.postgres
def test_reused_connection_holds_no_old_lock(backend: PostgresBackend, other: PostgresBackend):
    first = backend.acquire("alpha", LONG_TTL_S)
    assert first is not None
    assert backend.release(first) is True

    # The released connection goes back to the pool, and the next lease takes it.
    second = backend.acquire("beta", LONG_TTL_S)
    assert second is not None

    taken = other.acquire("alpha", LONG_TTL_S)
    assert taken is not None, "a pooled connection still held the lock of a released lease"
    held = backend.leases._find(second)
    assert held is not None
    locks = held.session.connection.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    ).fetchone()
    assert locks == (1,)


@pytest.mark.postgres
def test_lock_key_matches_pg_locks(backend: PostgresBackend, running_server: PostgresServer):
    lease = backend.acquire("report", LONG_TTL_S)
    assert lease is not None
    pid = lock_session_pid(backend, "report")

    with running_server.admin_connection() as admin:
        row = admin.execute(
            "SELECT classid::bigint, objid::bigint, objsubid FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
            (pid,),
        ).fetchone()

    assert row == (*pg_locks_ids(backend.lock_key("report")), 1)


class CollidingBackend(PostgresBackend):
    """Maps every lease key to one advisory key: the worst collision there can be."""

    def lock_key(self, key: str) -> int:
        return 42


class HighBitsBackend(PostgresBackend):
    """Maps keys to advisory keys that differ only in their high 32 bits."""

    def lock_key(self, key: str) -> int:
        return (len(key) << 32) | 7


@pytest.mark.postgres
def test_collision_never_breaks_mutual_exclusion(running_server: PostgresServer):
    prefix = unique_prefix()
    url = with_options(running_server.url, prefix=prefix)
    first, second = (CollidingBackend.from_url(parse_url(url)) for _ in range(2))
    try:
        alpha = first.acquire("alpha", LONG_TTL_S)
        assert alpha is not None
        assert second.acquire("alpha", LONG_TTL_S) is None
        assert second.acquire("beta", LONG_TTL_S) is None, "colliding keys exclude each other"
        assert first.renew(alpha).token == alpha.token

        assert first.release(alpha) is True
        beta = second.acquire("beta", LONG_TTL_S)
        assert beta is not None
        assert first.acquire("alpha", LONG_TTL_S) is None
        with pytest.raises(LeaseLost):
            first.begin_attempt(alpha, "alpha", FIRE_TIME, max_attempts=1, keep_s=KEEP_S)
        assert second.release(beta) is True

        counts = contend_for_keys([first, second], ["alpha", "beta"], rounds=15)
    finally:
        first.close()
        second.close()

    assert counts == {"alpha": 30, "beta": 30}


def contend_for_keys(backends: list[PostgresBackend], keys: list[str], rounds: int) -> dict[str, int]:
    """Run one thread per (backend, key) that counts under the lease; return each key's count.

    A second holder inside the critical section would lose an update, so a count below
    ``len(backends) * rounds`` shows a break of mutual exclusion.
    """
    counters = dict.fromkeys(keys, 0)
    holders = dict.fromkeys(keys, 0)
    errors: list[str] = []

    def count(backend: PostgresBackend, key: str) -> None:
        try:
            for _ in range(rounds):
                lease = wait_for(lambda: backend.acquire(key, LONG_TTL_S), f"{key!r} to become free")
                holders[key] += 1
                assert holders[key] == 1, f"two holders of {key!r} at once"
                value = counters[key]
                time.sleep(0.001)
                counters[key] = value + 1
                holders[key] -= 1
                assert backend.release(lease) is True
        except Exception as exc:
            errors.append(f"{key}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=count, args=(b, k)) for b in backends for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    return counters


@pytest.mark.postgres
def test_high_bits_of_key_are_used(running_server: PostgresServer):
    backend = HighBitsBackend.from_url(parse_url(with_options(running_server.url, prefix=unique_prefix())))
    try:
        assert backend.acquire("a", LONG_TTL_S) is not None
        assert backend.acquire("bb", LONG_TTL_S) is not None, "keys differing only in the high 32 bits collided"
    finally:
        backend.close()


# -- TTL through idle_session_timeout -------------------------------------------------


@pytest.mark.postgres
def test_lock_session_has_ttl_and_keepalives(backend: PostgresBackend):
    lease = backend.acquire("report", 2.5)
    assert lease is not None
    held = backend.leases._find(lease)
    assert held is not None
    connection = held.session.connection

    settings = dict(
        connection.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('idle_session_timeout', "
            "'idle_in_transaction_session_timeout', 'tcp_keepalives_idle', 'tcp_keepalives_interval')"
        ).fetchall()
    )
    parameters = connection.info.get_parameters()

    assert settings["idle_session_timeout"] == "2500"
    assert settings["idle_in_transaction_session_timeout"] == "2500"
    assert settings["tcp_keepalives_idle"] == "10"
    assert settings["tcp_keepalives_interval"] == "5"
    assert parameters["keepalives"] == "1"
    assert parameters["keepalives_idle"] == "10"

    backend.renew(lease, ttl_s=4.0)
    assert connection.execute("SHOW idle_session_timeout").fetchone() == ("4s",)


@pytest.mark.postgres
def test_released_connection_has_no_ttl(backend: PostgresBackend):
    lease = backend.acquire("report", 2.0)
    assert lease is not None
    held = backend.leases._find(lease)
    assert held is not None
    assert backend.release(lease) is True

    assert held.session.connection.execute("SHOW idle_session_timeout").fetchone() == ("0",)


HOLDER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from planlagt_core import connect
    from planlagt_core.errors import LeaseLost
    backend = connect(sys.argv[1])
    lease = backend.acquire("paused-job", float(sys.argv[2]))
    print(json.dumps({"token": lease.token if lease else None}), flush=True)
    sys.stdin.readline()
    try:
        backend.renew(lease)
        print(json.dumps({"renewed": True}), flush=True)
    except LeaseLost as exc:
        print(json.dumps({"renewed": False, "error": str(exc)}), flush=True)
    backend.close()
    """
)


@pytest.mark.postgres
def test_paused_holder_loses_lease(running_server: PostgresServer, backend: PostgresBackend):
    url = with_options(running_server.url, prefix=backend.prefix)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, url, str(TTL_S)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        acquired = json.loads(holder.stdout.readline())
        started = time.monotonic()
        assert acquired["token"] is not None
        os.kill(holder.pid, signal.SIGSTOP)

        taken, taken_at = acquire_when_free(backend, "paused-job", TTL_S + EXPIRY_TOLERANCE_S + 5)

        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("renew\n")
        holder.stdin.flush()
        renewal = json.loads(holder.stdout.readline())
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()

    elapsed = taken_at - started
    assert elapsed >= TTL_S - EARLY_SLACK_S, f"key of a paused holder was free after {elapsed:.3f} s"
    assert elapsed <= TTL_S + EXPIRY_TOLERANCE_S, f"key of a paused holder was free only after {elapsed:.3f} s"
    assert taken.token > acquired["token"]
    assert renewal["renewed"] is False, "the resumed holder renewed a lease the server had ended"


@pytest.mark.postgres
def test_killed_holder_keeps_key_until_ttl(running_server: PostgresServer, backend: PostgresBackend):
    ttl_s = 2.0
    url = with_options(running_server.url, prefix=backend.prefix)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, url, str(ttl_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        acquired = json.loads(holder.stdout.readline())
        acquired_at = time.monotonic()
        assert acquired["token"] is not None
    finally:
        holder.kill()
        holder.wait()

    # The kernel closed the holder's connection, so the server ended its session and lock at once.
    assert backend.acquire("paused-job", LONG_TTL_S) is None, "a crashed holder's key was free before its TTL"
    info = backend.inspect("paused-job")
    assert info is not None
    assert info.token == acquired["token"]
    taken, taken_at = acquire_when_free(backend, "paused-job", ttl_s + EXPIRY_TOLERANCE_S + 5)
    elapsed = taken_at - acquired_at
    assert elapsed >= ttl_s - EARLY_SLACK_S, f"key of a killed holder was free after {elapsed:.3f} s"
    assert elapsed <= ttl_s + EXPIRY_TOLERANCE_S, f"key of a killed holder was free only after {elapsed:.3f} s"
    assert taken.token > acquired["token"]


@pytest.mark.postgres
def test_terminated_lock_connection_loses_lease(
    backend: PostgresBackend, other: PostgresBackend, running_server: PostgresServer
):
    ttl_s = 2.0
    lease = backend.acquire("report", ttl_s)
    assert lease is not None
    backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=3, keep_s=KEEP_S)
    last_renewal = time.monotonic()

    terminate(running_server, lock_session_pid(backend, "report"))

    with pytest.raises(LeaseLost):
        backend.renew(lease)
    with pytest.raises(LeaseLost):
        backend.renew(lease)
    with pytest.raises(LeaseLost):
        backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=3, keep_s=KEEP_S)
    assert backend.release(lease) is False
    info = other.inspect("report")
    assert info is not None, "the key of a lease whose session ended must stay blocked until its TTL runs out"
    assert (info.token, info.released) == (lease.token, False)
    assert other.acquire("report", LONG_TTL_S) is None

    successor, taken_at = acquire_when_free(other, "report", ttl_s + EXPIRY_TOLERANCE_S + 5)
    assert taken_at - last_renewal <= ttl_s + EXPIRY_TOLERANCE_S
    assert successor.token > lease.token
    state = other.get_fire("report", FIRE_TIME)
    assert state is not None
    assert (state.attempts, state.token) == (1, lease.token)
    assert other.renew(successor).token == successor.token


@pytest.mark.postgres
def test_terminated_connection_fails_fenced_write_before_renewal(
    backend: PostgresBackend, running_server: PostgresServer
):
    lease = backend.acquire("report", LONG_TTL_S)
    assert lease is not None

    terminate(running_server, lock_session_pid(backend, "report"))

    with pytest.raises(LeaseLost):
        backend.finish_fire(run_record("report"), lease=lease, keep_s=KEEP_S)
    assert backend.get_fire("report", FIRE_TIME) is None
    assert backend.list_runs("report") == []


@pytest.mark.postgres
def test_running_job_told_within_one_heartbeat(backend: PostgresBackend, running_server: PostgresServer):
    heartbeat_s = 0.5
    lease = backend.acquire("report", 3 * heartbeat_s)
    assert lease is not None
    context = RunContext(
        job="report",
        fire_time=datetime.fromtimestamp(FIRE_TIME, timezone.utc),
        attempt=1,
        fencing_token=lease.token,
        instance_id="i1",
    )
    keeper = LeaseKeeper(backend, SystemClock(), "i1")
    keeper.add(lease, context, heartbeat_s, None)
    stop = threading.Event()

    def heartbeat_loop() -> None:
        while not stop.is_set():
            due = keeper.tick()
            stop.wait(max(0.01, min(due - time.monotonic(), heartbeat_s)))

    thread = threading.Thread(target=heartbeat_loop)
    thread.start()
    try:
        wait_for(lambda: lock_session_pid(backend, "report"), "the lease row")
        terminated_at = time.monotonic()
        terminate(running_server, lock_session_pid(backend, "report"))
        wait_for(lambda: context.lease_state is LeaseState.LOST, "the job to be told", heartbeat_s + 2)
        told_after = time.monotonic() - terminated_at
    finally:
        stop.set()
        thread.join()

    assert told_after <= heartbeat_s + 0.5, f"the job was told {told_after:.2f} s after its connection ended"
    assert context.stop_requested


# -- Server restart and pause -----------------------------------------------------------


@pytest.mark.postgres
def test_restart_ends_leases_and_keeps_tokens(backend: PostgresBackend, running_server: PostgresServer):
    lease = backend.acquire("report", TTL_S)
    assert lease is not None
    backend.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), LONG_TTL_S)

    running_server.restart()

    with pytest.raises(LeaseLost):
        backend.renew(lease)
    successor, _ = acquire_when_free(backend, "report", TTL_S + EXPIRY_TOLERANCE_S + 5)
    assert successor.token > lease.token, "fencing tokens must keep increasing across a restart"
    assert [instance.instance_id for instance in backend.list_instances()] == ["i1"]


@pytest.mark.postgres
def test_paused_server_is_unavailable_then_recovers(running_server: PostgresServer):
    backend = open_backend(running_server.url, socket_timeout="0.5", connect_timeout="1")
    try:
        lease = backend.acquire("report", TTL_S)
        assert lease is not None
        backend.inspect("report")

        running_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="did not respond"):
                backend.inspect("report")
            waited = time.monotonic() - started
            with pytest.raises(LeaseLost):
                backend.renew(lease)
        finally:
            running_server.resume()

        assert waited < 5, f"inspect() waited {waited:.1f} s with socket_timeout=0.5"
        successor, _ = acquire_when_free(backend, "report", TTL_S + EXPIRY_TOLERANCE_S + 5)
        assert successor.token > lease.token
    finally:
        backend.close()


@pytest.mark.postgres
def test_stopped_server_is_unavailable_then_recovers(running_server: PostgresServer):
    backend = open_backend(running_server.url, connect_timeout="1")
    try:
        assert backend.acquire("report", LONG_TTL_S) is not None

        running_server.stop()
        with pytest.raises(BackendUnavailable, match="unavailable"):
            backend.inspect("report")
        running_server.start()

        assert backend.acquire("after", LONG_TTL_S) is not None
    finally:
        backend.close()


# -- Server clock ------------------------------------------------------------------------


def server_time_s(server: PostgresServer) -> float:
    with server.admin_connection() as admin:
        return float(admin.execute("SELECT extract(epoch FROM now())::float8").fetchone()[0])


@pytest.mark.postgres
def test_expiry_ignores_client_clock(
    backend: PostgresBackend, other: PostgresBackend, running_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
):
    lease = backend.acquire("report", LONG_TTL_S)
    assert lease is not None
    assert backend.release(lease, keep_s=LONG_TTL_S) is True

    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)
    (seen,) = other.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), LONG_TTL_S)

    assert seen.last_heartbeat is not None
    assert abs(seen.last_heartbeat - server_time_s(running_server)) < 60
    assert other.acquire("report", LONG_TTL_S) is None, "a client clock far ahead must not end a keep period"
    info = other.inspect("report")
    assert info is not None
    assert info.released is True
    assert info.ttl_remaining_s is not None and LONG_TTL_S - 10 < info.ttl_remaining_s <= LONG_TTL_S


# -- Closing and forking -------------------------------------------------------------


@pytest.mark.postgres
def test_close_keeps_held_key_blocked_until_ttl(running_server: PostgresServer, other: PostgresBackend):
    holder = open_backend(running_server.url, prefix=other.prefix)
    ttl_s = 2.0
    lease = holder.acquire("report", ttl_s)
    assert lease is not None
    started = time.monotonic()

    holder.close()

    assert other.acquire("report", LONG_TTL_S) is None, "closing the backend freed the key before its TTL"
    taken, taken_at = acquire_when_free(other, "report", ttl_s + EXPIRY_TOLERANCE_S + 5)
    elapsed = taken_at - started
    assert elapsed <= ttl_s + EXPIRY_TOLERANCE_S
    assert taken.token > lease.token


@pytest.mark.postgres
def test_closed_backend_rejects_calls(backend: PostgresBackend):
    backend.close()
    backend.close()

    with pytest.raises(BackendError, match="closed"):
        backend.inspect("report")


@pytest.mark.postgres
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_usable_after_fork(backend: PostgresBackend):
    parent_lease = backend.acquire("parent", LONG_TTL_S)
    assert parent_lease is not None
    read_end, write_end = os.pipe()

    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            info = backend.inspect("parent")
            child_lease = backend.acquire("child", LONG_TTL_S)
            try:
                backend.renew(parent_lease)
                renewed = True
            except LeaseLost:
                renewed = False
            report = {"token": info.token if info else None, "child": child_lease is not None, "renewed": renewed}
            os.write(write_end, json.dumps(report).encode())
            status = 0
        finally:
            os._exit(status)

    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"token": parent_lease.token, "child": True, "renewed": False}
    assert backend.renew(parent_lease).token == parent_lease.token


# -- Servers older than 14 -------------------------------------------------------------


@pytest.mark.postgres
def test_server_older_than_required_rejected(running_server: PostgresServer, monkeypatch: pytest.MonkeyPatch):
    # Only PostgreSQL 15 is installed here, so the required version is raised above it.
    monkeypatch.setattr(connections_module, "MIN_SERVER_VERSION", 990000)
    backend = open_backend(running_server.url)
    try:
        with pytest.raises(ServerTooOld) as caught:
            backend.acquire("report", LONG_TTL_S)
    finally:
        backend.close()

    assert "older than 14" in str(caught.value)
    assert "idle_session_timeout" in str(caught.value)


# -- PgBouncer -------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("pool_size", [1, 2])
def test_pgbouncer_transaction_mode_rejected(running_server: PostgresServer, pool_size: int):
    with PgBouncerServer(running_server, pool_mode="transaction", pool_size=pool_size) as pooler:
        url = with_options(pooler.url, prefix=unique_prefix())
        clients = [connect(url), connect(url)]
        try:
            errors = []
            for client in clients:
                with pytest.raises(TransactionPoolingError) as caught:
                    client.acquire("report", LONG_TTL_S)
                errors.append(str(caught.value))
        finally:
            for client in clients:
                client.close()

    for message in errors:
        assert "transaction or statement mode" in message
        assert "pool_mode = session" in message
        assert f"127.0.0.1:{pooler.port}" in message


@pytest.mark.postgres
def test_pgbouncer_session_mode_works(running_server: PostgresServer):
    with PgBouncerServer(running_server, pool_mode="session", pool_size=20) as pooler:
        url = with_options(pooler.url, prefix=unique_prefix())
        first, second = connect(url), connect(url)
        try:
            lease = first.acquire("report", LONG_TTL_S)
            assert lease is not None
            assert second.acquire("report", LONG_TTL_S) is None
            assert first.begin_attempt(lease, "report", FIRE_TIME, max_attempts=1, keep_s=KEEP_S).began_with(
                lease.token
            )
            assert first.renew(lease).token == lease.token
            assert first.release(lease) is True
            assert second.acquire("report", LONG_TTL_S) is not None
            assert [i.instance_id for i in second.heartbeat(InstanceInfo("i1", heartbeat_s=1.0), 5.0)] == ["i1"]
        finally:
            first.close()
            second.close()


# -- Heartbeat housekeeping -----------------------------------------------------------


@pytest.mark.postgres
def test_heartbeat_deletes_expired_rows(backend: PostgresBackend, running_server: PostgresServer):
    lease = backend.acquire("report", LONG_TTL_S)
    assert lease is not None
    backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=1, keep_s=1.0)
    backend.heartbeat(InstanceInfo("gone", heartbeat_s=0.5), 1.0)
    backend.announce_jobs("gone", {"report": {}})

    wait_for(lambda: backend.get_fire("report", FIRE_TIME) is None, "the fire state to pass its keep time")
    wait_for(lambda: not backend.list_instances(), "the instance to expire")
    backend.heartbeat(InstanceInfo("live", heartbeat_s=1.0), LONG_TTL_S)

    with running_server.admin_connection() as admin:
        fires = admin.execute("SELECT count(*) FROM public.planlagt_fires WHERE prefix = %s", (backend.prefix,))
        instances = admin.execute(
            "SELECT array_agg(instance_id) FROM public.planlagt_instances WHERE prefix = %s", (backend.prefix,)
        )
        definitions = admin.execute(
            "SELECT count(*) FROM public.planlagt_job_definitions WHERE prefix = %s", (backend.prefix,)
        )
        assert fires.fetchone() == (0,)
        assert instances.fetchone() == (["live"],)
        assert definitions.fetchone() == (0,)
