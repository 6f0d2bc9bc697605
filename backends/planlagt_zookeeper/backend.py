"""The ``zookeeper://`` backend (aliases ``zk://`` and ``kazoo://``), built on kazoo."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from kazoo.client import KazooClient

from planlagt_core.backend import Backend, Capabilities, Lease, LeaseInfo
from planlagt_core.models import ControlState, FireState, InstanceInfo, RunRecord, TriggerRequest
from planlagt_core.url import BackendURL

from .control import ControlOperations
from .fire import FireOperations
from .history import RunHistory
from .layout import NodeLayout
from .leases import LeaseOperations
from .membership import MembershipOperations
from .options import SCHEMES, ZooKeeperOptions, parse_zookeeper_url
from .session import ZooKeeperSession
from .store import NodeStore

__all__ = ["MIN_SESSION_TIMEOUT_S", "MIN_TTL_S", "ZooKeeperBackend"]

LOG = logging.getLogger(__name__)

MIN_TTL_S = 1.0
"""The shortest lease TTL the backend accepts, in seconds.

A chosen floor, not a server limit: each lease's TTL is checked against the leader's
clock, whatever the session timeout. Below a second, request round trips and clock
differences between servers after a leader change would take a noticeable share of it.
"""

MIN_SESSION_TIMEOUT_S = 4.0
"""The shortest session timeout a ZooKeeper server grants with default settings: 2 ticks of 2 s.

