"""Measurement 3: many registered jobs in one instance, none of them firing.

``jobs`` daily jobs are spread over the minutes of an hour twelve hours away, so none
fires during the measurement. Start-up is timed inside the instance: building the
scheduler and registering the jobs, starting it until it is healthy, and handling the
fire times it queues on start-up when it takes every job over. Idle CPU and resident
memory are read from ``/proc`` for the instance's PID after that.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .fleet import Fleet
from .scenario import InstanceSettings, progress

__all__ = ["measure_scale"]

SCALE_LEASE_TTL_S = 30.0
SCALE_HEARTBEAT_S = 10.0
CLOCK_TICKS_PER_S = 100  # os.sysconf("SC_CLK_TCK") on Linux
SCALE_READY_TIMEOUT_S = 240.0
"""Longest wait for the instance to register its jobs and finish taking them over."""


def measure_scale(backend: str, servers: Any, workdir: Path, *, jobs: int, idle_s: float) -> dict[str, Any]:
    """Start one instance with ``jobs`` daily jobs, then measure ``idle_s`` seconds of idling."""
    part = f"m3-scale-{backend}"
    hour = (datetime.now(timezone.utc).hour + 12) % 24
    settings = InstanceSettings(
        backend_url=servers.url(backend, part),
        jobs=[{"name": "daily", "count": jobs, "schedule": "{minute} {hour} * * *", "hour": hour}],
        lease_ttl_s=SCALE_LEASE_TTL_S,
        heartbeat_s=SCALE_HEARTBEAT_S,
    )
    progress(f"  scale: {backend}, {jobs} daily jobs, {idle_s:g} s idle")
    state_dir = workdir / part
    with Fleet(state_dir) as fleet:
        config = {**settings.config("i1", state_dir, 1, 0.0), "wait_catch_up": True}
        launched = time.monotonic()
        fleet.spawn_module("i1", "bench.instance", config)
        ready = fleet.wait_ready(["i1"], timeout_s=SCALE_READY_TIMEOUT_S)["i1"]
        launch_to_ready_s = time.monotonic() - launched
        pid = fleet.pid("i1")
        cpu_before, wall_before = _cpu_s(pid), time.monotonic()
        time.sleep(idle_s)
        cpu_after, wall_after = _cpu_s(pid), time.monotonic()
        memory = _memory_mib(pid)
    return {
        "backend": backend,
        "jobs": jobs,
        "idle_s": idle_s,
        "heartbeat_s": SCALE_HEARTBEAT_S,
        "build_s": round(ready["build_s"], 2),
        "start_to_healthy_s": round(ready["ready_s"] - ready["build_s"], 2),
        "catch_up_done_s": round(ready["catch_up_s"], 2),
        "launch_to_ready_s": round(launch_to_ready_s, 2),
        "idle_cpu_percent": round(100 * (cpu_after - cpu_before) / (wall_after - wall_before), 3),
        **memory,
    }


def _cpu_s(pid: int) -> float:
    """Return user + system CPU seconds of ``pid`` from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    # After the command name: state is field 0, utime field 11, stime field 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def _memory_mib(pid: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, kib = line.split()[:2]
            values["rss_mib" if name == "VmRSS:" else "peak_rss_mib"] = round(int(kib) / 1024, 1)
    return values
