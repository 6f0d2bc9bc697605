"""ZooKeeper servers started for tests: one server or a three-server ensemble on loopback ports.

:class:`ZooKeeperServer` runs the jars of the Debian package ``zookeeper`` (3.8) with
``java``, a generated ``zoo.cfg`` and its data in a temporary directory, so a restart keeps
every node, session and zxid. It can serve TLS only (certificates made by ``trustme``),
require client certificates, and require clients to authenticate. :class:`ZooKeeperEnsemble`
runs three servers that form one ensemble.

Health checks and session lookups use ZooKeeper's four-letter words (``srvr``, ``cons``)
on the client port, so they need no client library.

:func:`zookeeper_url` and :func:`get_zookeeper_url` pick the ZooKeeper server for a test
run: the URL in ``PLANLAGT_TEST_ZOOKEEPER_URL`` when it is set, else a server started from
the Debian package's jars.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
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
    "ZOOKEEPER_URL_ENV",
    "EnsembleMember",
    "ZooKeeperEnsemble",
    "ZooKeeperServer",
    "get_zookeeper_url",
    "no_zookeeper_message",
    "zookeeper_available",
    "zookeeper_classpath",
    "zookeeper_url",
]

ZOOKEEPER_URL_ENV = "PLANLAGT_TEST_ZOOKEEPER_URL"

JAVA_DIRECTORY = Path("/usr/share/java")
ZOOKEEPER_JAR = JAVA_DIRECTORY / "zookeeper.jar"
"""The Debian package's server jar; its manifest's ``Class-Path`` names its dependencies in the same folder."""

EXTRA_JARS = (
    "slf4j-simple.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-unix-common.jar",
)
"""Jars added when present: a logging binding (the package ships none, so the server would log
nothing), and the Netty parts that TLS needs but the manifest leaves out."""

MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
JAVA_OPTIONS = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
)

DEFAULT_TICK_TIME_MS = 2000
"""ZooKeeper's default tick: session timeouts are granted between 2 and 20 ticks."""

DEFAULT_MAX_SESSION_TIMEOUT_MS = 120_000
"""Maximum session timeout the test servers grant: above the conformance suite's longest lease TTL (60 s)."""

FOUR_LETTER_WORDS = "ruok,srvr,cons,conf,stat"
FOUR_LETTER_TIMEOUT_S = 1.0
ENSEMBLE_SIZE = 3
SERVING_MODES = ("standalone", "leader", "follower")
SESSION_ID_RE = re.compile(r"sid=0x([0-9a-f]+)")


@dataclass(frozen=True)
class EnsembleMember:
    """One server's place in an ensemble: its id and the ports of every server."""

    server_id: int
    servers: tuple[tuple[int, int, int], ...]
    """``(quorum port, election port, client port)`` of each server, in server id order from 1."""


def zookeeper_classpath() -> str:
    """Return the classpath of the Debian package's server: its jar and the extras that are installed."""
    extras = [JAVA_DIRECTORY / name for name in EXTRA_JARS if (JAVA_DIRECTORY / name).is_file()]
    return os.pathsep.join(str(path) for path in [ZOOKEEPER_JAR, *extras])


