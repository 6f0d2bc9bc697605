"""ZooKeeper-specific tests of the ZooKeeper backend, against real ZooKeeper servers.

Generic contract cases live in the conformance suite. These cover what only ZooKeeper
has: URL forms (ensembles, chroots, the ``zk://`` and ``kazoo://`` aliases), digest
authentication, TLS, the negotiated session timeout, fencing tokens from zxids, kept
leases in persistent nodes, the connection states SUSPENDED and LOST, a forced session
expiry, a three-server ensemble losing the server a client is connected to, and redaction.

Tests that need a server of their own (restart, authentication, TLS, ensemble) start one
from the Debian package ``zookeeper`` and fail without it. The others use
``PLANLAGT_TEST_ZOOKEEPER_URL`` when it is set.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import make_digest_acl_credential
from planlagt_conformance.servers import ServerUnavailable, free_port
from planlagt_conformance.zookeeper_server import (
    ZOOKEEPER_URL_ENV,
    ZooKeeperEnsemble,
    ZooKeeperServer,
    get_zookeeper_url,
    no_zookeeper_message,
    zookeeper_available,
    zookeeper_classpath,
    zookeeper_url,
)
from planlagt_zookeeper import MIN_SESSION_TIMEOUT_S, MIN_TTL_S, ZooKeeperBackend, parse_zookeeper_url
from planlagt_zookeeper.layout import NodeLayout, decode_name, encode_name, parse_run_node, run_node_prefix

from planlagt_core import connect
from planlagt_core.backend import Feature, LeaseState
from planlagt_core.context import RunContext
from planlagt_core.errors import BackendError, BackendUnavailable, ConfigurationError, InvalidURL, LeaseLost
from planlagt_core.listeners import Listener
from planlagt_core.models import Outcome, RunRecord
from planlagt_core.scheduler import Scheduler
from planlagt_core.url import parse_url

KEEP_S = 3600.0
POLL_DEADLINE_S = 20.0
POLL_INTERVAL_S = 0.02
FIRE_TIME = 1_700_000_000.0
EARLY_SLACK_S = 0.05
PASSWORD = "s3cret-påss"


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


def run_record(job: str, fire_time: float = FIRE_TIME, outcome: Outcome = Outcome.SUCCEEDED) -> RunRecord:
    return RunRecord(job=job, fire_time=fire_time, instance_id="instance-a", outcome=outcome)


def hosts_of(url: str) -> str:
    """Return the ``host:port,...`` list of a ZooKeeper URL, as kazoo takes it."""
    return parse_zookeeper_url(parse_url(url)).hosts_text


def expire_session(backend: ZooKeeperBackend, hosts: str) -> int:
    """Make the server expire the backend's session; return the expired session's id.

    This is how kazoo's own test harness (``kazoo.testing.harness.expire_session``) does
    it: a second client joins the session with its id and password, then closes it. The
    server ends the session, and the backend's client learns so when it reconnects.
    """
    session_id, password = backend.kazoo_client.client_id
    intruder = KazooClient(hosts, client_id=(session_id, password), timeout=4.0)
    try:
        intruder.start(timeout=10)
        intruder.stop()
    finally:
        intruder.close()
    return int(session_id)


def current_session(backend: ZooKeeperBackend) -> int | None:
    client = backend.kazoo_client
    client_id = client.client_id
    return None if client_id is None else int(client_id[0])


@pytest.fixture(scope="module")
def shared_url() -> Iterator[str]:
    """A ZooKeeper server for tests that only need some server: the environment URL or a local one."""
    try:
        with zookeeper_url() as url:
            yield url
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def local_server() -> Iterator[ZooKeeperServer]:
    """A server of this module's own (default tick of 2 s, so sessions of 4 s to 120 s), for faults."""
    if not zookeeper_available():
        pytest.fail(f"this test needs a ZooKeeper server it can restart; {no_zookeeper_message()}", pytrace=False)
    with ZooKeeperServer() as server:
        yield server


class Backends:
    """Opens backends for one test and closes them all afterwards."""

    def __init__(self) -> None:
        self.opened: list[ZooKeeperBackend] = []

    def __call__(self, url: str, **options: str) -> ZooKeeperBackend:
        if "prefix" not in options and "prefix=" not in url:
            options["prefix"] = unique_prefix()
        backend = connect(with_options(url, **options) if options else url)
        assert isinstance(backend, ZooKeeperBackend)
        self.opened.append(backend)
        return backend

    def close_all(self) -> None:
        for backend in reversed(self.opened):
            backend.close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    opened = Backends()
    yield opened
    opened.close_all()


