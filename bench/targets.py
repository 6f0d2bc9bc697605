"""The targets of the benchmarks and the verdict of a figure against its target."""

from __future__ import annotations

__all__ = [
    "BALANCE_MAX_OVER_MIN",
    "FAILOVER_MARGIN_S",
    "IDLE_CPU_PERCENT",
    "LATENESS_P99_MS",
    "LEASE_RATIO",
    "ROUND_TRIP_TOLERANCE",
    "RSS_MIB",
    "at_most",
]

LEASE_RATIO = 1.15
"""planlagt's lease round trip over the raw client's, at most."""

LATENESS_P99_MS = 20.0
"""p99 lateness of run starts on Redis with 1,000 jobs per second over 3 instances, at most."""

ROUND_TRIP_TOLERANCE = 0.05
"""Largest relative difference of round trips per fire time between 3 and 6 instances counted as "the same"."""

IDLE_CPU_PERCENT = 2.0
"""Idle CPU of one instance with 10,000 jobs, in percent of one core, below."""

RSS_MIB = 100.0
"""Resident memory of one instance with 10,000 jobs, MiB, below."""

FAILOVER_MARGIN_S = 1.0
"""Fail-over within the lease TTL plus this margin, seconds."""

BALANCE_MAX_OVER_MIN = 1.25
"""Maximum completed runs per instance over the minimum, at most."""


def at_most(value: float | None, limit: float, unit: str = "") -> str:
    """Return "met" when ``value <= limit``, else "missed by" the excess (absolute and relative)."""
    if value is None:
        return "no figure"
    if value <= limit:
        return "met"
    excess = value - limit
    return f"**missed** by {_number(excess)}{unit} ({100 * excess / limit:.0f} % over)"


def below(value: float | None, limit: float, unit: str = "") -> str:
    """Return "met" when ``value < limit``, else "missed by" the excess."""
    if value is None:
        return "no figure"
    if value < limit:
        return "met"
    return at_most(value, limit, unit) if value > limit else f"**missed** (equal to the limit of {limit}{unit})"


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
