"""The framework recipes under docs/examples, each run as real processes.

Every example reads its backend from ``PLANLAGT_BACKEND`` and appends one line per run to
a file named by an environment variable, with a schedule with seconds so that a test
sees several fire times in seconds. A test checks that each fire time appears once,
whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from planlagt_conformance.servers import free_port, redis_url

from planlagt_core import connect
from planlagt_core.backend import Backend
from planlagt_core.models import Outcome

pytestmark = pytest.mark.multiprocess

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
DEADLINE_S = 60.0
POLL_S = 0.1
STOP_TIMEOUT_S = 45.0
TICK_SCHEDULE = "*/2 * * * * *"
FIRE_TIMES_TO_SEE = 3
GRACE_MARGIN_S = 10.0
"""Time a stopping process may take beyond its shutdown grace: thread joins, leaving, exit."""


def wait_for(condition: Callable[[], Any], description: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {description}")


class Process:
    """A process started by a test, in its own session, with its output in a log file."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, *, group: bool = False) -> int:
        """Send SIGTERM (to the process group this test started, with ``group``) and return the exit status.

        A process still running after ``timeout_s`` is killed, and the test fails.
        """
        if self.alive():
            if group:
                os.killpg(self.pid, signal.SIGTERM)
            else:
                self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
            raise AssertionError(
                f"pid {self.pid} did not exit {timeout_s} s after SIGTERM; log:\n{self.log()}"
            ) from None


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes a test started; any still running at the end are stopped with their groups."""
    started: list[Process] = []
    yield started
    for process in started:
        if process.alive():
            # A process that ignores SIGTERM is killed by stop(); its error is not this test's result.
            with contextlib.suppress(AssertionError):
                process.stop(group=True)


def example_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PLANLAGT_BACKEND": f"sqlite:///{tmp_path}/planlagt.db",
        "TICKS_FILE": str(tmp_path / "ticks.log"),
        "TICK_SCHEDULE": TICK_SCHEDULE,
        **extra,
    }


def read_ticks(path: Path) -> list[list[str]]:
    """Return the lines of a ticks file, each split into fire time, pid and instance id."""
    if not path.exists():
        return []
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fire_times_since(path: Path, since: float) -> set[str]:
    return {tick[0] for tick in read_ticks(path) if datetime.fromisoformat(tick[0]).timestamp() >= since}


def assert_once_per_fire_time(path: Path) -> list[list[str]]:
    ticks = read_ticks(path)
    repeated = {fire: count for fire, count in Counter(tick[0] for tick in ticks).items() if count > 1}
    assert ticks, f"no fire time ran; {path} is empty"
    assert repeated == {}, f"fire times that ran more than once (fire time: runs): {repeated}"
    return ticks


def live_instances(backend: Backend) -> list[Any]:
    return backend.list_instances()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def run_until_fire_times(ticks_path: Path, processes: list[Process], count: int = FIRE_TIMES_TO_SEE) -> None:
    """Wait for ``count`` fire times after now, failing early when a process exits."""
    since = time.time()

    def seen() -> bool:
        for process in processes:
            assert process.alive(), f"pid {process.pid} exited early; log:\n{process.log()}"
        return len(fire_times_since(ticks_path, since)) >= count

    wait_for(seen, f"{count} fire times in {ticks_path}")


# -- gunicorn ----------------------------------------------------------------------


@pytest.mark.parametrize("preload", [False, True], ids=["import-in-workers", "preload"])
def test_gunicorn_workers_run_fire_time_once(tmp_path: Path, processes: list[Process], preload: bool) -> None:
    port = free_port()
    env = example_env(tmp_path, BIND=f"127.0.0.1:{port}")
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *(["--preload"] if preload else [])]
    gunicorn = Process([*argv, "app:application"], cwd=EXAMPLES / "gunicorn", env=env, log_path=tmp_path / "g.log")
    processes.append(gunicorn)
    backend = connect(env["PLANLAGT_BACKEND"])
    try:
        members = wait_for(lambda: len(live_instances(backend)) == 4 and live_instances(backend), "four workers")
        run_until_fire_times(tmp_path / "ticks.log", [gunicorn])
        status, body = http_get(f"http://127.0.0.1:{port}/")
    finally:
        backend.close()

    assert gunicorn.stop() == 0, gunicorn.log()
    assert status == 200
    assert json.loads(body)["scheduler_healthy"] is True
    assert len({member.instance_id for member in members}) == 4
    assert len({member.pid for member in members}) == 4
    assert gunicorn.pid not in {member.pid for member in members}
    ticks = assert_once_per_fire_time(tmp_path / "ticks.log")
    assert {int(tick[1]) for tick in ticks} <= {member.pid for member in members}
    assert len(re.findall(r"Scheduler \S+ stopped", gunicorn.log())) == 4


def test_gunicorn_preload_trap_rejected(tmp_path: Path, processes: list[Process]) -> None:
    env = example_env(tmp_path, BIND=f"127.0.0.1:{free_port()}")
    argv = [sys.executable, "-m", "gunicorn", "--preload", "-c", "gunicorn.conf.py", "preload_trap:application"]
    gunicorn = Process(argv, cwd=EXAMPLES / "gunicorn", env=env, log_path=tmp_path / "g.log")
    processes.append(gunicorn)

    status = gunicorn.popen.wait(timeout=DEADLINE_S)
    log = gunicorn.log()
    assert status != 0, log
    assert "SchedulerError" in log
    assert "cannot be used in forked child" in log
    assert "post_fork" in log


# -- FastAPI -----------------------------------------------------------------------


def test_fastapi_lifespan_two_workers(tmp_path: Path, processes: list[Process]) -> None:
    port = free_port()
    env = example_env(tmp_path)
    argv = [sys.executable, "-m", "uvicorn", "app:app", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)]
    uvicorn = Process(argv, cwd=EXAMPLES / "fastapi", env=env, log_path=tmp_path / "uvicorn.log")
    processes.append(uvicorn)
    backend = connect(env["PLANLAGT_BACKEND"])
    try:
        members = wait_for(lambda: len(live_instances(backend)) == 2 and live_instances(backend), "two workers")
        run_until_fire_times(tmp_path / "ticks.log", [uvicorn])
        health = http_get(f"http://127.0.0.1:{port}/ops/healthz")
        metrics = http_get(f"http://127.0.0.1:{port}/ops/metrics")
    finally:
        backend.close()

    assert uvicorn.stop() == 0, uvicorn.log()
    assert health[0] == 200
    assert metrics[0] == 200
    assert b'planlagt_runs_total{job="tick",outcome="succeeded"}' in metrics[1]
    assert len({member.instance_id for member in members}) == 2
    assert_once_per_fire_time(tmp_path / "ticks.log")
    assert len(re.findall(r"Scheduler \S+ stopped", uvicorn.log())) == 2


# -- Django ------------------------------------------------------------------------


def django_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return example_env(tmp_path, DJANGO_SETTINGS_MODULE="exampleproject.settings", **extra)


def test_django_runscheduler_two_processes(tmp_path: Path, processes: list[Process]) -> None:
    env = django_env(tmp_path, PLANLAGT_START_WITH_APP="0")
    for n in (1, 2):
        argv = [sys.executable, "manage.py", "runscheduler", "--instance-id", f"django-{n}"]
        processes.append(Process(argv, cwd=EXAMPLES / "django", env=env, log_path=tmp_path / f"django-{n}.log"))
    backend = connect(env["PLANLAGT_BACKEND"])
    try:
        wait_for(lambda: len(live_instances(backend)) == 2, "two runscheduler processes")
        run_until_fire_times(tmp_path / "ticks.log", processes)
    finally:
        backend.close()

    for process in processes:
        assert process.stop() == 0, process.log()
    ticks = assert_once_per_fire_time(tmp_path / "ticks.log")
    assert {tick[2] for tick in ticks} <= {"django-1", "django-2"}


def test_django_runserver_starts_one_scheduler(tmp_path: Path, processes: list[Process]) -> None:
    port = free_port()
    env = django_env(tmp_path)
    argv = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}"]
    runserver = Process(argv, cwd=EXAMPLES / "django", env=env, log_path=tmp_path / "runserver.log")
    processes.append(runserver)
    backend = connect(env["PLANLAGT_BACKEND"])
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, "the health check to pass")
        run_until_fire_times(tmp_path / "ticks.log", [runserver])
        members = live_instances(backend)
    finally:
        backend.close()
        # The autoreloader's child is in the same process group, so stop the group.
        runserver.stop(group=True)

    assert len(members) == 1, f"the autoreloader parent and child both started a scheduler: {members}"
    assert_once_per_fire_time(tmp_path / "ticks.log")


def test_django_management_command_starts_none(tmp_path: Path) -> None:
    env = django_env(tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=EXAMPLES / "django",
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert result.returncode == 0, result.stderr
    assert "Scheduler" not in result.stderr
    assert not (tmp_path / "planlagt.db").exists()


# -- Celery ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server_url() -> Iterator[str]:
    with redis_url() as url:
        yield url


@pytest.mark.redis
def test_celery_task_once_per_fire_time(tmp_path: Path, processes: list[Process], redis_server_url: str) -> None:
    base = redis_server_url.rstrip("/")
    env = example_env(
        tmp_path,
        CELERY_BROKER_URL=f"{base}/1",
        PLANLAGT_BACKEND=f"{base}/0?prefix=celery-{os.getpid()}-{time.monotonic_ns()}",
    )
    cwd = EXAMPLES / "celery"
    worker_argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "solo", "--loglevel", "INFO"]
    worker = Process(
        [*worker_argv, "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=cwd,
        env=env,
        log_path=tmp_path / "worker.log",
    )
    processes.append(worker)
    schedulers = [
        Process(
            [sys.executable, "-m", "planlagt_core.cli", "run", "cron:scheduler", "--instance-id", f"celery-{n}"],
            cwd=cwd,
            env=env,
            log_path=tmp_path / f"scheduler-{n}.log",
        )
        for n in (1, 2)
    ]
    processes.extend(schedulers)
    backend = connect(env["PLANLAGT_BACKEND"])
    try:
        wait_for(lambda: len(live_instances(backend)) == 2, "two scheduler instances")
        run_until_fire_times(tmp_path / "ticks.log", [worker, *schedulers])
    finally:
        backend.close()

    for process in schedulers:
        assert process.stop() == 0, process.log()
    worker.stop()
    ticks = assert_once_per_fire_time(tmp_path / "ticks.log")
    assert {int(tick[1]) for tick in ticks} == {worker.pid}
    assert {tick[2] for tick in ticks} <= {"celery-1", "celery-2"}


# -- Kubernetes --------------------------------------------------------------------

METRICS_PORT_OPTION = "--metrics-port"


def deployment() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((EXAMPLES / "kubernetes" / "deployment.yaml").read_text(encoding="utf-8")))
    deployments = [document for document in documents if document and document.get("kind") == "Deployment"]
    assert len(deployments) == 1
    return deployments[0]


def option_value(command: list[str], option: str) -> str:
    assert option in command, f"{option} missing from {command}"
    return command[command.index(option) + 1]


@pytest.mark.fast
def test_kubernetes_manifest_fields() -> None:
    manifest = deployment()
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    env = {item["name"]: item for item in container["env"]}
    probe = container["livenessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert manifest["apiVersion"] == "apps/v1"
    assert command[:3] == ["planlagt", "run", "cron:scheduler"]
    assert option_value(command, "--metrics-host") == "0.0.0.0"
    assert int(option_value(command, METRICS_PORT_OPTION)) == ports[probe["port"]]
    assert probe["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] >= float(env["SHUTDOWN_GRACE_S"]["value"]) + 10
    assert env["PLANLAGT_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "secretKeyRef" in env["PLANLAGT_BACKEND"]["valueFrom"]


def test_kubernetes_sigterm_grace_and_probe(tmp_path: Path, processes: list[Process]) -> None:
    port = free_port()
    marks = tmp_path / "marks.log"
    env = example_env(
        tmp_path, SHUTDOWN_GRACE_S="20", REPORT_SCHEDULE=TICK_SCHEDULE, REPORT_SECONDS="3", MARKS_FILE=str(marks)
    )
    argv = [sys.executable, "-m", "planlagt_core.cli", "run", "cron:scheduler", METRICS_PORT_OPTION, str(port)]
    pod = Process(argv, cwd=EXAMPLES / "kubernetes", env=env, log_path=tmp_path / "pod.log")
    processes.append(pod)

    def probe() -> int:
        assert pod.alive(), pod.log()
        return http_get(f"http://127.0.0.1:{port}/healthz")[0]

    wait_for(lambda: probe() == 200, "the liveness probe to pass")
    running = wait_for(lambda: report_in_progress(marks), "a report run in progress")
    grace_s = float(env["SHUTDOWN_GRACE_S"])
    status = pod.stop(timeout_s=grace_s + GRACE_MARGIN_S)

    assert status == 0, pod.log()
    assert f"finished {running}" in marks.read_text(encoding="utf-8")
    backend = connect(env["PLANLAGT_BACKEND"])
    try:
        records = [r for r in backend.list_runs("report", limit=100) if r.fire_time == iso_timestamp(running)]
    finally:
        backend.close()
    assert [record.outcome for record in records] == [Outcome.SUCCEEDED]


def report_in_progress(marks: Path) -> str | None:
    """Return the fire time of a report run that started and has not ended, if any."""
    if not marks.exists():
        return None
    started: list[str] = []
    ended: set[str] = set()
    for line in marks.read_text(encoding="utf-8").splitlines():
        kind, _, rest = line.partition(" ")
        fire_time = rest.split(" ")[0]
        if kind == "started":
            started.append(fire_time)
        else:
            ended.add(fire_time)
    return next((fire_time for fire_time in started if fire_time not in ended), None)


def iso_timestamp(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(timezone.utc).timestamp()
