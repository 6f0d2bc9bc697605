"""etcd servers started for tests: one member or a three-member cluster on loopback ports.

:class:`EtcdServer` runs the ``etcd`` binary (Debian package ``etcd-server``) with its data
in a temporary directory, so a restart keeps every key, lease and revision. It can serve
TLS with certificates made by ``trustme``, require client certificates, and turn on
etcd's user and role authentication. :class:`EtcdCluster` runs three members that form one
cluster.

Administration (turning on authentication, listing leases) goes through etcd's JSON
gateway under ``/v3/`` on the client port, so it needs no gRPC client.

:func:`etcd_url` and :func:`get_etcd_url` pick the etcd server for a test run: the URL in
``PLANLAGT_TEST_ETCD_URL`` when it is set, else an ``etcd`` started from ``PATH``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import secrets
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

from .servers import (
    DEFAULT_STARTUP_TIMEOUT_S,
    ManagedServer,
    ServerSource,
    ServerStartError,
    ServerUnavailable,
    free_port,
)

__all__ = [
    "ETCD_URL_ENV",
    "EtcdCluster",
    "EtcdServer",
    "etcd_url",
    "get_etcd_url",
]

ETCD_URL_ENV = "PLANLAGT_TEST_ETCD_URL"
ADMIN_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 1.0
ROOT_USER = "root"
CLUSTER_SIZE = 3


def prefix_range_end(prefix: bytes) -> bytes:
    """Return the end of the etcd key range holding every key that starts with ``prefix``."""
    end = bytearray(prefix)
    for index in reversed(range(len(end))):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    return b"\x00"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EtcdServer(ManagedServer):
    """One ``etcd`` member on free loopback ports, with its data directory in a temporary directory.

    ``tls`` serves the client port with TLS (certificates from ``trustme``; the peer port
    stays plain). ``tls_client_certs`` also requires clients to show a certificate signed by
    the same CA. ``auth`` (user, password) creates that user with a role that may read and
    write keys starting with ``auth_prefix``, creates ``root`` with a random password, and
    turns authentication on once the server first responds. ``extra_args`` are appended to
    the command line (for example ``["--auth-token-ttl", "2"]``).

    A member of a cluster is built by :class:`EtcdCluster`, which passes ``member_name``,
    ``peer_port`` and ``initial_cluster``.
    """

    name = "etcd"

    def __init__(
        self,
        *,
        tls: bool = False,
        tls_client_certs: bool = False,
        auth: tuple[str, str] | None = None,
        auth_prefix: str = "planlagt",
        extra_args: tuple[str, ...] = (),
        member_name: str = "planlagt-test",
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        certificate_directory: Path | None = None,
        binary: str | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        super().__init__(startup_timeout_s=startup_timeout_s)
        if tls_client_certs and not tls:
            raise ValueError("tls_client_certs needs tls=True")
        self.tls = tls
        self.tls_client_certs = tls_client_certs
        self.auth = auth
        self.auth_prefix = auth_prefix
        self.extra_args = tuple(extra_args)
        self.member_name = member_name
        self.port = free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = initial_cluster or f"{member_name}=http://127.0.0.1:{self.peer_port}"
        self.cluster_token = cluster_token or f"planlagt-{secrets.token_hex(6)}"
        self.certificate_directory = certificate_directory
        self.binary = binary or shutil.which("etcd") or "etcd"
        self.root_password = secrets.token_hex(12)
        self._auth_enabled = False

    # -- Paths and URLs -----------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        """The CA certificate that signed the server and client certificates, PEM."""
        return self._certificates / "ca.pem"

    @property
    def client_cert_path(self) -> Path:
        """A client certificate signed by the CA, PEM (written only with ``tls=True``)."""
        return self._certificates / "client-cert.pem"

    @property
    def client_key_path(self) -> Path:
        """The private key of :attr:`client_cert_path`, PEM."""
        return self._certificates / "client-key.pem"

    @property
    def _certificates(self) -> Path:
        return self.certificate_directory or self.directory

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the client port."""
        return f"127.0.0.1:{self.port}"

    @property
    def client_url(self) -> str:
        """The client URL as etcd itself writes it (``http://`` or ``https://``)."""
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def url(self) -> str:
        """A backend URL that reaches this member with its credentials and certificates."""
        return self.url_for()

    def url_for(self, *, endpoints: list[str] | None = None, **options: str) -> str:
        """Return a backend URL for this member (or for ``endpoints``) with extra query options.

        TLS options are added for a TLS server, and the user's credentials when ``auth``
        is set. ``endpoints`` replaces the host list, for cluster URLs.
        """
        query: dict[str, str] = {}
        if self.tls:
            query["cacert"] = str(self.ca_path)
            if self.tls_client_certs:
                query["cert"] = str(self.client_cert_path)
                query["key"] = str(self.client_key_path)
        if self.auth is not None:
            query.setdefault("prefix", self.auth_prefix)
        query.update(options)
        scheme = "etcds" if self.tls else "etcd"
        hosts = ",".join(endpoints or [self.endpoint])
        base = f"{scheme}://{self._url_auth()}{hosts}"
        return base + (f"?{urlencode(query)}" if query else "")

    def _url_auth(self) -> str:
        if self.auth is None:
            return ""
        user, password = self.auth
        return f"{quote(user, safe='')}:{quote(password, safe='')}@"

    # -- Configuration ------------------------------------------------------------

    def _prepare(self, directory: Path) -> None:
        if self.tls and self.certificate_directory is None:
            write_certificates(directory)

    def _command(self, directory: Path) -> list[str]:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        command = [
            self.binary,
            "--name", self.member_name,
            "--data-dir", str(directory / "data"),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token,
        ]  # fmt: skip
        if self.tls:
            command += [
                "--cert-file", str(self._certificates / "server-cert.pem"),
                "--key-file", str(self._certificates / "server-key.pem"),
            ]  # fmt: skip
            if self.tls_client_certs:
                command += ["--client-cert-auth", "--trusted-ca-file", str(self.ca_path)]
        return command + list(self.extra_args)

    # -- Lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the member; on the first start with ``auth``, create the users and turn authentication on."""
        super().start()
        if self.auth is not None and not self._auth_enabled:
            self._enable_auth()
            self._auth_enabled = True

    def _responds(self) -> bool:
        try:
            answer = self._http("GET", "/health", None, timeout_s=HEALTH_TIMEOUT_S)
        except (OSError, ValueError):
            return False
        return answer.get("health") == "true"

    # -- Administration through the JSON gateway ---------------------------------

    def lease_ids(self) -> list[int]:
        """Return the ids of every lease the server holds now (``LeaseLeases``)."""
        answer = self.admin("/v3/lease/leases", {})
        return sorted(int(lease["ID"]) for lease in answer.get("leases", []))

    def lease_time_to_live(self, lease_id: int) -> int:
        """Return the remaining TTL of a lease in seconds, -1 when it does not exist."""
        answer = self.admin("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(answer.get("TTL", -1))

    def get(self, key: bytes) -> dict[str, Any] | None:
        """Return the key-value record of ``key`` as the gateway shows it (value base64), or None."""
        answer = self.admin("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return kvs[0] if kvs else None

    def count_keys(self, prefix: bytes) -> int:
        """Return how many keys start with ``prefix``."""
        body = {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix)), "count_only": True}
        return int(self.admin("/v3/kv/range", body).get("count", 0))

    def admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the gateway ``path`` as ``root`` (when auth is on) and return the JSON response."""
        token = self._root_token() if self._auth_enabled else None
        return self._http("POST", path, body, token=token)

    def _root_token(self) -> str:
        answer = self._http("POST", "/v3/auth/authenticate", {"name": ROOT_USER, "password": self.root_password})
        return str(answer["token"])

    def _enable_auth(self) -> None:
        assert self.auth is not None
        user, password = self.auth
        prefix = self.auth_prefix.encode()
        steps: list[tuple[str, dict[str, Any]]] = [
            ("/v3/auth/user/add", {"name": ROOT_USER, "password": self.root_password}),
            ("/v3/auth/role/add", {"name": ROOT_USER}),
            ("/v3/auth/user/grant", {"user": ROOT_USER, "role": ROOT_USER}),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/role/add", {"name": "planlagt"}),
            (
                "/v3/auth/role/grant",
                {
                    "name": "planlagt",
                    "perm": {"permType": "READWRITE", "key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix))},
                },
            ),
            ("/v3/auth/user/grant", {"user": user, "role": "planlagt"}),
            ("/v3/auth/enable", {}),
        ]
        for path, body in steps:
            self._http("POST", path, body)

    def _http(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        token: str | None = None,
        timeout_s: float = ADMIN_TIMEOUT_S,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.client_url}{path}", data=data, method=method)
        if token is not None:
            request.add_header("Authorization", token)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=self._ssl_context()) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise ServerStartError(
                f"etcd gateway {path} on {self.endpoint} failed: HTTP {exc.code} {exc.read()[:500]!r}"
            ) from exc

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_path))
        if self.tls_client_certs:
            context.load_cert_chain(str(self.client_cert_path), str(self.client_key_path))
        return context


def write_certificates(directory: Path) -> None:
    """Write a CA, a server certificate for 127.0.0.1 and localhost, and a client certificate (PEM)."""
    import trustme

    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    client = authority.issue_cert("planlagt-test-client")
    authority.cert_pem.write_to_path(str(directory / "ca.pem"))
    server.private_key_pem.write_to_path(str(directory / "server-key.pem"))
    server.cert_chain_pems[0].write_to_path(str(directory / "server-cert.pem"))
    client.private_key_pem.write_to_path(str(directory / "client-key.pem"))
    client.cert_chain_pems[0].write_to_path(str(directory / "client-cert.pem"))


class EtcdCluster:
    """Three etcd members on loopback ports that form one cluster.

    ``start()`` launches the members together (none responds before a quorum has joined)
    and returns once all three are healthy. Each member is an :class:`EtcdServer`, so a
    test can stop, pause, kill or restart one. ``url`` lists every member's endpoint.
    """

    def __init__(self, *, size: int = CLUSTER_SIZE, startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> None:
        peer_ports = [free_port() for _ in range(size)]
        names = [f"member-{index}" for index in range(size)]
        pairs = zip(names, peer_ports, strict=True)
        initial_cluster = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in pairs)
        # A token unique to this cluster, so a member never joins another test's cluster.
        cluster_token = f"planlagt-{secrets.token_hex(6)}"
        self.members = [
            EtcdServer(
                member_name=name,
                peer_port=port,
                initial_cluster=initial_cluster,
                cluster_token=cluster_token,
                startup_timeout_s=startup_timeout_s,
            )
            for name, port in zip(names, peer_ports, strict=True)
        ]

    @property
    def url(self) -> str:
        """A backend URL naming every member's endpoint."""
        return self.url_for()

    def url_for(self, **options: str) -> str:
        """Return the cluster URL with extra query options."""
        return self.members[0].url_for(endpoints=[member.endpoint for member in self.members], **options)

    def member_at(self, endpoint: str) -> EtcdServer:
        """Return the member serving ``endpoint`` (``127.0.0.1:PORT``)."""
        for member in self.members:
            if member.endpoint == endpoint:
                return member
        raise KeyError(f"no member of this cluster serves {endpoint}")

    def start(self) -> None:
        """Start every member at once and wait until all respond; stops them all on failure."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.members)) as pool:
            futures = [pool.submit(member.start) for member in self.members]
        errors = [future.exception() for future in futures if future.exception() is not None]
        if errors:
            self.close()
            raise ServerStartError(f"etcd cluster did not start: {errors[0]}") from errors[0]

    def close(self) -> None:
        """Stop every member and delete their directories."""
        for member in self.members:
            member.close()

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# -- Choosing the etcd server for a test run ----------------------------------------

_NO_ETCD_MESSAGE = (
    "no etcd server for the tests: set {env}=etcd://HOST:PORT to use a running server, "
    "install the etcd binary (Debian package etcd-server, for example `apt-get install etcd-server`) "
    "so the tests start their own, or start one with `docker compose -f conformance/docker-compose.yml up -d` "
    "and set {env} to its URL"
)


def etcd_available() -> bool:
    """Return whether the ``etcd`` binary is on ``PATH``."""
    return shutil.which("etcd") is not None


def no_etcd_message() -> str:
    """Return the message naming every way to provide an etcd server for the tests."""
    return _NO_ETCD_MESSAGE.format(env=ETCD_URL_ENV)


def _new_etcd_server() -> EtcdServer:
    if not etcd_available():
        raise ServerUnavailable(no_etcd_message())
    return EtcdServer()


_ETCD = ServerSource(ETCD_URL_ENV, _new_etcd_server)


def etcd_url() -> contextlib.AbstractContextManager[str]:
    """Return a context manager yielding the URL of an etcd server for a test run; it stops any server it started.

    Order: the ``PLANLAGT_TEST_ETCD_URL`` environment variable when set; else an ``etcd``
    from ``PATH``, started here. Raises ``ServerUnavailable`` naming every way to provide
    one when neither exists.
    """
    return _ETCD.url()


def get_etcd_url() -> str:
    """Return the URL of an etcd server for this process, in the order of :func:`etcd_url`.

    A server started here is shared by every later call and stopped when the interpreter
    exits (``atexit``). Raises ``ServerUnavailable`` naming every way to provide one.
    """
    return _ETCD.shared_url()
