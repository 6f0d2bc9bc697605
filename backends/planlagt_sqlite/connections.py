"""Connections to one SQLite file: one per thread, reopened after fork, and transactions.

Every transaction either commits or rolls back before control returns to the caller.
SQLite errors are translated into planlagt errors here, chained with ``from exc``.
``sqlite3.OperationalError`` (locked past the busy timeout, cannot open the file, disk I/O)
becomes ``BackendUnavailable``, because the outcome of the statement is unknown. Other
``sqlite3.Error`` subclasses become ``BackendError``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from planlagt_core.errors import BackendError, BackendUnavailable

from .schema import create_schema

__all__ = ["ConnectionManager"]

LOG = logging.getLogger(__name__)

# Connections a forked child inherited from its parent. They stay referenced, so garbage
# collection never closes them in the child: SQLite's page "How To Corrupt An SQLite
# Database File" warns against using a connection in a child process after fork().
_INHERITED: list[sqlite3.Connection] = []

JOURNAL_MODE_RETRY_S = 0.01


class _Connection(sqlite3.Connection):
    """A ``sqlite3.Connection`` that can be weakly referenced (the C type cannot)."""


class ConnectionManager:
    """Per-thread connections to the database at ``path``, with fork detection.

    ``busy_timeout_s`` is how long a statement waits for another connection's lock before
    failing with "database is locked". ``url`` is the redacted backend URL, for messages.
    """

    def __init__(self, path: str, *, busy_timeout_s: float, url: str) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.url = url
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._open_connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._schema_ready = False
        self._closed = False

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """Run the block in one transaction: ``BEGIN IMMEDIATE`` when ``write``, else ``BEGIN``.

        ``BEGIN IMMEDIATE`` takes the database's write lock before the first read, so a
        read-modify-write cannot interleave with another connection's, in this process or
        another. The block's exception, if any, rolls the transaction back and propagates.
        """
        with self._translated_errors():
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield connection
            except BaseException:
                _roll_back(connection)
                raise
            try:
                connection.execute("COMMIT")
            except sqlite3.Error:
                _roll_back(connection)
                raise

    def close(self) -> None:
        """Close every connection this manager opened in this process. Safe to call twice."""
        with self._lock:
            self._closed = True
            connections = list(self._open_connections) if self._pid == os.getpid() else []
            self._open_connections = weakref.WeakSet()
        for connection in connections:
            try:
                connection.close()
            except sqlite3.Error as exc:
                LOG.warning("Closing a connection to %s failed: %s", self.path, exc)
        self._local = threading.local()

    @property
    def open_count(self) -> int:
        """The number of connections open in this process, for leak checks in tests."""
        with self._lock:
            return len(self._open_connections) if self._pid == os.getpid() else 0

    def _connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it (and the schema) on first use."""
        if self._closed:
            raise BackendError(f"backend {self.url} is closed; create a new backend", backend=self.url)
        self._forget_parent_connections()
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._open()
            self._local.connection = connection
        return connection

    def _forget_parent_connections(self) -> None:
        """After fork(), set aside the parent's connections so this process opens its own."""
        pid = os.getpid()
        if pid == self._pid:
            return
        with self._lock:
            if pid == self._pid:
                return
            _INHERITED.extend(self._open_connections)
            inherited_here = getattr(self._local, "connection", None)
            if inherited_here is not None:
                _INHERITED.append(inherited_here)
            self._open_connections = weakref.WeakSet()
            self._local = threading.local()
            self._pid = pid
        LOG.debug("Process %d was forked; opening new connections to %s", pid, self.path)

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the sqlite3 module issues no implicit BEGIN or COMMIT, so
        # transaction() alone decides where each transaction starts and ends.
        # check_same_thread=False only so close() can close other threads' connections.
        connection = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        try:
            # FULL makes every commit durable across a power loss, so a fencing token is
            # never issued twice after the machine restarts.
            connection.execute("PRAGMA synchronous=FULL")
            if not self._schema_ready:
                self._prepare_file(connection)
        except BaseException:
            connection.close()
            raise
        with self._lock:
            self._open_connections.add(connection)
        return connection

    def _prepare_file(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL mode and create the tables, both idempotent."""
        self._enable_wal(connection)
        connection.execute("BEGIN IMMEDIATE")
        try:
            create_schema(connection, self.url)
        except BaseException:
            _roll_back(connection)
            raise
        connection.execute("COMMIT")
        self._schema_ready = True

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        # Another process may hold a lock while it prepares the same new file, and the
        # journal-mode change can return SQLITE_BUSY at once, so retry up to the busy timeout.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(JOURNAL_MODE_RETRY_S)
        if str(mode).lower() != "wal":
            raise BackendError(
                f"SQLite database {self.path} could not be switched to WAL mode (journal mode is {mode!r}); "
                "use a file on a local filesystem",
                backend=self.url,
            )

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(
                f"SQLite database {self.path} failed: {exc}; check that the file's directory exists and is "
                f"writable, and raise busy_timeout (now {self.busy_timeout_s} s) if it is locked for long",
                backend=self.url,
            ) from exc
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite database {self.path} failed: {exc}", backend=self.url) from exc


def _roll_back(connection: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any; a failure here is logged, not raised."""
    if not connection.in_transaction:
        return
    try:
        connection.execute("ROLLBACK")
    except sqlite3.Error as exc:
        LOG.warning("Rolling back a SQLite transaction failed: %s", exc)
