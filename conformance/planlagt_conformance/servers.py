"""Coordination servers started for tests: real binaries on free loopback ports in temporary directories.

:class:`ManagedServer` is the shared base: it launches one server process, polls until the
server responds (with a deadline), and offers the faults tests inject (stop, pause with
SIGSTOP, resume with SIGCONT, restart on the same port). Subclasses write the server's
configuration and define how to check that it responds. Every process is stopped by its own
PID, never by name.

:func:`redis_url` and :func:`get_redis_url` pick the Redis server for a test run: the URL in
``PLANLAGT_TEST_REDIS_URL`` when it is set, else a ``redis-server`` started from ``PATH``.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

from planlagt_core.url import redact_url

__all__ = [
    "REDIS_URL_ENV",
    "ManagedServer",
    "RedisServer",
    "ServerSource",
    "ServerStartError",
    "ServerUnavailable",
    "free_port",
    "get_redis_url",
    "redis_url",
]

LOG = logging.getLogger(__name__)

REDIS_URL_ENV = "PLANLAGT_TEST_REDIS_URL"
DEFAULT_STARTUP_TIMEOUT_S = 20.0
DEFAULT_STOP_TIMEOUT_S = 10.0
READY_POLL_INTERVAL_S = 0.05
ServerT = TypeVar("ServerT", bound="ManagedServer")
LOG_TAIL_LINES = 20
MAX_UNIX_SOCKET_PATH = 107  # sun_path has room for 108 bytes on Linux, including the final NUL


class ServerStartError(RuntimeError):
    """A server process exited or did not respond before its startup deadline."""


class ServerUnavailable(RuntimeError):
    """No server could be found or started for a test run; the message lists the ways to provide one."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is found by binding port 0 and closing the socket, so another process can
    take it before the caller binds it. That race is accepted for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManagedServer(abc.ABC):
    """One server process owned by a test, in its own temporary directory.

    ``start()`` creates the directory on first use, writes the configuration, launches
    the process and returns once the server responds. ``stop()`` ends the process (SIGTERM,
    then SIGKILL after ``stop_timeout_s``) and keeps the directory, so ``start()`` again
    brings the server back on the same port with the same files. ``close()`` stops it and
    deletes the directory. Used as a context manager, the server is started on entry and
    closed on exit.
    """

    name = "server"

    def __init__(
        self,
        *,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None
        self._paused = False
        self._lock = threading.RLock()

    # -- What a subclass provides -----------------------------------------------

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Backend URL of the server, including any password (redact it before logging)."""

    @abc.abstractmethod
    def _prepare(self, directory: Path) -> None:
        """Write configuration and certificates into ``directory`` (called once, before the first start)."""

    @abc.abstractmethod
    def _command(self, directory: Path) -> list[str]:
        """Return the command line that runs the server in the foreground."""

    @abc.abstractmethod
    def _responds(self) -> bool:
        """Return whether the server responds to a trivial request now. Must not raise for a refused connection."""

    # -- Lifecycle ----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or None when it is not running."""
        process = self._process
        if process is None or process.poll() is not None:
            return None
        return process.pid

    @property
    def directory(self) -> Path:
        """The temporary directory of this server (created on first access)."""
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix=f"planlagt-{self.name}-"))
            self._prepare(self._directory)
        return self._directory

    @property
    def log_path(self) -> Path:
        """The file that receives the server's standard output and error."""
        return self.directory / f"{self.name}.log"

    def start(self) -> None:
        """Launch the server and wait until it responds.

        Raises ``ServerStartError`` with the tail of the server's log when the process
        exits early or does not respond within ``startup_timeout_s``; the process is then
        stopped. Does nothing when the server is already running.
        """
        with self._lock:
            if self.pid is not None:
                return
            directory = self.directory
            with open(self.log_path, "ab") as log_file:
                self._process = subprocess.Popen(
                    self._command(directory),
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._paused = False
            LOG.info("Started %s (pid %d) for %s", self.name, self._process.pid, redact_url(self.url))

            try:
                self._wait_until_responding()
            except BaseException:
                self.stop()
                raise

    def _wait_until_responding(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with status {process.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self._responds():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.name} (pid {process.pid}) did not respond within {self.startup_timeout_s} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(READY_POLL_INTERVAL_S)

    def stop(self) -> None:
        """Stop the server process by its PID: SIGTERM, then SIGKILL after ``stop_timeout_s``.

        A paused server is resumed first so it can handle SIGTERM. Safe to call when the
        server is not running.
        """
        with self._lock:
            process = self._process
            self._process = None
            if process is None or process.poll() is not None:
                return
            if self._paused:
                process.send_signal(signal.SIGCONT)
                self._paused = False
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                LOG.warning(
                    "%s (pid %d) did not exit %s s after SIGTERM; killing it",
                    self.name,
                    process.pid,
                    self.stop_timeout_s,
                )
                process.kill()
                process.wait()
            LOG.info("Stopped %s (pid %d), exit status %s", self.name, process.pid, process.returncode)

    def kill(self) -> None:
        """End the server at once with SIGKILL, as a crash would (no shutdown save)."""
        with self._lock:
            process = self._process
            self._process = None
            if process is None or process.poll() is not None:
                return
            process.kill()
            process.wait()
            self._paused = False
            LOG.info("Killed %s (pid %d)", self.name, process.pid)

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections stay open but get no response."""
        with self._lock:
            pid = self._require_pid("pause")
            os.kill(pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Let a paused server run again with SIGCONT."""
        with self._lock:
            pid = self._require_pid("resume")
            os.kill(pid, signal.SIGCONT)
            self._paused = False

    def restart(self) -> None:
        """Stop the server and start it again on the same port with the same directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its temporary directory. Safe to call more than once."""
        self.stop()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(log not readable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _require_pid(self, action: str) -> int:
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"cannot {action} {self.name}: it is not running")
        return pid

    def __enter__(self: ServerT) -> ServerT:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)} pid={self.pid}>"


