"""One kazoo client and its ZooKeeper session, connected on first use.

Every request of the backend goes through :class:`ZooKeeperSession`, which waits for it at
most ``request_timeout`` seconds and translates kazoo's errors. kazoo keeps one session
across connections. When a connection drops, it reports SUSPENDED and reconnects to any
host of the ensemble within the same session. When the server reports that the session
expired, kazoo reports LOST and starts a new session, without the old one's ephemeral nodes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.client import KazooClient, TransactionRequest
from kazoo.exceptions import RolledBackError, RuntimeInconsistency
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.interfaces import IAsyncResult
from kazoo.protocol.serialization import Connect
from kazoo.protocol.states import KazooState, KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import CREATOR_ALL_ACL

from planlagt_core.errors import BackendError, BackendUnavailable

from .errors import CONDITION_ERRORS, translate_errors
from .options import ZooKeeperOptions

__all__ = ["ConnectionState", "ZooKeeperSession", "first_failure", "request"]

LOG = logging.getLogger(__name__)

RECONNECT_FIRST_DELAY_S = 0.1
RECONNECT_MAX_DELAY_S = 1.0
"""Maximum pause between two rounds of connection attempts over every host.

kazoo's default grows to an hour; a short one lets a restarted server or a surviving
ensemble member take the session back within a second.
"""

MS_PER_S = 1000
REDACTED = "***"

AsyncStart = Callable[[KazooClient], IAsyncResult]
"""Starts one asynchronous kazoo request on the client it is given."""


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger handed to kazoo: it writes to ``kazoo.client`` with the given secrets replaced by ``***``.

    kazoo (checked with 2.11) logs every request it sends at DEBUG, including the digest
    authentication request with ``user:password`` in clear text.
    """

    def __init__(self, secrets: Sequence[str | None]) -> None:
        super().__init__(logging.getLogger("kazoo.client"), {})
        self._secrets = [secret for secret in secrets if secret]

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, "%s", text, **kwargs)


class ConnectionState:
    """The state of the backend's session, in kazoo's terms."""

    CONNECTED = "connected"
    """Connected: requests reach the server, and the session's ephemeral nodes exist."""

    SUSPENDED = "suspended"
    """The connection dropped: the session may still be alive; kazoo is reconnecting."""

    EXPIRED = "expired"
    """The server reported that the session expired: its ephemeral nodes are gone."""


def request(method: str, *args: Any, **kwargs: Any) -> AsyncStart:
    """Return a start that calls ``client.METHOD_async(*args, **kwargs)``, such as ``request("get", path)``."""

    def start(client: KazooClient) -> IAsyncResult:
        return getattr(client, f"{method}_async")(*args, **kwargs)

    return start


def first_failure(results: Sequence[Any]) -> tuple[int, Exception] | None:
    """Return ``(index, error)`` of the operation that made a transaction fail, or None if it committed.

    ZooKeeper rolls back every other operation of a failed transaction; kazoo reports those
    as ``RolledBackError`` or ``RuntimeInconsistency``.
    """
    for index, result in enumerate(results):
        if isinstance(result, Exception) and not isinstance(result, (RolledBackError, RuntimeInconsistency)):
            return index, result
    return None


