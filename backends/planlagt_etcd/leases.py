"""Leases: one etcd lease per acquisition, with the lease key attached to it.

The lease key's value is JSON with the holder and the random owner string. Its create
revision, the cluster-wide revision of the transaction that created it, is the fencing
token. Every check that a lease is held compares both the value and the create revision
inside one etcd transaction, so a later holder of the same key never matches.
"""

from __future__ import annotations

import json
import math
import time

from pyetcd.transactions import BaseCompare, Create, Delete, Get, Put, Value

from planlagt_core.backend import Lease, LeaseInfo, new_owner_token, renewed
from planlagt_core.errors import BackendError, BackendUnavailable, ConfigurationError, LeaseLost

from .keys import KeyLayout
from .store import Entry, EtcdStore

__all__ = ["LeaseStore", "grant_exact", "held_compares", "is_held", "lease_value"]


def lease_value(owner: str, holder: str) -> bytes:
    """Return the value stored under a held lease key (compact JSON with sorted keys, so it compares exactly)."""
    return json.dumps({"holder": holder, "owner": owner}, separators=(",", ":"), sort_keys=True).encode()


def released_value(holder: str) -> bytes:
    """Return the value kept under a released key during ``keep_s``: no owner, so nothing matches it."""
    data = {"holder": holder, "owner": None, "released": True}
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def held_compares(lease_key: bytes, lease: Lease) -> list[BaseCompare]:
    """Return the transaction comparisons that hold only while ``lease`` is held."""
    return [Value(lease_key) == lease_value(lease.owner, lease.holder), Create(lease_key) == lease.token]


def is_held(entry: Entry | None, lease: Lease) -> bool:
    """Return whether a read of the lease key shows ``lease`` still held."""
    return (
        entry is not None
        and entry.value == lease_value(lease.owner, lease.holder)
        and entry.create_revision == lease.token
    )


def grant_exact(store: EtcdStore, operation: str, ttl_s: float) -> int:
    """Grant an etcd lease of ``ttl_s`` (whole seconds) and return its id.

    Raises ``ConfigurationError`` (after revoking it) when etcd granted a longer TTL, which
    it does below its minimum lease TTL: keys would then outlive the TTL the caller chose.
    """
    requested = math.ceil(ttl_s)
    lease_id, granted = store.grant(operation, requested)
    if granted > requested:
        store.revoke_quietly(operation, lease_id)
        raise ConfigurationError(
            f"etcd at {store.url} granted a lease TTL of {granted} s where {requested} s was requested: "
            f"its minimum lease TTL is {granted} s (1.5 election timeouts, rounded up to whole seconds); "
            f"use TTLs of at least {granted} s and add min_ttl={granted} to the backend URL"
        )
    return lease_id


