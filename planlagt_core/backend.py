"""The backend contract: the only interface between the scheduler and a coordination server.

A backend plugin subclasses :class:`Backend` and implements its ``_do_*`` methods. The
public methods validate their arguments, call the ``_do_*`` method and return its result;
implementations never repeat the validation. The contract below is written once, here.

Terms
-----
held
    A lease is held from a successful :meth:`Backend.acquire` until it expires, is
    released, or is found lost. While it is held no other caller can acquire its key.
expired
    The backend server (never a client's clock) decides that a lease's TTL ran out since
    its last acquisition or renewal. An expired lease's key is free for anyone.
renewed
    A successful :meth:`Backend.renew` restarts the TTL, measured from the moment the
    server handles the request.
released
    :meth:`Backend.release` frees the key, or keeps it blocked for ``keep_s`` more seconds
    so that a caller whose clock runs behind cannot start the same work again at once.
at risk
    The client could not reach the server, so it cannot tell whether the lease is still
    held. A lease is at risk, never lost, until ``Lease.valid_until`` (local monotonic time
    measured from before the last successful request was sent, plus the TTL) has passed.
lost
    The backend reported that the lease is no longer held (:class:`~planlagt_core.errors.LeaseLost`),
    or it was at risk past ``Lease.valid_until``. Unknown is never reported as lost or as
    held: only a server's answer or the passing of the TTL decides.

Durations are seconds as floats everywhere. Instants stored by a backend are Unix seconds.
Backends must be safe to call from several threads of one process at once.

Fencing tokens
--------------
Every successful acquisition of a key returns a token strictly greater than every token
ever returned for that key before. ``Capabilities.durable_fencing_tokens`` states whether
that still holds after the server restarts and loses its memory.

Fire state
----------
A fire time of a job is identified by the job name and the UTC instant (Unix seconds).
The backend keeps, per fire time, the number of attempts begun and the final outcome.
Both writes are *fenced*: they take effect only while the caller's lease on the job is
held, in the same atomic step as the check. That is what makes a fire time complete at
most once, whatever the callers' clocks say.
"""

from __future__ import annotations

import abc
import enum
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConfigurationError, NotSupported
from .models import ControlState, FireState, InstanceInfo, RunRecord, TriggerRequest

if TYPE_CHECKING:
    from types import TracebackType

    from .url import BackendURL

__all__ = [
    "MAX_KEY_LENGTH",
    "Backend",
    "Capabilities",
    "Feature",
    "Lease",
    "LeaseInfo",
    "LeaseState",
    "fire_time_key",
    "new_owner_token",
    "renewed",
]

MAX_KEY_LENGTH = 512
"""Longest key or job name a backend must accept, in characters."""


class Feature(str, enum.Enum):
    """Optional operations. A backend that lacks one raises ``NotSupported`` for it."""

    MIN_HOLD = "min_hold"
    """``release(lease, keep_s=...)`` with ``keep_s > 0``."""

    JOB_REGISTRY = "job_registry"
    """``announce_jobs`` and ``list_job_definitions``."""

    CONTROL = "control"
    """``read_control``, ``set_paused``, ``add_trigger`` and ``remove_trigger``."""

    RUN_RETENTION = "run_retention"
    """``trim_runs``."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers and guarantees, as data.

    ``min_ttl_s`` is the shortest lease TTL the backend accepts; ``ttl_granularity_s`` is
    the step TTLs are rounded up to. ``durable_fencing_tokens`` is true only if tokens keep
    increasing across a restart of the server that loses its memory. ``session_bound_leases``
    is true where a lease lives as long as the client's session rather than a per-key TTL.
    ``multi_process`` and ``multi_host`` state who can share one backend. ``server_clock`` is
    true where expiry is decided by one clock shared by all clients. ``server_process`` is
    false for embedded backends that have no server process to stop, pause or restart.
    """

    min_ttl_s: float
    ttl_granularity_s: float
    durable_fencing_tokens: bool
    session_bound_leases: bool = False
    multi_process: bool = True
    multi_host: bool = True
    server_clock: bool = True
    server_process: bool = True
    features: frozenset[Feature] = field(default_factory=lambda: frozenset(Feature))

    def supports(self, feature: Feature) -> bool:
        return feature in self.features

    def to_dict(self) -> dict[str, Any]:
        """Return the capabilities as JSON-ready data."""
        return {
            "min_ttl_s": self.min_ttl_s,
            "ttl_granularity_s": self.ttl_granularity_s,
            "durable_fencing_tokens": self.durable_fencing_tokens,
            "session_bound_leases": self.session_bound_leases,
            "multi_process": self.multi_process,
            "multi_host": self.multi_host,
            "server_clock": self.server_clock,
            "server_process": self.server_process,
            "features": sorted(feature.value for feature in self.features),
        }