class RedisServer(ManagedServer):
    """A ``redis-server`` on a free loopback port, configured for one test scenario.

    ``tls`` serves TLS only (``port 0``, ``tls-port``) with a CA and server certificate
    made by ``trustme``. ``tls_client_certs`` also requires clients to show a certificate
    signed by that CA. ``password`` sets ``requirepass`` for the default user.
    ``acl_user`` (name, password) adds an ACL user with every permission and turns the
    default user off. ``unix_socket`` serves a Unix socket only (``port 0``).
    ``persistence`` turns on the append-only file with a sync on every write, so a
    restart keeps every key. Without it nothing is saved, so a restart starts empty.
    """

    name = "redis"

    def __init__(
        self,
        tls: bool = False,
        password: str | None = None,
        acl_user: tuple[str, str] | None = None,
        unix_socket: bool = False,
        persistence: bool = False,
        *,
        tls_client_certs: bool = False,
        binary: str | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        super().__init__(startup_timeout_s=startup_timeout_s)
        if tls and unix_socket:
            raise ValueError("RedisServer serves either TLS or a Unix socket, not both")
        if tls_client_certs and not tls:
            raise ValueError("tls_client_certs needs tls=True")
        self.tls = tls
        self.tls_client_certs = tls_client_certs
        self.password = password
        self.acl_user = acl_user
        self.unix_socket = unix_socket
        self.persistence = persistence
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self.port = 0 if unix_socket else free_port()

    # -- Paths and URLs -----------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The Unix socket path (used only with ``unix_socket=True``)."""
        return self.directory / "redis.sock"

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
        """A URL that reaches this server with its credentials (and client certificate, if required)."""
        return self.url_for()

    def url_for(self, *, db: int | None = None, **options: str) -> str:
        """Return the server's URL with ``db`` and extra query options (TLS options are added for TLS)."""
        auth = self._url_auth()
        query: dict[str, str] = {}
        if self.tls:
            query["ssl_ca_certs"] = str(self.ca_path)
            if self.tls_client_certs:
                query["ssl_certfile"] = str(self.client_cert_path)
                query["ssl_keyfile"] = str(self.client_key_path)
        if self.unix_socket:
            if db is not None:
                query["db"] = str(db)
            base = f"unix://{auth}{self.socket_path}"
        else:
            scheme = "rediss" if self.tls else "redis"
            base = f"{scheme}://{auth}127.0.0.1:{self.port}" + (f"/{db}" if db is not None else "")
        query.update(options)
        return base + (f"?{urlencode(query)}" if query else "")

    def _url_auth(self) -> str:
        if self.acl_user is not None:
            user, secret = self.acl_user
            return f"{quote(user, safe='')}:{quote(secret, safe='')}@"
        if self.password is not None:
            return f":{quote(self.password, safe='')}@"
        return ""

    # -- Configuration ------------------------------------------------------------

    def _prepare(self, directory: Path) -> None:
        socket_path = directory / "redis.sock"
        if self.unix_socket and len(str(socket_path)) > MAX_UNIX_SOCKET_PATH:
            raise ServerStartError(
                f"Unix socket path {socket_path} is longer than {MAX_UNIX_SOCKET_PATH} characters; "
                "set TMPDIR to a shorter directory"
            )
        if self.tls:
            self._write_certificates(directory)
        lines = [
            "bind 127.0.0.1",
            f"dir {_quoted(str(directory))}",
            "daemonize no",
            "protected-mode yes",
            "loglevel notice",
            f"logfile {_quoted(str(directory / 'redis-server.log'))}",
            *self._listen_lines(directory),
            *self._persistence_lines(),
            *self._auth_lines(),
        ]
        (directory / "redis.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (directory / "redis.conf").chmod(0o600)

    def _listen_lines(self, directory: Path) -> list[str]:
        if self.unix_socket:
            return ["port 0", f"unixsocket {_quoted(str(self.socket_path))}", "unixsocketperm 700"]
        if not self.tls:
            return [f"port {self.port}"]
        return [
            "port 0",
            f"tls-port {self.port}",
            f"tls-cert-file {_quoted(str(directory / 'server-cert.pem'))}",
            f"tls-key-file {_quoted(str(directory / 'server-key.pem'))}",
            f"tls-ca-cert-file {_quoted(str(directory / 'ca.pem'))}",
            f"tls-auth-clients {'yes' if self.tls_client_certs else 'no'}",
        ]

    def _persistence_lines(self) -> list[str]:
        if self.persistence:
            return ['save ""', "appendonly yes", "appendfsync always"]
        return ['save ""', "appendonly no"]

    def _auth_lines(self) -> list[str]:
        lines = []
        if self.password is not None:
            lines.append(f"requirepass {_quoted(self.password)}")
        if self.acl_user is not None:
            user, secret = self.acl_user
            lines.append(f"user {user} on {_quoted('>' + secret)} ~* &* +@all")
            if self.password is None:
                lines.append("user default off")
        return lines

    def _write_certificates(self, directory: Path) -> None:
        import trustme

        authority = trustme.CA()
        server = authority.issue_cert("127.0.0.1", "localhost")
        client = authority.issue_cert("planlagt-test-client")
        authority.cert_pem.write_to_path(str(directory / "ca.pem"))
        server.private_key_pem.write_to_path(str(directory / "server-key.pem"))
        server.cert_chain_pems[0].write_to_path(str(directory / "server-cert.pem"))
        client.private_key_pem.write_to_path(str(directory / "client-key.pem"))
        client.cert_chain_pems[0].write_to_path(str(directory / "client-cert.pem"))

    def _command(self, directory: Path) -> list[str]:
        return [self.binary, str(directory / "redis.conf")]

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        # redis-server writes its own log file; the captured output holds only early failures.
        own_log = self.directory / "redis-server.log"
        parts = [super().log_tail(lines)]
        with contextlib.suppress(OSError):
            parts.append("\n".join(own_log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]))
        return "\n".join(part for part in parts if part)

    # -- Clients ------------------------------------------------------------------

    def client(self, db: int = 0, **kwargs: Any) -> Any:
        """Return a ``redis.Redis`` client for administration (flush, inspect keys), decoding to str.

        Built from the server's parts, not from :attr:`url`, so it works for every variant.
        """
        import redis

        options: dict[str, Any] = {
            "db": db,
            "decode_responses": True,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
            **self._client_auth(),
        }
        if self.unix_socket:
            options["unix_socket_path"] = str(self.socket_path)
        else:
            options.update(host="127.0.0.1", port=self.port)
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.ca_path))
            if self.tls_client_certs:
                options.update(ssl_certfile=str(self.client_cert_path), ssl_keyfile=str(self.client_key_path))
        options.update(kwargs)
        return redis.Redis(**options)

    def _client_auth(self) -> dict[str, str]:
        if self.acl_user is not None:
            return {"username": self.acl_user[0], "password": self.acl_user[1]}
        if self.password is not None:
            return {"password": self.password}
        return {}

    def _responds(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = self.client(socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False
        finally:
            client.close()


def _quoted(value: str) -> str:
    """Quote a value for redis.conf (double quotes, backslash escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# -- Choosing the Redis server for a test run ---------------------------------------

_NO_REDIS_MESSAGE = (
    "no Redis server for the tests: set {env}=redis://HOST:PORT to use a running server, "
    "install redis-server (for example `apt-get install redis-server`) so the tests start their own, "
    "or start one with `docker compose -f conformance/docker-compose.yml up -d` and set {env} to its URL"
)


class ServerSource(Generic[ServerT]):
    """Where tests get one kind of server: a URL from an environment variable, else a server started here.

    ``new_server`` returns an unstarted server, or raises ``ServerUnavailable`` naming every
    way to provide one when this machine cannot start it.
    """

    def __init__(self, env: str, new_server: Callable[[], ServerT]) -> None:
        self.env = env
        self._new_server = new_server
        self._shared: ServerT | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def url(self) -> Iterator[str]:
        """Yield the URL from the environment variable, else that of a server started and stopped here."""
        configured = os.environ.get(self.env)
        if configured:
            yield configured
            return
        with self._new_server() as server:
            yield server.url

    def shared_url(self) -> str:
        """Return the URL from the environment variable, else that of one server shared by this process.

        The shared server starts on the first call and stops when the interpreter exits
        (``atexit``).
        """
        configured = os.environ.get(self.env)
        if configured:
            return configured
        with self._lock:
            if self._shared is None:
                server = self._new_server()
                server.start()
                atexit.register(server.close)
                self._shared = server
            return self._shared.url


def _new_redis_server() -> RedisServer:
    if shutil.which("redis-server") is None:
        raise ServerUnavailable(_NO_REDIS_MESSAGE.format(env=REDIS_URL_ENV))
    return RedisServer()


_REDIS = ServerSource(REDIS_URL_ENV, _new_redis_server)


def redis_url() -> contextlib.AbstractContextManager[str]:
    """Return a context manager yielding the URL of a Redis server for a test run; it stops any server it started.

    Order: the ``PLANLAGT_TEST_REDIS_URL`` environment variable when set; else a
    ``redis-server`` from ``PATH``, started here. Raises ``ServerUnavailable`` naming
    every way to provide one when neither exists.
    """
    return _REDIS.url()


def get_redis_url() -> str:
    """Return the URL of a Redis server for this process, in the order of :func:`redis_url`.

    A server started here is shared by every later call and stopped when the interpreter
    exits (``atexit``). Raises ``ServerUnavailable`` naming every way to provide one.
    """
    return _REDIS.shared_url()
