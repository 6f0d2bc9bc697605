"""Measurement 5: balance of equal jobs over instances.

``jobs`` jobs fire every second and each works ``WORK_S``; completed runs are counted per
instance over the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .scenario import InstanceSettings, progress, run_window
from .tally import expected_fire_times, tally_events

__all__ = ["measure_balance"]

BALANCE_LEASE_TTL_S = 5.0
BALANCE_HEARTBEAT_S = 1.0
WORK_S = 0.01
SETTLE_S = 3.0
EVERY_SECOND = "* * * * * *"


def measure_balance(
    backend: str, servers: Any, workdir: Path, *, jobs: int, instances: int, duration_s: float
) -> dict[str, Any]:
    """Run ``jobs`` equal jobs over ``instances`` processes for ``duration_s``; return runs per instance."""
    part = f"m5-balance-{backend}"
    settings = InstanceSettings(
        backend_url=servers.url(backend, part),
        jobs=[{"name": "equal", "count": jobs, "schedule": EVERY_SECOND, "work_s": WORK_S}],
        lease_ttl_s=BALANCE_LEASE_TTL_S,
        heartbeat_s=BALANCE_HEARTBEAT_S,
    )
    progress(f"  balance: {backend}, {jobs} jobs over {instances} instances for {duration_s:g} s")
    window = run_window(workdir / part, settings, instances=instances, duration_s=duration_s, settle_s=SETTLE_S)
    names = {f"equal-{index}": EVERY_SECOND for index in range(jobs)}
    tally = tally_events(window.events, expected_fire_times(names, window.start, window.end))
    return {
        "backend": backend,
        "jobs": jobs,
        "instances": instances,
        "duration_s": duration_s,
        "fire_times": tally.fire_times,
        "duplicates": tally.duplicates,
        "missed": tally.missed,
        **tally.balance(window.instances),
    }
