"""The ``etcd://`` and ``etcds://`` backend, on the etcd v3 API through etcd-sdk-python."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any, ClassVar

from planlagt_core.backend import Backend, Capabilities, Lease, LeaseInfo
from planlagt_core.models import ControlState, FireState, InstanceInfo, RunRecord, TriggerRequest
from planlagt_core.url import BackendURL

from .connection import EtcdConnection
from .control import Control
from .fire_state import FireStates
from .history import RunHistory
from .keys import KeyLayout
from .leases import LeaseStore
from .membership import Members
from .options import DEFAULT_MIN_TTL_S, EtcdOptions, parse_etcd_url
from .retention import RetentionLeases
from .store import EtcdStore

__all__ = ["EtcdBackend"]

LOG = logging.getLogger(__name__)


class EtcdBackend(Backend):
    """A backend on an etcd v3 cluster (tested with etcd 3.4), one endpoint or several.

    Where it differs from the contract, or adds to it:

    - A lease is an etcd lease with the lease key attached; expiry is decided by the etcd
      leader's clock. TTLs are whole seconds of at least 2 (etcd raises shorter ones to
      its minimum, 1.5 election timeouts). A cluster with a longer election timeout has a
      higher minimum: give it as ``min_ttl`` in the URL, or acquisitions fail with a
      ``ConfigurationError`` naming the TTL etcd granted.
    - Fencing tokens are the etcd revision that created the lease key. Revisions are
      cluster-wide, never reused, and stored on disk with every key, so tokens keep
      increasing across holders, server restarts and leader changes (as long as the
      cluster keeps its data directory).
    - Acquisition grants an etcd lease, then creates the key on it in a transaction that
      succeeds only if the key does not exist. A lease that loses that race is revoked at
      once. Renewal reads the key, compares owner and token, and sends a keep-alive for
      its lease (two requests).
    - Fire states live on shared retention leases, so etcd deletes them between ``keep_s``
      and ``keep_s`` plus a tenth (at least 60 s) later. Run records have no lease.
    - ``last_heartbeat`` and the age bound of ``trim_runs`` use this process's clock,
      because etcd does not report its time; membership expiry uses etcd's leases.
    - Keys are laid out as :class:`~planlagt_etcd.keys.KeyLayout` describes, all under
      ``{prefix}:``; the prefix may not contain ``:``, so prefixes never overlap.

    Connection loss: while no endpoint can be reached, every call raises
    ``BackendUnavailable``: at once for a refused connection, after ``timeout`` (5 s by
    default) for an endpoint that does not respond. A held lease is then at risk, not lost:
    its etcd lease keeps counting down on the leader, so it is lost once its TTL runs out
    without a successful renewal, and the holder must assume so at ``Lease.valid_until``.
    etcd itself may keep it longer, never shorter: a leader elected after a restart or a
    failover restarts every lease's TTL. With several endpoints in the URL, a request that
    could not connect to one member goes to the next at once. After any other failure the
    next request goes to the next endpoint that has not failed within the last 2 s. So
    while the cluster keeps a quorum, a member that dies costs at most one failed
    renewal. No other request is repeated automatically, because a repeated transaction
    is not idempotent. Once an endpoint responds again, requests reach it without any
    action by the caller.
    """

    schemes: ClassVar[tuple[str, ...]] = ("etcd", "etcds")
    client_library: ClassVar[str] = "etcd-sdk-python"
    capabilities: ClassVar[Capabilities] = Capabilities(
        min_ttl_s=float(DEFAULT_MIN_TTL_S),
        ttl_granularity_s=1.0,
        durable_fencing_tokens=True,
        session_bound_leases=False,
        server_clock=True,
    )

    def __init__(self, options: EtcdOptions | None = None, *, url: str = "") -> None:
        """Create a backend for ``options`` (default: localhost:2379). Does not connect.

        ``url`` is the redacted URL shown in ``repr`` and messages; it is built from the
        options when empty.
        """
        options = options or EtcdOptions()
        super().__init__(url=url or options.describe(), prefix=options.prefix)
        self.options = options
        if options.min_ttl_s != DEFAULT_MIN_TTL_S:
            # The server's minimum applies to this backend object only; the class keeps etcd's default.
            self.capabilities = replace(type(self).capabilities, min_ttl_s=float(options.min_ttl_s))  # type: ignore[misc]
        self.keys = KeyLayout(options.prefix)

        self._connection = EtcdConnection(options, self.url)
        store = EtcdStore(self._connection, self.url)
        retention = RetentionLeases(lambda ttl_s: store.grant("fire state retention", ttl_s)[0])
        self._leases = LeaseStore(store, self.keys)
        self._history = RunHistory(store, self.keys)
        self._fire_states = FireStates(store, self.keys, self._leases, retention, self._history)
        self._members = Members(store, self.keys, retention)
        self._control = Control(store, self.keys)
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: BackendURL) -> EtcdBackend:
        """Build a backend from an ``etcd://`` or ``etcds://`` URL (see ``planlagt_etcd.options``).

        Raises ``InvalidURL`` naming the option or part at fault. Never connects.
        """
        return cls(parse_etcd_url(url), url=url.redacted())

    @property
    def endpoint_in_use(self) -> str | None:
        """``host:port`` of the endpoint requests go to now, or None before the first request."""
        return self._connection.endpoint_in_use

    def close(self) -> None:
        """Close the gRPC channels. Leases stay on the server until their TTL runs out."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._connection.close()
        LOG.debug("Closed backend %s", self.url)

    # -- Leases ---------------------------------------------------------------------

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        return self._leases.acquire(key, ttl_s, holder)

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        return self._leases.renew(lease, ttl_s)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        return self._leases.release(lease, keep_s)

    def _do_inspect(self, key: str) -> LeaseInfo | None:
        return self._leases.inspect(key)

    # -- Fire state -----------------------------------------------------------------

    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState:
        return self._fire_states.begin_attempt(lease, job, fire_time, max_attempts, keep_s)

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        return self._fire_states.finish_fire(record, lease, keep_s)

    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None:
        return self._fire_states.get(job, fire_time)

    # -- Run history ----------------------------------------------------------------

    def _do_record_run(self, record: RunRecord) -> None:
        self._history.append(record)

    def _do_list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        return self._history.list_runs(job, limit, since, until)

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        return self._history.trim(max_per_job, max_age_s)

    # -- Membership and job registry ------------------------------------------------

    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        return self._members.heartbeat(info, ttl_s)

    def _do_leave(self, instance_id: str) -> None:
        self._members.leave(instance_id)

    def _do_list_instances(self) -> list[InstanceInfo]:
        return self._members.list_instances()

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        self._members.announce_jobs(instance_id, definitions)

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self._members.list_job_definitions()

    # -- Control state --------------------------------------------------------------

    def _do_read_control(self) -> ControlState:
        return self._control.read()

    def _do_set_paused(self, job: str, paused: bool) -> None:
        self._control.set_paused(job, paused)

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        self._control.add_trigger(request)

    def _do_remove_trigger(self, request_id: str) -> bool:
        return self._control.remove_trigger(request_id)
