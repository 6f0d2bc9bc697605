"""Each fire time is completed exactly once across instances, and no two attempts hold a job's lease at once."""

from __future__ import annotations

from planlagt_conformance.instance import JobSpec
from planlagt_conformance.scenario import Scenario
from planlagt_conformance.scheduler_cases._checks import (
    check_backend_agrees,
    check_closed_once,
    check_leases_never_overlap,
    check_no_duplicates,
    check_one_valid_lease,
)
from planlagt_conformance.scheduler_cases._support import (
    EVERY_SECOND,
    EVERY_TWO_SECONDS,
    SchedulerTiming,
    explain,
    run_window,
    settled_window_start,
    short_jobs,
)
from planlagt_core.backend import Backend

INSTANCES = 3
WINDOW_S = 8.0

SLOW_WORK_S = 1.5
"""Longer than the slow job's one-second interval, so every other fire time finds its previous run going."""

JOBS = [
    *short_jobs(4),
    JobSpec(name="every-two", schedule=EVERY_TWO_SECONDS, work_s=0.05),
    JobSpec(name="slow", schedule=EVERY_SECOND, work_s=SLOW_WORK_S, overlap="skip"),
]


def test_each_fire_time_completes_once(scenario: Scenario, observer: Backend, scheduler_timing: SchedulerTiming):
    ids = [f"instance-{number}" for number in range(1, INSTANCES + 1)]
    scenario.start(*(scenario.spec(instance_id, JOBS) for instance_id in ids))
    start = settled_window_start(observer, ids, scenario)

    keys = run_window(scenario, JOBS, start, start + WINDOW_S, scheduler_timing)
    scenario.stop_all()

    journal = scenario.journal()
    tallies = journal.tally(keys)
    check_no_duplicates(tallies)
    check_closed_once(tallies, excused=explain(journal, keys, scheduler_timing))
    check_backend_agrees(observer, tallies)
    check_leases_never_overlap(journal)
    check_one_valid_lease(journal)
    slow_skips = [tally for tally in tallies.values() if tally.job == "slow" and tally.with_outcome("skipped")]
    assert slow_skips, "no fire time of the slow job was skipped, so runs never met the previous one still going"
