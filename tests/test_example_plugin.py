"""The example third-party plugin under docs/examples/planlagt-fcntl-backend, installed and tested as a user would.

A session fixture installs the example with ``pip install --no-deps -e`` unless this
checkout's copy is installed already. An editable install's import path only reaches
interpreters started afterwards, so every check runs ``planlagt`` in a child process.
The tests then check that the plugin is found through its entry point alone, that it
passes the conformance suite with only the skips its capabilities justify, and how
``planlagt`` reports a plugin that fails to import and a scheme that no plugin registers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from planlagt_core import plugins
from planlagt_core.backend import Capabilities, Feature
from planlagt_core.errors import UnknownBackend

PLUGIN_DIRECTORY = Path(__file__).resolve().parent.parent / "docs" / "examples" / "planlagt-fcntl-backend"
DISTRIBUTION = "planlagt-fcntl-backend"
SCHEME = "fcntl"

PLANLAGT = [sys.executable, "-m", "planlagt_core.cli"]
COMMAND_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 300.0
SUITE_TIMEOUT_S = 280.0
SCHEDULER_RUN_TIMEOUT_S = 600.0
SCHEDULER_CASE_TIMEOUT_S = 180

USAGE_ERROR_STATUS = 2
CLOSING_LINE = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$")
SKIP_LINE = re.compile(r"^SKIPPED \[(\d+)\] .+?:\d+: (.+)$")

SERVER_FAULT_MODULE = "test_server_faults"
NO_SERVER_PROCESS = "backend has no server process"


# -- Installing the example ------------------------------------------------------------


def installed_location() -> str | None:
    """Return the ``file:`` URL the example distribution was installed from, or None when it is not installed."""
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    direct_url = distribution.read_text("direct_url.json")
    if direct_url is None:
        return None
    return json.loads(direct_url).get("url")


@pytest.fixture(scope="session")
def example_plugin() -> Path:
    """Install the example plugin (editable, without dependencies) unless this checkout's copy is installed."""
    if installed_location() != PLUGIN_DIRECTORY.as_uri():
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-e"]
        completed = subprocess.run(
            [*command, str(PLUGIN_DIRECTORY)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
        if completed.returncode != 0:
            pytest.fail(
                f"installing the example plugin from {PLUGIN_DIRECTORY} failed (status {completed.returncode}):\n"
                f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}",
                pytrace=False,
            )
    assert installed_location() == PLUGIN_DIRECTORY.as_uri(), "pip reported success, but the metadata is not there"
    return PLUGIN_DIRECTORY


def planlagt(*args: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``planlagt ARGS`` in a new interpreter, which finds editable installs made after this one started."""
    return subprocess.run(
        [*PLANLAGT, *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=environment, check=False
    )


def listed_plugins(environment: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    result = planlagt("backends", "--json", environment=environment)
    assert result.returncode == 0, result.stderr
    return {plugin["scheme"]: plugin for plugin in json.loads(result.stdout)}


def pyproject_version() -> str:
    # A regular expression instead of tomllib, which Python 3.10 lacks.
    text = (PLUGIN_DIRECTORY / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^version = "([^"]+)"$', text, re.MULTILINE)
    assert found is not None, "the example's pyproject.toml has no version line"
    return found.group(1)


def declared_capabilities() -> Capabilities:
    """Return the example's capabilities as ``planlagt backends --json`` reports them."""
    reported = dict(listed_plugins()[SCHEME]["capabilities"])
    reported["features"] = frozenset(Feature(value) for value in reported["features"])
    return Capabilities(**reported)


# -- Discovery -------------------------------------------------------------------------


def test_backends_lists_example_plugin(example_plugin: Path):
    listed = listed_plugins()

    assert SCHEME in listed, f"planlagt backends lists {sorted(listed)}, without {SCHEME!r}"
    plugin = listed[SCHEME]
    assert plugin["error"] is None
    assert plugin["distribution"] == DISTRIBUTION
    assert plugin["version"] == pyproject_version()
    assert plugin["target"] == "planlagt_fcntl:FcntlBackend"
    capabilities = plugin["capabilities"]
    assert capabilities["min_ttl_s"] == 0.1
    assert capabilities["durable_fencing_tokens"] is True
    assert capabilities["multi_process"] is True
    assert capabilities["multi_host"] is False
    assert capabilities["server_clock"] is True
    assert capabilities["features"] == sorted(feature.value for feature in Feature)
    for scheme in ("redis", "sqlite", "memory"):
        assert scheme in listed


def test_backends_table_shows_example_plugin(example_plugin: Path):
    result = planlagt("backends")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    heading = [line for line in lines if line.split()[:1] == [SCHEME]]
    assert heading, f"no line for {SCHEME!r} in:\n{result.stdout}"
    assert f"{DISTRIBUTION} {pyproject_version()}" in heading[0]
    following = lines[lines.index(heading[0]) + 1]
    assert "min_ttl_s=0.1" in following
    assert "multi_host=False" in following


def test_example_is_registered_only_by_entry_point(example_plugin: Path):
    # The example must not be importable through anything in this repository's own
    # packaging: only its own distribution's entry point makes the scheme known.
    project = (PLUGIN_DIRECTORY.parent.parent.parent / "pyproject.toml").read_text(encoding="utf-8")

    assert "planlagt_fcntl" not in project
    assert f'{SCHEME} = "planlagt_fcntl:FcntlBackend"' in (PLUGIN_DIRECTORY / "pyproject.toml").read_text(
        encoding="utf-8"
    )


# -- The conformance suite -------------------------------------------------------------


def expected_skips(capabilities: Capabilities) -> Counter[str]:
    """Return the contract-case skips that the declared capabilities justify, by reason.

    A declared feature skips exactly one case, the check that an undeclared feature raises
    ``NotSupported``. A backend for one process only skips the two multi-process cases.
    Skips of the cases of a feature that is not declared are counted apart.
    """
    expected: Counter[str] = Counter()
    if not capabilities.multi_process:
        expected["capability multi_process is false"] = 2
    for feature in Feature:
        if capabilities.supports(feature):
            expected[f"capability {feature.value} is declared"] = 1
    return expected


def skip_reasons(report: str) -> Counter[str]:
    """Return the skip reasons in pytest's short summary (``SKIPPED [N] FILE:LINE: REASON``), counted."""
    reasons: Counter[str] = Counter()
    for line in report.splitlines():
        found = SKIP_LINE.match(line.strip())
        if found:
            reasons[found.group(2)] += int(found.group(1))
    return reasons


def test_contract_cases_pass(example_plugin: Path, tmp_path: Path):
    capabilities = declared_capabilities()
    missing = [feature for feature in Feature if not capabilities.supports(feature)]
    undeclared = {f"capability {feature.value} not declared" for feature in missing}

    result = subprocess.run(
        [*PLANLAGT, "conformance", f"{SCHEME}://{tmp_path / 'state'}"],
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
        check=False,
    )

    closing = CLOSING_LINE.match(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "")
    assert closing is not None, f"no closing line; output ends:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    failures = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert closing.group(2) == "0", "cases failed:\n" + "\n".join(failures)
    assert result.returncode == 0
    assert int(closing.group(1)) > 0
    reasons = skip_reasons(result.stdout)
    assert sum(reasons.values()) == int(closing.group(3) or 0)
    justified = Counter({reason: count for reason, count in reasons.items() if reason not in undeclared})
    assert justified == expected_skips(capabilities), f"skips do not match the declared capabilities: {reasons}"


def run_scheduler_cases(url: str, directory: Path, pattern: str | None = None) -> list[dict[str, str]]:
    """Run the scheduler cases against ``url`` in a child pytest; return each case's result.

    A result has the case's ``module``, ``name``, ``outcome`` (passed, failed or skipped)
    and ``message``.
    """
    ini_path = directory / "pytest.ini"
    ini_path.write_text("[pytest]\n", encoding="utf-8")
    junit_path = directory / "junit.xml"
    # The empty ini file and the fixed rootdir keep this project's pytest settings out of the child run.
    command = [
        sys.executable, "-m", "pytest",
        "-c", str(ini_path), "--rootdir", str(directory), "-p", "no:cacheprovider",
        "-p", "planlagt_conformance.plugin", "--pyargs", "planlagt_conformance.scheduler_cases",
        "--backend-url", url, "--basetemp", str(directory / "cases"), "--junitxml", str(junit_path),
        "--timeout", str(SCHEDULER_CASE_TIMEOUT_S), "-rfEs",
    ]  # fmt: skip
    if pattern:
        command += ["-k", pattern]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=SCHEDULER_RUN_TIMEOUT_S, check=False)
    (directory / "output.txt").write_text(completed.stdout + completed.stderr, encoding="utf-8")
    assert junit_path.exists(), (
        f"the scheduler cases wrote no report (status {completed.returncode}):\n{completed.stdout[-3000:]}"
    )

    results = []
    for case in ElementTree.parse(junit_path).getroot().iter("testcase"):
        problems = [child for child in case if child.tag in ("failure", "error")]
        skips = [child for child in case if child.tag == "skipped"]
        if problems:
            outcome, found = "failed", problems[0]
        elif skips:
            outcome, found = "skipped", skips[0]
        else:
            outcome, found = "passed", None
        results.append(
            {
                "module": case.get("classname", "").rpartition(".")[2],
                "name": case.get("name", "?"),
                "outcome": outcome,
                "message": "" if found is None else (found.get("message") or found.text or ""),
            }
        )
    return results


@pytest.mark.multiprocess
@pytest.mark.timeout(SCHEDULER_RUN_TIMEOUT_S + 60)
def test_scheduler_cases_pass(example_plugin: Path, tmp_path: Path):
    results = run_scheduler_cases(f"{SCHEME}://{tmp_path / 'state'}", tmp_path)

    failed = [f"{case['name']}: {case['message'][:4000]}" for case in results if case["outcome"] == "failed"]
    assert not failed, f"scheduler cases failed (output in {tmp_path}):\n\n" + "\n\n".join(failed)
    assert any(case["outcome"] == "passed" for case in results)
    # The only cases a backend without a server process may skip are those that stop,
    # pause or restart the server.
    skipped = [case for case in results if case["outcome"] == "skipped"]
    unjustified = [f"{case['name']}: {case['message']}" for case in skipped if case["module"] != SERVER_FAULT_MODULE]
    assert not unjustified, "scheduler cases skipped without a justified reason:\n" + "\n".join(unjustified)


def test_server_fault_skips_say_no_server(example_plugin: Path, tmp_path: Path):
    results = run_scheduler_cases(f"{SCHEME}://{tmp_path / 'state'}", tmp_path, pattern=SERVER_FAULT_MODULE)

    assert results, "no server fault case was collected"
    assert [case["outcome"] for case in results] == ["skipped"] * len(results)
    for case in results:
        assert NO_SERVER_PROCESS in case["message"], f"{case['name']}: {case['message']}"


# -- A plugin that fails to import -----------------------------------------------------

BROKEN_DISTRIBUTION = "planlagt-broken-example"
WRITTEN_VERSION = "1.2.3"
"""Version of every distribution the tests write with :func:`write_distribution`."""
BROKEN_SCHEME = "brokenfs"
MISSING_CLIENT = "planlagt_test_client_library_that_is_not_installed"


def write_distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write what an installer leaves in ``site`` for a distribution: its modules and a ``.dist-info`` folder.

    ``entry_points`` maps schemes to targets in the ``planlagt.backends`` group, and
    ``modules`` maps module names to their source.
    """
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source, encoding="utf-8")
    dist_info = site / f"{name.replace('-', '_')}-{WRITTEN_VERSION}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {WRITTEN_VERSION}\n", encoding="utf-8"
    )
    lines = [f"{scheme} = {target}" for scheme, target in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("[planlagt.backends]\n" + "\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def site_path(tmp_path: Path) -> Iterator[Path]:
    """Yield an empty folder for distributions written by :func:`write_distribution`, deleted afterwards.

    Adding it to ``PYTHONPATH`` installs its distributions for one child process only, and
    deleting it uninstalls them.
    """
    site = tmp_path / "site"
    site.mkdir()
    yield site

    shutil.rmtree(site)


@pytest.fixture
def broken_plugin_path(site_path: Path) -> Path:
    """Return a folder holding an installed distribution whose plugin module fails to import."""
    write_distribution(
        site_path,
        BROKEN_DISTRIBUTION,
        {BROKEN_SCHEME: "planlagt_broken_example:BrokenBackend"},
        {"planlagt_broken_example": f"import {MISSING_CLIENT}  # the client library the plugin needs\n"},
    )
    return site_path


def with_python_path(directory: Path) -> dict[str, str]:
    existing = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(directory), existing]))}


def test_plugin_import_failure_reported(example_plugin: Path, broken_plugin_path: Path):
    listed = listed_plugins(with_python_path(broken_plugin_path))

    assert BROKEN_SCHEME in listed
    broken = listed[BROKEN_SCHEME]
    assert broken["capabilities"] is None
    assert broken["distribution"] == BROKEN_DISTRIBUTION
    assert broken["version"] == WRITTEN_VERSION
    error = broken["error"]
    assert f"'{BROKEN_SCHEME}'" in error
    assert BROKEN_DISTRIBUTION in error
    assert f"No module named '{MISSING_CLIENT}'" in error
    assert listed[SCHEME]["error"] is None, "one broken plugin must not hide the others"


def test_plugin_import_failure_in_table(example_plugin: Path, broken_plugin_path: Path):
    result = planlagt("backends", environment=with_python_path(broken_plugin_path))

    assert result.returncode == 0, result.stderr
    assert f"{BROKEN_DISTRIBUTION} {WRITTEN_VERSION}" in result.stdout
    assert f"cannot load: backend plugin '{BROKEN_SCHEME}' from {BROKEN_DISTRIBUTION} failed to load" in result.stdout
    assert MISSING_CLIENT in result.stdout


def test_conformance_names_plugin_import_failure(broken_plugin_path: Path, tmp_path: Path):
    result = planlagt("conformance", f"{BROKEN_SCHEME}://{tmp_path}", environment=with_python_path(broken_plugin_path))

    assert result.returncode == USAGE_ERROR_STATUS
    assert BROKEN_DISTRIBUTION in result.stderr
    assert MISSING_CLIENT in result.stderr


def test_scheme_registered_twice_reported(example_plugin: Path, site_path: Path):
    write_distribution(site_path, "planlagt-second-fcntl", {SCHEME: "planlagt_memory:MemoryBackend"}, {})

    result = planlagt("backends", "--json", environment=with_python_path(site_path))

    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0
    assert DISTRIBUTION in result.stdout
    assert "planlagt-second-fcntl" in result.stdout


# -- A scheme that no plugin registers -------------------------------------------------


def test_unknown_scheme_names_installed_ones(example_plugin: Path):
    result = planlagt("conformance", "nosuch://127.0.0.1:1")

    assert result.returncode == USAGE_ERROR_STATUS
    assert "no backend plugin for URL scheme 'nosuch'" in result.stderr
    for scheme in ("memory", "redis", "sqlite", SCHEME):
        assert scheme in result.stderr
    assert result.stdout == ""


@pytest.mark.fast
def test_unregistered_etcd_names_extra(monkeypatch: pytest.MonkeyPatch):
    # As if planlagt were installed without the etcd plugin's entry points.
    registered = plugins._entry_points()
    without_etcd = {scheme: entry for scheme, entry in registered.items() if not scheme.startswith("etcd")}
    monkeypatch.setattr(plugins, "_entry_points", lambda: without_etcd)

    with pytest.raises(UnknownBackend) as raised:
        plugins.connect("etcd://127.0.0.1:2379")

    message = str(raised.value)
    assert raised.value.scheme == "etcd"
    assert raised.value.installed == tuple(sorted(without_etcd))
    assert "no backend plugin for URL scheme 'etcd'" in message
    assert 'install it with: pip install "planlagt[etcd]"' in message
    assert "sqlite" in message
