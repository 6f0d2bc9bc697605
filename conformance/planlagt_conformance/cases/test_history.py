"""Run history: records round-trip, list newest first with bounds and limits, and are trimmed."""

from __future__ import annotations

import random
import time

import pytest

from planlagt_conformance.cases._support import BASE_FIRE_TIME, make_record, require_feature
from planlagt_core.backend import Backend, Capabilities, Feature
from planlagt_core.models import Outcome, RunRecord

MINUTE_S = 60.0
CENTURY_S = 100 * 365 * 24 * 3600.0


def fire_time(index: int) -> float:
    return BASE_FIRE_TIME + index * MINUTE_S


def record_shuffled(backend: Backend, records: list[RunRecord]) -> None:
    """Append ``records`` out of fire-time order, so the backend must sort them itself."""
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    for record in shuffled:
        backend.record_run(record)


@pytest.fixture
def two_jobs(backend: Backend) -> dict[str, list[RunRecord]]:
    """Records of jobs ``export`` (fire times 0, 2, 4, 6) and ``import`` (1, 3, 5), newest first."""
    records = {
        "export": [make_record("export", fire_time(index)) for index in (6, 4, 2, 0)],
        "import": [make_record("import", fire_time(index)) for index in (5, 3, 1)],
    }
    record_shuffled(backend, records["export"] + records["import"])
    return records


def test_record_round_trips_every_field(backend: Backend):
    record = make_record(
        "export",
        fire_time(0) + 0.5,
        Outcome.FAILED,
        attempt=2,
        fencing_token=12,
        error_type="TimeoutError",
        error_message='export to "bøtte" timed out\nafter 3 s',
        reason="retry 2 of 3",
        manual=True,
        trigger_id="request-1",
    )

    backend.record_run(record)

    assert backend.list_runs("export") == [record]


def test_list_runs_newest_first_across_jobs(backend: Backend, two_jobs: dict[str, list[RunRecord]]):
    every = sorted(two_jobs["export"] + two_jobs["import"], key=lambda record: record.fire_time, reverse=True)

    assert backend.list_runs() == every


def test_list_runs_of_one_job(backend: Backend, two_jobs: dict[str, list[RunRecord]]):
    assert backend.list_runs("export") == two_jobs["export"]
    assert backend.list_runs("import") == two_jobs["import"]
    assert backend.list_runs("unknown") == []


def test_list_runs_bounds_are_inclusive(backend: Backend, two_jobs: dict[str, list[RunRecord]]):
    between = backend.list_runs(since=fire_time(2), until=fire_time(4))
    export_since = backend.list_runs("export", since=fire_time(4))
    import_until = backend.list_runs("import", until=fire_time(3))

    assert [record.fire_time for record in between] == [fire_time(4), fire_time(3), fire_time(2)]
    assert export_since == two_jobs["export"][:2]
    assert import_until == two_jobs["import"][1:]


def test_list_runs_limit_keeps_newest(backend: Backend, two_jobs: dict[str, list[RunRecord]]):
    assert [record.fire_time for record in backend.list_runs(limit=2)] == [fire_time(6), fire_time(5)]
    assert backend.list_runs("import", limit=1) == two_jobs["import"][:1]
    assert backend.list_runs("export", limit=2, until=fire_time(3)) == two_jobs["export"][2:]


def test_list_runs_keeps_every_attempt_of_fire_time(backend: Backend):
    failed = make_record("export", fire_time(0), Outcome.FAILED, attempt=1, error_type="OSError")
    succeeded = make_record("export", fire_time(0), Outcome.SUCCEEDED, attempt=2)

    backend.record_run(failed)
    backend.record_run(succeeded)

    assert sorted(backend.list_runs("export"), key=lambda record: record.attempt) == [failed, succeeded]


def test_trim_runs_by_count_per_job(backend: Backend, capabilities: Capabilities):
    require_feature(capabilities, Feature.RUN_RETENTION)
    export = [make_record("export", fire_time(index)) for index in range(5)]
    imports = [make_record("import", fire_time(index)) for index in range(2)]
    record_shuffled(backend, export + imports)

    deleted = backend.trim_runs(max_per_job=3, max_age_s=CENTURY_S)

    assert deleted == 2
    assert backend.list_runs("export") == export[:1:-1]
    assert backend.list_runs("import") == imports[::-1]
    assert backend.trim_runs(max_per_job=3, max_age_s=CENTURY_S) == 0


def test_trim_runs_by_age_of_fire_time(backend: Backend, capabilities: Capabilities):
    require_feature(capabilities, Feature.RUN_RETENTION)
    now = time.time()
    old = [make_record("export", now - 7200 - index) for index in range(3)]
    recent = [make_record("export", now - 60), make_record("import", now - 120)]
    record_shuffled(backend, old + recent)

    deleted = backend.trim_runs(max_per_job=100, max_age_s=3600)

    assert deleted == 3
    assert sorted(backend.list_runs(), key=lambda record: record.fire_time) == sorted(
        recent, key=lambda record: record.fire_time
    )
