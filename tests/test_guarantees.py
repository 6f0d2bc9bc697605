"""The scheduler cases (several scheduler processes per case) against a real Redis server and a SQLite file.

Each run is ``pytest -p planlagt_conformance.plugin --pyargs planlagt_conformance.scheduler_cases
--backend-url URL`` in a child process (see :mod:`suite_runs`); a failure lists every
failed case with its message, and the child's full output and the scenario folders stay
under the test's ``tmp_path``.

The Redis server is started here with the test harness, and this process serves fault
requests for it (``ServerControlService``), so the cases that restart and pause the
server run too. When ``PLANLAGT_TEST_REDIS_URL`` names a server instead, those cases are
skipped, because this run cannot restart or pause that server.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from planlagt_conformance.scheduler_cases.server_control import ServerControlService
from planlagt_conformance.servers import REDIS_URL_ENV, RedisServer
from suite_runs import (
    NO_SERVER_PROCESS,
    NOT_MANAGED,
    RUN_TIMEOUT_S,
    SCHEDULER_CASES,
    SCHEDULER_SUITE_RERUN,
    Target,
    check_results,
    run_cases,
)

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def redis_target() -> Iterator[Target]:
    """Yield the Redis server under test, the child's environment, and the skip reason the child may give."""
    configured = os.environ.get(REDIS_URL_ENV)
    if configured:
        yield Target(configured, dict(os.environ), NOT_MANAGED)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            f"no Redis server for the scheduler cases: install redis-server (for example "
            f"`apt-get install redis-server`) so the test starts and manages its own, or set {REDIS_URL_ENV} "
            "to a running server (the server fault cases are then skipped)",
            pytrace=False,
        )
    with RedisServer(binary=binary) as server, ServerControlService(server) as control:
        yield Target(server.url, {**os.environ, **control.environment()}, None)


@pytest.mark.redis
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@SCHEDULER_SUITE_RERUN
def test_guarantees_on_redis(redis_target: Target, tmp_path: Path):
    results = run_cases(SCHEDULER_CASES, redis_target, tmp_path)

    check_results(results, redis_target.allowed_skips, tmp_path)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@SCHEDULER_SUITE_RERUN
def test_guarantees_on_sqlite(tmp_path: Path):
    target = Target(f"sqlite:///{tmp_path / 'planlagt.db'}", dict(os.environ), NO_SERVER_PROCESS)

    results = run_cases(SCHEDULER_CASES, target, tmp_path)

    check_results(results, target.allowed_skips, tmp_path)
