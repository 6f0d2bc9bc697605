"""Which live instance owns which job: rendezvous (highest random weight) hashing.

Every instance computes the same owner from the same list of live instances, with no
coordination. When an instance joins or leaves, only the jobs it gains or loses move,
about M/N of M jobs over N instances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["owner_of"]


def _weight(job: str, instance_id: str) -> int:
    digest = hashlib.blake2b(f"{job}\x00{instance_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(job: str, instance_ids: Iterable[str]) -> str | None:
    """Return the instance that owns ``job`` among ``instance_ids``, or None when there is none."""
    best: str | None = None
    best_weight = -1
    for instance_id in instance_ids:
        weight = _weight(job, instance_id)
        if weight > best_weight or (weight == best_weight and best is not None and instance_id < best):
            best, best_weight = instance_id, weight
    return best
