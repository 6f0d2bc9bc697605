"""The shared conformance suite against real etcd servers: contract cases and scheduler cases.

Each suite runs in a child pytest process, as a user would run it (see :mod:`suite_runs`).
A failure shows every failed case with its message; the child's full output stays under
the test's ``tmp_path``.

The server is started here from the ``etcd`` binary (Debian package ``etcd-server``),
and this process serves fault requests for it, so scheduler cases that pause, stop and
restart the server run too. When ``PLANLAGT_TEST_ETCD_URL`` names a server instead, the
suites run against it and those fault cases are skipped, because this run cannot control
it. The runs on a TLS server with a user, and on empty servers, always start their own.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from planlagt_conformance.etcd_server import ETCD_URL_ENV, EtcdServer, no_etcd_message
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

pytestmark = [pytest.mark.etcd, pytest.mark.multiprocess]

FIRST_USE_CASES = ["test_first_use_from_many_threads", "test_first_use_from_many_processes"]

TLS_AND_USER_CASES = "test_cleanup or test_isolation or test_fencing or test_first_use or test_processes_never_hold_key"
"""The contract cases run over TLS with a user: together they call every operation, from threads and
from worker processes, on several prefixes, without the cases that only wait for TTLs to pass."""


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found is None:
        pytest.fail(no_etcd_message(), pytrace=False)
    return found


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    configured = os.environ.get(ETCD_URL_ENV)
    if configured:
        yield Target(configured, dict(os.environ), NOT_MANAGED)
        return
    if shutil.which("etcd") is None:
        pytest.fail(no_etcd_message(), pytrace=False)
    with EtcdServer() as server, ServerControlService(server) as control:
        yield Target(server.url, {**os.environ, **control.environment()}, None)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_contract_cases_on_etcd(target: Target, tmp_path: Path):
    results = run_cases(CONTRACT_CASES, target, tmp_path)

    check_results(results, CONTRACT_SKIPS, tmp_path)
    check_contract_skips(results)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@SCHEDULER_SUITE_RERUN
def test_scheduler_cases_on_etcd(target: Target, tmp_path: Path):
    results = run_cases(SCHEDULER_CASES, target, tmp_path)

    check_results(results, target.allowed_skips, tmp_path)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_contract_cases_on_etcd_with_tls_and_user(etcd_binary: str, tmp_path: Path):
    password = f"conformance-{secrets.token_hex(8)}"
    # The user's role may touch only keys under "planlagt", and the suite adds its random
    # prefixes after the URL's own, so every case runs inside that permission.
    server = EtcdServer(binary=etcd_binary, tls=True, tls_client_certs=True, auth=("planner", password))
    with server:
        assert password in server.url
        target = Target(server.url, dict(os.environ), None)
        results = run_cases(CONTRACT_CASES, target, tmp_path, pattern=TLS_AND_USER_CASES)

    check_results(results, set(), tmp_path)
    assert len(results) >= 10, f"only {len(results)} cases matched {TLS_AND_USER_CASES!r}"
    assert password not in (tmp_path / "output.txt").read_text(encoding="utf-8")
    assert password not in (tmp_path / "junit.xml").read_text(encoding="utf-8")


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@pytest.mark.parametrize("case", FIRST_USE_CASES)
def test_first_use_of_empty_etcd(etcd_binary: str, tmp_path: Path, case: str):
    with EtcdServer(binary=etcd_binary) as server:
        results = run_cases(CONTRACT_CASES, Target(server.url, dict(os.environ), None), tmp_path, pattern=case)

    check_results(results, set(), tmp_path)
    assert [result.outcome for result in results] == ["passed"]
