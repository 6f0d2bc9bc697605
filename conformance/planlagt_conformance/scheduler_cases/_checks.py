"""Checks of the scheduler's guarantees over a scenario's journal, with failure messages that list the evidence."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from planlagt_conformance.scenario import Attempt, FireTally, Journal, LeaseInterval, fire_key, iso
from planlagt_core.backend import Backend

MAX_LISTED = 12
"""Most offending fire times or attempts listed in one failure message."""

EARLY_SLACK_S = 0.05
"""How much sooner than a lease's end another holder of its key may be seen to start.

It covers only timer resolution and the rate difference between the server's clock and
this host's monotonic clock. A holder that starts earlier held the key together with the
previous one.
"""


def _listing(lines: list[str]) -> str:
    shown = "\n  ".join(lines[:MAX_LISTED])
    more = f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return f"\n  {shown}{more}"


def check_no_duplicates(tallies: Mapping[tuple[str, float], FireTally]) -> None:
    """Fail when any fire time has more than one successful run record."""
    duplicated = [tally.describe() for tally in tallies.values() if len(tally.successes) > 1]
    assert not duplicated, f"{len(duplicated)} fire times completed more than once:{_listing(duplicated)}"


def check_closed_once(
    tallies: Mapping[tuple[str, float], FireTally],
    *,
    allowed: Collection[str] = ("succeeded",),
    excused: Mapping[tuple[str, float], Collection[str]] | None = None,
) -> None:
    """Fail unless every fire time was closed exactly once, with an allowed outcome.

    ``excused`` adds outcomes for single fire times; in it, ``open`` allows a fire time
    with no closing run record.
    """
    wrong = []
    for key, tally in tallies.items():
        outcomes = [record["outcome"] for record in tally.closing] or ["open"]
        expected = {*allowed, *(excused or {}).get(key, ())}
        if len(outcomes) != 1 or outcomes[0] not in expected:
            wrong.append(f"{tally.describe()} (expected one of: {', '.join(sorted(expected))})")
    assert not wrong, (
        f"{len(wrong)} of {len(tallies)} fire times were not closed exactly once as expected:{_listing(wrong)}"
    )


def explained_outcomes(
    journal: Journal, keys: Iterable[tuple[str, float]], *, lease_ttl_s: float, fault_window_s: float
) -> dict[tuple[str, float], set[str]]:
    """Return, for fire times in ``keys``, the outcomes other than success that the journal explains.

    ``skipped`` is explained when another attempt of the job, at an earlier fire time,
    could hold the job's lease as the skip was recorded. That is from one TTL before the
    attempt started (its acquisition) to one TTL after it ended, because a lease whose
    holder died expires by its TTL. The overlap policy skips a fire time whenever the
    previous run's lease is held, whether that run is slow, started late after a takeover,
    or is dead.

    ``failed`` and ``open`` (no closing record) are explained at a fire time whose attempt
    was killed or lost its lease. Leases are lost when the holder dies or freezes, and also
    when a loaded machine or a slow backend delays a request past the TTL: an acquisition
    that waited that long for a SQLite write lock is lost on arrival. The scheduler then
    comes back to the fire time, but with one-second schedules the retry window closes
    before a retry can start, so such a fire time closes as ``failed``. It stays open when
    the job's key is held past the retry window plus two TTLs, because the scheduler then
    stops trying to close it.

    A process killed between beginning an attempt and journaling its start leaves no
    trace of the attempt. So ``failed`` and ``open`` are also explained for fire times of
    the jobs that process ran, from ``fault_window_s`` before the kill until the kill.
    """
    wanted = list(keys)
    explained: dict[tuple[str, float], set[str]] = defaultdict(set)
    attempts = journal.attempts()
    for attempt in attempts:
        if attempt.interrupted:
            explained[fire_key(attempt.job, attempt.fire_time)].update(("failed", "open"))
    for key in _near_kills(journal, attempts, wanted, fault_window_s):
        explained[key].update(("failed", "open"))
    for skip in journal.of("finished", outcome="skipped"):
        if any(_could_hold_lease(attempt, skip, lease_ttl_s) for attempt in attempts):
            explained[fire_key(skip["job"], skip["fire_time"])].add("skipped")
    return {key: explained[key] for key in wanted if key in explained}


def _could_hold_lease(attempt: Attempt, skip: dict[str, Any], lease_ttl_s: float) -> bool:
    """Return whether ``attempt`` could hold its job's lease when ``skip`` was recorded."""
    held_until = float("inf") if attempt.end_wall is None else attempt.end_wall + lease_ttl_s
    return (
        attempt.job == skip["job"]
        and attempt.fire_time < skip["fire_time"]
        and attempt.start_wall - lease_ttl_s <= skip["wall"] <= held_until
    )