class LeaseState(str, enum.Enum):
    """The state of a lease as its holder sees it, with the meanings defined in this module's docstring."""

    HELD = "held"
    AT_RISK = "at_risk"
    LOST = "lost"


@dataclass(frozen=True)
class Lease:
    """Proof of a successful acquisition.

    ``owner`` is a random string stored with the key; every renew, release and fenced write
    compares it, so a stale holder can never touch a later holder's lease. ``valid_until``
    is local monotonic time (``time.monotonic()`` of the process that acquired it): the
    instant before the last successful request was sent, plus ``ttl_s``. The server may
    keep the key a little longer, never shorter.
    """

    key: str
    token: int
    owner: str
    ttl_s: float
    valid_until: float
    holder: str = ""

    def remaining_s(self, now_monotonic: float | None = None) -> float:
        """Return the seconds left before the lease counts as lost without a renewal."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        return self.valid_until - now


@dataclass(frozen=True)
class LeaseInfo:
    """The current holder of a key, as :meth:`Backend.inspect` reports it."""

    key: str
    token: int
    holder: str
    ttl_remaining_s: float | None
    released: bool = False


def new_owner_token() -> str:
    """Return a random owner string for a new lease (128 bits, hex)."""
    return secrets.token_hex(16)


def fire_time_key(fire_time: float) -> str:
    """Return the canonical text form of a fire time for use in keys: integer milliseconds."""
    return str(round(fire_time * 1000))


class Backend(abc.ABC):
    """Abstract coordination backend.

    Subclasses set ``capabilities`` and ``schemes``, implement ``from_url`` and the
    ``_do_*`` methods, and raise :class:`~planlagt_core.errors.BackendUnavailable` (chained
    with ``from exc``) when the server cannot be reached, so callers can tell "unknown" from
    "no". Every public method raises ``BackendUnavailable`` that way; other errors are
    listed per method.

    ``prefix`` (a URL option) isolates applications sharing one server: nothing one prefix
    writes is visible under another. Backends built from the same URL share state, as
    instances of one service do. The one exception is ``memory://`` without a name, which
    is private to the object.
    """

    capabilities: ClassVar[Capabilities]
    schemes: ClassVar[tuple[str, ...]] = ()
    client_library: ClassVar[str] = ""
    """Name of the client library distribution the plugin needs, for error messages."""

    def __init__(self, *, url: str = "", prefix: str = "planlagt") -> None:
        self._url = url
        self.prefix = prefix

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: BackendURL) -> Backend:
        """Build a backend from a parsed URL.

        Raises ``InvalidURL`` for an unknown option or an invalid option value; never
        connects (connections are made on first use).
        """

    @property
    def url(self) -> str:
        """The backend URL with any password redacted."""
        return self._url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._url}>"

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - a no-op default is part of the contract
        """Close connections and stop helper threads. Safe to call more than once.

        Leases still held are not released: they expire on the server.
        """

    # -- Leases -------------------------------------------------------------------

    def acquire(self, key: str, ttl_s: float, *, holder: str = "") -> Lease | None:
        """Try to acquire ``key`` for ``ttl_s`` seconds without blocking.

        Returns a :class:`Lease` with a new fencing token, or None when the key is held
        (or kept after release). ``holder`` is free text stored with the key and shown by
        :meth:`inspect`. Raises ``ConfigurationError`` for an empty key or a TTL that is not
        positive or is below ``capabilities.min_ttl_s``. Atomic: at most one caller gets
        the key, and the token is issued in the same step.
        """
        self.check_key(key)
        self.check_ttl(ttl_s)
        self.check_text("holder", holder, allow_empty=True)
        return self._do_acquire(key, self.round_ttl(ttl_s), holder)

    def renew(self, lease: Lease, ttl_s: float | None = None) -> Lease:
        """Restart the lease's TTL (``ttl_s``, default the lease's own) and return the new lease.

        Raises ``LeaseLost`` when the lease expired, was released, or the key has another
        holder; the key is then left untouched. Atomic compare-and-extend on ``owner``.
        """
        ttl = lease.ttl_s if ttl_s is None else ttl_s
        self.check_ttl(ttl)
        return self._do_renew(lease, self.round_ttl(ttl))

    def release(self, lease: Lease, *, keep_s: float = 0.0) -> bool:
        """Release the lease; with ``keep_s > 0``, keep the key blocked for that many seconds.

        Returns True when the lease was still held and is now released, False when it had
        already expired or has another holder (which is left untouched). Renewing a
        released lease raises ``LeaseLost``. ``keep_s > 0`` needs ``Feature.MIN_HOLD``.
        While the key is kept, :meth:`inspect` reports the released lease's token with
        ``released=True``, and a second ``release`` returns False without ending the keep.
        Atomic compare-and-delete (or compare-and-expire) on ``owner``.
        """
        if keep_s < 0 or not math.isfinite(keep_s):
            raise ConfigurationError(f"keep_s must be zero or a positive number of seconds, not {keep_s!r}")
        if keep_s > 0:
            self.require(Feature.MIN_HOLD)
            keep_s = self.round_ttl(max(keep_s, self.capabilities.min_ttl_s))
        return self._do_release(lease, keep_s)

    def inspect(self, key: str) -> LeaseInfo | None:
        """Return the current holder of ``key``, or None when the key is free. Read-only."""
        self.check_key(key)
        return self._do_inspect(key)

    # -- Fire state ---------------------------------------------------------------

    def begin_attempt(
        self,
        lease: Lease,
        job: str,
        fire_time: float,
        *,
        max_attempts: int,
        keep_s: float,
    ) -> FireState:
        """Begin an attempt at one fire time, fenced by ``lease`` (a lease on the job's key).

        The whole step is atomic and happens only while ``lease`` is held. When the fire
        time has a final outcome, or ``max_attempts`` attempts began already, its state is
        returned unchanged. Otherwise one more attempt is counted, ``lease.token`` and
        ``lease.holder`` are stored with it, and the new state is returned. The attempt began exactly when
        ``state.began_with(lease.token)`` is true, provided each attempt uses a lease of its
        own (a new acquisition), as the scheduler does. ``keep_s`` is how long the backend keeps
        the fire state (from now); the scheduler sets it past the job's retry window.

        Raises ``LeaseLost`` when ``lease`` is no longer held (nothing is written).
        """
        self.check_key(job)
        self.check_positive("max_attempts", max_attempts)
        self.check_positive("keep_s", keep_s)
        return self._do_begin_attempt(lease, job, fire_time, max_attempts, keep_s)

    def finish_fire(
        self,
        record: RunRecord,
        *,
        lease: Lease | None = None,
        keep_s: float,
    ) -> bool:
        """Close the fire time ``(record.job, record.fire_time)`` with ``record.outcome``.

        Atomically: when the fire time has no final outcome yet, store ``record.outcome``
        as final and append ``record`` to the run history; otherwise change nothing.
        Returns True when this call closed the fire time. With ``lease``, the write is
        fenced: it happens only while the lease is held, else ``LeaseLost`` is raised and
        nothing is written. Without a lease (skipped and missed fire times) the write is
        not fenced, so it closes only a fire time at which no attempt has begun, because an
        attempt in progress elsewhere must never be overwritten. Otherwise it changes
        nothing and returns False. ``keep_s`` is how long the fire state is kept, as for
        :meth:`begin_attempt`.
        """
        self.check_key(record.job)
        self.check_positive("keep_s", keep_s)
        if not record.outcome.is_final_for_fire_time:
            raise ConfigurationError(f"outcome {record.outcome.value!r} cannot close a fire time")
        return self._do_finish_fire(record, lease, keep_s)

    def get_fire(self, job: str, fire_time: float) -> FireState | None:
        """Return the stored state of a fire time, or None if nothing is stored. Read-only."""
        self.check_key(job)
        return self._do_get_fire(job, fire_time)

    # -- Run history --------------------------------------------------------------

    def record_run(self, record: RunRecord) -> None:
        """Append one record to the run history, unfenced (attempts that do not close a fire time)."""
        self.check_key(record.job)
        self._do_record_run(record)

    def list_runs(
        self,
        job: str | None = None,
        *,
        limit: int = 100,
        since: float | None = None,
        until: float | None = None,
    ) -> list[RunRecord]:
        """Return run records, newest fire time first, at most ``limit``.

        ``job`` selects one job (default all). ``since`` and ``until`` bound the fire time
        (Unix seconds, inclusive). Read-only.
        """
        if job is not None:
            self.check_key(job)
        self.check_positive("limit", limit)
        return self._do_list_runs(job, limit, since, until)

    def trim_runs(self, *, max_per_job: int, max_age_s: float) -> int:
        """Delete records beyond the newest ``max_per_job`` per job or older than ``max_age_s``.

        Age is measured from a record's fire time to the backend's clock.

        Returns how many records were deleted. Needs ``Feature.RUN_RETENTION``.
        """
        self.require(Feature.RUN_RETENTION)
        self.check_positive("max_per_job", max_per_job)
        self.check_positive("max_age_s", max_age_s)
        return self._do_trim_runs(max_per_job, max_age_s)

    # -- Membership ---------------------------------------------------------------

    def heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        """Announce ``info`` as live for ``ttl_s`` seconds and return every live instance.

        One round trip where the backend allows it. The result is sorted by instance id,
        includes ``info`` itself, and carries ``last_heartbeat`` in server time. Instances
        whose last heartbeat is older than their TTL are dropped (with their job
        definitions). Raises ``ConfigurationError`` unless ``info.heartbeat_s < ttl_s``.
        """
        self.check_key(info.instance_id)
        self.check_ttl(ttl_s)
        if not 0 < info.heartbeat_s < ttl_s:
            raise ConfigurationError(
                f"heartbeat interval {info.heartbeat_s} s must be positive and shorter than "
                f"the membership TTL {ttl_s} s; lower the heartbeat or raise the TTL"
            )
        return self._do_heartbeat(info, self.round_ttl(ttl_s))

    def leave(self, instance_id: str) -> None:
        """Remove an instance from the live set at once (on clean shutdown)."""
        self.check_key(instance_id)
        self._do_leave(instance_id)

    def list_instances(self) -> list[InstanceInfo]:
        """Return the live instances, sorted by instance id. Read-only."""
        return self._do_list_instances()

    # -- Job registry -------------------------------------------------------------

    def announce_jobs(self, instance_id: str, definitions: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the job definitions announced by ``instance_id`` (name to JSON-ready dict).

        Atomic per instance: readers see the old set or the new one. Needs
        ``Feature.JOB_REGISTRY``.
        """
        self.require(Feature.JOB_REGISTRY)
        self.check_key(instance_id)
        self._do_announce_jobs(instance_id, {name: dict(value) for name, value in definitions.items()})

    def list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Return ``{instance_id: {job name: definition}}`` for live instances. Read-only.

        A live instance that announced no jobs may be missing or map to ``{}``.
        """
        self.require(Feature.JOB_REGISTRY)
        return self._do_list_job_definitions()

    # -- Control state ------------------------------------------------------------

    def read_control(self) -> ControlState:
        """Return paused jobs and pending trigger requests, in one round trip. Read-only."""
        self.require(Feature.CONTROL)
        return self._do_read_control()

    def set_paused(self, job: str, paused: bool) -> None:
        """Pause or resume ``job`` cluster-wide. Idempotent."""
        self.require(Feature.CONTROL)
        self.check_key(job)
        self._do_set_paused(job, paused)

    def add_trigger(self, request: TriggerRequest) -> None:
        """Store a request to run ``request.job`` once now. Idempotent per request id."""
        self.require(Feature.CONTROL)
        self.check_key(request.job)
        self.check_key(request.request_id)
        self._do_add_trigger(request)

    def remove_trigger(self, request_id: str) -> bool:
        """Delete a trigger request; return True if this call removed it (atomic)."""
        self.require(Feature.CONTROL)
        self.check_key(request_id)
        return self._do_remove_trigger(request_id)

    # -- Validation helpers shared by every backend -------------------------------

    def require(self, feature: Feature) -> None:
        """Raise ``NotSupported`` unless the backend declares ``feature``."""
        if not self.capabilities.supports(feature):
            raise NotSupported(
                f"backend {self._url or type(self).__name__} does not support {feature.value}; "
                f"it supports: {', '.join(sorted(f.value for f in self.capabilities.features)) or 'none'}"
            )

    def check_key(self, key: str) -> None:
        """Raise ``ConfigurationError`` for an empty, non-text or overlong key."""
        self.check_text("key", key, allow_empty=False)
        if len(key) > MAX_KEY_LENGTH:
            raise ConfigurationError(f"key {key[:40]!r}... is {len(key)} characters; the maximum is {MAX_KEY_LENGTH}")

    @staticmethod
    def check_text(name: str, value: str, *, allow_empty: bool) -> None:
        if not isinstance(value, str):
            raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}")
        if not value and not allow_empty:
            raise ConfigurationError(f"{name} must not be empty")
        if "\x00" in value:
            raise ConfigurationError(f"{name} {value!r} must not contain a NUL character")

    @staticmethod
    def check_positive(name: str, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigurationError(f"{name} must be a positive number, not {value!r}")
        if not math.isfinite(value):
            raise ConfigurationError(f"{name} must be finite, not {value!r}")

    def check_ttl(self, ttl_s: float) -> None:
        """Raise ``ConfigurationError`` for a TTL that is not positive or below the minimum."""
        self.check_positive("lease TTL (ttl_s)", ttl_s)
        minimum = self.capabilities.min_ttl_s
        if ttl_s < minimum:
            raise ConfigurationError(
                f"lease TTL {ttl_s} s is below the minimum of {minimum} s for "
                f"{type(self).__name__}; use a TTL of at least {minimum} s "
                f"(TTLs are rounded up to steps of {self.capabilities.ttl_granularity_s} s)"
            )

    def round_ttl(self, ttl_s: float) -> float:
        """Round ``ttl_s`` up to the backend's TTL granularity."""
        step = self.capabilities.ttl_granularity_s
        if step <= 0:
            return ttl_s
        return math.ceil(round(ttl_s / step, 9)) * step

    # -- To implement -------------------------------------------------------------

    @abc.abstractmethod
    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None: ...

    @abc.abstractmethod
    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease: ...

    @abc.abstractmethod
    def _do_release(self, lease: Lease, keep_s: float) -> bool: ...

    @abc.abstractmethod
    def _do_inspect(self, key: str) -> LeaseInfo | None: ...

    @abc.abstractmethod
    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState: ...

    @abc.abstractmethod
    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool: ...

    @abc.abstractmethod
    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None: ...

    @abc.abstractmethod
    def _do_record_run(self, record: RunRecord) -> None: ...

    @abc.abstractmethod
    def _do_list_runs(
        self, job: str | None, limit: int, since: float | None, until: float | None
    ) -> list[RunRecord]: ...

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        raise NotSupported(f"{type(self).__name__} does not implement trim_runs")

    @abc.abstractmethod
    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]: ...

    @abc.abstractmethod
    def _do_leave(self, instance_id: str) -> None: ...

    @abc.abstractmethod
    def _do_list_instances(self) -> list[InstanceInfo]: ...

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        raise NotSupported(f"{type(self).__name__} does not implement announce_jobs")

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        raise NotSupported(f"{type(self).__name__} does not implement list_job_definitions")

    def _do_read_control(self) -> ControlState:
        raise NotSupported(f"{type(self).__name__} does not implement read_control")

    def _do_set_paused(self, job: str, paused: bool) -> None:
        raise NotSupported(f"{type(self).__name__} does not implement set_paused")

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        raise NotSupported(f"{type(self).__name__} does not implement add_trigger")

    def _do_remove_trigger(self, request_id: str) -> bool:
        raise NotSupported(f"{type(self).__name__} does not implement remove_trigger")


def renewed(lease: Lease, *, ttl_s: float, sent_at: float) -> Lease:
    """Return ``lease`` renewed by a request sent at monotonic time ``sent_at``."""
    return replace(lease, ttl_s=ttl_s, valid_until=sent_at + ttl_s)
