"""Measurement 6: planlagt and two peers on the same workload, side by side.

Each system runs three instances whose clocks are offset by -150, 0 and +150 ms, on the
workload of :mod:`bench.peers.workload`. Halfway through the window the instance running
the ``long`` job is SIGKILLed ``KILL_AFTER_S`` into the run. Counted from the journals:

- duplicates: fire times completed more than once, over the whole window;
- missed: fire times never completed, over the whole window (split into the killed
  ``long`` job and the short jobs);
- balance: completed runs per instance for the fire times before the kill.

planlagt and the lock-per-tick peer use the run's Redis server; APScheduler uses its
PostgreSQL server.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fleet import Fleet, sleep_until
from ..journal import read_journals
from ..scenario import InstanceSettings, progress
from ..tally import expected_fire_times, tally_events
from . import workload

__all__ = ["SYSTEMS", "measure_peers"]

SYSTEMS = ("planlagt", "lock-per-tick", "apscheduler")
SETTLE_S = 3.0
KILL_AFTER_S = 0.5
DRAIN_S = 5.0
POLL_S = 0.01
LONG_LEAD_S = 2
KILL_WAIT_S = 5.0


def measure_peers(servers: Any, workdir: Path, *, duration_s: float, systems: list[str]) -> dict[str, Any]:
    """Run ``systems`` side by side through one window; return one result per system.

    The systems run at the same time (the workload is light: eleven jobs per system), so
    they share the window, the machine's load and the kill instant.
    """
    offsets = "/".join(f"{1000 * offset:+.0f}" for offset in workload.CLOCK_OFFSETS_S)
    progress(
        f"  peers: {', '.join(systems)} side by side, 3 instances each, clocks offset {offsets} ms, "
        f"{duration_s:g} s, one SIGKILL each"
    )  # fmt: skip
    state_dirs = {system: workdir / f"m6-{system}" for system in systems}
    fleets = {system: Fleet(state_dirs[system]) for system in systems}
    names = [f"i{index + 1}" for index in range(len(workload.CLOCK_OFFSETS_S))]
    try:
        _start_all(servers, fleets, state_dirs, names)
        start = _aligned_start(time.time() + SETTLE_S)
        end = start + duration_s
        target_ms = round(_kill_target(start, duration_s) * 1000)
        kills = _kill_long_runs(fleets, state_dirs, target_ms)
        sleep_until(end + DRAIN_S)
    finally:
        for fleet in fleets.values():
            fleet.stop_all()
    results = {
        system: _tally(system, names, read_journals(state_dirs[system]), start, end, kills.get(system))
        for system in systems
    }
    return {"workload": _workload(duration_s, target_ms), "systems": results}


def _workload(duration_s: float, target_ms: int) -> dict[str, Any]:
    return {
        "short_jobs": workload.SHORT_JOBS,
        "short_work_s": workload.SHORT_WORK_S,
        "long_period_s": workload.LONG_PERIOD_S,
        "long_work_s": workload.LONG_WORK_S,
        "clock_offsets_s": list(workload.CLOCK_OFFSETS_S),
        "lease_ttl_s": workload.LEASE_TTL_S,
        "duration_s": duration_s,
        "kill_after_s": KILL_AFTER_S,
        "killed_fire_time_ms": target_ms,
    }


def _start_all(servers: Any, fleets: dict[str, Fleet], state_dirs: dict[str, Path], names: list[str]) -> None:
    spawners = {system: _spawner(system, servers, state_dirs[system]) for system in fleets}
    # The first instance of each system creates its tables or keys before the others start.
    for system, fleet in fleets.items():
        spawners[system](fleet, names[0], workload.CLOCK_OFFSETS_S[0])
    for fleet in fleets.values():
        fleet.wait_ready(names[:1])
    for system, fleet in fleets.items():
        for name, offset in zip(names[1:], workload.CLOCK_OFFSETS_S[1:], strict=True):
            spawners[system](fleet, name, offset)
    for fleet in fleets.values():
        fleet.wait_ready(names)


def _spawner(system: str, servers: Any, state_dir: Path) -> Callable[[Fleet, str, float], None]:
    """Return a function that starts one instance of ``system`` in a fleet."""
    if system == "planlagt":
        settings = InstanceSettings(
            backend_url=servers.url("redis", "m6-planlagt"),
            jobs=workload.planlagt_jobs(),
            lease_ttl_s=workload.LEASE_TTL_S,
            heartbeat_s=workload.HEARTBEAT_S,
            buffered_journal=False,
        )
        return lambda fleet, name, offset: fleet.spawn_module(
            name, "bench.instance", settings.config(name, state_dir, 1, offset)
        )
    if system == "lock-per-tick":
        module = "bench.peers.lock_per_tick"
        extra = {"redis_url": servers.server("redis").url}
    elif system == "apscheduler":
        module = "bench.peers.apscheduler_instance"
        extra = {"sqlalchemy_url": servers.postgres_sqlalchemy_url()}
    else:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")

    def spawn(fleet: Fleet, name: str, offset: float) -> None:
        config = {"instance_id": name, "clock_offset_s": offset, "state_dir": str(state_dir), **extra}
        fleet.spawn_module(name, module, config)

    return spawn


def _aligned_start(earliest: float) -> float:
    """Return the first whole second after ``earliest`` that comes ``LONG_LEAD_S`` before a long fire time."""
    start = int(earliest) + 1
    while (start + LONG_LEAD_S) % workload.LONG_PERIOD_S:
        start += 1
    return float(start)


def _kill_target(start: float, duration_s: float) -> float:
    """Return the first long fire time at or after the middle of the window."""
    target = start + LONG_LEAD_S
    while target < start + duration_s / 2:
        target += workload.LONG_PERIOD_S
    return target


def _kill_long_runs(fleets: dict[str, Fleet], state_dirs: dict[str, Path], target_ms: int) -> dict[str, Any]:
    """SIGKILL, in each system, the instance running the long job's fire time ``target_ms``."""
    kills: dict[str, Any] = {}
    sleep_until(target_ms / 1000 - 1.0)
    deadline = target_ms / 1000 + KILL_WAIT_S
    while len(kills) < len(fleets) and time.time() < deadline:
        for system, fleet in fleets.items():
            if system in kills:
                continue
            found = _running_long(fleet, state_dirs[system], target_ms)
            if found is not None and time.time() >= found[1] + KILL_AFTER_S:
                kills[system] = {"instance": found[0], "fire_ms": target_ms, "killed_at": fleet.kill(found[0])}
        time.sleep(POLL_S)
    for system in fleets:
        if system not in kills:
            print(f"peers: {system} ran no long job at {target_ms} ms in time; nothing was killed", file=sys.stderr)
    return kills


