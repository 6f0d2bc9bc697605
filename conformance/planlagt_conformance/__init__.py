"""Conformance suite for planlagt backends.

:func:`run` runs the suite's contract cases against one backend URL and prints a summary;
it is what ``planlagt conformance URL`` calls. To run the cases from your own pytest
session instead, load the plugin and collect the cases package::

    pytest -p planlagt_conformance.plugin --pyargs planlagt_conformance.cases --backend-url URL

The suite needs pytest (``pip install "planlagt[conformance]"``). Importing this package
does not import pytest; :func:`run` does.
"""

from __future__ import annotations

import contextlib
import json as json_lib
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from planlagt_core.errors import ConfigurationError, PluginLoadError
from planlagt_core.url import redact_url

if TYPE_CHECKING:
    import pytest

__all__ = ["CaseResult", "SuiteResult", "run", "run_cases"]

CASES_PACKAGE = "planlagt_conformance.cases"
PACKAGE_DIRECTORY = Path(__file__).resolve().parent
USAGE_ERROR_STATUS = 2
MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case: ``passed``, ``failed`` (an error in setup or teardown counts) or ``skipped``."""

    name: str
    outcome: str
    duration_s: float
    message: str | None = None


@dataclass(frozen=True)
class SuiteResult:
    """Every case's result and pytest's exit status for one run of the suite."""

    backend: str
    cases: list[CaseResult]
    pytest_exit_code: int

    def count(self, outcome: str) -> int:
        return sum(1 for case in self.cases if case.outcome == outcome)

    @property
    def exit_status(self) -> int:
        """The process exit status: 0 when no case failed and pytest succeeded, 1 when a case failed.

        Otherwise it is pytest's own status, such as 5 when no case was selected.
        """
        if self.count("failed"):
            return 1
        return self.pytest_exit_code

    def summary(self) -> str:
        """Return ``N passed, N failed``, followed by ``, N skipped`` when any case was skipped."""
        line = f"{self.count('passed')} passed, {self.count('failed')} failed"
        skipped = self.count("skipped")
        return f"{line}, {skipped} skipped" if skipped else line

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "passed": self.count("passed"),
            "failed": self.count("failed"),
            "skipped": self.count("skipped"),
            "exit_status": self.exit_status,
            "cases": [asdict(case) for case in self.cases],
        }


class _CaseCollector:
    """pytest plugin object that merges the setup, call and teardown reports of each case.

    A failure in any phase makes the case failed. Otherwise a skip makes it skipped, and
    a passing call makes it passed.
    """

    def __init__(self) -> None:
        self.outcomes: dict[str, tuple[str, str | None]] = {}
        self.durations: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.removeprefix("cases/")
        self.durations[name] = self.durations.get(name, 0.0) + report.duration

        if self.outcomes.get(name, ("",))[0] == "failed":
            return
        if report.failed:
            self.outcomes[name] = ("failed", _message(report))
        elif report.skipped:
            self.outcomes[name] = ("skipped", _message(report))
        elif report.when == "call":
            self.outcomes[name] = ("passed", None)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            name = report.nodeid.removeprefix("cases/") or CASES_PACKAGE
            self.outcomes[name] = ("failed", _message(report))

    def results(self) -> list[CaseResult]:
        return [
            CaseResult(name, outcome, round(self.durations.get(name, 0.0), 3), message)
            for name, (outcome, message) in self.outcomes.items()
        ]


def _message(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    return text[:MAX_MESSAGE_CHARS]


def _pytest_arguments(url: str, ini_path: Path, pattern: str | None, verbose: bool) -> list[str]:
    # An empty ini file and a fixed rootdir keep the caller's own pytest configuration
    # (addopts, plugins' settings) out of the suite, and no cache is written beside the cases.
    # run_cases() passes the plugin module to pytest.main as an object, not with -p: it is
    # imported already, and pytest warns about every -p module it cannot rewrite.
    arguments = [
        "-c",
        str(ini_path),
        "--rootdir",
        str(PACKAGE_DIRECTORY),
        "-p",
        "no:cacheprovider",
        "--backend-url",
        url,
        "-rfEs",
        "--pyargs",
        CASES_PACKAGE,
    ]
    if pattern:
        arguments += ["-k", pattern]
    if verbose:
        arguments.append("-v")
    return arguments


def run_cases(
    url: str, *, pattern: str | None = None, verbose: bool = False, output: TextIO | None = None
) -> SuiteResult:
    """Run the contract cases against ``url`` in this process and return every case's result.

    ``pattern`` is a pytest ``-k`` expression. pytest's own report goes to ``output``
    (default standard output). Needs pytest.
    """
    import pytest

    from . import plugin

    collector = _CaseCollector()
    with tempfile.TemporaryDirectory(prefix="planlagt-conformance-") as directory:
        ini_path = Path(directory, "pytest.ini")
        ini_path.write_text("[pytest]\n", encoding="utf-8")
        arguments = _pytest_arguments(url, ini_path, pattern, verbose)
        with contextlib.redirect_stdout(output or sys.stdout):
            exit_code = pytest.main(arguments, plugins=[collector, plugin])
    return SuiteResult(backend=redact_url(url), cases=collector.results(), pytest_exit_code=int(exit_code))


def _check_url(url: str) -> str | None:
    """Build and close a backend for ``url`` without connecting, and return the error text if that fails."""
    from .plugin import open_backend

    try:
        open_backend(url).close()
    except (ConfigurationError, PluginLoadError) as exc:
        return str(exc)
    return None


def run(url: str, json: bool = False, pattern: str | None = None, *, verbose: bool = False) -> int:
    """Run the contract cases against ``url``, print the outcome and return an exit status.

    Without ``json``, pytest's report is followed by the line ``N passed, N failed`` (and
    ``, N skipped`` when any case was skipped). With ``json``, pytest's report goes to
    standard error and standard output gets one JSON object: the counts and, per case, its
    name, outcome, duration and failure or skip message. ``pattern`` selects cases with a
    pytest ``-k`` expression.

    Returns 0 when no case failed, 1 when any failed, 2 for an invalid URL or backend
    plugin, and pytest's own status otherwise (5 when ``pattern`` selects no case).
    """
    error = _check_url(url)
    if error is not None:
        print(f"planlagt conformance: {error}", file=sys.stderr)
        return USAGE_ERROR_STATUS

    result = run_cases(url, pattern=pattern, verbose=verbose, output=sys.stderr if json else sys.stdout)

    if json:
        print(json_lib.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return result.exit_status
