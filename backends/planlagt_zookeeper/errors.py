"""The one place where kazoo exceptions become planlagt exceptions.

kazoo (checked with 2.11) builds its messages from the server's error code and never from
the digest credentials, so its message is kept. The backend URL in each message is redacted.

Errors that report a failed condition of a request (:data:`CONDITION_ERRORS`, such as
``NoNodeError``) pass through unchanged, because the operations handle them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    InvalidACLError,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RequestTimeoutError,
    SessionClosedRequireSaslError,
    SessionExpiredError,
    SessionMovedError,
    ThrottledOpError,
    ZookeeperStoppedError,
)
from kazoo.handlers.threading import KazooTimeoutError

from planlagt_core.backend import Lease
from planlagt_core.errors import BackendError, BackendUnavailable, LeaseLost

__all__ = ["CONDITION_ERRORS", "UNREACHABLE_ERRORS", "invalid_data", "lease_lost", "translate_errors"]

CONDITION_ERRORS: tuple[type[Exception], ...] = (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError)
"""kazoo errors that report a failed condition (node missing or present, wrong version, children left)."""

UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    ConnectionLoss,
    SessionExpiredError,
    SessionMovedError,
    OperationTimeoutError,
    RequestTimeoutError,
    ThrottledOpError,
    ZookeeperStoppedError,
    KazooTimeoutError,
)
"""kazoo errors after which the outcome of a request is unknown."""

AUTH_HINT = "check the user name and password (or password_file) in the backend URL"


@contextlib.contextmanager
def translate_errors(backend_url: str, operation: str) -> Iterator[None]:
    """Re-raise kazoo exceptions from the block as planlagt exceptions, chained with ``from``.

    A lost or closed connection, an expired session and a timed-out request become
    ``BackendUnavailable`` (the outcome is unknown). Failed or missing authentication and
    any other server error become ``BackendError``.
    """
    try:
        yield
    except CONDITION_ERRORS:
        raise
    except (NoAuthError, InvalidACLError, SessionClosedRequireSaslError) as exc:
        raise BackendError(
            f"ZooKeeper at {backend_url} denied {operation} ({type(exc).__name__}): the nodes under the "
            f"prefix belong to another user, or the server requires authentication; {AUTH_HINT}",
            backend=backend_url,
        ) from exc
    except AuthFailedError as exc:
        raise BackendError(
            f"authentication to ZooKeeper at {backend_url} failed during {operation}; {AUTH_HINT}",
            backend=backend_url,
        ) from exc
    except ConnectionClosedError as exc:
        # A subclass of SessionExpiredError that kazoo raises once the client is stopped.
        raise BackendError(
            f"the ZooKeeper client of {backend_url} was closed during {operation}", backend=backend_url
        ) from exc
    except UNREACHABLE_ERRORS as exc:
        raise BackendUnavailable(
            f"ZooKeeper at {backend_url} is unavailable during {operation} (the outcome is unknown): "
            f"{type(exc).__name__}{f': {exc}' if str(exc) else ''}",
            backend=backend_url,
        ) from exc
    except KazooException as exc:
        raise BackendError(
            f"ZooKeeper at {backend_url} failed {operation}: {type(exc).__name__}{f': {exc}' if str(exc) else ''}",
            backend=backend_url,
        ) from exc


def lease_lost(backend_url: str, lease: Lease, why: str) -> LeaseLost:
    """Return the ``LeaseLost`` error for ``lease``, saying ``why`` it is no longer held."""
    return LeaseLost(
        f"lease on {lease.key!r} (token {lease.token}) is no longer held: {why}",
        key=lease.key,
        token=lease.token,
        backend=backend_url,
    )


def invalid_data(backend_url: str, what: str, path: str, exc: Exception) -> BackendError:
    """Return the error for data in node ``path`` that is not the JSON planlagt writes."""
    return BackendError(
        f"ZooKeeper at {backend_url} contains invalid {what} in node {path!r}: {exc}; "
        "another program may be writing under the planlagt prefix",
        backend=backend_url,
    )