def _running_long(fleet: Fleet, state_dir: Path, target_ms: int) -> tuple[str, float] | None:
    for marker in state_dir.glob(f"*.{workload.LONG_JOB}.running"):
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        name = marker.name.split(".", 1)[0]
        if data["fire_ms"] == target_ms and fleet.members[name].process.poll() is None:
            return name, data["t"]
    return None


def _tally(
    system: str, names: list[str], events: list[dict[str, Any]], start: float, end: float, kill: dict[str, Any] | None
) -> dict[str, Any]:
    schedules = workload.job_schedules()
    whole = tally_events(events, expected_fire_times(schedules, start, end))
    cut = kill["killed_at"] if kill else end
    before_kill = tally_events(events, expected_fire_times(schedules, start, min(cut, end)))
    long_only = tally_events(events, expected_fire_times({workload.LONG_JOB: schedules[workload.LONG_JOB]}, start, end))
    killed_fire = None
    if kill is not None:
        completions = [e for e in events if e["e"] == "end" and e["job"] == workload.LONG_JOB
                       and e["fire_ms"] == kill["fire_ms"] and e.get("outcome") == "succeeded"]  # fmt: skip
        killed_fire = {"fire_ms": kill["fire_ms"], "completed_elsewhere": bool(completions)}
    return {
        "system": system,
        "fire_times": whole.fire_times,
        "completed": whole.completed,
        "duplicates": whole.duplicates,
        "missed": whole.missed,
        "missed_long": long_only.missed,
        "missed_short": whole.missed - long_only.missed,
        "killed": None if kill is None else kill["instance"],
        "killed_fire_time": killed_fire,
        "balance_before_kill": before_kill.balance(names),
        "lateness_ms": whole.to_dict()["lateness_ms"],
        "missed_examples": whole.missed_examples[:5],
    }
