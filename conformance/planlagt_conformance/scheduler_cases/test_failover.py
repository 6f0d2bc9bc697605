"""Failover: a holder that dies (SIGKILL) or freezes (SIGSTOP) mid-run is replaced, and never completes twice."""

from __future__ import annotations

import time
from typing import Any

from planlagt_conformance.instance import JobSpec
from planlagt_conformance.scenario import Journal, Scenario, fire_key, iso
from planlagt_conformance.scheduler_cases._checks import (
    EARLY_SLACK_S,
    check_closed_once,
    check_leases_never_overlap,
    check_no_duplicates,
    check_one_valid_lease,
)
from planlagt_conformance.scheduler_cases._support import (
    CLOSE_MARGIN_S,
    LOST_NOTICE_TOLERANCE_S,
    SchedulerTiming,
    explain,
    lease_key_of,
    run_window,
    settled_window_start,
    short_jobs,
)
from planlagt_core.backend import Backend
from planlagt_core.models import Outcome

INSTANCES = 3
BATCH_SCHEDULE = "*/5 * * * * *"
BATCH_INTERVAL_S = 5.0
BATCH_ATTEMPTS = 3

KILLED_BATCH_WORK_S = 2.0
"""Short enough that the retry, started about 2 s after the kill, ends before the next fire time."""

PAUSED_BATCH_WORK_S = 5.0
"""Longer than the takeover bound plus the notice bound, so the paused run still goes on when it learns of the loss."""

TICKS = short_jobs(3, max_attempts=2)
"""Jobs that run beside the batch job, so the failed-over instance leaves more than one job behind."""
PROBE_KEY = "scheduler-cases-probe"


def _start_cluster(scenario: Scenario, observer: Backend, batch: JobSpec) -> float:
    ids = [f"instance-{number}" for number in range(1, INSTANCES + 1)]
    scenario.start(*(scenario.spec(instance_id, [batch, *TICKS]) for instance_id in ids))
    return settled_window_start(observer, ids, scenario)


def _first_batch_start(scenario: Scenario, timing: SchedulerTiming, not_before: float) -> dict[str, Any]:
    """Wait for the first attempt of the batch job at a fire time from ``not_before`` on; return its event."""

    def started(journal: Journal) -> dict[str, Any] | None:
        events = [event for event in journal.of("started", job="batch") if event["fire_time"] >= not_before]
        return events[0] if events else None

    timeout_s = BATCH_INTERVAL_S + timing.late_start_s + CLOSE_MARGIN_S
    return scenario.wait_for(started, timeout_s, "a run of the batch job")