@pytest.fixture
def raw(shared_url: str) -> Iterator[KazooClient]:
    """A plain kazoo client on the shared server, for reading nodes behind the backend's back."""
    options = parse_zookeeper_url(parse_url(shared_url))
    client = KazooClient(**options.client_kwargs())
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


class RunCollector(Listener):
    """Collects the run records a scheduler reports."""

    def __init__(self) -> None:
        self.records: list[RunRecord] = []
        self._lock = threading.Lock()

    def run_finished(self, record: RunRecord) -> None:
        with self._lock:
            self.records.append(record)

    def of(self, job: str) -> list[RunRecord]:
        with self._lock:
            return [record for record in self.records if record.job == job]


class StateRecorder:
    """A job that records every lease state its context reports and runs until its ``finish`` event is set."""

    def __init__(self) -> None:
        self.states: list[LeaseState] = []
        self.started = threading.Event()
        self.finish = threading.Event()
        self.context: RunContext | None = None

    def __call__(self, context: RunContext) -> None:
        self.context = context
        context.on_change(lambda changed: self.states.append(changed.lease_state))
        self.started.set()
        while not self.finish.is_set() and context.lease_state is not LeaseState.LOST:
            context.wait(0.05)


# -- URLs and options (no server) -------------------------------------------------------


@pytest.mark.fast
def test_url_defaults():
    options = parse_zookeeper_url(parse_url("zookeeper://zk1"))

    assert options.hosts == (("zk1", 2181),)
    assert options.chroot == ""
    assert options.prefix == "planlagt"
    assert options.session_timeout_s == 60.0
    assert options.request_timeout_s == 5.0
    assert options.auth_data == []
    assert options.use_ssl is False


@pytest.mark.fast
def test_url_ensemble_and_chroot():
    options = parse_zookeeper_url(parse_url("zookeeper://zk1:2181,zk2:2182,[::1]:2183/apps/sched?prefix=team-a"))

    assert options.hosts == (("zk1", 2181), ("zk2", 2182), ("::1", 2183))
    assert options.hosts_text == "zk1:2181,zk2:2182,[::1]:2183"
    assert options.chroot == "/apps/sched"
    assert options.prefix == "team-a"
    assert NodeLayout(options.chroot, options.prefix).root == "/apps/sched/team-a"


@pytest.mark.fast
@pytest.mark.parametrize("scheme", ["zookeeper", "zk", "kazoo"])
def test_url_aliases_build_same_backend(scheme: str):
    backend = connect(f"{scheme}://zk1:2181,zk2/chroot?session_timeout=7")

    assert isinstance(backend, ZooKeeperBackend)
    assert backend.options.hosts == (("zk1", 2181), ("zk2", 2181))
    assert backend.options.chroot == "/chroot"
    assert backend.options.session_timeout_s == 7.0
    backend.close()


@pytest.mark.fast
def test_url_timeouts_and_digest_user():
    options = parse_zookeeper_url(
        parse_url(f"zk://alice:{PASSWORD}@zk1?session_timeout=12.5&connect_timeout=3&request_timeout=2")
    )

    assert options.session_timeout_s == 12.5
    assert options.connect_timeout_s == 3.0
    assert options.request_timeout_s == 2.0
    assert options.auth_data == [("digest", f"alice:{PASSWORD}")]
    assert PASSWORD not in repr(options)


@pytest.mark.fast
def test_password_file_is_read(tmp_path: Path):
    secret_file = tmp_path / "zk-password"
    secret_file.write_text(PASSWORD + "\n", encoding="utf-8")

    options = parse_zookeeper_url(parse_url(f"zookeeper://alice@zk1?password_file={secret_file}"))

    assert options.auth_data == [("digest", f"alice:{PASSWORD}")]


@pytest.mark.fast
def test_url_tls_options(tmp_path: Path):
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "key-password")}
    for path in files.values():
        path.write_text("x", encoding="ascii")
    files["key-password"].write_text("key-secret\n", encoding="ascii")

    options = parse_zookeeper_url(
        parse_url(
            f"zookeeper://zk1:2281?use_ssl=true&ca={files['ca']}&certfile={files['cert']}"
            f"&keyfile={files['key']}&keyfile_password_file={files['key-password']}"
        )
    )
    kwargs = options.client_kwargs()

    assert kwargs["use_ssl"] is True
    assert kwargs["ca"] == str(files["ca"])
    assert kwargs["certfile"] == str(files["cert"])
    assert kwargs["keyfile"] == str(files["key"])
    assert kwargs["keyfile_password"] == "key-secret"
    assert kwargs["verify_certs"] is True
    assert kwargs["check_hostname"] is True
    assert "key-secret" not in repr(options)