class ZooKeeperSession:
    """A kazoo client connected on first use, with request timeouts and error translation.

    ``url`` is the redacted backend URL used in messages. Safe to use from several threads.
    """

    def __init__(self, options: ZooKeeperOptions, url: str) -> None:
        self.options = options
        self.url = url
        self._lock = threading.Lock()
        self._client: KazooClient | None = None
        self._pid = os.getpid()
        self._closed = False
        self._negotiated_timeout_s: float | None = None
        self._timeout_known = threading.Event()
        self._interrupted = False

    # -- Lifecycle ------------------------------------------------------------------

    def client(self, operation: str) -> KazooClient:
        """Return the connected client, connecting first when needed.

        Raises ``BackendError`` after :meth:`close`, and ``BackendUnavailable`` when no host
        responded within ``connect_timeout`` per host.
        """
        with self._lock:
            if self._closed:
                raise BackendError(
                    f"backend {self.url} is closed; create a new one with planlagt_core.connect()", backend=self.url
                )
            if self._client is not None and self._pid != os.getpid():
                # A forked child shares the parent's socket: it must neither use nor close
                # that client, or it would act in (or end) the parent's session.
                LOG.info("Process %d was forked from %d: it starts a session of its own", os.getpid(), self._pid)
                self._client = None
            if self._client is None:
                self._client = self._connect(operation)
                self._pid = os.getpid()
            return self._client

    def close(self) -> None:
        """End the session and stop kazoo's threads. Safe to call more than once.

        Ending the session deletes its ephemeral nodes at once: held leases are freed and
        this client's memberships disappear.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, self._client = self._client, None
        if client is None or self._pid != os.getpid():
            return  # nothing to close, or the parent process's client
        try:
            client.stop()
        finally:
            client.close()
        LOG.debug("Closed the ZooKeeper session of %s", self.url)

    def _connect(self, operation: str) -> KazooClient:
        retry = KazooRetry(max_tries=-1, delay=RECONNECT_FIRST_DELAY_S, max_delay=RECONNECT_MAX_DELAY_S)
        client = KazooClient(
            **self.options.client_kwargs(),
            default_acl=CREATOR_ALL_ACL if self.options.auth_data else None,
            connection_retry=retry,
            command_retry=KazooRetry(max_tries=0),
            logger=RedactingLogger([self.options.password, self.options.keyfile_password]),
        )
        _record_negotiated_timeout(client, self._set_negotiated_timeout)
        _limit_connection_attempts(client, self.options.connect_timeout_s)
        client.add_listener(self._log_state_change)

        wait_s = self.options.connect_timeout_s * len(self.options.hosts)
        try:
            client.start(timeout=wait_s)
        except KazooTimeoutError as exc:
            # kazoo stops and closes the client itself before raising this.
            raise BackendUnavailable(
                f"could not connect to ZooKeeper at {self.url} within {wait_s:g} s "
                f"(during {operation}); check that a server listens at {self.options.hosts_text}",
                backend=self.url,
            ) from exc

        LOG.info("Connected to ZooKeeper at %s: session 0x%x", self.url, client.client_id[0])
        return client

    # -- Session state --------------------------------------------------------------

    @property
    def negotiated_timeout_s(self) -> float:
        """The session timeout the server granted, in seconds; connects first when needed."""
        self.client("read the session timeout")
        # kazoo reports the connection before _connect returns the timeout to the recorder.
        if not self._timeout_known.wait(self.options.request_timeout_s):
            raise BackendError(
                f"kazoo connected to {self.url} without reporting the session timeout it negotiated", backend=self.url
            )
        timeout = self._negotiated_timeout_s
        assert timeout is not None
        return timeout

    def _set_negotiated_timeout(self, timeout_s: float) -> None:
        if timeout_s != self._negotiated_timeout_s:
            LOG.info(
                "ZooKeeper at %s granted a session timeout of %.3f s (requested %.3f s)",
                self.url,
                timeout_s,
                self.options.session_timeout_s,
            )
        self._negotiated_timeout_s = timeout_s
        self._timeout_known.set()

    def state(self) -> str:
        """Return a :class:`ConnectionState` value for the current session. Does not connect."""
        client = self._client
        if client is None or self._closed or self._pid != os.getpid():
            return ConnectionState.SUSPENDED
        if client.client_state == KeeperState.EXPIRED_SESSION:
            return ConnectionState.EXPIRED
        if client.state == KazooState.CONNECTED:
            return ConnectionState.CONNECTED
        return ConnectionState.SUSPENDED

    def _log_state_change(self, state: str) -> None:
        # Called on kazoo's connection thread: it must not block or make requests.
        if state == KazooState.SUSPENDED:
            self._interrupted = True
            LOG.warning("ZooKeeper connection of %s suspended: leases are at risk until it reconnects", self.url)
        elif state == KazooState.LOST:
            self._interrupted = True
            if not self._closed:
                LOG.warning("ZooKeeper session of %s lost (expired): its leases are gone", self.url)
        elif self._interrupted:
            self._interrupted = False
            LOG.info("ZooKeeper connection of %s is connected again", self.url)

    # -- Requests -------------------------------------------------------------------

    def call(self, operation: str, start: AsyncStart, *, timeout_s: float | None = None) -> Any:
        """Run one request and return its result, waiting at most ``timeout_s`` (default ``request_timeout``).

        ``NoNodeError``, ``NodeExistsError``, ``BadVersionError`` and ``NotEmptyError``
        propagate as they are; other errors are translated (see ``translate_errors``).
        """
        client = self.client(operation)
        wait_s = self.options.request_timeout_s if timeout_s is None else min(timeout_s, self.options.request_timeout_s)
        with translate_errors(self.url, operation):
            return start(client).get(timeout=wait_s)

    def call_all(self, operation: str, starts: Sequence[AsyncStart]) -> list[Any]:
        """Send several requests at once and return their results in order.

        A request that failed with one of the errors :meth:`call` lets through has the
        exception object in its place; any other error is raised, translated.
        """
        client = self.client(operation)
        deadline = time.monotonic() + self.options.request_timeout_s
        with translate_errors(self.url, operation):
            pending = [start(client) for start in starts]
            results = []
            for result in pending:
                result.wait(max(0.0, deadline - time.monotonic()))
                results.append(_result_or_condition_error(result))
            return results

    def commit(self, operation: str, build: Callable[[TransactionRequest], None]) -> list[Any]:
        """Commit one transaction built by ``build`` and return kazoo's per-operation results."""
        client = self.client(operation)
        transaction = client.transaction()
        build(transaction)
        with translate_errors(self.url, operation):
            return transaction.commit_async().get(timeout=self.options.request_timeout_s)


