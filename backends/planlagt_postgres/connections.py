"""Connections to PostgreSQL: opening and checking them, a small pool, requests with a deadline.

Every connection is in autocommit mode; multi-statement work uses ``connection.transaction()``.
When a connection opens, it records its backend process id and stores a random marker in
the session setting ``planlagt.session``. Before the first request of a backend,
:meth:`ConnectionPool.prepare` opens two connections and checks that each still finds its
own marker and process id in a later transaction and that they do not share a process. A
pooler in transaction or statement mode fails that check (see
:class:`~planlagt_postgres.errors.TransactionPoolingError`). Lease acquisition repeats the
marker check on its own connection in the statement that takes the lock.

After ``fork()``, the child never touches the parent's connections: it forgets them
without closing them (closing would end the parent's sessions) and opens its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg.pq import TransactionStatus

from planlagt_core.errors import BackendError, BackendUnavailable

from .errors import MIN_SERVER_VERSION, connect_error, pooling_error, too_old_error, translate_errors
from .options import DEFAULT_KEEPALIVES, PostgresOptions
from .schema import ensure_schema
from .watchdog import Watch, Watchdog

__all__ = ["MARKER_SETTING", "ConnectionPool", "Session", "keep_inherited"]

LOG = logging.getLogger(__name__)

MARKER_SETTING = "planlagt.session"
"""Custom session setting holding each connection's random marker."""

MS_PER_S = 1000

# Connections a forked child inherited from its parent. They stay referenced so that the
# child never closes them, which would end the parent's sessions.
_INHERITED: list[psycopg.Connection] = []

# Run once per new connection: the marker, a server-side bound on every statement
# (socket_timeout), and the server's TCP keepalives and user timeout, so the server drops
# the connection of a client host that vanished.
_OPEN_STATEMENT = """
SELECT pg_backend_pid(),
       set_config('planlagt.session', %(marker)s, false),
       set_config('statement_timeout', %(statement_ms)s, false),
       set_config('tcp_user_timeout', %(statement_ms)s, false),
       set_config('tcp_keepalives_idle', %(keepalives_idle)s, false),
       set_config('tcp_keepalives_interval', %(keepalives_interval)s, false),
       set_config('tcp_keepalives_count', %(keepalives_count)s, false)
"""

_CHECK_STATEMENT = "SELECT current_setting('planlagt.session', true), pg_backend_pid()"


def keep_inherited(connection: psycopg.Connection) -> None:
    """Keep a connection inherited from the parent process referenced, and never close it here."""
    _INHERITED.append(connection)


@dataclass
class Session:
    """One open connection, its server process id and its marker (see the module docstring)."""

    connection: psycopg.Connection
    backend_pid: int
    marker: str


