"""Leases as ephemeral nodes: acquire, renew, release, inspect, and the fence of fenced writes.

A key ``K`` is the persistent node ``R/leases/K``. Its holder is the ephemeral child
``R/leases/K/OWNER``, named after the lease's random owner string, so only that lease's
requests can address it. Every acquisition writes ``K`` with a version check in the
same transaction that creates the holder node, which makes acquisitions of one key
happen one at a time, and the transaction's zxid (the holder node's ``czxid``) is the
fencing token.

A holder node ends with the session that created it, and it also ends when its TTL runs
out: an acquirer that finds ``mtime + ttl_ms`` (the ZooKeeper leader's clock) in the past
deletes it, with a version check, in the transaction that takes the key.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kazoo.client import TransactionRequest
from kazoo.exceptions import NoNodeError, SessionExpiredError

from planlagt_core.backend import Lease, LeaseInfo, new_owner_token, renewed
from planlagt_core.errors import BackendUnavailable, ConfigurationError, LeaseLost, PlanlagtError

from .errors import CONDITION_ERRORS, lease_lost, translate_errors
from .session import ConnectionState, first_failure
from .store import Node, NodeStore, dump_json, expires_at_ms

__all__ = ["HeldLeases", "LeaseOperations", "holder_data", "session_expiry_as_loss", "to_ms"]

LOG = logging.getLogger(__name__)

MS_PER_S = 1000
FREE_KEY_DATA = b"{}"

MIN_RENEW_WAIT_S = 0.05
"""Shortest wait for a renewal's reply, used once the lease's own deadline has passed."""


def to_ms(seconds: float) -> int:
    """Convert a duration in seconds to whole milliseconds, rounding to the nearest, at least 1."""
    return max(1, round(seconds * MS_PER_S))


@dataclass(frozen=True)
class KeyState:
    """A key node and its holder nodes, as read at one moment."""

    key_node: Node | None
    holders: list[tuple[str, Node]]

    @property
    def may_be_blocked(self) -> bool:
        """Whether a holder or a kept lease is stored, so the server's time decides."""
        return bool(self.holders) or (self.key_node is not None and self.key_node[0] != FREE_KEY_DATA)


