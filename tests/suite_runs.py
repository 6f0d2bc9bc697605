"""Running a conformance suite in a child pytest process, and checking its JUnit report.

The per-backend suite tests share this module. Each run is what a plugin author would type,
``pytest -p planlagt_conformance.plugin --pyargs PACKAGE --backend-url URL``, with an
empty ini file and a fixed rootdir so that this project's pytest settings stay out of the
child run. The child's full output, its report and the scenario folders stay in the
directory the test gives (its ``tmp_path``).
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "CASE_TIMEOUT_S",
    "CONTRACT_CASES",
    "CONTRACT_SKIPS",
    "NOT_MANAGED",
    "NO_SERVER_PROCESS",
    "RUN_TIMEOUT_S",
    "SCHEDULER_CASES",
    "SCHEDULER_SUITE_RERUN",
    "CaseResult",
    "Target",
    "base_name",
    "check_contract_skips",
    "check_results",
    "run_cases",
]

CONTRACT_CASES = "planlagt_conformance.cases"
SCHEDULER_CASES = "planlagt_conformance.scheduler_cases"

CASE_TIMEOUT_S = 180
"""Maximum time one case may run in the child process before pytest-timeout ends it."""

RUN_TIMEOUT_S = 600.0
"""Maximum time of one child run.

The contract cases take 30 to 40 s per backend, the scheduler cases 65 to 200 s on a busy
two-core machine.
"""

NOT_MANAGED = "is not managed by this test run"
"""Skip reason of the server fault cases when the server comes from an environment variable."""

NO_SERVER_PROCESS = "backend has no server process"
"""Skip reason of the server fault cases on a backend without a server (SQLite)."""

MAX_MESSAGE_CHARS = 6000

CONTRACT_SKIPS = frozenset(
    f"capability {name} is declared" for name in ("min_hold", "job_registry", "control", "run_retention")
)
"""Each declared feature skips the one contract case that checks an undeclared feature."""

# NOTE: the scheduler cases time real processes against lease TTLs of about a second, so on a
# loaded 2-core CI machine one case in many misses a bound by a fraction of a second. A failed
# run of the whole suite is repeated once, and fails the test if it fails again.
SCHEDULER_SUITE_RERUN = pytest.mark.flaky(reruns=1)


@dataclass(frozen=True)
class CaseResult:
    name: str
    outcome: str
    message: str


@dataclass(frozen=True)
class Target:
    """The server under test, the child's environment, and the skip reason the child may give."""

    url: str
    environment: dict[str, str]
    allowed_skip: str | None

    @property
    def allowed_skips(self) -> set[str]:
        return {self.allowed_skip} if self.allowed_skip else set()


def run_cases(package: str, target: Target, directory: Path, pattern: str | None = None) -> list[CaseResult]:
    """Run the cases of ``package`` (matching ``pattern``) in a child pytest; return each case's result.

    Fails the test when the child writes no report, or when its exit status does not match
    the report.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ini_path = directory / "pytest.ini"
    ini_path.write_text("[pytest]\n", encoding="utf-8")
    junit_path = directory / "junit.xml"
    output_path = directory / "output.txt"
    command = [
        sys.executable, "-m", "pytest",
        "-c", str(ini_path), "--rootdir", str(directory), "-p", "no:cacheprovider",
        "-p", "planlagt_conformance.plugin", "--pyargs", package, "--backend-url", target.url,
        "--basetemp", str(directory / "cases"), "--junitxml", str(junit_path),
        "--timeout", str(CASE_TIMEOUT_S), "-rfEs",
    ]  # fmt: skip
    if pattern:
        command += ["-k", pattern]

    completed = subprocess.run(
        command, env=target.environment, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    output_path.write_text(completed.stdout + completed.stderr, encoding="utf-8")

    if not junit_path.exists():
        pytest.fail(
            f"{package} wrote no report (status {completed.returncode}); output in {output_path}:\n"
            f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}",
            pytrace=False,
        )
    results = read_junit(junit_path)
    assert completed.returncode == (1 if any(case.outcome == "failed" for case in results) else 0), (
        f"pytest exited with status {completed.returncode}; output in {output_path}:\n{completed.stdout[-3000:]}"
    )
    return results


def read_junit(path: Path) -> list[CaseResult]:
    """Return one result per test case in a JUnit XML report: passed, failed (failure or error) or skipped."""
    results = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        problems = [child for child in case if child.tag in ("failure", "error")]
        skips = [child for child in case if child.tag == "skipped"]
        outcome, found = "passed", None
        if problems:
            outcome, found = "failed", problems[0]
        elif skips:
            outcome, found = "skipped", skips[0]
        message = "" if found is None else (found.get("message") or found.text or "")
        results.append(CaseResult(name=case.get("name", "?"), outcome=outcome, message=message))
    return results


def check_results(results: list[CaseResult], allowed_skips: set[str] | frozenset[str], directory: Path) -> None:
    """Fail unless cases ran, none failed, at least one passed, and every skip gives an allowed reason."""
    if not results:
        pytest.fail(f"no case ran; output in {directory / 'output.txt'}", pytrace=False)

    failed = [f"{case.name}: {case.message[:MAX_MESSAGE_CHARS]}" for case in results if case.outcome == "failed"]
    if failed:
        pytest.fail(
            f"{len(failed)} of {len(results)} cases failed (output and scenario folders in {directory}):\n\n"
            + "\n\n".join(failed),
            pytrace=False,
        )

    unexpected = [
        f"{case.name}: {case.message}"
        for case in results
        if case.outcome == "skipped" and not any(reason in case.message for reason in allowed_skips)
    ]
    if unexpected:
        pytest.fail("cases skipped without an allowed reason:\n" + "\n".join(unexpected), pytrace=False)
    assert any(case.outcome == "passed" for case in results), f"no case passed; output in {directory}"


def check_contract_skips(results: list[CaseResult]) -> None:
    """Fail unless the contract cases skipped exactly once per declared feature."""
    skipped = sorted(case.message for case in results if case.outcome == "skipped")
    assert len(skipped) == len(CONTRACT_SKIPS), f"expected one skip per declared feature, got {skipped}"


def base_name(case_name: str) -> str:
    """Return a case's name without its parameter id: ``test_x[zookeeper]`` gives ``test_x``."""
    return case_name.partition("[")[0]