class LeaseStore:
    """Acquire, renew, release and inspect leases under one key layout."""

    def __init__(self, store: EtcdStore, layout: KeyLayout) -> None:
        self._store = store
        self._layout = layout

    def lost(self, lease: Lease) -> LeaseLost:
        return LeaseLost(
            f"lease on {lease.key!r} (token {lease.token}) is no longer held: "
            "it expired, was released, or the key has another holder",
            key=lease.key,
            token=lease.token,
            backend=self._store.url,
        )

    def acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        """Grant an etcd lease and create the key on it, unless the key exists; revoke the lease of a lost race.

        A key that exists already is reported before any lease is granted. When the
        transaction fails with ``BackendUnavailable`` the lease is left to expire by its
        TTL, together with the key if the transaction took effect.
        """
        lease_key = self._layout.lease(key)
        if self._store.get("acquire", lease_key) is not None:
            return None

        owner = new_owner_token()
        sent_at = time.monotonic()
        lease_id = grant_exact(self._store, "acquire", ttl_s)
        try:
            result = self._store.txn(
                "acquire",
                [Create(lease_key) == 0],
                [Put(lease_key, lease_value(owner, holder), lease=lease_id), Get(lease_key)],
            )
        except BackendUnavailable:
            raise
        except BackendError:
            self._store.revoke_quietly("acquire", lease_id)
            raise

        created = result.read(0) if result.succeeded else None
        if created is None:
            self._store.revoke_quietly("acquire (key taken meanwhile)", lease_id)
            return None
        return Lease(
            key=key,
            token=created.create_revision,
            owner=owner,
            ttl_s=ttl_s,
            valid_until=sent_at + ttl_s,
            holder=holder,
        )

    def renew(self, lease: Lease, ttl_s: float) -> Lease:
        """Send a keep-alive for the etcd lease the key is attached to, once the key shows ``lease`` held.

        With a TTL other than the lease's own, the key moves to a new etcd lease of that TTL
        (a keep-alive always restarts the TTL the lease was granted with).
        """
        lease_key = self._layout.lease(lease.key)
        sent_at = time.monotonic()
        entry = self._store.get("renew", lease_key)
        if entry is None or not is_held(entry, lease):
            raise self.lost(lease)

        if ttl_s == lease.ttl_s:
            remaining = self._store.keep_alive("renew", entry.lease_id)
            if remaining <= 0:
                raise self.lost(lease)
            if remaining >= ttl_s:
                return renewed(lease, ttl_s=ttl_s, sent_at=sent_at)
        return self._move(lease, lease_key, entry.lease_id, ttl_s)

    def _move(self, lease: Lease, lease_key: bytes, old_lease_id: int, ttl_s: float) -> Lease:
        """Attach the held key to a new etcd lease of ``ttl_s`` and revoke the old one."""
        sent_at = time.monotonic()
        new_lease_id = grant_exact(self._store, "renew", ttl_s)
        try:
            result = self._store.txn(
                "renew",
                held_compares(lease_key, lease),
                [Put(lease_key, lease_value(lease.owner, lease.holder), lease=new_lease_id)],
            )
        except BackendUnavailable:
            raise
        except BackendError:
            self._store.revoke_quietly("renew", new_lease_id)
            raise

        if not result.succeeded:
            self._store.revoke_quietly("renew (lease lost meanwhile)", new_lease_id)
            raise self.lost(lease)
        self._store.revoke_quietly("renew", old_lease_id)
        return renewed(lease, ttl_s=ttl_s, sent_at=sent_at)

    def release(self, lease: Lease, keep_s: float) -> bool:
        """Delete the key (or keep it ``keep_s`` under a new short lease, marked released) and revoke its lease."""
        lease_key = self._layout.lease(lease.key)
        keep_lease_id = None
        if keep_s > 0:
            keep_lease_id, _ = self._store.grant("release", math.ceil(keep_s))
            change = Put(lease_key, released_value(lease.holder), lease=keep_lease_id)
        else:
            change = Delete(lease_key)

        try:
            result = self._store.txn("release", held_compares(lease_key, lease), [Get(lease_key), change])
        except BackendUnavailable:
            raise
        except BackendError:
            if keep_lease_id is not None:
                self._store.revoke_quietly("release", keep_lease_id)
            raise

        if not result.succeeded:
            if keep_lease_id is not None:
                self._store.revoke_quietly("release (lease not held)", keep_lease_id)
            return False
        released = result.read(0)
        if released is not None and released.lease_id:
            self._store.revoke_quietly("release", released.lease_id)
        return True

    def inspect(self, key: str) -> LeaseInfo | None:
        """Read the key and the remaining TTL of its etcd lease (two requests)."""
        lease_key = self._layout.lease(key)
        entry = self._store.get("inspect", lease_key)
        if entry is None:
            return None

        data = self._store.parse("lease", lease_key, _lease_data, entry.value)
        remaining = None
        if entry.lease_id:
            remaining = float(max(self._store.time_to_live("inspect", entry.lease_id), 0))
        return LeaseInfo(
            key=key,
            token=entry.create_revision,
            holder=str(data.get("holder") or ""),
            ttl_remaining_s=remaining,
            released=bool(data.get("released", False)),
        )


def _lease_data(raw: bytes) -> dict[str, object]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data