def _result_or_condition_error(result: IAsyncResult) -> Any:
    if not result.ready():
        raise KazooTimeoutError("no reply within the request timeout")
    try:
        return result.get(block=False)
    except CONDITION_ERRORS as exc:
        return exc


def _record_negotiated_timeout(client: KazooClient, record: Callable[[float], None]) -> None:
    """Make ``client`` call ``record(seconds)`` with the session timeout the server grants on each connection.

    NOTE: kazoo (checked with 2.11) keeps the negotiated timeout only in a local variable
    of ``ConnectionHandler._connect``, which returns the read timeout it derives from it
    (two thirds of the negotiated timeout, in ms). This wraps that private method of this
    one client; ``test_zookeeper_backend`` checks the value against a server's minimum.
    """
    connection = client._connection
    connect = connection._connect

    def connect_and_record(host: str, hostip: str, port: int) -> tuple[float, float]:
        read_timeout_ms, connect_timeout_ms = connect(host, hostip, port)
        record(round(read_timeout_ms * 3 / 2) / MS_PER_S)
        return read_timeout_ms, connect_timeout_ms

    connection._connect = connect_and_record


def _limit_connection_attempts(client: KazooClient, limit_s: float) -> None:
    """Make each connection attempt of ``client`` give up after ``limit_s`` seconds.

    kazoo (checked with 2.11) waits up to the whole requested session timeout for the TCP
    connection and, divided by the number of hosts, for the session handshake. A server
    that accepts a connection while it starts up may never reply to the handshake, which
    would keep the client away from every server for a minute with the default session
    timeout. NOTE: this wraps two private callables of this one client:
    ``ConnectionHandler._invoke`` (for the handshake request only) and the handler's
    ``create_connection``.
    """
    connection = client._connection
    invoke = connection._invoke

    def invoke_with_limit(timeout: float, request: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(request, Connect):
            timeout = min(timeout, limit_s)
        return invoke(timeout, request, *args, **kwargs)

    connection._invoke = invoke_with_limit

    handler = client.handler
    create_connection = handler.create_connection

    def create_connection_with_limit(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is not None:
            kwargs["timeout"] = min(kwargs["timeout"], limit_s)
        return create_connection(*args, **kwargs)

    handler.create_connection = create_connection_with_limit