@pytest.mark.fast
def test_url_tls_without_checks():
    options = parse_zookeeper_url(parse_url("zookeeper://zk1?use_ssl=true&verify_certs=false"))

    assert (options.verify_certs, options.check_hostname) == (False, False)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("zookeeper://zk1?color=blue", "unknown option 'color'"),
        ("zookeeper://alice@zk1", "has no password"),
        (f"zookeeper://:{PASSWORD}@zk1", "needs a user name"),
        ("zookeeper://zk1/a/../b", "'..' component"),
        ("zookeeper://zk1//a", "empty"),
        ("zookeeper://zk1/zookeeper/quota", "reserved /zookeeper"),
        ("zookeeper://zk1?ca=/etc/hostname", "needs use_ssl=true"),
        ("zookeeper://zk1?use_ssl=true&keyfile=/etc/hostname", "needs certfile"),
        ("zookeeper://zk1?use_ssl=true&verify_certs=false&check_hostname=true", "needs verify_certs=true"),
        ("zookeeper://zk1?session_timeout=0", "positive number of seconds"),
        ("zookeeper://zk1?use_ssl=maybe", "expected true or false"),
        ("zookeeper://zk1?use_ssl=true&ca=/no/such/file", "file not found"),
    ],
)
def test_url_invalid(url: str, expected: str):
    with pytest.raises(InvalidURL) as raised:
        connect(url)

    assert expected in str(raised.value)
    assert PASSWORD not in str(raised.value)


@pytest.mark.fast
def test_connect_builds_without_connecting():
    started = time.monotonic()

    backend = connect("zookeeper://127.0.0.1:1/never?connect_timeout=30")

    assert time.monotonic() - started < 5, "from_url must not connect"
    assert backend.url == "zookeeper://127.0.0.1:1/never?connect_timeout=30"
    backend.close()


@pytest.mark.fast
def test_capabilities_declared():
    capabilities = ZooKeeperBackend.capabilities

    assert capabilities.min_ttl_s == MIN_TTL_S == 1.0
    assert MIN_SESSION_TIMEOUT_S == 4.0
    assert capabilities.session_bound_leases is True
    assert capabilities.durable_fencing_tokens is True
    assert capabilities.server_clock is True
    assert capabilities.ttl_granularity_s == 0.001
    assert capabilities.features == frozenset(Feature)


@pytest.mark.fast
def test_backend_url_hides_password():
    backend = connect(f"zookeeper://alice:{PASSWORD}@zk1:2181/app")

    assert PASSWORD not in backend.url
    assert PASSWORD not in repr(backend)
    assert "alice:***@" in backend.url
    described = ZooKeeperBackend(backend.options)  # type: ignore[attr-defined]
    assert PASSWORD not in described.url
    assert described.url == "zookeeper://alice:***@zk1:2181/app"
    backend.close()


@pytest.mark.fast
@pytest.mark.parametrize("name", ["job", "a/b", ".", "..", "jøb ü", "50%", "x" * 512, "job:1", "JOB"])
def test_node_names_round_trip(name: str):
    encoded = encode_name(name)

    assert decode_name(encoded) == name
    assert "/" not in encoded
    assert encoded not in (".", "..")
    assert all(char.isascii() and (char.isalnum() or char in "_-%") for char in encoded)


@pytest.mark.fast
def test_run_node_names_sort_by_fire_time():
    fire_times = [-86400.0, 0.0, 0.001, 1_700_000_000.0, 1_700_000_000.5, 4_102_444_800.0]
    names = [run_node_prefix(fire_time) + f"{index:010d}" for index, fire_time in enumerate(fire_times)]

    assert sorted(names) == names
    assert [parse_run_node(name)[0] for name in names] == [round(t * 1000) for t in fire_times]


@pytest.mark.fast
def test_harness_classpath_uses_debian_jar():
    classpath = zookeeper_classpath().split(":")

    assert classpath[0] == "/usr/share/java/zookeeper.jar"