class ConnectionPool:
    """Opens, checks, lends and closes the connections of one backend object.

    Up to ``options.max_idle_connections`` idle connections are kept for reuse; there is
    no limit on connections in use. ``url`` is the redacted backend URL, for messages.
    """

    def __init__(self, options: PostgresOptions, url: str) -> None:
        self.options = options
        self.url = url
        self.schema: str | None = options.schema
        self.watchdog = Watchdog(url)
        self._conninfo = options.conninfo()
        self._idle: list[Session] = []
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._pid = os.getpid()
        self._prepared = False
        self._closed = False

    # -- Lending ----------------------------------------------------------------------

    def checkout(self, operation: str) -> Session:
        """Return an idle connection that still looks alive, or a new one.

        Raises ``BackendError`` when the pool is closed, ``BackendUnavailable`` when no
        connection can be opened, and what :meth:`prepare` raises on the first call.
        """
        self.check_usable()
        if not self._prepared:
            self.prepare(operation)
        while True:
            with self._lock:
                session = self._idle.pop() if self._idle else None
            if session is None:
                return self.open(operation)
            if _looks_alive(session.connection):
                return session
            self.discard(session)

    def checkin(self, session: Session) -> None:
        """Take back a connection after use; keep it for reuse when it is healthy and there is room."""
        connection = session.connection
        healthy = (
            not connection.broken
            and not connection.closed
            and connection.info.transaction_status == TransactionStatus.IDLE
        )
        with self._lock:
            room = len(self._idle) < self.options.max_idle_connections
            if healthy and room and not self._closed and self._pid == os.getpid():
                self._idle.append(session)
                return
        self.discard(session)

    def discard(self, session: Session) -> None:
        """Close a connection, unless it belongs to the parent of a forked process."""
        if self._pid != os.getpid():
            _INHERITED.append(session.connection)
            return
        try:
            session.connection.close()
        except psycopg.Error as exc:
            LOG.debug("Closing a connection to %s failed: %s", self.url, exc)

    @contextlib.contextmanager
    def request(self, session: Session, operation: str, timeout_s: float | None = None) -> Iterator[psycopg.Connection]:
        """Run the block's requests on ``session`` under a deadline, translating psycopg errors.

        ``timeout_s`` defaults to ``socket_timeout``. A request still running at the
        deadline has its connection cut and raises ``BackendUnavailable``.
        """
        timeout = self.options.socket_timeout_s if timeout_s is None else timeout_s
        watch: Watch | None = None
        try:
            with translate_errors(self.url, operation), self.watchdog.watch(session.connection, timeout) as watch:
                yield session.connection
        except BackendUnavailable as exc:
            if watch is not None and watch.expired:
                raise BackendUnavailable(
                    f"{operation} timed out: PostgreSQL at {self.url} did not respond within {timeout:g} s "
                    "(socket_timeout); the connection was closed and the outcome is unknown",
                    backend=self.url,
                ) from exc.__cause__
            raise

    # -- Opening ----------------------------------------------------------------------

    def open(self, operation: str) -> Session:
        """Open and set up a new connection (see the module docstring)."""
        try:
            connection = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise connect_error(self.url, exc) from exc

        marker = secrets.token_hex(16)
        session = Session(connection=connection, backend_pid=0, marker=marker)
        try:
            version = connection.info.server_version
            if version < MIN_SERVER_VERSION:
                raise too_old_error(self.url, version)
            with self.request(session, operation) as conn:
                row = conn.execute(_OPEN_STATEMENT, self._open_parameters(marker)).fetchone()
        except BaseException:
            self.discard(session)
            raise
        assert row is not None
        session.backend_pid = int(row[0])
        return session

    def _open_parameters(self, marker: str) -> dict[str, str]:
        return {
            "marker": marker,
            "statement_ms": str(round(self.options.socket_timeout_s * MS_PER_S)),
            "keepalives_idle": DEFAULT_KEEPALIVES["keepalives_idle"],
            "keepalives_interval": DEFAULT_KEEPALIVES["keepalives_interval"],
            "keepalives_count": DEFAULT_KEEPALIVES["keepalives_count"],
        }

    def prepare(self, operation: str) -> None:
        """Check for a transaction pooler, resolve the schema and create the tables. Runs once.

        Raises ``TransactionPoolingError`` when sessions do not stay with their connection,
        ``BackendError`` when no schema can be found or the tables cannot be created.
        """
        with self._prepare_lock:
            if self._prepared:
                return
            first = self.open(operation)
            second: Session | None = None
            try:
                second = self.open(operation)
                self._check_sessions_pinned(first, second, operation)
                self._create_tables(first, operation)
            except BaseException:
                for session in (first, second):
                    if session is not None:
                        self.discard(session)
                raise
            self._prepared = True
        self.checkin(first)
        self.checkin(second)

    def _check_sessions_pinned(self, first: Session, second: Session, operation: str) -> None:
        if first.backend_pid == second.backend_pid:
            raise pooling_error(self.url, f"two connections share server process {first.backend_pid}")
        for session in (first, second):
            with self.request(session, operation) as connection:
                row = connection.execute(_CHECK_STATEMENT).fetchone()
            marker, backend_pid = row if row is not None else (None, None)
            if marker != session.marker or backend_pid != session.backend_pid:
                raise pooling_error(
                    self.url,
                    f"a session setting made on a connection in server process {session.backend_pid} was "
                    f"not found by its next transaction, which ran in server process {backend_pid}",
                )

    def _create_tables(self, session: Session, operation: str) -> None:
        with self.request(session, operation) as connection:
            if self.schema is None:
                row = connection.execute("SELECT current_schema()").fetchone()
                if row is None or row[0] is None:
                    raise BackendError(
                        f"PostgreSQL at {self.url} has no existing schema in the search_path; "
                        "give one with the schema option (?schema=NAME)",
                        backend=self.url,
                    )
                self.schema = str(row[0])
            ensure_schema(connection, self.schema, self.url)

    # -- Closing and forking ----------------------------------------------------------

    def check_usable(self) -> None:
        """Raise ``BackendError`` when closed; after a fork, forget the parent's connections."""
        if self._closed:
            raise BackendError(f"backend {self.url} is closed; create a new one with planlagt_core.connect()")
        if self._pid != os.getpid():
            self._forget_parent_connections()

    def _forget_parent_connections(self) -> None:
        # Locks may have been held by a parent thread at fork time, so they are replaced.
        _INHERITED.extend(session.connection for session in self._idle)
        self._idle = []
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._pid = os.getpid()
        LOG.debug("Process %d was forked; opening new connections to %s", self._pid, self.url)

    @property
    def forked(self) -> bool:
        """Whether this process is a fork of the one that created the pool (until the next use)."""
        return self._pid != os.getpid()

    def close(self) -> None:
        """Close the idle connections and stop the watchdog. Safe to call more than once."""
        with self._lock:
            self._closed = True
            idle = self._idle if self._pid == os.getpid() else []
            self._idle = []
        for session in idle:
            self.discard(session)
        self.watchdog.close()


def _looks_alive(connection: psycopg.Connection) -> bool:
    """Return False for a connection that psycopg has marked broken or that has unread input.

    An idle connection receives nothing unless the server ended the session (a FATAL
    message, then end of file), so readable input means it is dead. This costs no round trip.
    """
    if connection.closed or connection.broken:
        return False
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return not poller.poll(0)
