"""etcd-specific tests of the etcd backend, against real ``etcd`` processes.

Generic contract cases live in the conformance suite. These cover what only etcd has:
URL forms and options, TLS, users and roles, the minimum lease TTL, and prefixes. They
also cover fencing tokens from revisions across a restart, leases revoked rather than
leaked, connection loss, failover in a three-member cluster, and redaction.

Tests that need a server of their own (TLS, authentication, restart, pause, lease counts,
a cluster) start ``etcd`` from ``PATH`` and fail without it. The others use
``PLANLAGT_TEST_ETCD_URL`` when it is set.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from planlagt_conformance.etcd_server import (
    ETCD_URL_ENV,
    EtcdCluster,
    EtcdServer,
    etcd_url,
    get_etcd_url,
    write_certificates,
)
from planlagt_conformance.servers import ServerUnavailable, free_port
from planlagt_etcd import EtcdBackend, EtcdOptions, parse_etcd_url
from planlagt_etcd.keys import KeyLayout, range_end, sortable_ms

from planlagt_core import connect
from planlagt_core.backend import LeaseState
from planlagt_core.errors import BackendError, BackendUnavailable, ConfigurationError, InvalidURL, LeaseLost
from planlagt_core.models import InstanceInfo, Outcome, RunRecord, TriggerRequest
from planlagt_core.scheduler import Scheduler
from planlagt_core.url import parse_url

pytestmark = pytest.mark.etcd

KEEP_S = 3600.0
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
    """Return ``url`` with query options appended."""
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return url + ("&" if "?" in url else "?") + query


def unique_prefix() -> str:
    return f"test-{secrets.token_hex(6)}"


def open_backend(url: str) -> EtcdBackend:
    backend = connect(url)
    assert isinstance(backend, EtcdBackend)
    return backend


def instance(instance_id: str, heartbeat_s: float = 0.5) -> InstanceInfo:
    return InstanceInfo(instance_id=instance_id, hostname="h", pid=1, heartbeat_s=heartbeat_s)


def run_record(job: str, fire_time: float, outcome: Outcome = Outcome.SUCCEEDED, **fields: Any) -> RunRecord:
    return RunRecord(job=job, fire_time=fire_time, instance_id="i1", outcome=outcome, **fields)


def renew_or_lost(backend: EtcdBackend, lease: Any) -> str:
    """Return ``held``, ``unavailable`` or ``lost`` for one renewal attempt."""
    try:
        backend.renew(lease)
    except LeaseLost:
        return "lost"
    except BackendUnavailable:
        return "unavailable"
    return "held"


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    """The ``etcd`` binary; tests that start their own server fail without it."""
    found = shutil.which("etcd")
    if found is None:
        pytest.fail(
            "etcd is not on PATH, and this test needs a server it can configure (TLS, users, restart, cluster); "
            "install it, for example `apt-get install etcd-server`"
        )
    return found


@pytest.fixture(scope="module")
def shared_url() -> Iterator[str]:
    """An etcd server for tests that only need some server: the environment URL or a local one."""
    with etcd_url() as url:
        yield url


@pytest.fixture
def backends(shared_url: str) -> Iterator[Callable[..., EtcdBackend]]:
    """Build backends on the shared server with one fresh prefix (or ``prefix=``); close them afterwards."""
    opened: list[EtcdBackend] = []
    default_prefix = unique_prefix()

    def build(prefix: str | None = None, **options: str) -> EtcdBackend:
        backend = open_backend(with_options(shared_url, prefix=prefix or default_prefix, **options))
        opened.append(backend)
        return backend

    yield build
    for backend in opened:
        backend.close()


@pytest.fixture
def server(etcd_binary: str) -> Iterator[EtcdServer]:
    """A plain local etcd owned by one test (for restarts, pauses and lease counts)."""
    with EtcdServer(binary=etcd_binary) as started:
        yield started


# -- URL forms and options (no server) ------------------------------------------------


def options_of(url: str) -> EtcdOptions:
    return parse_etcd_url(parse_url(url))


@pytest.mark.fast
def test_url_single_endpoint_defaults():
    options = options_of("etcd://db.example")

    assert options.endpoints == (("db.example", 2379),)
    assert options.prefix == "planlagt"
    assert options.timeout_s == 5.0
    assert options.min_ttl_s == 2
    assert options.tls is False
    assert options.username is None
    assert options.password is None


@pytest.mark.fast
def test_url_several_endpoints_and_options():
    options = options_of("etcd://user:pa%40ss@h1:2379,h2,[::1]:2390?prefix=app&timeout=1.5&min_ttl=5")

    assert options.endpoints == (("h1", 2379), ("h2", 2379), ("::1", 2390))
    assert options.username == "user"
    assert options.password == "pa@ss"
    assert options.prefix == "app"
    assert options.timeout_s == 1.5
    assert options.min_ttl_s == 5


@pytest.mark.fast
def test_etcds_url_tls_options(tmp_path: Path):
    paths = {name: tmp_path / f"{name}.pem" for name in ("cacert", "cert", "key")}
    for path in paths.values():
        path.write_text("x")

    options = options_of(f"etcds://h:2379?cacert={paths['cacert']}&cert={paths['cert']}&key={paths['key']}")

    assert options.tls is True
    assert (options.cacert, options.cert, options.key) == tuple(str(path) for path in paths.values())
    assert options_of("etcds://h").cacert is None


@pytest.mark.fast
def test_password_file_is_read(tmp_path: Path):
    secret_file = tmp_path / "etcd-password"
    secret_file.write_text("from-file\n")

    options = options_of(f"etcd://planner@h?password_file={secret_file}")

    assert options.username == "planner"
    assert options.password == "from-file"


@pytest.mark.fast
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("etcd://h?bogus=1", "'bogus'"),
        ("etcd://h?cacert=/x.pem", "etcds://"),
        ("etcds://h?cacert=/does/not/exist.pem", "file not found"),
        ("etcd://h/some/path", "takes no path"),
        ("etcd://h?prefix=a:b", "must not contain ':'"),
        ("etcd://h?prefix=", "'prefix'"),
        ("etcd://h?timeout=0", "'timeout'"),
        ("etcd://h?min_ttl=1", "at least 2"),
        ("etcd://h?min_ttl=2.5", "whole number"),
        ("etcd://planner@h", "needs a password"),
        ("etcd://:secret@h", "needs a user name"),
        ("etcd://u@h?password_file=/does/not/exist", "password_file"),
        ("redis://h", "not an etcd scheme"),
    ],
)
def test_url_invalid(url: str, expected: str):
    with pytest.raises(InvalidURL) as caught:
        options_of(url)

    assert expected in str(caught.value)


@pytest.mark.fast
def test_url_key_and_cert_go_together(tmp_path: Path):
    pem = tmp_path / "x.pem"
    pem.write_text("x")

    with pytest.raises(InvalidURL, match="option key needs cert"):
        options_of(f"etcds://h?key={pem}")
    with pytest.raises(InvalidURL, match="option cert needs key"):
        options_of(f"etcds://h?cert={pem}")


@pytest.mark.fast
def test_connect_builds_without_connecting():
    port = free_port()

    backend = connect(f"etcd://u:hidden@127.0.0.1:{port}?prefix=p")

    assert isinstance(backend, EtcdBackend)
    assert backend.prefix == "p"
    assert backend.endpoint_in_use is None
    assert backend.client_library == "etcd-sdk-python"
    assert set(backend.schemes) == {"etcd", "etcds"}
    backend.close()


@pytest.mark.fast
def test_capabilities_declared():
    capabilities = EtcdBackend.capabilities

    assert capabilities.min_ttl_s == 2.0
    assert capabilities.ttl_granularity_s == 1.0
    assert capabilities.durable_fencing_tokens is True
    assert capabilities.session_bound_leases is False
    assert capabilities.server_clock is True
    assert capabilities.multi_host is True


@pytest.mark.fast
def test_shorter_ttl_rejected_naming_minimum_and_step():
    backend = connect(f"etcd://127.0.0.1:{free_port()}")

    with pytest.raises(ConfigurationError) as caught:
        backend.acquire("report", 1.5)

    message = str(caught.value)
    assert "1.5 s" in message
    assert "minimum of 2.0 s" in message
    assert "steps of 1.0 s" in message
    with pytest.raises(ConfigurationError):
        backend.heartbeat(instance("a", heartbeat_s=0.5), 1.0)
    backend.close()


@pytest.mark.fast
def test_min_ttl_option_raises_the_minimum():
    backend = connect(f"etcd://127.0.0.1:{free_port()}?min_ttl=5")

    assert backend.capabilities.min_ttl_s == 5.0
    assert EtcdBackend.capabilities.min_ttl_s == 2.0
    with pytest.raises(ConfigurationError, match=r"minimum of 5\.0 s"):
        backend.acquire("report", 4)
    backend.close()


@pytest.mark.fast
def test_backend_without_url_describes_options():
    backend = EtcdBackend(EtcdOptions(endpoints=(("h", 1), ("::1", 2)), username="u", password="hidden"))

    assert backend.url == "etcd://u:***@h:1,[::1]:2?prefix=planlagt"
    assert "hidden" not in repr(backend)


@pytest.mark.fast
def test_sortable_fire_times_keep_their_order():
    instants = [-5000.5, -1.0, -0.001, 0.0, 0.001, 1.0, 1_700_000_000.123, 4_102_444_800.0]

    encoded = [sortable_ms(instant) for instant in instants]

    assert sorted(encoded) == encoded
    assert len(set(map(len, encoded))) == 1


@pytest.mark.fast
def test_key_layout_quotes_names():
    layout = KeyLayout("app")

    assert layout.lease("nightly/report") == b"app:lease/nightly%2Freport"
    assert layout.fire("a:b", 1.5) == b"app:fire/a%3Ab/1500"
    assert layout.member("host/1") == b"app:member/host%2F1"
    assert range_end(b"app:") == b"app;"


# -- Server harness -------------------------------------------------------------------


@pytest.mark.fast
def test_harness_prefers_environment_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ETCD_URL_ENV, "etcd://192.0.2.1:1")

    with etcd_url() as url:
        assert url == "etcd://192.0.2.1:1"
    assert get_etcd_url() == "etcd://192.0.2.1:1"


@pytest.mark.fast
def test_harness_without_server_names_every_way(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(ETCD_URL_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ServerUnavailable) as caught, etcd_url():
        pass

    message = str(caught.value)
    assert ETCD_URL_ENV in message
    assert "apt-get install etcd-server" in message
    assert "docker compose -f conformance/docker-compose.yml" in message


def test_harness_restart_keeps_data(server: EtcdServer):
    backend = open_backend(server.url)
    backend.set_paused("report", True)

    server.restart()

    assert backend.read_control().paused == frozenset({"report"})
    assert server.count_keys(b"planlagt:paused/") == 1
    backend.close()


# -- Leases: tokens, TTLs, revocation -------------------------------------------------


def test_lease_key_layout_and_token(server: EtcdServer):
    backend = open_backend(with_options(server.url, prefix="app"))

    lease = backend.acquire("nightly/report", 10, holder="instance-a")

    assert lease is not None
    stored = server.get(b"app:lease/nightly%2Freport")
    assert stored is not None
    assert int(stored["create_revision"]) == lease.token
    assert int(stored["lease"]) in server.lease_ids()
    assert server.lease_time_to_live(int(stored["lease"])) <= 10
    backend.close()


def test_ttl_rounded_up_to_whole_seconds(server: EtcdServer):
    backend = open_backend(server.url)

    lease = backend.acquire("report", 2.2)

    assert lease is not None
    assert lease.ttl_s == 3.0
    info = backend.inspect("report")
    assert info is not None
    assert info.ttl_remaining_s is not None
    assert 2.0 <= info.ttl_remaining_s <= 3.0
    backend.close()


def test_server_minimum_above_ttl_is_reported(etcd_binary: str):
    # An election timeout of 3 s makes etcd raise every lease TTL to at least 5 s (1.5 x 3 s, rounded up).
    slow = EtcdServer(binary=etcd_binary, extra_args=("--election-timeout", "3000", "--heartbeat-interval", "300"))
    with slow:
        backend = open_backend(slow.url)

        with pytest.raises(ConfigurationError) as caught:
            backend.acquire("report", 2)

        message = str(caught.value)
        assert "granted a lease TTL of 5 s where 2 s was requested" in message
        assert "min_ttl=5" in message
        assert slow.lease_ids() == [], "the lease granted with the longer TTL must be revoked"
        assert backend.inspect("report") is None

        configured = open_backend(with_options(slow.url, min_ttl="5"))
        assert configured.acquire("report", 5) is not None
        backend.close()
        configured.close()


def test_tokens_increase_across_holders(backends: Callable[..., EtcdBackend]):
    first, second = backends(), backends()
    tokens = []

    for round_number in range(6):
        holder = (first, second)[round_number % 2]
        lease = holder.acquire("report", 10)
        assert lease is not None
        tokens.append(lease.token)
        assert holder.release(lease) is True

    assert tokens == sorted(set(tokens)), f"tokens did not strictly increase: {tokens}"


def test_race_loser_revokes_its_lease(server: EtcdServer, monkeypatch: pytest.MonkeyPatch):
    winner, loser = open_backend(server.url), open_backend(server.url)
    held = winner.acquire("report", 30, holder="winner")
    assert held is not None
    before = server.lease_ids()
    # Skip the loser's first read, as if the winner created the key just after it: the loser
    # then grants a lease and finds the key taken in its transaction.
    monkeypatch.setattr(loser._leases._store, "get", lambda operation, key: None)

    assert loser.acquire("report", 30, holder="loser") is None

    assert server.lease_ids() == before
    info = winner.inspect("report")
    assert info is not None
    assert (info.token, info.holder) == (held.token, "winner")
    winner.close()
    loser.close()


def test_contention_leaks_no_lease(server: EtcdServer):
    clients = [open_backend(server.url) for _ in range(4)]
    tokens: list[int] = []
    errors: list[str] = []

    def contend(backend: EtcdBackend) -> None:
        try:
            for _ in range(8):
                lease = backend.acquire("contended", 30)
                while lease is None:
                    lease = backend.acquire("contended", 30)
                tokens.append(lease.token)
                assert backend.release(lease) is True
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=contend, args=(client,)) for client in clients for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert len(tokens) == 64
    assert server.lease_ids() == [], "every lease granted must be revoked by its release or its lost race"
    for client in clients:
        client.close()


def test_release_revokes_lease_and_keep_uses_short_lease(server: EtcdServer):
    backend = open_backend(server.url)
    lease = backend.acquire("report", 30)
    assert lease is not None
    (first_lease_id,) = server.lease_ids()

    assert backend.release(lease, keep_s=2) is True

    (kept_lease_id,) = server.lease_ids()
    assert kept_lease_id != first_lease_id
    assert server.lease_time_to_live(kept_lease_id) <= 2
    stored = server.get(b"planlagt:lease/report")
    assert stored is not None
    assert int(stored["create_revision"]) == lease.token
    with pytest.raises(LeaseLost):
        backend.renew(lease)
    wait_for(lambda: server.lease_ids() == [], "the kept key's lease to expire")
    assert backend.inspect("report") is None
    backend.close()


def test_renew_new_ttl_moves_lease(server: EtcdServer):
    backend = open_backend(server.url)
    lease = backend.acquire("report", 3)
    assert lease is not None

    renewed = backend.renew(lease, ttl_s=20)

    assert renewed.token == lease.token
    assert renewed.ttl_s == 20.0
    (lease_id,) = server.lease_ids()
    assert 15 <= server.lease_time_to_live(lease_id) <= 20
    assert backend.renew(renewed).ttl_s == 20.0
    backend.close()


# -- Restarts -------------------------------------------------------------------------


def test_fencing_tokens_survive_restart(server: EtcdServer):
    backend = open_backend(server.url)
    before = []
    for _ in range(3):
        lease = backend.acquire("report", 10)
        assert lease is not None
        before.append(lease.token)
        assert backend.release(lease) is True
    held = backend.acquire("held-across-restart", 30)
    assert held is not None

    server.restart()
    after_restart = backend.acquire("report", 10)
    assert after_restart is not None
    assert backend.release(after_restart) is True
    server.kill()
    server.start()
    after_crash = backend.acquire("report", 10)

    assert after_crash is not None
    assert after_restart.token > max(before)
    assert after_crash.token > after_restart.token
    assert backend.renew(held).token == held.token, "a lease held across a restart must still be renewable"
    backend.close()


def test_backend_reconnects_after_server_stop(server: EtcdServer):
    backend = open_backend(with_options(server.url, timeout="1"))
    lease = backend.acquire("report", 30)
    assert lease is not None

    server.stop()
    with pytest.raises(BackendUnavailable) as caught:
        backend.renew(lease)
    assert "outcome is unknown" in str(caught.value)
    server.start()

    assert wait_for(lambda: renew_or_lost(backend, lease) == "held", "a renewal after the restart")
    backend.close()


# -- Connection loss ------------------------------------------------------------------


def test_unreachable_lease_is_at_risk_until_ttl(server: EtcdServer):
    backend = open_backend(with_options(server.url, timeout="1"))
    other = open_backend(server.url)
    lease = backend.acquire("report", 5)
    assert lease is not None

    server.pause()
    try:
        with pytest.raises(BackendUnavailable):
            backend.renew(lease)
        assert time.monotonic() < lease.valid_until, "the failed renewal must leave time before the TTL runs out"
    finally:
        server.resume()

    renewed = backend.renew(lease)
    assert renewed.token == lease.token
    assert other.acquire("report", 5) is None, "the lease was at risk, never lost: nobody else may take the key"
    backend.close()
    other.close()


def test_unreachable_lease_is_lost_after_ttl(server: EtcdServer):
    backend = open_backend(with_options(server.url, timeout="1"))
    other = open_backend(server.url)
    lease = backend.acquire("report", 2)
    assert lease is not None

    server.pause()
    try:
        with pytest.raises(BackendUnavailable):
            backend.renew(lease)
        wait_for(lambda: time.monotonic() > lease.valid_until + 0.5, "the TTL to run out", deadline_s=5)
    finally:
        server.resume()

    assert wait_for(lambda: renew_or_lost(backend, lease) == "lost", "the renewal to report the lease lost")
    successor = wait_for(lambda: other.acquire("report", 5), "another client to take the key")
    assert successor.token > lease.token
    backend.close()
    other.close()


# -- Cluster ----------------------------------------------------------------------------


@pytest.fixture
def cluster(etcd_binary: str) -> Iterator[EtcdCluster]:
    with EtcdCluster() as started:
        yield started


def test_cluster_stopped_member_is_passed_over(cluster: EtcdCluster):
    backend = open_backend(with_options(cluster.url, timeout="2"))
    other = open_backend(cluster.url)
    lease = backend.acquire("report", 6, holder="holder")
    assert lease is not None
    stopped = cluster.member_at(backend.endpoint_in_use or "")

    stopped.stop()
    renewed = backend.renew(lease)

    assert renewed.token == lease.token, "a refused connection must go to the next member without a failure"
    assert backend.endpoint_in_use != stopped.endpoint
    info = other.inspect("report")
    assert info is not None
    assert (info.token, info.holder) == (lease.token, "holder")
    assert other.acquire("report", 6) is None
    backend.close()
    other.close()


def test_cluster_paused_member_risks_lease(cluster: EtcdCluster):
    backend = open_backend(with_options(cluster.url, timeout="1"))
    lease = backend.acquire("report", 6, holder="holder")
    assert lease is not None
    paused = cluster.member_at(backend.endpoint_in_use or "")

    paused.pause()
    try:
        outcomes = []
        while time.monotonic() < lease.valid_until:
            outcomes.append(renew_or_lost(backend, lease))
            if outcomes[-1] == "held":
                break
    finally:
        paused.resume()

    assert outcomes[0] == "unavailable", "a member that does not respond leaves the lease at risk"
    assert outcomes[-1] == "held", f"renewals after the member paused: {outcomes}"
    assert "lost" not in outcomes
    assert backend.endpoint_in_use != paused.endpoint
    backend.close()


def test_cluster_scheduler_carries_on_after_member_stops(cluster: EtcdCluster):
    runs: list[tuple[float, int, str]] = []
    scheduler = Scheduler(with_options(cluster.url, timeout="2"), instance_id="only", lease_ttl_s=3)

    @scheduler.job("* * * * * *", name="tick")
    def tick(context: Any) -> None:
        runs.append((context.fire_time.timestamp(), context.fencing_token, context.lease_state.value))

    scheduler.start()
    try:
        wait_for(lambda: len(runs) >= 3, "the first runs")
        stopped = cluster.member_at(scheduler.backend.endpoint_in_use or "")
        stopped.stop()
        stopped_at = time.time()
        wait_for(lambda: sum(1 for fire_time, _, _ in runs if fire_time > stopped_at + 1) >= 3, "runs after the stop")
    finally:
        scheduler.stop()

    counts = Counter(fire_time for fire_time, _, _ in runs)
    assert max(counts.values()) == 1, f"fire times that ran twice: {[t for t, n in counts.items() if n > 1]}"
    assert scheduler.backend.endpoint_in_use != stopped.endpoint
    assert all(state == LeaseState.HELD.value for _, _, state in runs)


# -- Authentication and TLS -----------------------------------------------------------


def test_user_and_password(etcd_binary: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    password = f"pw-{secrets.token_hex(6)}"
    with EtcdServer(binary=etcd_binary, auth=("planner", password)) as server:
        caplog.set_level(logging.DEBUG)
        backend = open_backend(server.url)
        lease = backend.acquire("report", 10)
        assert lease is not None
        assert [member.instance_id for member in backend.heartbeat(instance("a"), 5)] == ["a"]

        secret_file = tmp_path / "etcd-password"
        secret_file.write_text(password + "\n")
        from_file = open_backend(f"etcd://planner@{server.endpoint}?password_file={secret_file}&prefix=planlagt")
        info = from_file.inspect("report")
        assert info is not None
        assert info.token == lease.token

        server.restart()
        assert backend.renew(lease).token == lease.token, "the token forgotten by the restart must be renewed"
        backend.close()
        from_file.close()

    assert password not in caplog.text


def test_expired_auth_token_is_renewed(etcd_binary: str):
    token_ttl_s = 2
    server = EtcdServer(binary=etcd_binary, auth=("planner", "pw"), extra_args=("--auth-token-ttl", str(token_ttl_s)))
    with server:
        backend = open_backend(server.url)
        lease = backend.acquire("report", 30)
        assert lease is not None
        issued_at = time.monotonic()

        wait_for(lambda: time.monotonic() > issued_at + token_ttl_s + 1.5, "the auth token to expire", deadline_s=10)

        assert backend.renew(lease).token == lease.token
        backend.close()


def test_wrong_password_and_missing_permission(etcd_binary: str):
    with EtcdServer(binary=etcd_binary, auth=("planner", "right-pw")) as server:
        wrong = open_backend(f"etcd://planner:wrong-pw@{server.endpoint}?prefix=planlagt")
        outside = open_backend(f"etcd://planner:right-pw@{server.endpoint}?prefix=elsewhere")
        anonymous = open_backend(f"etcd://{server.endpoint}?prefix=planlagt")

        with pytest.raises(BackendError) as bad_password:
            wrong.acquire("report", 10)
        with pytest.raises(BackendError) as denied:
            outside.acquire("report", 10)
        with pytest.raises(BackendError) as no_user:
            anonymous.inspect("report")

        assert not isinstance(bad_password.value, BackendUnavailable)
        assert "authentication to etcd" in str(bad_password.value)
        assert "wrong-pw" not in str(bad_password.value)
        assert "planner:***@" in str(bad_password.value)
        assert "lacks a permission" in str(denied.value)
        assert not isinstance(no_user.value, BackendUnavailable)
        assert server.lease_ids() == [], "denied acquisitions must leave no lease behind"
        for backend in (wrong, outside, anonymous):
            backend.close()


def test_tls_with_ca_certificate(etcd_binary: str):
    with EtcdServer(binary=etcd_binary, tls=True) as server:
        backend = open_backend(server.url)
        assert server.url.startswith("etcds://")

        lease = backend.acquire("report", 10)

        assert lease is not None
        assert backend.inspect("report") is not None
        backend.close()


def test_tls_with_client_certificate_and_user(etcd_binary: str, tmp_path: Path):
    with EtcdServer(binary=etcd_binary, tls=True, tls_client_certs=True, auth=("planner", "pw")) as server:
        backend = open_backend(server.url)
        without_cert = open_backend(f"etcds://planner:pw@{server.endpoint}?cacert={server.ca_path}&timeout=2")
        write_certificates(tmp_path)
        other_ca = open_backend(f"etcds://planner:pw@{server.endpoint}?cacert={tmp_path / 'ca.pem'}&timeout=2")

        assert backend.acquire("report", 10) is not None
        with pytest.raises(BackendError):
            without_cert.inspect("report")
        with pytest.raises(BackendError):
            other_ca.inspect("report")
        for opened in (backend, without_cert, other_ca):
            opened.close()


# -- Prefixes, names and stored data --------------------------------------------------


def test_prefixes_that_extend_each_other_stay_apart(backends: Callable[..., EtcdBackend]):
    base = unique_prefix()
    app, apple, nested = backends(prefix=base), backends(prefix=f"{base}le"), backends(prefix=f"{base}/lease")

    for backend in (app, apple, nested):
        assert backend.acquire("report", 10) is not None
        backend.heartbeat(instance(f"member-of-{backend.prefix}"), 10)
        backend.record_run(run_record("report", FIRE_TIME))
        backend.set_paused("report", True)

    for backend in (app, apple, nested):
        assert [member.instance_id for member in backend.list_instances()] == [f"member-of-{backend.prefix}"]
        assert len(backend.list_runs()) == 1
        assert backend.read_control().paused == frozenset({"report"})


def test_names_with_separators_round_trip(backends: Callable[..., EtcdBackend]):
    backend = backends()
    job = "team/a:nightly report%"

    lease = backend.acquire(job, 10, holder="host/1")
    assert lease is not None
    state = backend.begin_attempt(lease, job, FIRE_TIME, max_attempts=2, keep_s=KEEP_S)
    backend.record_run(run_record(job, FIRE_TIME))
    backend.record_run(run_record("team", FIRE_TIME))
    backend.heartbeat(instance("host/1:pid"), 10)
    backend.announce_jobs("host/1:pid", {job: {"schedule": "* * * * *"}})
    backend.add_trigger(TriggerRequest(request_id="req/1", job=job, requested_at=FIRE_TIME))

    assert backend.get_fire(job, FIRE_TIME) == state
    assert [record.job for record in backend.list_runs(job)] == [job]
    assert [record.job for record in backend.list_runs("team")] == ["team"]
    assert backend.list_job_definitions() == {"host/1:pid": {job: {"schedule": "* * * * *"}}}
    assert backend.remove_trigger("req/1") is True


def test_list_runs_pages_through_many_records(backends: Callable[..., EtcdBackend], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("planlagt_etcd.store.SCAN_PAGE", 7)
    backend = backends()
    for index in range(30):
        backend.record_run(run_record("report", FIRE_TIME + index))

    listed = backend.list_runs("report", limit=20, until=FIRE_TIME + 25)

    assert [record.fire_time for record in listed] == [FIRE_TIME + index for index in range(25, 5, -1)]
    assert backend.trim_runs(max_per_job=4, max_age_s=1e10) == 26
    assert [record.fire_time for record in backend.list_runs()] == [FIRE_TIME + index for index in range(29, 25, -1)]


def test_invalid_stored_data_names_the_key(server: EtcdServer):
    backend = open_backend(server.url)
    lease = backend.acquire("report", 10)
    assert lease is not None
    backend._leases._store.put("test", b"planlagt:fire/report/1700000000000", b"not json")

    with pytest.raises(BackendError) as caught:
        backend.get_fire("report", FIRE_TIME)

    assert "planlagt:fire/report/1700000000000" in str(caught.value)
    assert "invalid fire state" in str(caught.value)
    backend.close()


# -- Fire state, membership and the job registry ---------------------------------------


def test_fire_states_share_a_retention_lease(server: EtcdServer):
    backend = open_backend(server.url)
    lease = backend.acquire("report", 30)
    assert lease is not None
    (job_lease_id,) = server.lease_ids()

    backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=1, keep_s=100)
    backend.begin_attempt(lease, "report", FIRE_TIME + 60, max_attempts=1, keep_s=100)
    backend.finish_fire(run_record("report", FIRE_TIME + 120, Outcome.MISSED), keep_s=100)

    retention = [lease_id for lease_id in server.lease_ids() if lease_id != job_lease_id]
    assert len(retention) == 1, f"fire states kept alike must share one lease, found {len(retention)}"
    assert 100 <= server.lease_time_to_live(retention[0]) <= 161
    for offset in (0, 60, 120):
        stored = server.get(f"planlagt:fire/report/{round((FIRE_TIME + offset) * 1000)}".encode())
        assert stored is not None
        assert int(stored["lease"]) == retention[0]
    backend.close()


def test_heartbeat_costs_two_requests(backends: Callable[..., EtcdBackend]):
    backend = backends()
    backend.heartbeat(instance("a"), 10)
    calls: list[str] = []
    original_run = backend._connection.run

    def counting_run(operation: str, call: Callable[[Any], Any]) -> Any:
        calls.append(operation)
        return original_run(operation, call)

    backend._connection.run = counting_run  # type: ignore[method-assign]

    members = backend.heartbeat(instance("a"), 10)

    assert [member.instance_id for member in members] == ["a"]
    assert calls == ["heartbeat", "heartbeat"], "a heartbeat is one keep-alive and one transaction"


def test_members_and_definitions_expire_with_their_lease(server: EtcdServer):
    backend = open_backend(server.url)
    observer = open_backend(server.url)
    backend.announce_jobs("short", {"report": {"schedule": "* * * * *"}})
    backend.heartbeat(instance("short"), 2)
    member = server.get(b"planlagt:member/short")
    definitions = server.get(b"planlagt:jobs/short")
    assert member is not None
    assert definitions is not None
    assert definitions["lease"] == member["lease"], "definitions announced first must move to the member's lease"

    wait_for(lambda: observer.list_instances() == [], "the member to expire")

    assert observer.list_job_definitions() == {}
    assert server.count_keys(b"planlagt:jobs/") == 0
    assert int(member["lease"]) not in server.lease_ids()
    backend.close()
    observer.close()


def test_heartbeat_ttl_change_revokes_old_lease(server: EtcdServer):
    backend = open_backend(server.url)
    backend.heartbeat(instance("a"), 10)
    (first,) = server.lease_ids()

    backend.heartbeat(instance("a"), 20)

    (second,) = server.lease_ids()
    assert second != first
    assert server.lease_time_to_live(second) > 10
    backend.leave("a")
    assert server.lease_ids() == []
    assert backend.list_instances() == []
    backend.close()


def test_last_heartbeat_is_writer_clock(backends: Callable[..., EtcdBackend]):
    backend = backends()
    before = time.time()

    (member,) = backend.heartbeat(instance("a"), 10)

    assert member.last_heartbeat is not None
    assert before <= member.last_heartbeat <= time.time()


# -- Errors, closing and redaction ------------------------------------------------------


def test_unreachable_endpoint_raises_unavailable_with_redacted_url():
    port = free_port()
    backend = open_backend(f"etcd://planner:s3cret-pw@127.0.0.1:{port}?timeout=2")

    with pytest.raises(BackendUnavailable) as caught:
        backend.acquire("report", 10)

    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert f"planner:***@127.0.0.1:{port}" in message
    assert caught.value.backend is not None
    assert "s3cret-pw" not in caught.value.backend
    backend.close()


def test_password_not_shown_anywhere(etcd_binary: str, caplog: pytest.LogCaptureFixture):
    password = f"hidden-{secrets.token_hex(6)}"
    caplog.set_level(logging.DEBUG)
    with EtcdServer(binary=etcd_binary, auth=("planner", password)) as server:
        backend = open_backend(server.url)
        backend.acquire("report", 10)

        shown = [repr(backend), backend.url, str(parse_url(server.url)), json.dumps(backend.url)]
        with pytest.raises(InvalidURL) as caught:
            connect(with_options(server.url, bogus="1"))
        backend.close()

    assert all(password not in text for text in shown)
    assert password not in str(caught.value)
    assert password not in caplog.text


def test_closed_backend_raises(backends: Callable[..., EtcdBackend]):
    backend = backends()
    backend.inspect("report")

    backend.close()
    backend.close()

    with pytest.raises(BackendError, match="is closed"):
        backend.inspect("report")


def test_keys_stay_under_prefix(server: EtcdServer):
    backend = open_backend(with_options(server.url, prefix="only-here"))
    lease = backend.acquire("report", 10)
    assert lease is not None
    backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=1, keep_s=KEEP_S)
    backend.finish_fire(run_record("report", FIRE_TIME), lease=lease, keep_s=KEEP_S)
    backend.heartbeat(instance("a"), 10)
    backend.announce_jobs("a", {"report": {}})
    backend.set_paused("report", True)
    backend.add_trigger(TriggerRequest(request_id="r", job="report", requested_at=FIRE_TIME))

    everything = server.admin("/v3/kv/range", {"key": "AA==", "range_end": "AA==", "keys_only": True})

    keys = [entry["key"] for entry in everything.get("kvs", [])]
    assert len(keys) == 8
    assert all(base64.b64decode(key).startswith(b"only-here:") for key in keys)
    backend.close()


def test_ten_thousand_job_definitions(backends: Callable[..., EtcdBackend]) -> None:
    """10,000 definitions are over etcd's request limit as plain JSON; they are stored compressed."""
    backend = backends()
    definitions = {f"job-{i}": {"name": f"job-{i}", "schedule": "0 3 * * *", "policy": {"n": i}} for i in range(10_000)}
    backend.heartbeat(InstanceInfo(instance_id="many", heartbeat_s=1.0), 5.0)
    backend.announce_jobs("many", definitions)
    stored = backend.list_job_definitions()["many"]

    assert len(stored) == 10_000
    assert stored["job-9999"] == definitions["job-9999"]