@pytest.mark.fast
def test_harness_prefers_environment_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ZOOKEEPER_URL_ENV, "zookeeper://192.0.2.1:2181")

    assert get_zookeeper_url() == "zookeeper://192.0.2.1:2181"
    with zookeeper_url() as url:
        assert url == "zookeeper://192.0.2.1:2181"


@pytest.mark.fast
def test_harness_message_names_every_way():
    message = no_zookeeper_message()

    assert ZOOKEEPER_URL_ENV in message
    assert "apt-get install zookeeper" in message
    assert "docker compose -f conformance/docker-compose.yml" in message


# -- Basics against a server -------------------------------------------------------------


@pytest.mark.zookeeper
def test_smoke_through_zk_alias(shared_url: str, backends: Backends):
    backend = backends(shared_url.replace("zookeeper://", "zk://", 1))

    lease = backend.acquire("report", 10.0, holder="instance-a")
    assert lease is not None
    lease = backend.renew(lease)
    state = backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=2, keep_s=KEEP_S)
    closed = backend.finish_fire(run_record("report"), lease=lease, keep_s=KEEP_S)

    assert state.began_with(lease.token)
    assert closed is True
    assert backend.list_runs("report") == [run_record("report")]
    assert backend.release(lease) is True
    assert backend.inspect("report") is None


@pytest.mark.zookeeper
def test_nodes_lie_under_chroot_and_prefix(shared_url: str, backends: Backends, raw: KazooClient):
    chroot = f"/planlagt-test-{secrets.token_hex(4)}/team-a"
    backend = backends(shared_url + chroot, prefix="nightly/jobs")

    lease = backend.acquire("export", 10.0, holder="instance-a")
    assert lease is not None
    backend.record_run(run_record("export"))

    root = f"{chroot}/nightly%2Fjobs"
    assert raw.get_children(chroot) == ["nightly%2Fjobs"]
    assert sorted(raw.get_children(root)) == sorted(
        ["clock", "fire", "jobs", "leases", "members", "paused", "runs", "triggers"]
    )
    _, holder_stat = raw.get(f"{root}/leases/export/{lease.owner}")
    assert holder_stat.ephemeralOwner == current_session(backend)
    assert raw.get_children(f"{root}/runs/export")


@pytest.mark.zookeeper
def test_chroots_and_prefixes_isolate(shared_url: str, backends: Backends):
    chroot = f"/planlagt-test-{secrets.token_hex(4)}"
    prefix = unique_prefix()
    first = backends(shared_url + chroot + "/a", prefix=prefix)
    other_chroot = backends(shared_url + chroot + "/b", prefix=prefix)
    other_prefix = backends(shared_url + chroot + "/a", prefix=prefix + "-x")
    same = backends(shared_url + chroot + "/a", prefix=prefix)

    lease = first.acquire("report", 10.0)

    assert lease is not None
    assert other_chroot.inspect("report") is None
    assert other_prefix.inspect("report") is None
    info = same.inspect("report")
    assert info is not None
    assert info.token == lease.token


@pytest.mark.zookeeper
def test_stored_data_is_json(shared_url: str, backends: Backends, raw: KazooClient):
    backend = backends(shared_url)
    lease = backend.acquire("report", 10.0, holder="instance-a")
    assert lease is not None
    backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=1, keep_s=KEEP_S)

    root = backend.layout.root
    holder_data, _ = raw.get(f"{root}/leases/report/{lease.owner}")
    fire_data, _ = raw.get(backend.layout.fire("report", FIRE_TIME))

    assert json.loads(holder_data) == {"holder": "instance-a", "ttl_ms": 10000}
    assert json.loads(fire_data)["state"]["token"] == lease.token
    assert json.loads(fire_data)["keep_ms"] == KEEP_S * 1000


# -- Session timeout -----------------------------------------------------------------------


@pytest.mark.zookeeper
def test_negotiated_timeout_is_read_back(local_server: ZooKeeperServer, backends: Backends):
    below_minimum = backends(local_server.url, session_timeout="1")
    above_maximum = backends(local_server.url, session_timeout="500")
    within = backends(local_server.url, session_timeout="7.5")

    assert local_server.min_session_timeout_ms == 4000, "the test server runs the default tick of 2 s"
    assert below_minimum.options.session_timeout_s == 1.0
    assert below_minimum.session_timeout_s == MIN_SESSION_TIMEOUT_S == 4.0
    assert above_maximum.session_timeout_s == local_server.max_session_timeout_ms / 1000
    assert within.session_timeout_s == 7.5


