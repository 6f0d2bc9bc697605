"""The one place where etcd client errors become planlagt exceptions.

etcd-sdk-python (``pyetcd``, checked with 0.0.7) turns the gRPC codes UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL and FAILED_PRECONDITION into its own exceptions. It raises
them while the ``grpc.RpcError`` is handled, so the server's message is in
``__context__``. Every other code reaches the caller as the ``grpc.RpcError`` itself.
Both kinds are handled here. etcd's messages name keys and users, never passwords; the backend URL in each
message is redacted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
from pyetcd import exceptions as etcd_exceptions

from planlagt_core.errors import BackendError, BackendUnavailable

__all__ = ["LeaseNotFound", "TokenExpired", "invalid_data", "never_sent", "server_message", "translate_errors"]

UNKNOWN_OUTCOME_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
)
UNKNOWN_OUTCOME_ERRORS = (
    etcd_exceptions.ConnectionFailedError,
    etcd_exceptions.ConnectionTimeoutError,
    etcd_exceptions.InternalServerError,
    etcd_exceptions.NoServerAvailableError,
)
NOT_CONNECTED_MESSAGE = "failed to connect to all addresses"
INVALID_TOKEN_MESSAGE = "invalid auth token"
LEASE_NOT_FOUND_MESSAGE = "requested lease not found"


class LeaseNotFound(BackendError):
    """etcd rejected a request that names a lease it no longer has (expired or revoked). Nothing was written."""


class TokenExpired(BackendError):
    """etcd rejected the authentication token (expired, or the server restarted). Nothing was executed."""


def server_message(exc: BaseException) -> str:
    """Return the gRPC status code and message behind ``exc``, or its text when there is none."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, grpc.RpcError) and hasattr(candidate, "code"):
            return f"{candidate.code().name}: {candidate.details()}"
    return str(exc) or type(exc).__name__


def never_sent(exc: BaseException) -> bool:
    """Return whether ``exc`` comes from a request gRPC never sent, because it could not connect.

    gRPC (checked with grpcio 1.85) fails such requests with UNAVAILABLE and the message
    "failed to connect to all addresses"; they can be sent to another endpoint safely.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, grpc.RpcError) and hasattr(current, "code"):
            return current.code() == grpc.StatusCode.UNAVAILABLE and NOT_CONNECTED_MESSAGE in (current.details() or "")
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def translate_errors(backend_url: str, operation: str) -> Iterator[None]:
    """Re-raise client errors from the block as planlagt exceptions, chained with ``from``.

    An unreachable or unresponsive endpoint, a timeout and an internal server error become
    ``BackendUnavailable`` (the outcome is unknown). A rejected token becomes
    ``TokenExpired`` and a missing lease ``LeaseNotFound``, which the backend handles.
    Failed authentication, a missing permission and any other error become ``BackendError``.
    """
    try:
        yield
    except UNKNOWN_OUTCOME_ERRORS as exc:
        raise _unavailable(backend_url, operation, exc) from exc
    except etcd_exceptions.Etcd3Exception as exc:
        raise BackendError(
            f"etcd at {backend_url} failed {operation}: {server_message(exc)}", backend=backend_url
        ) from exc
    except grpc.RpcError as exc:
        raise _from_status(backend_url, operation, exc) from exc


def _from_status(backend_url: str, operation: str, exc: grpc.RpcError) -> BackendError:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    if code in UNKNOWN_OUTCOME_CODES:
        return _unavailable(backend_url, operation, exc)
    if code == grpc.StatusCode.UNAUTHENTICATED and INVALID_TOKEN_MESSAGE in details:
        return TokenExpired(f"etcd at {backend_url} rejected the auth token during {operation}", backend=backend_url)
    if code == grpc.StatusCode.NOT_FOUND and LEASE_NOT_FOUND_MESSAGE in details:
        return LeaseNotFound(f"etcd at {backend_url} has no such lease ({operation})", backend=backend_url)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT) and "auth" in details:
        return BackendError(
            f"authentication to etcd at {backend_url} failed during {operation}: {details}; "
            "check the user name and password (or password_file) in the backend URL",
            backend=backend_url,
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return BackendError(
            f"the etcd user of {backend_url} lacks a permission needed for {operation}: {details}; "
            "grant its role readwrite on every key that starts with the planlagt prefix",
            backend=backend_url,
        )
    shown = f"{code.name}: {details}" if code is not None else str(exc)
    return BackendError(f"etcd at {backend_url} failed {operation}: {shown}", backend=backend_url)


def _unavailable(backend_url: str, operation: str, exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(
        f"etcd at {backend_url} is unavailable during {operation} (the outcome is unknown): {server_message(exc)}",
        backend=backend_url,
    )


def invalid_data(backend_url: str, what: str, key: bytes, exc: Exception) -> BackendError:
    """Return the error for data under ``key`` that is not the JSON planlagt writes."""
    return BackendError(
        f"etcd at {backend_url} contains invalid {what} under key {key.decode(errors='replace')!r}: {exc}; "
        "another program may be writing under the planlagt prefix",
        backend=backend_url,
    )
