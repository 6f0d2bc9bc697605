"""The shared conformance suite against a real ZooKeeper server: contract cases and scheduler cases.

Each suite runs in a child pytest process, as a user would run it (see :mod:`suite_runs`).
A failure shows every failed case with its message; the child's full output stays under
the test's ``tmp_path``.

The server is started here from the Debian ``zookeeper`` package's jars, and this process
serves fault requests for it, so the scheduler cases that pause, stop and restart the
server run too. When ``PLANLAGT_TEST_ZOOKEEPER_URL`` names a server instead, the suites run
against it and those fault cases are skipped, because this run cannot control it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from planlagt_conformance.scheduler_cases.server_control import ServerControlService
from planlagt_conformance.zookeeper_server import (
    ZOOKEEPER_URL_ENV,
    ZooKeeperServer,
    no_zookeeper_message,
    zookeeper_available,
)
from suite_runs import (
    CONTRACT_CASES,
    CONTRACT_SKIPS,
    NOT_MANAGED,
    RUN_TIMEOUT_S,
    SCHEDULER_CASES,
    SCHEDULER_SUITE_RERUN,
    Target,
    base_name,
    check_contract_skips,
    check_results,
    run_cases,
)

pytestmark = [pytest.mark.zookeeper, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    configured = os.environ.get(ZOOKEEPER_URL_ENV)
    if configured:
        yield Target(configured, dict(os.environ), NOT_MANAGED)
        return
    if not zookeeper_available():
        pytest.fail(no_zookeeper_message(), pytrace=False)
    with ZooKeeperServer() as server, ServerControlService(server) as control:
        yield Target(server.url, {**os.environ, **control.environment()}, None)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_contract_cases_on_zookeeper(target: Target, tmp_path: Path):
    results = run_cases(CONTRACT_CASES, target, tmp_path)

    check_results(results, CONTRACT_SKIPS, tmp_path)
    check_contract_skips(results)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@SCHEDULER_SUITE_RERUN
def test_scheduler_cases_on_zookeeper(target: Target, tmp_path: Path):
    results = run_cases(SCHEDULER_CASES, target, tmp_path)

    check_results(results, target.allowed_skips, tmp_path)
    passed = {base_name(case.name) for case in results if case.outcome == "passed"}
    required = {
        "test_killed_holder_is_replaced",
        "test_paused_holder_loses_lease",
        "test_each_fire_time_completes_once",
    }
    if target.allowed_skip is None:
        required |= {"test_restarted_server", "test_short_server_pause", "test_long_server_pause"}
    assert required <= passed, f"cases that did not pass: {sorted(required - passed)}"
