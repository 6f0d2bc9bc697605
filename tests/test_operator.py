"""Operator commands and run history across real instance processes on a real Redis server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from planlagt_conformance.servers import redis_url

from planlagt_core import connect
from planlagt_core.errors import InvalidJob
from planlagt_core.history import History
from planlagt_core.models import Outcome, RunRecord
from planlagt_core.operator import Operator

pytestmark = [pytest.mark.redis, pytest.mark.multiprocess]

DEADLINE_S = 30.0

SERVICE = textwrap.dedent(
    """
    import os, time
    from planlagt_core.scheduler import Scheduler

    scheduler = Scheduler(lease_ttl_s=2, heartbeat_s=0.25)

    @scheduler.job("* * * * * *", name="tick")
    def tick(context):
        with open(os.environ["TICK_LOG"], "a") as log:
            log.write(f"{context.fire_time.isoformat()} {context.instance_id}\\n")

    @scheduler.job("@every 1h", name="failing")
    def failing():
        raise RuntimeError("disk full")

    @scheduler.job("@every 1h", name="hourly")
    def hourly():
        time.sleep(0.2)
    """
)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = DEADLINE_S) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with redis_url() as url:
        yield url


@pytest.fixture
def cluster(server_url: str, tmp_path: Path) -> Iterator[dict[str, object]]:
    """Two `planlagt run` processes of one service on a fresh prefix of the Redis server."""
    (tmp_path / "opservice.py").write_text(SERVICE, encoding="utf-8")
    backend = f"{server_url.rstrip('/')}/0?prefix=op-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PLANLAGT_BACKEND": backend, "TICK_LOG": str(tmp_path / "ticks.log")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "planlagt_core.cli", "run", "opservice:scheduler", "--instance-id", f"op-{n}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"op-{n}.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        for n in (1, 2)
    ]
    operator = Operator(backend)
    try:
        wait_for(lambda: len(operator.backend.list_instances()) == 2, "both instances to join")
        yield {"backend": backend, "env": env, "cwd": tmp_path, "operator": operator}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        operator.close()


def cli(cluster: dict[str, object], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "planlagt_core.cli", "--log-level", "WARNING", *args],
        cwd=cluster["cwd"],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_status_lists_jobs_and_instances(cluster: dict[str, object]) -> None:
    operator = cluster["operator"]
    assert isinstance(operator, Operator)
    wait_for(lambda: operator.history.last_run("tick"), "a first tick run")
    result = cli(cluster, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    names = {job["name"] for job in status["jobs"]}
    assert {"tick", "failing", "hourly"} <= names
    assert sorted(instance["instance_id"] for instance in status["instances"]) == ["op-1", "op-2"]
    owned = [name for instance in status["instances"] for name in instance["jobs_owned"]]
    assert sorted(owned) == sorted(names)
    tick = next(job for job in status["jobs"] if job["name"] == "tick")
    assert tick["last_run"]["outcome"] == "succeeded"
    assert tick["next_fire_time"] is not None


def test_status_table_is_readable(cluster: dict[str, object]) -> None:
    result = cli(cluster, "status")
    assert result.returncode == 0, result.stderr
    assert "JOB" in result.stdout
    assert "INSTANCE" in result.stdout
    assert "op-1" in result.stdout


def test_trigger_success_exits_zero(cluster: dict[str, object]) -> None:
    result = cli(cluster, "trigger", "hourly")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outcome: succeeded" in result.stdout
    operator = cluster["operator"]
    assert isinstance(operator, Operator)
    manual = [r for r in operator.runs("hourly", limit=10) if r.manual]
    assert len(manual) == 1


def test_trigger_failure_exits_nonzero(cluster: dict[str, object]) -> None:
    result = cli(cluster, "trigger", "failing")
    assert result.returncode == 1
    assert "RuntimeError: disk full" in result.stdout


def test_trigger_no_wait_returns_at_once(cluster: dict[str, object]) -> None:
    result = cli(cluster, "trigger", "hourly", "--no-wait")
    assert result.returncode == 0, result.stderr
    operator = cluster["operator"]
    assert isinstance(operator, Operator)
    wait_for(lambda: any(r.manual for r in operator.runs("hourly", limit=10)), "the manual run")


def test_unknown_job_lists_known_ones(cluster: dict[str, object]) -> None:
    result = cli(cluster, "trigger", "nightly")
    assert result.returncode == 2
    assert "unknown job 'nightly'" in result.stderr
    assert "tick" in result.stderr
    assert "Traceback" not in result.stderr


def test_pause_then_resume_across_instances(cluster: dict[str, object]) -> None:
    operator = cluster["operator"]
    assert isinstance(operator, Operator)
    assert cli(cluster, "pause", "tick").returncode == 0
    paused_at = time.time()

    def skipped_as_paused() -> list[RunRecord]:
        return [
            r
            for r in operator.runs("tick", limit=50)
            if r.outcome is Outcome.SKIPPED and r.reason == "job is paused" and r.fire_time > paused_at + 1
        ]

    wait_for(skipped_as_paused, "fire times recorded as skipped while paused")
    recent = [r for r in operator.runs("tick", limit=50) if r.fire_time > paused_at + 1]
    assert all(r.outcome is Outcome.SKIPPED for r in recent)
    assert cli(cluster, "resume", "tick").returncode == 0
    resumed_at = time.time()
    wait_for(
        lambda: any(r.outcome is Outcome.SUCCEEDED and r.fire_time > resumed_at + 1 for r in operator.runs("tick")),
        "a run after resume",
    )


def test_history_shows_outcomes(cluster: dict[str, object]) -> None:
    cli(cluster, "trigger", "failing")
    result = cli(cluster, "history", "failing", "--json")
    assert result.returncode == 0, result.stderr
    records = [RunRecord.from_json(line) for line in result.stdout.splitlines()]
    failed = [r for r in records if r.outcome is Outcome.FAILED]
    assert failed
    assert failed[0].error_type == "RuntimeError"
    assert failed[0].error_message == "disk full"


def test_ticks_run_once_per_fire_time(cluster: dict[str, object]) -> None:
    log = Path(str(cluster["cwd"])) / "ticks.log"
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 5, "five tick runs")
    fire_times = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(fire_times) == len(set(fire_times))


@pytest.mark.fast
def test_history_queries_on_memory() -> None:
    backend = connect("memory://")
    records = [
        RunRecord(job="a", fire_time=100.0 + i, instance_id="x", outcome=outcome, attempt=1, started_at=100.0 + i)
        for i, outcome in enumerate([Outcome.SUCCEEDED, Outcome.FAILED, Outcome.SUCCEEDED, Outcome.SKIPPED])
    ]
    for record in records:
        backend.record_run(record)
    history = History(backend)
    last = history.last_run("a")
    assert last is not None
    assert last.fire_time == 103.0
    success = history.last_success("a")
    assert success is not None
    assert success.fire_time == 102.0
    assert [r.fire_time for r in history.between(101.0, 102.0, job="a")] == [102.0, 101.0]
    counts = history.counts(job="a")
    assert counts[Outcome.SUCCEEDED] == 2
    assert counts[Outcome.FAILED] == 1
    assert counts[Outcome.SKIPPED] == 1


@pytest.mark.fast
def test_operator_unknown_job_raises() -> None:
    operator = Operator("memory://")
    with pytest.raises(InvalidJob, match="unknown job 'nope'"):
        operator.pause("nope")


def test_status_and_history_after_demo(server_url: str, tmp_path: Path) -> None:
    backend = f"{server_url.rstrip('/')}/0?prefix=demo-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PLANLAGT_BACKEND": backend}
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "planlagt_core.cli",
            "demo",
            "--json",
            "--duration",
            "15",
            "--instances",
            "2",
            "--backend",
            backend,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr[-3000:]
    cluster = {"cwd": tmp_path, "env": env}

    status = cli(cluster, "status", "--json")
    assert status.returncode == 0, status.stderr
    jobs = {job["name"]: job for job in json.loads(status.stdout)["jobs"]}
    assert jobs["tick-a"]["last_run"]["outcome"] == "succeeded"
    assert jobs["batch"]["last_run"] is not None

    history = cli(cluster, "history", "--limit", "1000", "--json")
    assert history.returncode == 0, history.stderr
    records = [RunRecord.from_json(line) for line in history.stdout.splitlines()]
    assert {"demo-1", "demo-2"} <= {record.instance_id for record in records}
