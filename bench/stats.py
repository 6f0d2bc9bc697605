"""Percentiles and summaries of samples, in the unit the samples are in."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile", "summarize"]


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (0 to 1) of ``samples`` by the nearest-rank method.

    Raises ``ValueError`` for an empty sequence.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Sequence[float], *, scale: float = 1.0, digits: int = 3) -> dict[str, float | int | None]:
    """Return count, p50, p99 and max of ``samples`` multiplied by ``scale``, rounded to ``digits``.

    With no samples every figure but the count is None.
    """
    if not samples:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {
        "count": len(samples),
        "p50": round(percentile(samples, 0.50) * scale, digits),
        "p99": round(percentile(samples, 0.99) * scale, digits),
        "max": round(max(samples) * scale, digits),
    }
