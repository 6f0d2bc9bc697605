"""The one place where psycopg exceptions become planlagt exceptions, and the backend's own errors.

psycopg (checked with 3.3) builds its messages from the host, port and server reply, not
from the password; the messages are still passed through ``redact_url``. The backend URL in
each message is redacted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import psycopg.errors

from planlagt_core.errors import BackendError, BackendUnavailable
from planlagt_core.url import redact_url

__all__ = [
    "MIN_SERVER_VERSION",
    "ServerTooOld",
    "TransactionPoolingError",
    "invalid_data",
    "pooling_error",
    "translate_errors",
]

MIN_SERVER_VERSION = 140000
"""``server_version_num`` of PostgreSQL 14, the first with ``idle_session_timeout``."""

# Messages of libpq connection failures that no retry will fix. libpq reports them
# without an SQLSTATE, so the text is all there is to go by.
_PERMANENT_CONNECT_FAILURES = (
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
    "certificate",
)


class TransactionPoolingError(BackendError):
    """The server is reached through a pooler that shares one session between clients.

    A pooler in transaction or statement mode (PgBouncer's ``pool_mode = transaction``,
    for example) hands each transaction whichever server session is free. Session-level
    advisory locks then belong to no client in particular, and a session can grant a lock
    it already holds to a second client, so mutual exclusion is lost.
    """


class ServerTooOld(BackendError):
    """The server is older than PostgreSQL 14, which added ``idle_session_timeout``."""


def pooling_error(backend_url: str, detail: str) -> TransactionPoolingError:
    """Return the error raised when session state did not survive from one transaction to the next."""
    return TransactionPoolingError(
        f"PostgreSQL at {backend_url} is reached through a connection pooler in transaction or statement "
        f"mode ({detail}). planlagt holds session-level advisory locks, which such a pooler shares between "
        "clients, so two instances could hold one lease at once. Connect to PostgreSQL directly, or "
        "through a pooler in session mode (PgBouncer: pool_mode = session)",
        backend=backend_url,
    )


def too_old_error(backend_url: str, version: int) -> ServerTooOld:
    major, minor = divmod(version, 10000)
    return ServerTooOld(
        f"PostgreSQL at {backend_url} is version {major}.{minor}, older than 14. The backend needs "
        "idle_session_timeout (PostgreSQL 14 and newer) to end the session, and with it the lock, of a "
        "holder that stops renewing; without it a hung holder would keep its lock for ever. Upgrade the server",
        backend=backend_url,
    )


def is_permanent_connect_failure(exc: psycopg.Error) -> bool:
    """Return whether a failure to connect is one that no retry fixes (credentials, names, TLS)."""
    message = str(exc)
    return any(fragment in message for fragment in _PERMANENT_CONNECT_FAILURES)


@contextlib.contextmanager
def translate_errors(backend_url: str, operation: str) -> Iterator[None]:
    """Re-raise psycopg exceptions from the block as planlagt exceptions, chained with ``from``.

    A lost connection, a timeout and a server shutting down or starting up become
    ``BackendUnavailable`` (the outcome is unknown). A missing privilege and any other
    server error become ``BackendError``, carrying the server's message and SQLSTATE.
    """
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise BackendError(
            f"the PostgreSQL user of {backend_url} lacks a privilege needed for {operation}: {_text(exc)}; "
            "grant it CREATE on the schema, or create the tables as another user first",
            backend=backend_url,
        ) from exc
    except psycopg.OperationalError as exc:
        raise BackendUnavailable(
            f"PostgreSQL at {backend_url} is unavailable during {operation} (the outcome is unknown): {_text(exc)}",
            backend=backend_url,
        ) from exc
    except psycopg.Error as exc:
        raise BackendError(
            f"PostgreSQL at {backend_url} failed {operation}: {_text(exc)}", backend=backend_url
        ) from exc


def connect_error(backend_url: str, exc: psycopg.Error) -> BackendError:
    """Return the error for a connection that could not be opened."""
    if is_permanent_connect_failure(exc):
        return BackendError(
            f"connecting to PostgreSQL at {backend_url} failed: {_text(exc)}; "
            "check the user, password (or password_file), database name and TLS options in the backend URL",
            backend=backend_url,
        )
    return BackendUnavailable(
        f"PostgreSQL at {backend_url} is unavailable: connecting failed: {_text(exc)}", backend=backend_url
    )


def invalid_data(backend_url: str, what: str, table: str, exc: Exception) -> BackendError:
    """Return the error for a row that does not hold the JSON planlagt writes."""
    return BackendError(
        f"PostgreSQL at {backend_url} contains invalid {what} in table {table}: {exc}; "
        "another program may be writing to planlagt's tables",
        backend=backend_url,
    )


def _text(exc: psycopg.Error) -> str:
    text = str(exc).strip()
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        text += f" (SQLSTATE {sqlstate})"
    return redact_url(text)
