"""The one place where redis-py exceptions become planlagt exceptions.

redis-py (checked with 8.2) builds its connection and authentication messages from the
host, port and server reply, not from the password, so the server's message is kept. The
backend URL in each message is redacted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
import redis.exceptions

from planlagt_core.errors import BackendError, BackendUnavailable

__all__ = ["invalid_data", "translate_errors"]


@contextlib.contextmanager
def translate_errors(backend_url: str, operation: str) -> Iterator[None]:
    """Re-raise redis-py exceptions from the block as planlagt exceptions, chained with ``from``.

    A refused or broken connection, a timeout and a server still loading its data become
    ``BackendUnavailable`` (the outcome is unknown). Failed authentication, a missing ACL
    permission and any other server error become ``BackendError``.
    """
    try:
        yield
    except redis.exceptions.AuthenticationError as exc:
        # AuthenticationError is a ConnectionError in redis-py, so it is caught first.
        raise BackendError(
            f"authentication to Redis at {backend_url} failed during {operation}: {exc}; "
            "check the user name and password (or password_file) in the backend URL",
            backend=backend_url,
        ) from exc
    except redis.exceptions.NoPermissionError as exc:
        raise BackendError(
            f"the Redis user of {backend_url} lacks a permission needed for {operation}: {exc}; "
            "grant it the commands and keys of the planlagt prefix (for example ~PREFIX:* +@all)",
            backend=backend_url,
        ) from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise BackendUnavailable(
            f"Redis at {backend_url} is unavailable during {operation} (the outcome is unknown): {exc}",
            backend=backend_url,
        ) from exc
    except redis.exceptions.RedisError as exc:
        raise BackendError(f"Redis at {backend_url} failed {operation}: {exc}", backend=backend_url) from exc


def invalid_data(backend_url: str, what: str, redis_key: str, exc: Exception) -> BackendError:
    """Return the error for data under ``redis_key`` that is not the JSON planlagt writes."""
    return BackendError(
        f"Redis at {backend_url} contains invalid {what} under key {redis_key!r}: {exc}; "
        "another program may be writing under the planlagt prefix",
        backend=backend_url,
    )
