"""The shared conformance suite against a real PostgreSQL server: contract cases and scheduler cases.

Each suite runs in a child pytest process, as a user would run it (see :mod:`suite_runs`).
A failure shows every failed case with its message; the child's full output stays under
the test's ``tmp_path``.

The server is started here from the Debian ``postgresql`` binaries, and this process
serves fault requests for it, so the scheduler cases that pause, stop and restart the
server run too. When ``PLANLAGT_TEST_POSTGRES_URL`` names a server instead, the suites
run against it and those fault cases are skipped, because this run cannot control it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from planlagt_conformance.postgres_server import POSTGRES_URL_ENV, PostgresServer, find_postgres_bindir
from planlagt_conformance.scheduler_cases.server_control import ServerControlService
from suite_runs import (
    CONTRACT_CASES,
    CONTRACT_SKIPS,
    NOT_MANAGED,
    RUN_TIMEOUT_S,
    SCHEDULER_CASES,
    SCHEDULER_SUITE_RERUN,
    Target,
    check_contract_skips,
    check_results,
    run_cases,
)

pytestmark = [pytest.mark.postgres, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        yield Target(configured, dict(os.environ), NOT_MANAGED)
        return
    if find_postgres_bindir() is None:
        pytest.fail(
            "no PostgreSQL server for the conformance suite: install PostgreSQL 14 or newer (for example "
            "`apt-get install postgresql`) so the test starts and manages its own, set "
            f"{POSTGRES_URL_ENV} to a running server (the server fault cases are then skipped), or start one "
            "with `docker compose -f conformance/docker-compose.yml up -d` and set the variable to its URL",
            pytrace=False,
        )
    with PostgresServer() as server, ServerControlService(server) as control:
        yield Target(server.url, {**os.environ, **control.environment()}, None)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_contract_cases_on_postgres(target: Target, tmp_path: Path):
    results = run_cases(CONTRACT_CASES, target, tmp_path)

    check_results(results, CONTRACT_SKIPS, tmp_path)
    check_contract_skips(results)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@SCHEDULER_SUITE_RERUN
def test_scheduler_cases_on_postgres(target: Target, tmp_path: Path):
    results = run_cases(SCHEDULER_CASES, target, tmp_path)

    check_results(results, target.allowed_skips, tmp_path)