def _near_kills(
    journal: Journal, attempts: list[Attempt], keys: list[tuple[str, float]], window_s: float
) -> set[tuple[str, float]]:
    near: set[tuple[str, float]] = set()
    for kill in journal.of("killed"):
        jobs = {attempt.job for attempt in attempts if attempt.instance == kill["instance"]}
        earliest = kill["wall"] - window_s
        near.update((job, fire) for job, fire in keys if job in jobs and earliest <= fire <= kill["wall"])
    return near


def check_backend_agrees(observer: Backend, tallies: Mapping[tuple[str, float], FireTally]) -> None:
    """Fail unless the backend's fire state matches the journal: same outcome, and the winner's token.

    Only fire times closed exactly once in the journal are compared.
    """
    disagreements = []
    for tally in tallies.values():
        if len(tally.closing) != 1:
            continue
        record = tally.closing[0]
        state = observer.get_fire(tally.job, tally.fire_time)
        stored_outcome = None if state is None or state.outcome is None else state.outcome.value
        if stored_outcome != record["outcome"]:
            disagreements.append(f"{tally.describe()}; the backend stores outcome {stored_outcome}")
        elif record["outcome"] == "succeeded" and state is not None and state.token != record["token"]:
            disagreements.append(f"{tally.describe()}; the backend stores token {state.token}")
    assert not disagreements, f"the backend's fire state differs from the journal:{_listing(disagreements)}"


def check_one_valid_lease(journal: Journal) -> None:
    """Fail when two leases on one key were valid at the same time, or a later lease has a smaller token.

    Leases the holder knew to be invalid on arrival (an acquisition whose reply came after
    its own deadline) are left out.
    """
    by_key: dict[str, list[LeaseInterval]] = defaultdict(list)
    for interval in journal.lease_intervals():
        if interval.start_mono < interval.end_mono:
            by_key[interval.key].append(interval)
    problems: list[str] = []
    for intervals in by_key.values():
        problems.extend(_lease_problems(intervals))
    assert not problems, f"two leases on one key were valid at once:{_listing(problems)}"


def _lease_problems(intervals: list[LeaseInterval]) -> Iterable[str]:
    latest: LeaseInterval | None = None
    for interval in intervals:
        if latest is not None and interval.token <= latest.token:
            yield f"{interval.describe()} began after the {latest.describe()}, with a token that is not greater"
        if latest is not None and interval.start_mono < latest.end_mono - EARLY_SLACK_S:
            overlap_s = latest.end_mono - interval.start_mono
            yield f"{interval.describe()} began {overlap_s:.3f} s before the {latest.describe()} ended"
        if latest is None or interval.end_mono > latest.end_mono:
            latest = interval


def check_leases_never_overlap(journal: Journal) -> None:
    """Fail when two attempts of one job ran at once while both could hold a valid lease.

    Attempts of a job are ordered by start. When a later attempt starts before an earlier
    one ended, the earlier attempt must not have recorded a completion (its fenced write
    would prove its lease was still held), and the later one must hold a greater token.
    Tokens must also grow from each attempt to the next.
    """
    by_job: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in journal.attempts():
        by_job[attempt.job].append(attempt)
    problems: list[str] = []
    for attempts in by_job.values():
        problems.extend(_overlap_problems(attempts))
    assert not problems, f"attempts of one job held valid leases at the same time:{_listing(problems)}"


def _overlap_problems(attempts: list[Attempt]) -> Iterable[str]:
    for index, earlier in enumerate(attempts):
        for later in attempts[index + 1 :]:
            if later.token <= earlier.token:
                yield f"{later.describe()} started after {earlier.describe()} with a token that is not greater"
            end = float("inf") if earlier.end_mono is None else earlier.end_mono
            if later.start_mono < end and earlier.completed:
                overlap_s = end - later.start_mono
                yield (
                    f"{later.describe()} started {overlap_s:.3f} s before {earlier.describe()} ended, "
                    "and the earlier attempt still recorded its completion"
                )


def check_no_outcome(journal: Journal, outcomes: Collection[str]) -> None:
    """Fail when any run record has one of ``outcomes``."""
    found = [
        f"{record['job']}@{iso(record['fire_time'])}: {record['outcome']} on {record['instance']} "
        f"(attempt {record['attempt']}, reason {record['reason']!r})"
        for record in journal.of("finished")
        if record["outcome"] in outcomes
    ]
    assert not found, f"run records with outcome {', '.join(sorted(outcomes))}:{_listing(found)}"


def check_balanced(counts: Mapping[str, int], instance_ids: Iterable[str], max_ratio: float) -> None:
    """Fail unless every instance completed runs and the largest count is within ``max_ratio`` of the smallest."""
    per_instance = {instance_id: counts.get(instance_id, 0) for instance_id in instance_ids}
    shown = ", ".join(f"{name}: {count}" for name, count in sorted(per_instance.items()))
    smallest = min(per_instance.values())
    assert smallest > 0, f"an instance completed no runs ({shown})"
    ratio = max(per_instance.values()) / smallest
    assert ratio <= max_ratio, f"completed runs per instance differ by a factor of {ratio:.2f} > {max_ratio} ({shown})"