@pytest.mark.zookeeper
def test_ttl_longer_than_session_rejected(local_server: ZooKeeperServer, backends: Backends):
    backend = backends(local_server.url, session_timeout="5")

    with pytest.raises(ConfigurationError) as raised:
        backend.acquire("report", 6.0)

    assert "6.0 s" in str(raised.value)
    assert "5.0 s" in str(raised.value)
    assert "session_timeout" in str(raised.value)
    assert backend.inspect("report") is None
    lease = backend.acquire("report", 5.0)
    assert lease is not None
    with pytest.raises(ConfigurationError):
        backend.renew(lease, ttl_s=6.0)


@pytest.mark.zookeeper
def test_ttl_below_minimum_rejected(shared_url: str, backends: Backends):
    backend = backends(shared_url)

    with pytest.raises(ConfigurationError) as raised:
        backend.acquire("report", 0.9)

    assert "0.9" in str(raised.value)
    assert "1.0" in str(raised.value)


# -- Fencing tokens ------------------------------------------------------------------------


@pytest.mark.zookeeper
def test_token_is_czxid_of_holder_node(shared_url: str, backends: Backends, raw: KazooClient):
    first = backends(shared_url)
    second = backends(shared_url, prefix=first.prefix)
    tokens = []
    for holder in (first, second, first):
        lease = holder.acquire("report", 10.0)
        assert lease is not None
        _, stat = raw.get(holder.layout.holder("report", lease.owner))
        assert lease.token == stat.czxid
        tokens.append(lease.token)
        assert holder.release(lease) is True

    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


@pytest.mark.zookeeper
@pytest.mark.parametrize("end", ["stop", "kill"])
def test_tokens_increase_across_restart(local_server: ZooKeeperServer, backends: Backends, end: str):
    backend = backends(local_server.url)
    before = backend.acquire("report", 10.0)
    assert before is not None
    assert backend.release(before) is True

    getattr(local_server, end)()  # SIGTERM, or SIGKILL as a crash would
    local_server.start()
    after = wait_for(lambda: _try_acquire(backend, "report", 10.0), "an acquisition after the restart")

    assert after.token > before.token


def _try_acquire(backend: ZooKeeperBackend, key: str, ttl_s: float) -> Any:
    try:
        return backend.acquire(key, ttl_s)
    except BackendUnavailable:
        return None


@pytest.mark.zookeeper
def test_restart_within_session_keeps_lease(local_server: ZooKeeperServer, backends: Backends):
    backend = backends(local_server.url, session_timeout="20")
    lease = backend.acquire("report", 20.0, holder="instance-a")
    assert lease is not None
    session_id = current_session(backend)

    local_server.stop()
    wait_for(lambda: backend.connection_state == "suspended", "kazoo to report the connection suspended")
    with pytest.raises(BackendUnavailable) as raised:
        backend.renew(lease)
    assert "at risk" in str(raised.value)

    local_server.start()
    wait_for(lambda: backend.connection_state == "connected", "kazoo to reconnect within the session")
    renewed = backend.renew(lease)

    assert current_session(backend) == session_id
    assert renewed.token == lease.token
    assert backend.inspect("report") is not None
    assert backend.begin_attempt(renewed, "report", FIRE_TIME, max_attempts=1, keep_s=KEEP_S).began_with(lease.token)


@pytest.mark.zookeeper
def test_silent_server_skipped_after_timeout(shared_url: str, backends: Backends):
    # Listening sockets that never accept: the TCP connection succeeds, the handshake never ends.
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        addresses = [f"127.0.0.1:{listener.getsockname()[1]}" for listener in silent]
        real = hosts_of(shared_url)
        url = shared_url.replace(real, ",".join([*addresses, real]), 1)
        backend = backends(url, connect_timeout="1")

        lease = backend.acquire("report", 10.0)
    finally:
        for listener in silent:
            listener.close()

    assert lease is not None, "the client must move past the silent servers to the real one"


@pytest.mark.zookeeper
def test_forked_child_opens_own_session(shared_url: str, backends: Backends):
    backend = backends(shared_url)
    lease = backend.acquire("parent-key", 10.0)
    assert lease is not None
    parent_session = current_session(backend)

    child = os.fork()
    if child == 0:  # the child: use and close the inherited backend object, then exit at once
        status = 1
        try:
            child_lease = backend.acquire("child-key", 10.0)
            child_session = current_session(backend)
            backend.close()
            status = 0 if child_lease is not None and child_session != parent_session else 2
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(wait_status) == 0, "the child could not use a session of its own"
    assert current_session(backend) == parent_session
    assert backend.renew(lease).token == lease.token, "the child's close must not end the parent's session"
    info = backend.inspect("child-key")
    assert info is not None, "the child's close must keep its own lease until its TTL"
    assert info.released is True


