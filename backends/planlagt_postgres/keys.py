"""Advisory lock keys: PostgreSQL's single 64-bit form, derived from the schema, prefix and lease key.

Collisions. The key is the first 8 bytes of a SHA-256 digest, so two distinct names
share a key with probability 2^-64. Among n names some pair does with probability of
about n² / 2^65, which is about 3 in 10^8 for a million names. A collision never lets two
holders hold one lease. The lease row, the fencing token and every fenced write are
keyed by the full lease key, and each lease holds its advisory lock on a connection of
its own, so two lease keys that share an advisory key only exclude each other: while
one is held the other cannot be acquired. Other programs that take advisory locks in
the same database share the key space and can collide the same way, with the same effect.
"""

from __future__ import annotations

import hashlib

__all__ = ["LOCK_NAMESPACE", "SCHEMA_LOCK_NAMESPACE", "advisory_key", "pg_locks_ids"]

LOCK_NAMESPACE = b"planlagt-lease"
SCHEMA_LOCK_NAMESPACE = b"planlagt-schema"

KEY_BYTES = 8
LOW_32_BITS = 0xFFFF_FFFF
UNSIGNED_64_BITS = 0xFFFF_FFFF_FFFF_FFFF


def advisory_key(namespace: bytes, *parts: str) -> int:
    """Return the signed 64-bit advisory lock key of ``parts`` within ``namespace``.

    The parts are joined with NUL bytes, which no key, prefix or schema name may contain,
    so different tuples of parts never hash the same text.
    """
    text = b"\x00".join([namespace, *(part.encode("utf-8") for part in parts)])
    digest = hashlib.sha256(text).digest()
    return int.from_bytes(digest[:KEY_BYTES], "big", signed=True)


def pg_locks_ids(key: int) -> tuple[int, int]:
    """Return the ``(classid, objid)`` under which ``pg_locks`` lists a lock taken with the bigint ``key``.

    PostgreSQL shows a bigint advisory key as its high 32 bits in ``classid`` and its low
    32 bits in ``objid``, both unsigned, with ``objsubid`` 1.
    """
    unsigned = key & UNSIGNED_64_BITS
    return unsigned >> 32, unsigned & LOW_32_BITS