Lease TTLs up to this fit in every session such a server grants.
"""


class ZooKeeperBackend(Backend):
    """A backend on a ZooKeeper server or ensemble (tested with 3.8), through kazoo.

    Where it differs from the contract, or adds to it:

    - **Session-bound leases.** A held key is an ephemeral node of this backend's kazoo
      session, so a lease never outlives the session. It also has its own TTL, as the
      contract requires of a lease that is not renewed. The node records ``ttl_ms``. An
      acquirer that finds the node's ``mtime`` plus ``ttl_ms`` behind the server's clock
      deletes the node and takes the key. ``renew`` rewrites the node, which moves its
      ``mtime``. The lease therefore ends at the earlier of its TTL and the end of the
      session.
    - **The session timeout bounds the TTL.** The server ends a session it has not heard
      from for the negotiated session timeout, and its leases with it, so a TTL longer
      than that timeout would promise more than the server keeps. ``acquire`` and ``renew``
      raise ``ConfigurationError`` for such a TTL. The timeout is the one the server
      granted (read back on every connection, :attr:`session_timeout_s`), never the one
      requested with the ``session_timeout`` option. ``min_ttl_s`` (1 s) is below the
      shortest session timeout a server grants (4 s, 2 ticks of the default 2 s),
      because the TTL is checked per lease against the server's clock: the session
      timeout bounds it from above only.
    - **Server clock.** Every expiry (leases, kept leases, memberships, fire states) is a
      node's ``mtime``, stamped by the ZooKeeper leader's clock, plus a stored duration,
      compared with the leader's clock now (read by writing a clock node). NOTE: after a
      leader change the new leader's clock decides; keep the servers' clocks in sync.
    - **Fencing tokens** are the zxid of the transaction that created the holder node
      (its ``czxid``). Zxids increase with every write of the ensemble and are kept in the
      transaction log, so tokens keep increasing after a server restarts; only a server
      that starts over with an empty data directory starts them again from zero.
    - ``close()`` ends the session, which deletes its ephemeral nodes at once. So that
      leases still held are not freed sooner than the contract allows, it first turns
      each into a kept lease for the rest of its TTL (``inspect`` then reports it
      released). A process that exits without ``close()`` leaves its session to expire
      on the server; an acquirer takes its keys once their TTLs have run out.
    - Renew, release and fenced writes must come from the backend that acquired the
      lease: a lease is bound to that backend's session. A backend object used in a
      forked child process starts a session of its own there, and leaves the parent's
      session (and leases) alone.

    Connection states, as kazoo reports them:

    - CONNECTED: requests reach the server; a lease held now is held until its
      ``valid_until``, unless it is released.
    - SUSPENDED (the connection dropped; kazoo is reconnecting, to any host of the
      ensemble): the session, and the leases with it, may or may not be alive. ``renew``
      raises ``BackendUnavailable`` at once, so the lease is *at risk*, and other calls
      wait up to ``request_timeout`` for the reconnection. A reconnection within the
      session keeps every lease: the next ``renew`` succeeds. A lease is never reported
      lost while the state is unknown, until its ``valid_until`` passes.
    - LOST (the server reported that the session expired): every lease of the session is gone, and
      ``renew`` and fenced writes raise ``LeaseLost``. kazoo then starts a new session.

    A server that stops responding without closing its connections is noticed by kazoo
    only after two thirds of the session timeout; until then calls time out after
    ``request_timeout`` and leases are at risk.
    """

    schemes: ClassVar[tuple[str, ...]] = SCHEMES
    client_library: ClassVar[str] = "kazoo"
    capabilities: ClassVar[Capabilities] = Capabilities(
        min_ttl_s=MIN_TTL_S,
        ttl_granularity_s=0.001,
        durable_fencing_tokens=True,
        session_bound_leases=True,
    )

    def __init__(self, options: ZooKeeperOptions | None = None, *, url: str = "") -> None:
        """Create a backend for ``options`` (default: localhost:2181). Does not connect.

        ``url`` is the redacted URL shown in ``repr`` and messages; it is built from the
        options when empty.
        """
        options = options or ZooKeeperOptions()
        super().__init__(url=url or _describe(options), prefix=options.prefix)
        self.options = options
        self.layout = NodeLayout(options.chroot, options.prefix)
        self._session = ZooKeeperSession(options, self.url)
        self._store = NodeStore(self._session, self.layout)
        self._leases = LeaseOperations(self._store)
        self._fire = FireOperations(self._store, self._leases)
        self._history = RunHistory(self._store)
        self._membership = MembershipOperations(self._store)
        self._control = ControlOperations(self._store)

    @classmethod
    def from_url(cls, url: BackendURL) -> ZooKeeperBackend:
        """Build a backend from a ``zookeeper://``, ``zk://`` or ``kazoo://`` URL (see ``planlagt_zookeeper.options``).

        Raises ``InvalidURL`` naming the option or part at fault. Never connects.
        """
        return cls(parse_zookeeper_url(url), url=url.redacted())

    def close(self) -> None:
        """Keep held leases' keys blocked until their TTLs end, end the session and stop kazoo's threads.

        Later calls raise ``BackendError``.
        """
        self._leases.keep_held_leases()
        self._session.close()

    # -- Session --------------------------------------------------------------------

    @property
    def session_timeout_s(self) -> float:
        """The session timeout the server granted, in seconds: the longest lease TTL. Connects if needed."""
        return self._session.negotiated_timeout_s

    @property
    def connection_state(self) -> str:
        """``connected``, ``suspended`` or ``expired`` (see :class:`~planlagt_zookeeper.session.ConnectionState`)."""
        return self._session.state()

    @property
    def kazoo_client(self) -> KazooClient:
        """The connected kazoo client of this backend, for diagnostics and tests. Connects if needed."""
        return self._session.client("return the kazoo client")

    def _ready(self, operation: str) -> None:
        self._store.prepare(operation)

    # -- Leases ---------------------------------------------------------------------

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        self._ready("acquire")
        return self._leases.acquire(key, ttl_s, holder)

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        self._ready("renew")
        return self._leases.renew(lease, ttl_s)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        self._ready("release")
        return self._leases.release(lease, keep_s)

    def _do_inspect(self, key: str) -> LeaseInfo | None:
        self._ready("inspect")
        return self._leases.inspect(key)

    # -- Fire state -----------------------------------------------------------------

    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState:
        self._ready("begin_attempt")
        return self._fire.begin_attempt(lease, job, fire_time, max_attempts, keep_s)

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        self._ready("finish_fire")
        return self._fire.finish_fire(record, lease, keep_s)

    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None:
        self._ready("get_fire")
        return self._fire.get_fire(job, fire_time)

    # -- Run history ----------------------------------------------------------------

    def _do_record_run(self, record: RunRecord) -> None:
        self._ready("record_run")
        self._history.record(record)

    def _do_list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        self._ready("list_runs")
        return self._history.list_records(job, limit, since, until)

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        """Trim run records, and delete every expired fire state under the prefix too."""
        self._ready("trim_runs")
        deleted = self._history.trim(max_per_job, max_age_s)
        swept = self._fire.sweep_all()
        LOG.debug("Trimmed %d run records and %d expired fire states at %s", deleted, swept, self.url)
        return deleted

    # -- Membership -----------------------------------------------------------------

    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        self._ready("heartbeat")
        return self._membership.heartbeat(info, ttl_s)

    def _do_leave(self, instance_id: str) -> None:
        self._ready("leave")
        self._membership.leave(instance_id)

    def _do_list_instances(self) -> list[InstanceInfo]:
        self._ready("list_instances")
        return self._membership.list_instances()

    # -- Job registry ---------------------------------------------------------------

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        self._ready("announce_jobs")
        self._membership.announce_jobs(instance_id, definitions)

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        self._ready("list_job_definitions")
        return self._membership.list_job_definitions()

    # -- Control state --------------------------------------------------------------

    def _do_read_control(self) -> ControlState:
        self._ready("read_control")
        return self._control.read_control()

    def _do_set_paused(self, job: str, paused: bool) -> None:
        self._ready("set_paused")
        self._control.set_paused(job, paused)

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        self._ready("add_trigger")
        self._control.add_trigger(request)

    def _do_remove_trigger(self, request_id: str) -> bool:
        self._ready("remove_trigger")
        return self._control.remove_trigger(request_id)


def _describe(options: ZooKeeperOptions) -> str:
    """Return a URL for ``options`` with the password redacted, for ``repr`` and messages."""
    auth = f"{options.username}:***@" if options.username is not None else ""
    query = f"?prefix={options.prefix}" if options.prefix != "planlagt" else ""
    return f"zookeeper://{auth}{options.hosts_text}{options.chroot}{query}"
