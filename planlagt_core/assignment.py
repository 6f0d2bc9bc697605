"""Which live instance owns which job.

Every instance computes the same assignment from the same inputs, with no coordination:
jobs are taken heaviest first (weight: expected runs per second) in a fixed order, and
each goes to the least-loaded live instance that announces it. Work is balanced by
expected runs, not by job count, so one frequent job does not outweigh many rare ones.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Mapping, Sequence

__all__ = ["assign"]


def _order_key(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=8).digest()


def assign(
    weights: Mapping[str, float],
    live: Sequence[str],
    candidates: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """Return ``{job: instance}`` for every job that has a live candidate instance.

    ``weights`` maps job names to expected runs per second. ``candidates`` restricts a job
    to the instances that announce it (None: every live instance has every job).
    """
    if not live:
        return {}
    ordered = sorted(weights, key=lambda name: (-weights[name], _order_key(name), name))
    load = {instance: 0.0 for instance in live}
    heap = [(0.0, instance) for instance in sorted(live)]
    owners: dict[str, str] = {}
    for name in ordered:
        allowed = live if candidates is None else candidates.get(name, live)
        if candidates is None or len(allowed) == len(live):
            owner = _take_least_loaded(heap, load, weights[name])
        else:
            owner = _least_loaded_of(allowed, heap, load, weights[name])
        if owner is not None:
            owners[name] = owner
    return owners


def _take_least_loaded(heap: list[tuple[float, str]], load: dict[str, float], weight: float) -> str:
    while True:
        current, instance = heapq.heappop(heap)
        if current == load[instance]:
            break
    load[instance] = current + weight
    heapq.heappush(heap, (load[instance], instance))
    return instance


def _least_loaded_of(
    allowed: Sequence[str], heap: list[tuple[float, str]], load: dict[str, float], weight: float
) -> str | None:
    present = [instance for instance in allowed if instance in load]
    if not present:
        return None
    owner = min(present, key=lambda instance: (load[instance], instance))
    load[owner] += weight
    # The owner's older heap entry goes stale and is skipped by _take_least_loaded.
    heapq.heappush(heap, (load[owner], owner))
    return owner