# -- TTL, kept leases and close ------------------------------------------------------------


@pytest.mark.zookeeper
def test_unrenewed_lease_taken_while_connected(shared_url: str, backends: Backends, raw: KazooClient):
    holder = backends(shared_url)
    taker = backends(shared_url, prefix=holder.prefix)
    started = time.monotonic()
    stale = holder.acquire("report", 2.0)
    assert stale is not None

    fresh = wait_for(lambda: taker.acquire("report", 10.0), "the key to be taken after its TTL", 10.0)
    elapsed = time.monotonic() - started

    assert elapsed >= 2.0 - EARLY_SLACK_S
    assert holder.connection_state == "connected", "the holder's session must still be alive"
    assert raw.exists(holder.layout.holder("report", stale.owner)) is None, "the stale holder node was not deleted"
    with pytest.raises(LeaseLost):
        holder.renew(stale)
    assert fresh.token > stale.token


@pytest.mark.zookeeper
def test_kept_lease_lives_in_persistent_node(shared_url: str, backends: Backends, raw: KazooClient):
    first = backends(shared_url)
    second = backends(shared_url, prefix=first.prefix)
    lease = first.acquire("report", 10.0, holder="instance-a")
    assert lease is not None

    released_at = time.monotonic()
    assert first.release(lease, keep_s=2.0) is True
    key_data, key_stat = raw.get(first.layout.lease("report"))
    first.close()  # the session that held the lease ends; the kept lease must not depend on it

    assert json.loads(key_data) == {"holder": "instance-a", "keep_ms": 2000, "released": True, "token": lease.token}
    assert key_stat.ephemeralOwner == 0
    assert raw.get_children(first.layout.lease("report")) == []
    info = second.inspect("report")
    assert info is not None
    assert (info.token, info.released) == (lease.token, True)
    assert second.acquire("report", 10.0) is None

    taken = wait_for(lambda: second.acquire("report", 10.0), "the kept key to be free", 10.0)
    elapsed = time.monotonic() - released_at
    assert elapsed >= 2.0 - EARLY_SLACK_S
    assert taken.token > lease.token
    assert json.loads(raw.get(first.layout.lease("report"))[0]) == {}


@pytest.mark.zookeeper
def test_close_keeps_lease_until_ttl(shared_url: str, backends: Backends):
    holder = backends(shared_url)
    other = backends(shared_url, prefix=holder.prefix)
    lease = holder.acquire("report", 2.0)
    assert lease is not None

    holder.close()
    info = other.inspect("report")

    assert info is not None
    assert (info.token, info.released) == (lease.token, True)
    assert other.acquire("report", 10.0) is None
    taken = wait_for(lambda: other.acquire("report", 10.0), "the key to be free after the closed holder's TTL", 10.0)
    assert time.monotonic() >= lease.valid_until - EARLY_SLACK_S
    assert taken.token > lease.token


@pytest.mark.zookeeper
def test_expired_fire_states_are_swept(shared_url: str, backends: Backends, raw: KazooClient):
    backend = backends(shared_url)
    lease = backend.acquire("report", 10.0)
    assert lease is not None
    backend.begin_attempt(lease, "report", FIRE_TIME, max_attempts=1, keep_s=0.2)
    backend.begin_attempt(lease, "report", FIRE_TIME + 60, max_attempts=1, keep_s=KEEP_S)
    short_lived = backend.layout.fire("report", FIRE_TIME)
    assert raw.exists(short_lived) is not None

    time.sleep(0.3)  # the keep period itself must pass; the server's clock decides
    backend.trim_runs(max_per_job=100, max_age_s=KEEP_S * 1000)

    assert raw.exists(short_lived) is None
    assert backend.get_fire("report", FIRE_TIME) is None
    assert backend.get_fire("report", FIRE_TIME + 60) is not None


# -- Session expiry and connection states ---------------------------------------------------


