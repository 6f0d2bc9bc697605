"""Key-value and lease requests to etcd, one method per request, with errors already translated.

Every method sends exactly one request (``scan`` one per page) through
:class:`~planlagt_etcd.connection.EtcdConnection`, so a caller can count its round
trips. Keys and values are bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pyetcd import transactions

from planlagt_core.errors import BackendError

from .connection import EtcdConnection
from .errors import LeaseNotFound, invalid_data

__all__ = ["SCAN_PAGE", "Entry", "EtcdStore", "Txn"]

LOG = logging.getLogger(__name__)

T = TypeVar("T")

SCAN_PAGE = 1000
"""Keys read per request when a whole key range is scanned."""


@dataclass(frozen=True)
class Entry:
    """One stored key with its value and etcd metadata (revisions, attached lease id, 0 for none)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease_id: int


@dataclass(frozen=True)
class Txn:
    """The outcome of a transaction: which branch ran, and what its ``Get`` and ``Delete`` operations did.

    ``reads`` has one list of entries per ``Get``, ``deleted`` one count of deleted keys
    per ``Delete``, each in the order of the operations.
    """

    succeeded: bool
    reads: list[list[Entry]]
    deleted: list[int]

    def read(self, index: int) -> Entry | None:
        """Return the single entry of the ``index``-th read, or None when the key was absent."""
        entries = self.reads[index]
        return entries[0] if entries else None


class EtcdStore:
    """The requests the backend sends, for one connection and backend URL (``url``, redacted)."""

    def __init__(self, connection: EtcdConnection, url: str) -> None:
        self.connection = connection
        self.url = url

    # -- Key-value ------------------------------------------------------------------

    def txn(
        self,
        operation: str,
        compare: Sequence[transactions.BaseCompare],
        success: Sequence[Any],
        failure: Sequence[Any] = (),
    ) -> Txn:
        """Run one transaction; ``reads`` lists what the ``Get`` operations of the branch that ran returned."""
        succeeded, responses = self.connection.run(
            operation,
            lambda client: client.transaction(compare=list(compare), success=list(success), failure=list(failure)),
        )
        reads = [
            [_entry(value, meta) for value, meta in response] for response in responses if isinstance(response, list)
        ]
        deleted = [
            int(response.response_delete_range.deleted)
            for response in responses
            if not isinstance(response, list) and response.WhichOneof("response") == "response_delete_range"
        ]
        return Txn(succeeded=bool(succeeded), reads=reads, deleted=deleted)

    def get(self, operation: str, key: bytes) -> Entry | None:
        """Return the entry of ``key``, or None when it does not exist."""
        value, meta = self.connection.run(operation, lambda client: client.get(key))
        return None if meta is None else _entry(value, meta)

    def range(
        self,
        operation: str,
        start: bytes,
        end: bytes,
        *,
        descending: bool = False,
        keys_only: bool = False,
        limit: int | None = None,
    ) -> list[Entry]:
        """Return the entries with ``start <= key < end``, sorted by key, at most ``limit``."""
        response = self.connection.run(
            operation,
            lambda client: client.get_range_response(
                start,
                end,
                sort_order="descend" if descending else "ascend",
                sort_target="key",
                keys_only=keys_only,
                limit=limit,
            ),
        )
        return [Entry(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) for kv in response.kvs]

    def scan(
        self, operation: str, start: bytes, end: bytes, *, descending: bool = False, keys_only: bool = False
    ) -> Iterator[Entry]:
        """Yield every entry with ``start <= key < end`` in key order, reading :data:`SCAN_PAGE` per request.

        Pages are separate reads, so keys written during the scan may or may not appear.
        """
        while True:
            page = self.range(operation, start, end, descending=descending, keys_only=keys_only, limit=SCAN_PAGE)
            yield from page
            if len(page) < SCAN_PAGE:
                return
            if descending:
                end = page[-1].key
            else:
                start = page[-1].key + b"\x00"

    def delete(self, operation: str, key: bytes) -> bool:
        """Delete ``key``; return whether it existed."""
        return bool(self.connection.run(operation, lambda client: client.delete(key)))

    def put(self, operation: str, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key`` with no lease."""
        self.connection.run(operation, lambda client: client.put(key, value))

    # -- Leases ---------------------------------------------------------------------

    def grant(self, operation: str, ttl_s: int) -> tuple[int, int]:
        """Grant a lease of ``ttl_s`` whole seconds; return its id and the TTL etcd actually granted."""
        lease = self.connection.run(operation, lambda client: client.lease(ttl_s))
        return int(lease.id), int(lease.ttl)

    def keep_alive(self, operation: str, lease_id: int) -> int:
        """Restart a lease's TTL; return the TTL it now has, 0 when the lease no longer exists."""
        responses = self.connection.run(operation, lambda client: list(client.refresh_lease(lease_id)))
        return int(responses[0].TTL) if responses else 0

    def time_to_live(self, operation: str, lease_id: int) -> int:
        """Return a lease's remaining TTL in whole seconds, -1 when it no longer exists."""
        return int(self.connection.run(operation, lambda client: client.get_lease_info(lease_id)).TTL)

    def revoke(self, operation: str, lease_id: int) -> bool:
        """Revoke a lease, deleting its keys; return False when it no longer existed."""
        try:
            self.connection.run(operation, lambda client: client.revoke_lease(lease_id))
        except LeaseNotFound:
            return False
        return True

    def revoke_quietly(self, operation: str, lease_id: int) -> None:
        """Revoke a lease that no key should keep alive; log a failure, which leaves it to expire by its TTL."""
        try:
            self.revoke(operation, lease_id)
        except BackendError as exc:
            LOG.warning("Could not revoke etcd lease %x after %s; it expires by its TTL: %s", lease_id, operation, exc)

    # -- Data -----------------------------------------------------------------------

    def parse(self, what: str, key: bytes, parse: Callable[[bytes], T], raw: bytes) -> T:
        """Parse a stored value with ``parse``, raising ``BackendError`` for data planlagt did not write."""
        try:
            return parse(raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise invalid_data(self.url, what, key, exc) from exc


def _entry(value: bytes, meta: Any) -> Entry:
    return Entry(meta.key, value, meta.create_revision, meta.mod_revision, meta.lease_id)
