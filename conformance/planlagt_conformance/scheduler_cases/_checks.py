"""Checks of the scheduler's guarantees over a scenario's journal, with failure messages that list the evidence."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping

from planlagt_conformance.scenario import Attempt, FireTally, Journal, fire_key, iso
from planlagt_core.backend import Backend

MAX_LISTED = 12
"""Most offending fire times or attempts listed in one failure message."""


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
    allowed_per_job: Mapping[str, Collection[str]] | None = None,
    excused: Mapping[tuple[str, float], Collection[str]] | None = None,
) -> None:
    """Fail unless every fire time was closed exactly once, with an allowed outcome.

    ``allowed`` applies to every job not named in ``allowed_per_job``. ``excused`` adds
    outcomes for single fire times; in it, ``open`` allows a fire time with no closing
    run record.
    """
    per_job = allowed_per_job or {}
    wrong = []
    for key, tally in tallies.items():
        outcomes = [record["outcome"] for record in tally.closing] or ["open"]
        expected = {*per_job.get(tally.job, allowed), *(excused or {}).get(key, ())}
        if len(outcomes) != 1 or outcomes[0] not in expected:
            wrong.append(f"{tally.describe()} (expected one of: {', '.join(sorted(expected))})")
    assert not wrong, (
        f"{len(wrong)} of {len(tallies)} fire times were not closed exactly once as expected:{_listing(wrong)}"
    )


def failover_excuses(journal: Journal, lease_ttl_s: float) -> dict[tuple[str, float], set[str]]:
    """Return the outcomes the scheduler may give fire times near attempts that were killed or lost their lease.

    The interrupted fire time may close as ``failed``: its retry window ends at the next
    fire time, one second later for these jobs, before a survivor can take over. It may
    also stay ``open``. NOTE: no instance retries or closes it when the attempt lost its
    lease while its instance stayed the job's owner, or when the dead holder's lease was
    still held as the new owner gave the fire time up. A later fire time of the job may
    be ``skipped`` while the interrupted attempt's lease is still held on the server,
    because the overlap policy cannot tell a dead run from a live one.
    """
    excuses: dict[tuple[str, float], set[str]] = defaultdict(set)
    for attempt in journal.attempts():
        if not attempt.interrupted:
            continue
        excuses[fire_key(attempt.job, attempt.fire_time)].update(("failed", "open"))
        lease_held_until = (attempt.end_wall or float("inf")) + lease_ttl_s
        for item in journal.of("finished", job=attempt.job, outcome="skipped"):
            if attempt.fire_time < item["fire_time"] <= lease_held_until:
                excuses[fire_key(attempt.job, item["fire_time"])].add("skipped")
    return excuses


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
    problems = []
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