@pytest.mark.zookeeper
def test_forced_session_expiry_loses_lease(shared_url: str, backends: Backends):
    holder = backends(shared_url)
    other = backends(shared_url, prefix=holder.prefix)
    lease = holder.acquire("report", 60.0)
    assert lease is not None
    holder.begin_attempt(lease, "report", FIRE_TIME, max_attempts=3, keep_s=KEEP_S)

    expired = expire_session(holder, hosts_of(shared_url))
    wait_for(lambda: current_session(holder) not in (None, expired), "kazoo to start a new session")

    with pytest.raises(LeaseLost):
        holder.renew(lease)
    with pytest.raises(LeaseLost):
        holder.finish_fire(run_record("report"), lease=lease, keep_s=KEEP_S)
    taken = other.acquire("report", 10.0)
    assert taken is not None, "the expired session's holder node must be gone at once, long before the TTL"
    assert time.monotonic() < lease.valid_until
    state = other.get_fire("report", FIRE_TIME)
    assert state is not None
    assert (state.attempts, state.outcome) == (1, None)


@pytest.mark.zookeeper
def test_scheduler_reports_suspended_and_lost(local_server: ZooKeeperServer, backends: Backends):
    backend = backends(local_server.url, session_timeout="20")
    job = StateRecorder()
    collector = RunCollector()
    scheduler = Scheduler(backend, instance_id="instance-a", lease_ttl_s=20.0, heartbeat_s=0.5, listeners=[collector])
    scheduler.add_job(job, "@every 3600s", name="long")
    scheduler.start()
    try:
        scheduler.trigger("long")
        wait_for(job.started.is_set, "the job to start")

        local_server.stop()  # kazoo detects the dropped connection: SUSPENDED
        wait_for(lambda: LeaseState.AT_RISK in job.states, "the job's context to report the lease at risk", 10.0)
        local_server.start()  # kazoo reconnects within the session
        wait_for(lambda: job.states[-1] is LeaseState.HELD, "the context to report the lease held again", 10.0)

        expire_session(backend, local_server.address)
        lost_from = time.monotonic()
        wait_for(lambda: LeaseState.LOST in job.states, "the context to report the lease lost", 10.0)
        notice_s = time.monotonic() - lost_from
    finally:
        job.finish.set()
        scheduler.stop(grace_s=10)

    assert job.states[:2] == [LeaseState.AT_RISK, LeaseState.HELD], job.states
    assert job.states[-1] is LeaseState.LOST
    assert job.states.count(LeaseState.LOST) == 1
    assert notice_s < 3.0, f"the lost lease was noticed {notice_s:.1f} s after the session expired"
    assert [record.outcome for record in collector.of("long")] == [Outcome.LEASE_LOST]


# -- Three-server ensemble ------------------------------------------------------------------


@pytest.mark.zookeeper
def test_ensemble_survives_connected_server_loss(backends: Backends):
    if not zookeeper_available():
        pytest.fail(f"this test starts a three-server ensemble; {no_zookeeper_message()}", pytrace=False)
    collector = RunCollector()
    job = StateRecorder()
    with ZooKeeperEnsemble() as ensemble:
        backend = backends(ensemble.url, session_timeout="20")
        scheduler = Scheduler(
            backend, instance_id="instance-a", lease_ttl_s=20.0, heartbeat_s=0.5, listeners=[collector]
        )
        scheduler.add_job(job, "@every 3600s", name="long")
        scheduler.add_job(lambda: None, "* * * * * *", name="tick")
        scheduler.start()
        try:
            scheduler.trigger("long")
            wait_for(job.started.is_set, "the long job to start")
            wait_for(lambda: collector.of("tick"), "a tick to complete")
            session_id = current_session(backend)
            assert session_id is not None
            connected = ensemble.member_serving(session_id)

            connected.stop()
            stopped_at = time.time()
            moved = wait_for(lambda: _serving_member(ensemble, session_id), "the session to move to another server")
            wait_for(
                lambda: [r for r in collector.of("tick") if r.fire_time > stopped_at + 1],
                "a tick completed after the server stopped",
            )
            session_after = current_session(backend)
            job.finish.set()
            wait_for(lambda: collector.of("long"), "the long job to finish")
        finally:
            job.finish.set()
            scheduler.stop(grace_s=10)

    assert moved is not connected
    assert session_after == session_id, "the client must reconnect within its session"
    assert LeaseState.LOST not in job.states
    assert [record.outcome for record in collector.of("long")] == [Outcome.SUCCEEDED]
    ticks_after = [r for r in collector.of("tick") if r.fire_time > stopped_at + 1]
    assert all(record.outcome is Outcome.SUCCEEDED for record in ticks_after)