class ZooKeeperServer(ManagedServer):
    """A ZooKeeper server on a free loopback port, configured for one test scenario.

    ``tick_time_ms`` is the tick (default 2000 ms); the server grants session timeouts from
    ``min_session_timeout_ms`` (default 2 ticks) to ``max_session_timeout_ms`` (default
    120 s). ``tls`` serves TLS only, on ``secureClientPort``, with a CA and server
    certificate made by ``trustme``; ``tls_client_certs`` also requires clients to show a
    certificate signed by that CA. ``require_auth`` makes the server close sessions that do
    not authenticate (ZooKeeper's ``enforce.auth``, scheme ``digest``). ``member`` makes it
    one server of an ensemble (see :class:`ZooKeeperEnsemble`).

    ``forceSync=no`` skips the fsync of every transaction: a stopped or killed server keeps
    every write (the operating system still has it), a crashed machine might not.
    """

    name = "zookeeper"

    def __init__(
        self,
        *,
        tick_time_ms: int = DEFAULT_TICK_TIME_MS,
        min_session_timeout_ms: int | None = None,
        max_session_timeout_ms: int = DEFAULT_MAX_SESSION_TIMEOUT_MS,
        tls: bool = False,
        tls_client_certs: bool = False,
        require_auth: bool = False,
        member: EnsembleMember | None = None,
        java: str | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        super().__init__(startup_timeout_s=startup_timeout_s)
        if tls_client_certs and not tls:
            raise ValueError("tls_client_certs needs tls=True")
        if tls and member is not None:
            raise ValueError("ZooKeeperServer serves TLS as a single server only")
        self.tick_time_ms = tick_time_ms
        self.min_session_timeout_ms = min_session_timeout_ms if min_session_timeout_ms is not None else 2 * tick_time_ms
        self.max_session_timeout_ms = max_session_timeout_ms
        self.tls = tls
        self.tls_client_certs = tls_client_certs
        self.require_auth = require_auth
        self.member = member
        self.java = java or shutil.which("java") or "java"
        self.port = member.servers[member.server_id - 1][2] if member is not None else free_port()

    # -- Paths and URLs -----------------------------------------------------------

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the client port."""
        return f"127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        """The CA certificate that signed the server (and client) certificates, PEM."""
        return self.directory / "ca.pem"

    @property
    def client_cert_path(self) -> Path:
        """A client certificate signed by the CA, PEM (written only with ``tls=True``)."""
        return self.directory / "client-cert.pem"

    @property
    def client_key_path(self) -> Path:
        """The private key of :attr:`client_cert_path`, PEM."""
        return self.directory / "client-key.pem"

    @property
    def url(self) -> str:
        """A URL that reaches this server (with the TLS options when it serves TLS)."""
        return self.url_for()

    def url_for(self, *, user: tuple[str, str] | None = None, chroot: str = "", **options: str) -> str:
        """Return the server's URL with digest credentials, a chroot and extra query options."""
        return _url([self.address], user=user, chroot=chroot, options={**self._tls_options(), **options})

    def _tls_options(self) -> dict[str, str]:
        if not self.tls:
            return {}
        options = {"use_ssl": "true", "ca": str(self.ca_path)}
        if self.tls_client_certs:
            options.update(certfile=str(self.client_cert_path), keyfile=str(self.client_key_path))
        return options

    # -- Configuration ------------------------------------------------------------

    def _prepare(self, directory: Path) -> None:
        data = directory / "data"
        data.mkdir()
        if self.member is not None:
            (data / "myid").write_text(f"{self.member.server_id}\n", encoding="ascii")
        if self.tls:
            write_certificates(directory)
        (directory / "zoo.cfg").write_text("\n".join(self._config_lines(directory)) + "\n", encoding="utf-8")

    def _config_lines(self, directory: Path) -> list[str]:
        lines = [
            f"tickTime={self.tick_time_ms}",
            f"minSessionTimeout={self.min_session_timeout_ms}",
            f"maxSessionTimeout={self.max_session_timeout_ms}",
            f"dataDir={directory / 'data'}",
            "forceSync=no",
            "admin.enableServer=false",
            f"4lw.commands.whitelist={FOUR_LETTER_WORDS}",
            "autopurge.purgeInterval=0",
        ]
        lines += self._port_lines(directory)
        if self.require_auth:
            lines += ["enforce.auth.enabled=true", "enforce.auth.schemes=digest"]
        if self.member is not None:
            lines += ["initLimit=10", "syncLimit=5", "standaloneEnabled=false"]
            lines += [
                f"server.{index}=127.0.0.1:{quorum}:{election}"
                for index, (quorum, election, _) in enumerate(self.member.servers, start=1)
            ]
        return lines

    def _port_lines(self, directory: Path) -> list[str]:
        if not self.tls:
            return [f"clientPort={self.port}", "clientPortAddress=127.0.0.1"]
        return [
            f"secureClientPort={self.port}",
            "secureClientPortAddress=127.0.0.1",
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            f"ssl.keyStore.location={directory / 'server.pem'}",
            "ssl.keyStore.type=PEM",
            f"ssl.trustStore.location={directory / 'ca.pem'}",
            "ssl.trustStore.type=PEM",
            f"ssl.clientAuth={'need' if self.tls_client_certs else 'none'}",
        ]

    def _command(self, directory: Path) -> list[str]:
        return [self.java, *JAVA_OPTIONS, "-cp", zookeeper_classpath(), MAIN_CLASS, str(directory / "zoo.cfg")]

    # -- Four-letter words ----------------------------------------------------------

    def four_letter_word(self, command: str) -> str:
        """Send a four-letter word (``srvr``, ``cons``...) and return the reply; raises ``OSError`` when unreachable."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=FOUR_LETTER_TIMEOUT_S) as raw:
            if not self.tls:
                return _exchange(raw, command)
            with self._ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as secure:
                return _exchange(secure, command)

    def mode(self) -> str | None:
        """Return the server's mode (``standalone``, ``leader``, ``follower``), or None while it serves no clients."""
        try:
            reply = self.four_letter_word("srvr")
        except OSError:
            return None
        match = re.search(r"^Mode: (\w+)", reply, re.MULTILINE)
        return match.group(1) if match else None

    def session_ids(self) -> set[int]:
        """Return the ids of the sessions connected to this server now."""
        return {int(found, 16) for found in SESSION_ID_RE.findall(self.four_letter_word("cons"))}

    def _responds(self) -> bool:
        if self.member is not None:
            # An ensemble member serves no clients before a quorum forms; the ensemble waits for that.
            return self._answers_ruok()
        return self.mode() in SERVING_MODES

    def _answers_ruok(self) -> bool:
        try:
            return self.four_letter_word("ruok") == "imok"
        except OSError:
            return False

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        if self.tls_client_certs:
            context.load_cert_chain(str(self.client_cert_path), str(self.client_key_path))
        return context


def write_certificates(directory: Path) -> None:
    """Write a CA, a server certificate for 127.0.0.1 and localhost, and a client certificate.

    ZooKeeper's PEM key store reads only PKCS#8 private keys, so the server's key is
    written in that form, followed by its certificate chain, in ``server.pem``.
    """
    import trustme
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain = b"".join(blob.bytes() for blob in server.cert_chain_pems)
    (directory / "server.pem").write_bytes(pkcs8 + chain)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = ca.issue_cert("planlagt-client")
    client.private_key_pem.write_to_path(str(directory / "client-key.pem"))
    client.cert_chain_pems[0].write_to_path(str(directory / "client-cert.pem"))


class ZooKeeperEnsemble:
    """Three ZooKeeper servers on loopback ports that form one ensemble.

    ``start()`` launches the servers together (none serves clients before a quorum has
    formed) and returns once each is a leader or a follower. Each server is a
    :class:`ZooKeeperServer`, so a test can stop, pause, kill or restart one; two of three
    keep the quorum. ``url`` lists every server.
    """

    def __init__(
        self,
        *,
        size: int = ENSEMBLE_SIZE,
        tick_time_ms: int = DEFAULT_TICK_TIME_MS,
        max_session_timeout_ms: int = DEFAULT_MAX_SESSION_TIMEOUT_MS,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        self.startup_timeout_s = startup_timeout_s
        ports = tuple((free_port(), free_port(), free_port()) for _ in range(size))
        self.members = [
            ZooKeeperServer(
                tick_time_ms=tick_time_ms,
                max_session_timeout_ms=max_session_timeout_ms,
                member=EnsembleMember(server_id=index, servers=ports),
                startup_timeout_s=startup_timeout_s,
            )
            for index in range(1, size + 1)
        ]

    @property
    def url(self) -> str:
        """A backend URL naming every server."""
        return self.url_for()

    def url_for(self, *, user: tuple[str, str] | None = None, chroot: str = "", **options: str) -> str:
        """Return the ensemble URL with digest credentials, a chroot and extra query options."""
        return _url([member.address for member in self.members], user=user, chroot=chroot, options=options)

    def member_serving(self, session_id: int) -> ZooKeeperServer:
        """Return the server the session ``session_id`` is connected to; raises ``LookupError`` if none is."""
        for member in self.members:
            with contextlib.suppress(OSError):
                if member.pid is not None and session_id in member.session_ids():
                    return member
        raise LookupError(f"no server of this ensemble has session 0x{session_id:x} connected")

    def start(self) -> None:
        """Start every server at once and wait until all serve clients; stops them all on failure."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.members)) as pool:
            futures = [pool.submit(member.start) for member in self.members]
        errors = [future.exception() for future in futures if future.exception() is not None]
        if not errors:
            errors = [error for error in [self._wait_for_quorum()] if error is not None]
        if errors:
            self.close()
            raise ServerStartError(f"ZooKeeper ensemble did not start: {errors[0]}") from errors[0]

    def wait_until_serving(self, member: ZooKeeperServer) -> None:
        """Wait until ``member`` (after a restart) is a leader or follower again; raises ``ServerStartError``."""
        error = self._wait_for_quorum([member])
        if error is not None:
            raise error

    def _wait_for_quorum(self, members: list[ZooKeeperServer] | None = None) -> ServerStartError | None:
        waiting = list(members or self.members)
        deadline = time.monotonic() + self.startup_timeout_s
        while waiting and time.monotonic() < deadline:
            waiting = [member for member in waiting if member.mode() not in SERVING_MODES]
            time.sleep(0.05)
        if not waiting:
            return None
        tails = "\n".join(f"{member.log_path}:\n{member.log_tail()}" for member in waiting)
        return ServerStartError(
            f"{len(waiting)} ZooKeeper servers joined no quorum within {self.startup_timeout_s} s\n{tails}"
        )

    def close(self) -> None:
        """Stop every server and delete their directories."""
        for member in self.members:
            member.close()

    def __enter__(self) -> ZooKeeperEnsemble:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _url(addresses: list[str], *, user: tuple[str, str] | None, chroot: str, options: dict[str, str]) -> str:
    auth = f"{quote(user[0], safe='')}:{quote(user[1], safe='')}@" if user is not None else ""
    query = f"?{urlencode(options)}" if options else ""
    return f"zookeeper://{auth}{','.join(addresses)}{chroot}{query}"


def _exchange(connection: socket.socket, command: str) -> str:
    connection.sendall(command.encode("ascii"))
    reply = b""
    while chunk := connection.recv(65536):
        reply += chunk
    return reply.decode("utf-8", errors="replace")


# -- Choosing the ZooKeeper server for a test run -----------------------------------

_NO_ZOOKEEPER_MESSAGE = (
    "no ZooKeeper server for the tests: set {env}=zookeeper://HOST:PORT to use a running server "
    "(its maxSessionTimeout must be at least 60000, the suite's longest lease TTL), "
    "install the Debian package zookeeper and a Java runtime (for example `apt-get install zookeeper`) "
    "so the tests start their own, or start one with `docker compose -f conformance/docker-compose.yml up -d` "
    "and set {env} to its URL"
)


def zookeeper_available() -> bool:
    """Return whether the Debian package's server jar and ``java`` are installed."""
    return ZOOKEEPER_JAR.is_file() and shutil.which("java") is not None


def no_zookeeper_message() -> str:
    """Return the message naming every way to provide a ZooKeeper server for the tests."""
    return _NO_ZOOKEEPER_MESSAGE.format(env=ZOOKEEPER_URL_ENV)


def _new_zookeeper_server() -> ZooKeeperServer:
    if not zookeeper_available():
        raise ServerUnavailable(no_zookeeper_message())
    return ZooKeeperServer()


_ZOOKEEPER = ServerSource(ZOOKEEPER_URL_ENV, _new_zookeeper_server)


def zookeeper_url() -> contextlib.AbstractContextManager[str]:
    """Return a context manager yielding the URL of a ZooKeeper server for a test run; it stops any server it started.

    Order: the ``PLANLAGT_TEST_ZOOKEEPER_URL`` environment variable when set; else a server
    started here from the Debian package's jars. Raises ``ServerUnavailable`` naming every
    way to provide one when neither exists.
    """
    return _ZOOKEEPER.url()


def get_zookeeper_url() -> str:
    """Return the URL of a ZooKeeper server for this process, in the order of :func:`zookeeper_url`.

    A server started here is shared by every later call and stopped when the interpreter
    exits (``atexit``). Raises ``ServerUnavailable`` naming every way to provide one.
    """
    return _ZOOKEEPER.shared_url()