class HeldLeases:
    """The latest lease object of every lease this backend acquired and has not given up."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _drop_if_forked(self) -> None:
        # Leases remembered before a fork belong to the parent's session, not to a child's.
        if self._pid != os.getpid():
            self._leases.clear()
            self._pid = os.getpid()

    def remember(self, lease: Lease) -> None:
        now = time.monotonic()
        with self._lock:
            self._drop_if_forked()
            # Leases abandoned without a release are dropped once their TTL has passed.
            for owner in [owner for owner, held in self._leases.items() if held.valid_until < now]:
                del self._leases[owner]
            self._leases[lease.owner] = lease

    def forget(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(lease.owner, None)

    def take_all(self) -> list[Lease]:
        """Return every lease remembered and forget them."""
        with self._lock:
            self._drop_if_forked()
            leases = list(self._leases.values())
            self._leases.clear()
        return leases


class LeaseOperations:
    """The lease operations of the backend, on one :class:`NodeStore`."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.session = store.session
        self.layout = store.layout
        self.held = HeldLeases()

    # -- Acquire --------------------------------------------------------------------

    def acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        lease = self._acquire(key, ttl_s, holder)
        if lease is not None:
            self.held.remember(lease)
        return lease

    def renew(self, lease: Lease, ttl_s: float) -> Lease:
        try:
            extended = self._renew(lease, ttl_s)
        except LeaseLost:
            self.held.forget(lease)
            raise
        self.held.remember(extended)
        return extended

    def release(self, lease: Lease, keep_s: float) -> bool:
        released = self._release(lease, keep_s)
        self.held.forget(lease)
        return released

    def _acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        self.check_ttl_fits_session(ttl_s)
        state = self._read_key("acquire", key)
        now_ms = self.store.server_time_ms("acquire") if state.may_be_blocked else 0
        if state.may_be_blocked and self._blocked(key, state, now_ms):
            return None

        owner = new_owner_token()
        sent_at = time.monotonic()
        results = self.session.commit("acquire", lambda txn: self._take(txn, key, owner, holder, ttl_s, state))
        failure = first_failure(results)
        if failure is not None:
            self._raise_unless_condition_failed("acquire", failure[1])
            return None  # another client changed the key since it was read

        stat = results[1 if state.key_node is None else 0]
        return Lease(
            key=key, token=int(stat.mzxid), owner=owner, ttl_s=ttl_s, valid_until=sent_at + ttl_s, holder=holder
        )

    def _take(self, txn: TransactionRequest, key: str, owner: str, holder: str, ttl_s: float, state: KeyState) -> None:
        # Writing the key node with its version makes acquisitions of one key serial, and
        # its new mzxid is the zxid of this transaction: the czxid of the holder node.
        key_path = self.layout.lease(key)
        if state.key_node is None:
            txn.create(key_path, FREE_KEY_DATA)
            txn.set_data(key_path, FREE_KEY_DATA, version=0)
        else:
            txn.set_data(key_path, FREE_KEY_DATA, version=state.key_node[1].version)
        for stale_owner, (_, stat) in state.holders:
            txn.delete(self.layout.holder(key, stale_owner), version=stat.version)
        txn.create(self.layout.holder(key, owner), holder_data(holder, ttl_s), ephemeral=True)

    def _read_key(self, operation: str, key: str) -> KeyState:
        key_path = self.layout.lease(key)
        # One session's requests are served in order, so the key node is read no later
        # than its children: an acquisition in between changes its version and fails ours.
        key_node, children = self.session.call_all(
            operation,
            [lambda client: client.get_async(key_path), lambda client: client.get_children_async(key_path)],
        )
        if isinstance(key_node, NoNodeError) or isinstance(children, NoNodeError):
            return KeyState(key_node=None if isinstance(key_node, NoNodeError) else key_node, holders=[])

        owners = sorted(children)
        nodes = self.store.read_all(operation, [self.layout.holder(key, owner) for owner in owners])
        holders = [(owner, node) for owner, node in zip(owners, nodes, strict=True) if node is not None]
        return KeyState(key_node=key_node, holders=holders)

    def _blocked(self, key: str, state: KeyState, now_ms: int) -> bool:
        """Return whether a live holder or an unexpired kept lease blocks the key at ``now_ms``."""
        if any(self._holder_expiry_ms(key, owner, node) > now_ms for owner, node in state.holders):
            return True
        kept = self._kept(key, state.key_node)
        return kept is not None and expires_at_ms(state.key_node[1], int(kept["keep_ms"])) > now_ms  # type: ignore[index]

    # -- Renew, release, inspect ----------------------------------------------------

    def _renew(self, lease: Lease, ttl_s: float) -> Lease:
        self.check_ttl_fits_session(ttl_s)
        self._check_session(lease, "renew")
        if time.monotonic() >= lease.valid_until:
            self.check_held_on_server(lease, "renew")

        sent_at = time.monotonic()
        data = holder_data(lease.holder, ttl_s)
        # A renewal without a reply by the lease's deadline cannot help: the caller must
        # then count the lease lost, so the wait ends there (at least one poll).
        wait_s = max(lease.valid_until - sent_at, MIN_RENEW_WAIT_S)
        with session_expiry_as_loss(self.store.url, lease):
            try:
                self.session.call(
                    "renew", lambda client: client.set_async(self._holder_path(lease), data), timeout_s=wait_s
                )
            except NoNodeError:
                raise lease_lost(self.store.url, lease, "it expired and was taken over, or was released") from None
        return renewed(lease, ttl_s=ttl_s, sent_at=sent_at)

    def _release(self, lease: Lease, keep_s: float) -> bool:
        if time.monotonic() >= lease.valid_until and not self._held_on_server(lease, "release"):
            return False
        holder_path = self._holder_path(lease)
        if keep_s <= 0:
            try:
                self.session.call("release", lambda client: client.delete_async(holder_path))
            except NoNodeError:
                return False
            return True

        return self._release_and_keep(lease, to_ms(keep_s), "release")

    def _release_and_keep(self, lease: Lease, keep_ms: int, operation: str) -> bool:
        """Delete the holder node and store the kept lease in the key node, in one transaction."""
        kept = dump_json({"holder": lease.holder, "keep_ms": keep_ms, "released": True, "token": lease.token})

        def keep(txn: TransactionRequest) -> None:
            txn.delete(self._holder_path(lease))
            txn.set_data(self.layout.lease(lease.key), kept)

        failure = first_failure(self.session.commit(operation, keep))
        if failure is not None:
            self._raise_unless_condition_failed(operation, failure[1])
            return False
        return True

    def keep_held_leases(self) -> None:
        """Keep the keys of the leases still held blocked until their TTLs end, before the session ends.

        Ending a session deletes its holder nodes, while the contract has ``close()`` leave
        leases to expire. Each lease still held becomes a kept lease (as ``release`` with
        ``keep_s`` makes) for the rest of its TTL, rounded up. Failures are logged: the
        backend is closing.
        """
        leases = self.held.take_all()
        if self.session.state() != ConnectionState.CONNECTED:
            return  # kazoo cannot end an unconnected session, so the server ends it after its timeout
        for lease in leases:
            remaining_s = lease.valid_until - time.monotonic()
            if remaining_s <= 0:
                continue
            try:
                self._release_and_keep(lease, math.ceil(remaining_s * MS_PER_S), "close")
            except PlanlagtError as exc:
                LOG.warning(
                    "Could not keep the lease on %r blocked while closing %s: %s", lease.key, self.store.url, exc
                )

    def inspect(self, key: str) -> LeaseInfo | None:
        state = self._read_key("inspect", key)
        if not state.may_be_blocked:
            return None
        now_ms = self.store.server_time_ms("inspect")

        for owner, (data, stat) in state.holders:
            expiry_ms = self._holder_expiry_ms(key, owner, (data, stat))
            if expiry_ms > now_ms:
                holder = str(self.store.parse_object("lease", self.layout.holder(key, owner), data).get("holder", ""))
                return LeaseInfo(
                    key=key, token=int(stat.czxid), holder=holder, ttl_remaining_s=(expiry_ms - now_ms) / MS_PER_S
                )

        kept = self._kept(key, state.key_node)
        if kept is None or state.key_node is None:
            return None
        expiry_ms = expires_at_ms(state.key_node[1], int(kept["keep_ms"]))
        if expiry_ms <= now_ms:
            return None
        remaining_s = (expiry_ms - now_ms) / MS_PER_S
        return LeaseInfo(
            key=key,
            token=int(kept["token"]),
            holder=str(kept.get("holder") or ""),
            ttl_remaining_s=remaining_s,
            released=True,
        )

    # -- Fencing --------------------------------------------------------------------

    def prepare_fence(self, lease: Lease, operation: str) -> str:
        """Check what a transaction cannot, and return the holder path for its check.

        A fenced transaction checks that the holder node exists. A holder node outlives
        its TTL until an acquirer deletes it, so once the caller's local deadline has
        passed, this checks the TTL against the server's clock. Raises ``LeaseLost``.
        """
        self._check_session(lease, operation, at_risk_ok=True)
        if time.monotonic() >= lease.valid_until:
            self.check_held_on_server(lease, operation)
        return self._holder_path(lease)

    def fence_failed(self, lease: Lease) -> LeaseLost:
        """Return the error for a fenced transaction whose holder check failed."""
        return lease_lost(self.store.url, lease, "it expired and was taken over, was released, or its session ended")

    def check_held_on_server(self, lease: Lease, operation: str) -> None:
        """Raise ``LeaseLost`` unless the holder node exists and its TTL has not run out by the server's clock."""
        if not self._held_on_server(lease, operation):
            raise lease_lost(self.store.url, lease, "its TTL ran out on the server")

    def _held_on_server(self, lease: Lease, operation: str) -> bool:
        node = self.store.read(operation, self._holder_path(lease))
        if node is None:
            return False
        return self._holder_expiry_ms(lease.key, lease.owner, node) > self.store.server_time_ms(operation)

    # -- Session --------------------------------------------------------------------

    def check_ttl_fits_session(self, ttl_s: float) -> None:
        """Raise ``ConfigurationError`` for a TTL longer than the negotiated session timeout.

        A holder node ends with its session, and the server may end a session that it has
        not heard from for the session timeout. A longer TTL would promise the caller a
        lease (``Lease.valid_until``) that the server may already have freed.
        """
        limit_s = self.session.negotiated_timeout_s
        if ttl_s > limit_s:
            raise ConfigurationError(
                f"lease TTL {ttl_s} s is longer than the ZooKeeper session timeout of {limit_s} s that "
                f"{self.store.url} granted; a lease cannot outlive its session, so use a TTL of at most "
                f"{limit_s} s, or raise the session_timeout option (the server grants at most its "
                "maxSessionTimeout, 20 ticks unless configured)"
            )

    def _check_session(self, lease: Lease, operation: str, *, at_risk_ok: bool = False) -> None:
        """Raise ``LeaseLost`` when the session expired, ``BackendUnavailable`` while suspended."""
        state = self.session.state()
        if state == ConnectionState.EXPIRED:
            raise lease_lost(self.store.url, lease, "the ZooKeeper session that held it expired")
        if state == ConnectionState.SUSPENDED and not at_risk_ok:
            raise BackendUnavailable(
                f"the connection to ZooKeeper at {self.store.url} is suspended during {operation}: the lease on "
                f"{lease.key!r} is at risk until kazoo reconnects within the session or the lease's TTL runs out",
                backend=self.store.url,
            )

    # -- Node data ------------------------------------------------------------------

    def _holder_path(self, lease: Lease) -> str:
        return self.layout.holder(lease.key, lease.owner)

    def _holder_expiry_ms(self, key: str, owner: str, node: Node) -> int:
        data, stat = node
        fields = self.store.parse_object("lease", self.layout.holder(key, owner), data)
        return expires_at_ms(stat, self.store.parse("lease", self.layout.holder(key, owner), int, fields["ttl_ms"]))

    def _kept(self, key: str, key_node: Node | None) -> dict[str, Any] | None:
        """Return the kept lease stored in the key node, or None when it holds none."""
        if key_node is None or key_node[0] == FREE_KEY_DATA:
            return None
        fields = self.store.parse_object("kept lease", self.layout.lease(key), key_node[0])
        return fields if fields.get("released") else None

    def _raise_unless_condition_failed(self, operation: str, error: Exception) -> None:
        if isinstance(error, CONDITION_ERRORS):
            return
        with translate_errors(self.store.url, operation):
            raise error


@contextlib.contextmanager
def session_expiry_as_loss(url: str, lease: Lease) -> Iterator[None]:
    """Turn a ``BackendUnavailable`` caused by an expired session into ``LeaseLost``.

    The server deletes an expired session's ephemeral nodes, so a lease of that session is
    known to be gone. Our own close raises ``BackendError``, never this.
    """
    try:
        yield
    except BackendUnavailable as exc:
        if isinstance(exc.__cause__, SessionExpiredError):
            raise lease_lost(url, lease, "the ZooKeeper session that held it expired") from exc
        raise


def holder_data(holder: str, ttl_s: float) -> bytes:
    """Return the data of a holder node: the holder text and the TTL in milliseconds."""
    return dump_json({"holder": holder, "ttl_ms": to_ms(ttl_s)})
