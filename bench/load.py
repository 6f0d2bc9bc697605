"""Measurement 2: the scheduler under load, and its backend traffic with 3 and with 6 instances.

``jobs`` no-op jobs fire every second, spread over the instance processes by planlagt's
own assignment. Traffic is counted over the fire times of the window: from half a second
before the first fire time to half a second before the one after the last, so each
count covers whole seconds of fire times.

Counted where it can be: Redis commands at the server (``INFO commandstats``, which
counts the commands a Lua script calls as well as the script call itself); Redis
requests (round trips) by patching redis-py's socket write in each instance; SQLite
transactions (round trips) and statements by patching the planlagt SQLite connection
manager; backend calls (public ``Backend`` methods) for every backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fleet import sleep_until
from .scenario import InstanceSettings, WindowResult, progress, run_window
from .tally import expected_fire_times, tally_events

__all__ = ["LOAD_LEASE_TTL_S", "measure_load"]

LOAD_LEASE_TTL_S = 5.0
LOAD_HEARTBEAT_S = 1.0
SETTLE_S = 3.0
EVERY_SECOND = "* * * * * *"


def measure_load(
    backend: str, servers: Any, workdir: Path, *, jobs: int, instances: int, duration_s: float
) -> dict[str, Any]:
    """Run ``jobs`` every-second jobs over ``instances`` processes for ``duration_s``; return the figures."""
    part = f"m2-load-{backend}-{jobs}x{instances}"
    settings = InstanceSettings(
        backend_url=servers.url(backend, part),
        jobs=[{"name": "load", "count": jobs, "schedule": EVERY_SECOND}],
        lease_ttl_s=LOAD_LEASE_TTL_S,
        heartbeat_s=LOAD_HEARTBEAT_S,
        count_traffic=True,
        sample=True,
    )
    progress(f"  load: {backend}, {jobs} jobs/s over {instances} instances for {duration_s:g} s")
    during = _redis_stats_recorder(servers) if backend == "redis" else None
    window = run_window(
        workdir / part, settings, instances=instances, duration_s=duration_s, settle_s=SETTLE_S, during=during
    )
    names = {f"load-{index}": EVERY_SECOND for index in range(jobs)}
    tally = tally_events(window.events, expected_fire_times(names, window.start, window.end))
    result = {
        "backend": backend,
        "instances": instances,
        "jobs": jobs,
        "duration_s": duration_s,
        "lease_ttl_s": LOAD_LEASE_TTL_S,
        "heartbeat_s": LOAD_HEARTBEAT_S,
        "max_workers": settings.max_workers,
        **tally.to_dict(),
        **_traffic(window, tally.fire_times),
    }
    if "commandstats" in window.extra:
        result["server_commands"] = _per_fire_commands(window.extra["commandstats"], tally.fire_times)
    return result


def _redis_stats_recorder(servers: Any) -> Any:
    """Return a ``during`` callback: reset Redis command statistics at the window's start, read them at its end."""

    def during(fleet: Any, start: float, end: float, extra: dict[str, Any]) -> None:
        admin = servers.redis_admin()
        try:
            sleep_until(start - 0.5)
            admin.config_resetstat()
            sleep_until(end - 0.5)
            extra["commandstats"] = admin.info("commandstats")
        finally:
            admin.close()

    return during


def _nearest(samples: list[dict[str, Any]], wall_time: float) -> dict[str, Any] | None:
    if not samples:
        return None
    return min(samples, key=lambda sample: abs(sample["t"] - wall_time))


def _traffic(window: WindowResult, fire_times: int) -> dict[str, Any]:
    """Return traffic and CPU per fire time and per instance between the half seconds around the window."""
    totals = {"round_trips": 0, "statements": 0, "calls": 0}
    by_method: dict[str, int] = {}
    cpu: dict[str, float | None] = {}
    for name in window.instances:
        first = _nearest(window.samples.get(name, []), window.start - 0.5)
        last = _nearest(window.samples.get(name, []), window.end - 0.5)
        if first is None or last is None:
            cpu[name] = None
            continue
        cpu[name] = round(last["cpu_s"] - first["cpu_s"], 2)
        totals["round_trips"] += last["round_trips"] - first["round_trips"]
        totals["statements"] += last["statements"] - first["statements"]
        for method, count in last["calls"].items():
            delta = count - first["calls"][method]
            totals["calls"] += delta
            if delta:
                by_method[method] = by_method.get(method, 0) + delta
    per_fire = max(fire_times, 1)
    return {
        "round_trips_per_fire": round(totals["round_trips"] / per_fire, 3),
        "statements_per_fire": round(totals["statements"] / per_fire, 3),
        "backend_calls_per_fire": round(totals["calls"] / per_fire, 3),
        "backend_calls_by_method_per_fire": {m: round(c / per_fire, 4) for m, c in sorted(by_method.items())},
        "cpu_s_per_instance": cpu,
    }


def _per_fire_commands(commandstats: dict[str, Any], fire_times: int) -> dict[str, Any]:
    per_fire = max(fire_times, 1)
    calls = {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in commandstats.items()
        if not name.removeprefix("cmdstat_").startswith(("config", "info"))
    }
    return {
        "total_per_fire": round(sum(calls.values()) / per_fire, 3),
        "scripts_per_fire": round(calls.get("evalsha", 0) / per_fire, 3),
        "by_command_per_fire": {name: round(count / per_fire, 4) for name, count in sorted(calls.items())},
    }
