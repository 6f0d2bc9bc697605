"""Server faults: the backend's server restarts or freezes while instances run, and no fire time completes twice.

These cases need a server this test run manages (see the ``server_control`` fixture).
A restart stops the server and starts it again on the same port, and without persistence
it comes back empty. A pause freezes the server with SIGSTOP. A pause shorter than the
lease TTL must lose nothing. During a longer one, leases expire on the server while their
holders wait for a reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from planlagt_conformance.instance import JobSpec
from planlagt_conformance.plugin import BackendFactory
from planlagt_conformance.scenario import Journal, Scenario, expected_fire_times
from planlagt_conformance.scheduler_cases._checks import (
    check_backend_agrees,
    check_closed_once,
    check_leases_never_overlap,
    check_no_duplicates,
    check_no_outcome,
    check_one_valid_lease,
)
from planlagt_conformance.scheduler_cases._support import (
    EVERY_TWO_SECONDS,
    SchedulerTiming,
    explain,
    run_window,
    settled_window_start,
    short_jobs,
    wait_for_members,
)
from planlagt_conformance.scheduler_cases.server_control import ServerControl
from planlagt_core.backend import Backend, Capabilities
from planlagt_core.errors import BackendUnavailable

IDS = ["instance-1", "instance-2", "instance-3"]
JOBS = [
    *short_jobs(4, max_attempts=2),
    JobSpec(name="long", schedule=EVERY_TWO_SECONDS, work_s=0.8, max_attempts=2),
]

FAULT_AFTER_S = 3.0
"""How long the instances run undisturbed in the window before the fault."""

AFTER_RECOVERY_S = 4.0
"""How long the window goes on after the server responds again."""

SHORT_PAUSE_TTLS = 0.3
"""Length of the short pause, in lease TTLs: a renewal sent just before it still reaches the server in time."""

LONG_PAUSE_TTLS = 2.0
"""Length of the long pause, in lease TTLs: every lease and membership expires on the server meanwhile."""


def _run_fault(
    scenario: Scenario, observer: Backend, timing: SchedulerTiming, fault: Callable[[], None]
) -> tuple[Journal, list[tuple[str, float]], list[tuple[str, float]]]:
    """Run the instances, apply ``fault`` mid-window, and wait for the window to close.

    Returns the journal, the keys of every fire time in the window, and the keys of those
    due once the instances had time to recover (one takeover bound after the fault).
    """
    scenario.start(*(scenario.spec(instance_id, JOBS) for instance_id in IDS))
    start = settled_window_start(observer, IDS, scenario)
    scenario.sleep_until_wall(start + FAULT_AFTER_S)

    fault()
    recovered = time.time()
    wait_for_members(observer, IDS, scenario)
    end = recovered + AFTER_RECOVERY_S
    keys = run_window(scenario, JOBS, start, end, timing)
    scenario.stop_all()

    after = expected_fire_times(JOBS, recovered + timing.takeover_bound_s, end)
    return scenario.journal(), keys, after


def test_restarted_server(
    scenario: Scenario, observer: Backend, scheduler_timing: SchedulerTiming, server_control: ServerControl
):
    journal, keys, after = _run_fault(scenario, observer, scheduler_timing, server_control.restart)

    check_no_duplicates(journal.tally(keys))
    check_closed_once(journal.tally(after), excused=explain(journal, after, scheduler_timing))
    check_backend_agrees(observer, journal.tally(after))
    check_leases_never_overlap(journal)
    # No check_one_valid_lease: a server that restarts empty forgets leases that their
    # holders may rely on until valid_until, so two valid leases are expected here.


def test_short_server_pause(
    scenario: Scenario, observer: Backend, scheduler_timing: SchedulerTiming, server_control: ServerControl
):
    def pause() -> None:
        server_control.pause()
        time.sleep(scheduler_timing.lease_ttl_s * SHORT_PAUSE_TTLS)  # the fault's length, not a wait for a condition
        server_control.resume()

    journal, keys, _ = _run_fault(scenario, observer, scheduler_timing, pause)

    tallies = journal.tally(keys)
    check_no_duplicates(tallies)
    check_closed_once(tallies)
    check_no_outcome(journal, ("lease_lost", "missed", "failed"))
    check_backend_agrees(observer, tallies)
    check_leases_never_overlap(journal)
    check_one_valid_lease(journal)


def test_long_server_pause(
    scenario: Scenario, observer: Backend, scheduler_timing: SchedulerTiming, server_control: ServerControl
):
    def pause() -> None:
        server_control.pause()
        time.sleep(scheduler_timing.lease_ttl_s * LONG_PAUSE_TTLS)  # the fault's length, not a wait for a condition
        server_control.resume()

    journal, keys, after = _run_fault(scenario, observer, scheduler_timing, pause)

    check_no_duplicates(journal.tally(keys))
    check_closed_once(journal.tally(after), excused=explain(journal, after, scheduler_timing))
    check_backend_agrees(observer, journal.tally(keys))
    check_leases_never_overlap(journal)
    check_one_valid_lease(journal)


# -- Fencing tokens across a restart -------------------------------------------------
#
# A backend that declares durable_fencing_tokens must issue, after its server restarted
# (and may have lost its memory), tokens greater than every token issued before.

KEYS = ("durable-a", "durable-b")
RECONNECT_DEADLINE_S = 60.0
"""How long the backend may take to answer again after its server restarted."""


def _acquire_until_answered(factory: BackendFactory, key: str, ttl_s: float) -> int:
    """Acquire ``key`` with a new backend object, retrying while the server comes back up."""
    deadline = time.monotonic() + RECONNECT_DEADLINE_S
    while True:
        backend = factory()
        try:
            lease = backend.acquire(key, ttl_s)
            if lease is not None:
                backend.release(lease)
                return lease.token
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
        finally:
            backend.close()
        time.sleep(0.2)


def test_tokens_grow_across_restart(
    capabilities: Capabilities, backend_factory: BackendFactory, server_control: ServerControl
) -> None:
    if not capabilities.durable_fencing_tokens:
        pytest.skip("capability durable_fencing_tokens not declared")
    ttl_s = max(capabilities.min_ttl_s, 1.0)
    before = {key: _acquire_until_answered(backend_factory, key, ttl_s) for key in KEYS}

    server_control.restart()

    after = {key: _acquire_until_answered(backend_factory, key, ttl_s) for key in KEYS}
    for key in KEYS:
        assert after[key] > before[key], (
            f"key {key!r}: token {after[key]} after the restart is not greater than {before[key]} before it, "
            "but the backend declares durable_fencing_tokens"
        )
