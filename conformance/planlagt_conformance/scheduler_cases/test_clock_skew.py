"""Clock skew: instances whose clocks are off by up to ``max_skew_s`` still complete each fire time once.

One instance runs behind true time by the maximum skew, one is exact and one runs ahead.
Midway the exact one stops, so jobs move between the skewed instances, and the one whose
clock runs ahead takes over fire times its predecessor has not reached yet.
"""

from __future__ import annotations

from collections import defaultdict

from planlagt_conformance.scenario import Scenario
from planlagt_conformance.scheduler_cases._checks import (
    check_backend_agrees,
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

JOBS = short_jobs(6)
WINDOW_S = 8.0
STOP_AFTER_S = 4.0
"""When, within the window, the instance with the exact clock stops."""


def test_skewed_clocks_complete_once(scenario: Scenario, observer: Backend, scheduler_timing: SchedulerTiming):
    skew_s = scheduler_timing.max_skew_s
    scenario.start(
        scenario.spec("behind", JOBS, clock_offset_s=-skew_s),
        scenario.spec("exact", JOBS, clock_offset_s=0.0),
        scenario.spec("ahead", JOBS, clock_offset_s=skew_s),
    )
    start = settled_window_start(observer, ["behind", "exact", "ahead"], scenario)

    scenario.sleep_until_wall(start + STOP_AFTER_S)
    scenario.terminate(scenario.instances["exact"])
    keys = run_window(scenario, JOBS, start, start + WINDOW_S, scheduler_timing)
    scenario.stop_all()

    journal = scenario.journal()
    tallies = journal.tally(keys)
    check_no_duplicates(tallies)
    check_closed_once(tallies, excused=explain(journal, keys, scheduler_timing))
    check_backend_agrees(observer, tallies)
    check_leases_never_overlap(journal)
    check_one_valid_lease(journal)

    instances_per_job: dict[str, set[str]] = defaultdict(set)
    for tally in tallies.values():
        instances_per_job[tally.job].update(record["instance"] for record in tally.successes)
    moved = [job for job, instances in instances_per_job.items() if {"behind", "ahead"} <= instances]
    assert moved, f"no job moved between the skewed instances: {dict(instances_per_job)}"
