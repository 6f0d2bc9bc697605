"""Exceptions raised by planlagt.

The tree::

    PlanlagtError
    ├── ConfigurationError (also ValueError)   bad input, found before anything runs
    │   ├── InvalidSchedule                    a cron expression or time zone
    │   ├── InvalidURL                         a backend URL or one of its options
    │   ├── UnknownBackend                     no plugin for the URL scheme
    │   └── InvalidJob                         a job definition or policy value
    ├── BackendError                           a backend operation failed
    │   ├── BackendUnavailable                 the server could not be reached; state unknown
    │   ├── LeaseLost                          the lease expired, was released or is held by another
    │   └── PluginLoadError                    a backend plugin is installed but cannot be imported
    ├── NotSupported (also NotImplementedError) an optional operation the backend does not offer
    └── SchedulerError                         misuse of a scheduler (closed, used after fork)

Backend errors are raised from the client library's exception with ``raise ... from exc``
so the server's own message stays in ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "InvalidJob",
    "InvalidSchedule",
    "InvalidURL",
    "LeaseLost",
    "NotSupported",
    "PlanlagtError",
    "PluginLoadError",
    "SchedulerError",
    "UnknownBackend",
]


class PlanlagtError(Exception):
    """Base class of every exception planlagt raises on purpose."""


class ConfigurationError(PlanlagtError, ValueError):
    """Invalid input: the message names the value and how to fix it."""


class InvalidSchedule(ConfigurationError):
    """A schedule expression or time zone that cannot be used."""

    def __init__(self, message: str, *, expression: str | None = None) -> None:
        super().__init__(message)
        self.expression = expression


class InvalidURL(ConfigurationError):
    """A malformed backend URL or an unknown or invalid URL option.

    The message shows the URL with its password redacted.
    """


class UnknownBackend(ConfigurationError):
    """No installed backend plugin handles the URL scheme."""

    def __init__(self, message: str, *, scheme: str, installed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.scheme = scheme
        self.installed = installed


class InvalidJob(ConfigurationError):
    """A job definition or policy value that cannot be used."""


class BackendError(PlanlagtError):
    """A backend operation failed.

    ``backend`` is the redacted URL of the backend, when known.
    """

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


class BackendUnavailable(BackendError):
    """The backend server could not be reached or did not answer in time.

    The outcome of the operation is unknown: it may or may not have taken effect. A lease
    whose renewal fails this way is *at risk*, not lost, until its TTL runs out.
    """


class LeaseLost(BackendError):
    """The lease is no longer held: it expired, was released, or another holder took the key."""

    def __init__(
        self,
        message: str,
        *,
        key: str,
        token: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(message, backend=backend)
        self.key = key
        self.token = token


class PluginLoadError(BackendError):
    """A backend plugin is registered but could not be imported.

    The message names the scheme, the distribution and the cause, for example a missing
    client library and the extra that installs it.
    """


class NotSupported(PlanlagtError, NotImplementedError):
    """The backend does not offer this optional operation.

    Backends declare what they offer in their capabilities, so callers can check first.
    """


class SchedulerError(PlanlagtError):
    """A scheduler was used in a way its state does not allow."""
