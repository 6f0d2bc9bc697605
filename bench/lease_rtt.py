"""Measurement 1: a lease round trip through planlagt's backend against the raw-client floor.

One pair is ``acquire`` + ``release`` of a fresh key. planlagt pairs and floor pairs
alternate one by one in the same process against the same server, so both see the same
machine load, connection state and server caches. Times are wall-clock
(``time.perf_counter``) per pair.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from planlagt_core.plugins import connect

from .floors import FLOOR_DESCRIPTIONS, open_floor
from .stats import percentile

__all__ = ["measure_lease_round_trip"]

LOG = logging.getLogger(__name__)

LEASE_TTL_S = 30.0
WARM_UP_PAIRS = 100


def measure_lease_round_trip(backend: str, servers: Any, pairs: int) -> dict[str, Any]:
    """Time ``pairs`` planlagt pairs and ``pairs`` floor pairs, interleaved; return the summary in ms."""
    part = f"m1-lease-{backend}"
    planlagt = connect(servers.url(backend, part))
    floor = open_floor(backend, servers, part)
    try:
        for index in range(WARM_UP_PAIRS):
            _planlagt_pair(planlagt, f"warm-{index}")
            floor.pair(f"floor-warm-{index}")
        ours: list[float] = []
        raw: list[float] = []
        for index in range(pairs):
            started = time.perf_counter()
            _planlagt_pair(planlagt, f"job-{index}")
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            floor.pair(f"floor-{index}")
            raw.append(time.perf_counter() - started)
    finally:
        planlagt.close()
        floor.close()
    return _summary(backend, pairs, ours, raw)


def _planlagt_pair(backend: Any, key: str) -> None:
    lease = backend.acquire(key, LEASE_TTL_S)
    if lease is None:
        raise RuntimeError(f"planlagt acquire of fresh key {key!r} returned None")
    backend.release(lease)


def _summary(backend: str, pairs: int, ours: list[float], raw: list[float]) -> dict[str, Any]:
    ours_p50, ours_p99 = percentile(ours, 0.5) * 1000, percentile(ours, 0.99) * 1000
    raw_p50, raw_p99 = percentile(raw, 0.5) * 1000, percentile(raw, 0.99) * 1000
    return {
        "backend": backend,
        "pairs": pairs,
        "floor": FLOOR_DESCRIPTIONS[backend],
        "planlagt_ms": {"p50": round(ours_p50, 4), "p99": round(ours_p99, 4)},
        "raw_ms": {"p50": round(raw_p50, 4), "p99": round(raw_p99, 4)},
        "ratio_p50": round(ours_p50 / raw_p50, 3),
        "ratio_p99": round(ours_p99 / raw_p99, 3),
    }