def _completion_elsewhere(scenario: Scenario, first: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Wait for a successful run record of ``first``'s fire time from another instance; return it."""

    def completed(journal: Journal) -> dict[str, Any] | None:
        records = journal.records_of("batch", first["fire_time"])
        found = [r for r in records if r["outcome"] == "succeeded" and r["instance"] != first["instance"]]
        return found[0] if found else None

    return scenario.wait_for(completed, timeout_s, f"another instance to complete batch@{iso(first['fire_time'])}")


def _started_event(journal: Journal, record: dict[str, Any]) -> dict[str, Any]:
    (started,) = journal.of("started", instance=record["instance"], job=record["job"], token=record["token"])
    return started


def _lease_expiry_lower_bound(observer: Backend, first: dict[str, Any], ttl_s: float) -> float:
    """Return a monotonic time before which the lease of ``first`` cannot have expired on the server."""
    asked_at = time.monotonic()
    info = observer.inspect(lease_key_of(JobSpec(name="batch", schedule=BATCH_SCHEDULE)))
    assert info is not None, "the killed holder's lease was gone at once; it must stay until its TTL runs out"
    assert info.token == first["token"], f"the lease has token {info.token}, not the killed attempt's {first['token']}"
    if info.ttl_remaining_s is None:
        # NOTE: without a reported remaining TTL, the acquisition (just before the start) bounds the expiry.
        return first["mono"] + ttl_s
    return asked_at + info.ttl_remaining_s


def _held_until(journal: Journal, first: dict[str, Any]) -> float:
    """Return the monotonic time until which the holder of ``first`` counted its lease valid."""
    match = {"instance": first["instance"], "token": first["token"]}
    events = [*journal.of("acquired", **match), *journal.of("renewed", **match)]
    assert events, f"the journal shows no acquisition of token {first['token']} by {first['instance']}"
    return max(event["valid_until"] for event in events)


def _check_ticks(scenario: Scenario, start: float, end: float, timing: SchedulerTiming) -> Journal:
    keys = run_window(scenario, TICKS, start, end, timing)
    scenario.stop_all()
    journal = scenario.journal()
    tallies = journal.tally(keys)
    check_no_duplicates(tallies)
    check_closed_once(tallies, excused=explain(journal, keys, timing))
    check_leases_never_overlap(journal)
    check_one_valid_lease(journal)
    return journal


def test_killed_holder_is_replaced(scenario: Scenario, observer: Backend, scheduler_timing: SchedulerTiming):
    batch = JobSpec(name="batch", schedule=BATCH_SCHEDULE, work_s=KILLED_BATCH_WORK_S, max_attempts=BATCH_ATTEMPTS)
    start = _start_cluster(scenario, observer, batch)
    first = _first_batch_start(scenario, scheduler_timing, start)

    killed_at = scenario.kill(scenario.instances[first["instance"]])
    expires_after = _lease_expiry_lower_bound(observer, first, scheduler_timing.lease_ttl_s)
    completion_timeout_s = scheduler_timing.takeover_bound_s + KILLED_BATCH_WORK_S + CLOSE_MARGIN_S
    record = _completion_elsewhere(scenario, first, completion_timeout_s)
    successor = _started_event(scenario.journal(), record)

    assert record["attempt"] > first["attempt"]
    assert record["token"] > first["token"]
    assert successor["mono"] >= expires_after - EARLY_SLACK_S, (
        f"the successor started {expires_after - successor['mono']:.3f} s before the killed holder's lease expired"
    )
    takeover_s = successor["mono"] - killed_at
    bound_s = scheduler_timing.retry_bound_s
    assert takeover_s <= bound_s, (
        f"the successor started {takeover_s:.2f} s after the kill; the bound is {bound_s:g} s "
        "(lease TTL, two heartbeats and the tolerance)"
    )
    state = observer.get_fire("batch", first["fire_time"])
    assert state is not None
    assert state.outcome is Outcome.SUCCEEDED
    assert state.token == record["token"]
    assert state.attempts == record["attempt"]

    journal = _check_ticks(scenario, start, time.time(), scheduler_timing)
    batch_records = journal.records_of("batch", first["fire_time"])
    assert [r["outcome"] for r in batch_records] == ["succeeded"], "the killed attempt must leave no run record"


def test_paused_holder_loses_lease(scenario: Scenario, observer: Backend, scheduler_timing: SchedulerTiming):
    batch = JobSpec(name="batch", schedule=BATCH_SCHEDULE, work_s=PAUSED_BATCH_WORK_S, max_attempts=BATCH_ATTEMPTS)
    start = _start_cluster(scenario, observer, batch)
    first = _first_batch_start(scenario, scheduler_timing, start)
    holder = scenario.instances[first["instance"]]

    paused_at = scenario.pause_between_requests(holder, lambda: _probe(observer, scheduler_timing.lease_ttl_s))
    successor = scenario.wait_for(
        lambda journal: _other_start(journal, first),
        scheduler_timing.takeover_bound_s + CLOSE_MARGIN_S,
        f"another instance to start batch@{iso(first['fire_time'])} while {holder.instance_id} is paused",
    )
    resumed_at = scenario.resume(holder)
    lost = scenario.wait_for(
        lambda journal: _lease_lost_event(journal, first),
        scheduler_timing.heartbeat_s + CLOSE_MARGIN_S,
        f"{holder.instance_id} to report its lease lost",
    )
    own_record = scenario.wait_for(
        lambda journal: _own_record(journal, first), PAUSED_BATCH_WORK_S + CLOSE_MARGIN_S, "the paused run's record"
    )
    record = _completion_elsewhere(scenario, first, PAUSED_BATCH_WORK_S + CLOSE_MARGIN_S)

    assert resumed_at > paused_at
    assert resumed_at > _held_until(scenario.journal(), first), "the holder was resumed before its lease ran out"
    assert successor["token"] > first["token"]
    assert record["token"] == successor["token"]
    notice_s = lost["mono"] - resumed_at
    assert notice_s <= scheduler_timing.heartbeat_s + LOST_NOTICE_TOLERANCE_S, (
        f"the resumed holder learned of the lost lease {notice_s:.2f} s after SIGCONT"
    )
    assert own_record["outcome"] == "lease_lost"
    state = observer.get_fire("batch", first["fire_time"])
    assert state is not None
    assert state.outcome is Outcome.SUCCEEDED
    assert state.token == record["token"]

    journal = _check_ticks(scenario, start, time.time(), scheduler_timing)
    outcomes = [(r["instance"], r["outcome"]) for r in journal.records_of("batch", first["fire_time"])]
    assert (holder.instance_id, "succeeded") not in outcomes, f"the paused holder recorded a success: {outcomes}"
    assert sorted(outcome for _, outcome in outcomes) == ["lease_lost", "succeeded"], outcomes


def _probe(observer: Backend, ttl_s: float) -> None:
    """Take and release a lease of our own: a backend write that waits for any lock another client holds."""
    lease = observer.acquire(PROBE_KEY, ttl_s, holder="scenario-probe")
    if lease is not None:
        observer.release(lease)


def _other_start(journal: Journal, first: dict[str, Any]) -> dict[str, Any] | None:
    key = fire_key("batch", first["fire_time"])
    found = [
        event
        for event in journal.of("started", job="batch")
        if fire_key("batch", event["fire_time"]) == key and event["instance"] != first["instance"]
    ]
    return found[0] if found else None


def _lease_lost_event(journal: Journal, first: dict[str, Any]) -> dict[str, Any] | None:
    found = journal.of("lease", instance=first["instance"], job="batch", token=first["token"], state="lost")
    return found[0] if found else None


def _own_record(journal: Journal, first: dict[str, Any]) -> dict[str, Any] | None:
    found = journal.of("finished", instance=first["instance"], job="batch", token=first["token"], ran=True)
    return found[0] if found else None
