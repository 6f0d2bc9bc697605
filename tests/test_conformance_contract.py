"""The conformance suite's contract cases against every built-in backend.

Each run is ``python -m planlagt_conformance.cli URL --json`` in a child process, as a
user would run ``planlagt conformance``; a failure lists every failed case with its message.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from planlagt_conformance.plugin import backend_class_for
from planlagt_conformance.servers import RedisServer, get_redis_url

from planlagt_core.backend import Capabilities, Feature

SUITE_TIMEOUT_S = 280.0
FIRST_USE_CASES = ["test_first_use_from_many_threads", "test_first_use_from_many_processes"]


def run_conformance(url: str, pattern: str | None = None) -> dict[str, Any]:
    """Run the suite against ``url`` in a child process and return its JSON report."""
    command = [sys.executable, "-m", "planlagt_conformance.cli", url, "--json"]
    if pattern:
        command += ["-k", pattern]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"planlagt conformance printed no JSON report (status {completed.returncode}):\n"
            f"{completed.stdout}\n{completed.stderr[-4000:]}"
        )
    assert report["exit_status"] == completed.returncode
    return report


def cases_with(report: dict[str, Any], outcome: str) -> dict[str, str | None]:
    return {case["name"]: case["message"] for case in report["cases"] if case["outcome"] == outcome}


def describe_failures(report: dict[str, Any]) -> str:
    failed = cases_with(report, "failed")
    return f"{len(failed)} cases failed against {report['backend']}:\n" + "\n".join(
        f"  {name}: {message}" for name, message in failed.items()
    )


def expected_skips(capabilities: Capabilities) -> Counter[str]:
    """Return the skips that declared capabilities justify, by reason.

    A declared feature skips exactly one case (the check that an undeclared feature
    raises ``NotSupported``). A backend limited to one process skips the two process cases.
    """
    expected: Counter[str] = Counter()
    if not capabilities.multi_process:
        expected["capability multi_process is false"] = 2
    for feature in Feature:
        if capabilities.supports(feature):
            expected[f"capability {feature.value} is declared"] = 1
    return expected


def undeclared_feature_skips(capabilities: Capabilities) -> set[str]:
    """Return the skip reasons of cases that need a feature the backend does not declare."""
    return {f"capability {feature.value} not declared" for feature in Feature if not capabilities.supports(feature)}


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://conformance-{secrets.token_hex(4)}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'conformance.db'}"
    return get_redis_url()


@pytest.fixture
def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("redis-server is not on PATH, and this test needs an empty server of its own; install it")
    return found


@pytest.fixture
def empty_redis_url(redis_binary: str) -> Iterator[str]:
    with RedisServer(binary=redis_binary) as server:
        yield server.url


def test_contract_cases_pass(backend_url: str):
    capabilities = backend_class_for(backend_url).capabilities

    report = run_conformance(backend_url)

    assert cases_with(report, "failed") == {}, describe_failures(report)
    assert report["exit_status"] == 0
    skips = Counter(cases_with(report, "skipped").values())
    unexplained = {
        reason: count for reason, count in skips.items() if reason not in undeclared_feature_skips(capabilities)
    }
    assert unexplained == dict(expected_skips(capabilities)), f"skips do not match the declared capabilities: {skips}"


@pytest.mark.parametrize("case", FIRST_USE_CASES)
def test_first_use_of_new_sqlite_file(tmp_path: Path, case: str):
    report = run_conformance(f"sqlite:///{tmp_path / 'new.db'}", pattern=case)

    assert cases_with(report, "failed") == {}, describe_failures(report)
    assert report["passed"] == 1


@pytest.mark.redis
@pytest.mark.parametrize("case", FIRST_USE_CASES)
def test_first_use_of_empty_redis_server(empty_redis_url: str, case: str):
    report = run_conformance(empty_redis_url, pattern=case)

    assert cases_with(report, "failed") == {}, describe_failures(report)
    assert report["passed"] == 1


@pytest.mark.redis
def test_password_stays_out_of_reports(redis_binary: str):
    password = f"conformance-{secrets.token_hex(8)}"
    pattern = "test_backend_url_hides_password or test_processes_never_hold_key_at_once or test_held_key"

    with RedisServer(password=password, binary=redis_binary) as server:
        command = [sys.executable, "-m", "planlagt_conformance.cli", server.url, "-v", "-k", pattern]
        assert password in server.url
        completed = subprocess.run(command, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)

    assert completed.stdout.strip().splitlines()[-1] == "3 passed, 0 failed", completed.stdout[-4000:]
    assert password not in completed.stdout
    assert password not in completed.stderr
