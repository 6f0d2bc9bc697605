"""Measurement 4: fail-over after SIGKILL of the instance running a job.

Three instances run one job, ``victim``, whose first attempt works for
``VICTIM_FIRST_ATTEMPT_S`` and whose retries finish at once. Each trial waits for an
instance to start a first attempt, SIGKILLs it ``KILL_AFTER_S`` into the run, and times
until another instance journals the start of the retry of the same fire time. A
replacement instance then joins so every trial starts with three instances.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .fleet import Fleet
from .journal import read_journals
from .scenario import InstanceSettings, progress
from .stats import summarize

__all__ = ["FAILOVER_LEASE_TTL_S", "measure_failover"]

FAILOVER_LEASE_TTL_S = 2.0
FAILOVER_HEARTBEAT_S = 0.5
VICTIM_PERIOD_S = 5
VICTIM_FIRST_ATTEMPT_S = 3.0
KILL_AFTER_S = 0.3
INSTANCES = 3
RETRY_TIMEOUT_S = 15.0
POLL_S = 0.01


def measure_failover(backend: str, servers: Any, workdir: Path, *, trials: int) -> dict[str, Any]:
    """Run ``trials`` kill-and-retry trials; return the fail-over times against the lease TTL."""
    part = f"m4-failover-{backend}"
    state_dir = workdir / part
    settings = InstanceSettings(
        backend_url=servers.url(backend, part),
        jobs=[{"name": "victim", "schedule": f"*/{VICTIM_PERIOD_S} * * * * *", "work_s": 0.0,
               "first_attempt_work_s": VICTIM_FIRST_ATTEMPT_S, "max_attempts": 3, "marked": True}],
        lease_ttl_s=FAILOVER_LEASE_TTL_S,
        heartbeat_s=FAILOVER_HEARTBEAT_S,
        buffered_journal=False,
    )  # fmt: skip
    progress(f"  fail-over: {backend}, {trials} trials, lease TTL {FAILOVER_LEASE_TTL_S:g} s")
    outcomes: list[dict[str, Any]] = []
    with Fleet(state_dir) as fleet:
        names = [f"i{index + 1}" for index in range(INSTANCES)]
        for name in names:
            fleet.spawn_module(name, "bench.instance", settings.config(name, state_dir, INSTANCES, 0.0))
        fleet.wait_ready(names)
        seen: set[tuple[str, int]] = set()
        for trial in range(trials):
            outcome = _trial(fleet, state_dir, seen)
            outcomes.append(outcome)
            replacement = f"i{INSTANCES + trial + 1}"
            fleet.spawn_module(replacement, "bench.instance", settings.config(replacement, state_dir, INSTANCES, 0.0))
            fleet.wait_ready([replacement])
    return _summary(backend, servers, outcomes)


def _trial(fleet: Fleet, state_dir: Path, seen: set[tuple[str, int]]) -> dict[str, Any]:
    victim, fire_ms, started_at = _wait_for_first_attempt(fleet, state_dir, seen)
    time.sleep(max(0.0, started_at + KILL_AFTER_S - time.time()))
    killed_at = fleet.kill(victim)
    (state_dir / f"{victim}.victim.running").unlink(missing_ok=True)
    retry = _wait_for_retry(state_dir, fire_ms, victim, killed_at + RETRY_TIMEOUT_S)
    return {
        "killed": victim,
        "fire_ms": fire_ms,
        "killed_after_start_s": round(killed_at - started_at, 3),
        "failover_s": None if retry is None else round(retry["t"] - killed_at, 3),
        "retried_by": None if retry is None else retry["instance"],
    }


def _wait_for_first_attempt(fleet: Fleet, state_dir: Path, seen: set[tuple[str, int]]) -> tuple[str, int, float]:
    deadline = time.monotonic() + 4 * VICTIM_PERIOD_S + RETRY_TIMEOUT_S
    while time.monotonic() < deadline:
        for marker in state_dir.glob("*.victim.running"):
            name = marker.name.split(".", 1)[0]
            try:
                data = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            key = (name, data["fire_ms"])
            if key not in seen and fleet.members[name].process.poll() is None:
                seen.add(key)
                return name, data["fire_ms"], data["t"]
        time.sleep(POLL_S)
    raise RuntimeError("no instance started the victim job's first attempt in time; see the instance logs")


def _wait_for_retry(state_dir: Path, fire_ms: int, victim: str, deadline: float) -> dict[str, Any] | None:
    while time.time() < deadline:
        for event in read_journals(state_dir):
            if (
                event["e"] == "start"
                and event["job"] == "victim"
                and event["fire_ms"] == fire_ms
                and event["instance"] != victim
            ):
                return event
        time.sleep(0.05)
    return None


def _summary(backend: str, servers: Any, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    times = [outcome["failover_s"] for outcome in outcomes if outcome["failover_s"] is not None]
    return {
        "backend": backend,
        "trials": len(outcomes),
        "retried": len(times),
        "lease_ttl_s": FAILOVER_LEASE_TTL_S,
        "heartbeat_s": FAILOVER_HEARTBEAT_S,
        "session_bound": _session_bound(backend),
        "failover_s": summarize(times, digits=3) | {"min": round(min(times), 3) if times else None},
        "trial_details": outcomes,
    }


def _session_bound(backend: str) -> bool:
    from planlagt_core.plugins import connect

    from .servers import HARNESS

    if backend == "sqlite":
        return False
    return connect(HARNESS[backend][2]).capabilities.session_bound_leases
