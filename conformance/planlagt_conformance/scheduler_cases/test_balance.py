"""Balance: equal jobs spread evenly over the live instances, and move when an instance leaves or joins."""

from __future__ import annotations

import math
import time

from planlagt_conformance.scenario import Journal, Scenario, expected_fire_times
from planlagt_conformance.scheduler_cases._checks import (
    check_backend_agrees,
    check_balanced,
    check_closed_once,
    check_leases_never_overlap,
    check_no_duplicates,
    check_one_valid_lease,
)
from planlagt_conformance.scheduler_cases._support import (
    SchedulerTiming,
    explain,
    run_window,
    settled_window_start,
    short_jobs,
)
from planlagt_core.backend import Backend

JOBS = short_jobs(12, prefix="equal")
MAX_RATIO = 1.5
"""Largest allowed ratio between the most and the fewest runs completed by one live instance."""

BALANCED_WINDOW_S = 5.0
AFTER_LEAVE_WINDOW_S = 3.0
AFTER_JOIN_WINDOW_S = 4.0


def test_jobs_balance_and_move(scenario: Scenario, observer: Backend, scheduler_timing: SchedulerTiming):
    first_ids = ["instance-1", "instance-2", "instance-3"]
    scenario.start(*(scenario.spec(instance_id, JOBS) for instance_id in first_ids))
    start = settled_window_start(observer, first_ids, scenario)
    balanced_keys = run_window(scenario, JOBS, start, start + BALANCED_WINDOW_S, scheduler_timing)
    check_balanced(scenario.journal().completions_per_instance(balanced_keys), first_ids, MAX_RATIO)

    leaving = scenario.instances["instance-3"]
    left_jobs = _jobs_completed_by(scenario.journal(), balanced_keys, leaving.instance_id)
    terminated_at = scenario.terminate(leaving)
    terminated_wall = time.time()
    scenario.wait_exit(leaving)
    # The leaving instance may still claim a fire time due while SIGTERM is being handled.
    after_leave = float(math.ceil(terminated_wall + scheduler_timing.heartbeat_s))
    after_leave_keys = run_window(scenario, JOBS, after_leave, after_leave + AFTER_LEAVE_WINDOW_S, scheduler_timing)
    _check_moved(scenario.journal(), after_leave_keys, left_jobs, leaving.instance_id, scheduler_timing)
    _check_takeover_time(scenario.journal(), left_jobs, terminated_wall, terminated_at, scheduler_timing)

    (joining,) = scenario.start(scenario.spec("instance-4", JOBS))
    last_ids = ["instance-1", "instance-2", joining.instance_id]
    joined_start = settled_window_start(observer, last_ids, scenario)
    joined_keys = run_window(scenario, JOBS, joined_start, joined_start + AFTER_JOIN_WINDOW_S, scheduler_timing)
    check_balanced(scenario.journal().completions_per_instance(joined_keys), last_ids, MAX_RATIO)

    all_keys = expected_fire_times(JOBS, start, joined_start + AFTER_JOIN_WINDOW_S)
    scenario.stop_all()
    journal = scenario.journal()
    tallies = journal.tally(all_keys)
    check_no_duplicates(tallies)
    check_closed_once(tallies, excused=explain(journal, all_keys, scheduler_timing))
    check_backend_agrees(observer, tallies)
    check_leases_never_overlap(journal)
    check_one_valid_lease(journal)


def _jobs_completed_by(journal: Journal, keys: list[tuple[str, float]], instance_id: str) -> set[str]:
    tallies = journal.tally(keys).values()
    jobs = {tally.job for tally in tallies for record in tally.successes if record["instance"] == instance_id}
    assert jobs, f"{instance_id} completed no runs before it was stopped"
    return jobs


def _check_moved(
    journal: Journal, keys: list[tuple[str, float]], left_jobs: set[str], left: str, timing: SchedulerTiming
) -> None:
    """Fail unless every fire time of the left instance's jobs was completed by a survivor.

    Fire times whose other outcomes the journal explains (see ``explain``) are left out.
    """
    excused = explain(journal, keys, timing)
    not_moved = [
        tally.describe()
        for key, tally in journal.tally(keys).items()
        if tally.job in left_jobs
        and key not in excused
        and not any(record["instance"] != left for record in tally.successes)
    ]
    assert not not_moved, f"fire times of {left}'s jobs after it stopped not completed by a survivor: {not_moved}"


def _check_takeover_time(
    journal: Journal, left_jobs: set[str], terminated_wall: float, terminated_at: float, timing: SchedulerTiming
) -> None:
    """Fail unless a survivor started each of the left instance's jobs within the takeover bound of SIGTERM."""
    for job in sorted(left_jobs):
        starts = [event["mono"] for event in journal.of("started", job=job) if event["fire_time"] > terminated_wall]
        assert starts, f"no run of {job} started after the SIGTERM"
        takeover_s = min(starts) - terminated_at
        assert takeover_s <= timing.takeover_bound_s, (
            f"{job} first started {takeover_s:.2f} s after the SIGTERM of its instance; "
            f"the bound is {timing.takeover_bound_s:g} s (see SchedulerTiming.takeover_bound_s)"
        )