def _serving_member(ensemble: ZooKeeperEnsemble, session_id: int) -> ZooKeeperServer | None:
    try:
        return ensemble.member_serving(session_id)
    except LookupError:
        return None


# -- Authentication and TLS -----------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server() -> Iterator[ZooKeeperServer]:
    """A server that closes sessions that do not authenticate (``enforce.auth`` with ``digest``)."""
    if not zookeeper_available():
        pytest.fail(f"this test needs a ZooKeeper server it can configure; {no_zookeeper_message()}", pytrace=False)
    with ZooKeeperServer(require_auth=True) as server:
        yield server


@pytest.mark.zookeeper
def test_digest_auth_protects_nodes(auth_server: ZooKeeperServer, backends: Backends, tmp_path: Path):
    prefix = unique_prefix()
    owner = backends(auth_server.url_for(user=("alice", PASSWORD)), prefix=prefix)
    lease = owner.acquire("report", 10.0)
    assert lease is not None

    secret_file = tmp_path / "password"
    secret_file.write_text(PASSWORD, encoding="utf-8")
    same_user = backends(auth_server.url_for(password_file=str(secret_file)).replace("://", "://alice@"), prefix=prefix)
    info = same_user.inspect("report")
    assert info is not None
    assert info.token == lease.token

    client = owner.kazoo_client
    acl = client.get_acls(owner.layout.lease("report"))[0]
    expected_id = make_digest_acl_credential("alice", PASSWORD)
    assert [(entry.id.scheme, entry.id.id) for entry in acl] == [("digest", expected_id)]

    intruder = backends(auth_server.url_for(user=("alice", "wrong-password")), prefix=prefix)
    with pytest.raises(BackendError) as raised:
        intruder.inspect("report")
    assert "denied" in str(raised.value)
    assert isinstance(raised.value.__cause__, NoAuthError)
    assert "wrong-password" not in str(raised.value)


@pytest.mark.zookeeper
def test_unauthenticated_client_rejected(auth_server: ZooKeeperServer, backends: Backends):
    anonymous = backends(auth_server.url, connect_timeout="5", request_timeout="2")

    with pytest.raises(BackendError) as raised:
        anonymous.acquire("report", 10.0)

    assert not isinstance(raised.value, LeaseLost)


@pytest.mark.zookeeper
def test_password_never_logged(auth_server: ZooKeeperServer, backends: Backends, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    backend = backends(auth_server.url_for(user=("alice", PASSWORD)))
    lease = backend.acquire("report", 10.0)
    assert lease is not None
    backend.close()
    unreachable = backends(f"zookeeper://alice:{quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}?connect_timeout=1")

    with pytest.raises(BackendUnavailable) as raised:
        unreachable.list_instances()

    assert PASSWORD not in caplog.text
    assert quote(PASSWORD, safe="") not in caplog.text
    assert PASSWORD not in str(raised.value)
    assert "alice:***@" in str(raised.value)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[ZooKeeperServer]:
    """A server that serves TLS only and requires a client certificate."""
    if not zookeeper_available():
        pytest.fail(f"this test needs a ZooKeeper server it can configure; {no_zookeeper_message()}", pytrace=False)
    with ZooKeeperServer(tls=True, tls_client_certs=True) as server:
        yield server


@pytest.mark.zookeeper
def test_tls_with_client_certificate(tls_server: ZooKeeperServer, backends: Backends):
    backend = backends(tls_server.url)

    lease = backend.acquire("report", 10.0)

    assert tls_server.url.count("use_ssl=true") == 1
    assert lease is not None
    assert backend.inspect("report") is not None


@pytest.mark.zookeeper
@pytest.mark.parametrize(
    "drop",
    [("use_ssl", "ca", "certfile", "keyfile"), ("certfile", "keyfile")],
    ids=["plain-to-tls-port", "no-client-certificate"],
)
def test_tls_server_rejects_incomplete_client(tls_server: ZooKeeperServer, backends: Backends, drop: tuple[str, ...]):
    options = dict(pair.split("=", 1) for pair in tls_server.url.partition("?")[2].split("&"))
    kept = {name: value for name, value in options.items() if name not in drop}
    url = f"zookeeper://{tls_server.address}?" + "&".join(f"{name}={value}" for name, value in kept.items())
    backend = backends(url.rstrip("?"), connect_timeout="2")

    with pytest.raises(BackendUnavailable) as raised:
        backend.acquire("report", 10.0)

    assert "could not connect" in str(raised.value)
