"""Tests of the ``planlagt`` command line: next, help, backends, run and demo.

``planlagt run`` and ``planlagt demo`` run as real processes. The demo tests tally the
journal the demo keeps with code of their own, so a fault in the demo's own tally shows up
as a disagreement with its JSON output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from planlagt_conformance.servers import get_redis_url
from planlagt_memory import MemoryBackend

from planlagt_core.cli import build_parser, main
from planlagt_core.context import RunContext
from planlagt_core.demo_service import DEMO_JOBS
from planlagt_core.scheduler import Scheduler
from planlagt_core.testing import SchedulerTester

# The installed ``planlagt`` script may not be on PATH (a virtualenv run without activating it).
PLANLAGT = [sys.executable, "-c", "import sys; from planlagt_core.cli import main; sys.exit(main())"]

POLL_DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.05
STOP_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 60.0
DEMO_DURATION_S = 20
DEMO_TIMEOUT_S = 180.0
DEMO_INSTANCES = 3
DEMO_BALANCE_FACTOR = 1.5
DEMO_KEYS = (
    "fire_times",
    "completed",
    "duplicates",
    "missed",
    "skipped",
    "retried_after_kill",
    "per_instance",
    "killed_instance",
)
DEMO_WINDOW_KEYS = ("window_start", "window_end")


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = POLL_DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns a true value; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def planlagt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``planlagt ARGS`` to completion and return its result."""
    return subprocess.run(
        [*PLANLAGT, *args], cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )


def environment_without_backend() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "PLANLAGT_BACKEND"}


# -- planlagt next -----------------------------------------------------------------------


@pytest.mark.fast
def test_next_prints_example() -> None:
    result = planlagt("next", "30 2 * * *", "--tz", "Europe/Berlin", "--after", "2026-03-28T00:00", "-n", "3")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


@pytest.mark.fast
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["61 * * * *"], "61"),
        (["* * *"], "'* * *'"),
        (["0 3 * * *", "--tz", "Mars/Olympus_Mons"], "'Mars/Olympus_Mons'"),
        (["0 3 * * *", "--after", "yesterday"], "'yesterday'"),
        (["0 3 * * *", "-n", "0"], "0"),
    ],
    ids=["range", "fields", "zone", "after", "count"],
)
def test_next_invalid_input(args: list[str], named: str) -> None:
    result = planlagt("next", *args)

    assert result.returncode != 0
    assert named in result.stderr
    assert "error" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# Schedules whose fire times cross a change of UTC offset, with the instant to start after.
DST_CASES = [
    ("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00+01:00", 4),
    ("30 2 * * *", "Europe/Berlin", "2026-10-23T12:00:00+02:00", 4),
    ("15 * * * *", "Europe/Berlin", "2026-10-24T23:00:00+02:00", 6),
    ("*/30 1-3 * * *", "America/New_York", "2026-03-07T12:00:00-05:00", 12),
    ("0 1 * * *", "America/New_York", "2026-10-30T12:00:00-04:00", 4),
    ("@every 90m", "Australia/Lord_Howe", "2026-04-04T12:00:00+11:00", 6),
]


@pytest.mark.fast
@pytest.mark.parametrize(
    ("expression", "zone", "after", "count"),
    DST_CASES,
    ids=[f"{case[0]}@{case[1]}@{case[2][:10]}" for case in DST_CASES],
)
def test_next_matches_scheduler(
    expression: str, zone: str, after: str, count: int, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["next", expression, "--tz", zone, "--after", after, "-n", str(count)])
    printed = capsys.readouterr().out.splitlines()
    seen: list[str] = []

    def record(context: RunContext) -> None:
        seen.append(context.fire_time.isoformat())

    scheduler = Scheduler(MemoryBackend())
    scheduler.add_job(record, expression, name="probe", tz=zone)
    tester = SchedulerTester(scheduler, start=datetime.fromisoformat(after))
    tester.run_until(datetime.fromisoformat(printed[-1]))

    assert status == 0
    assert len(printed) == count
    assert seen == printed


# -- Help --------------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Return every subcommand parser of ``planlagt`` by name."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("planlagt has no subcommands")


SUBCOMMANDS = sorted(subcommands())
DURATION_HINTS = ("_s", "duration", "timeout", "interval", "grace", "ttl", "heartbeat")


def help_screen(*args: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.fast
def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    screen = help_screen(capsys=capsys)

    for name in SUBCOMMANDS:
        assert name in screen
    assert "usage: planlagt" in screen


@pytest.mark.fast
@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_exits_zero(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    screen = help_screen(name, capsys=capsys)

    assert f"usage: planlagt {name}" in screen


def duration_options() -> list[tuple[str, argparse.Action]]:
    """Return (parser name, option) for every option that takes a duration."""
    parsers = {"planlagt": build_parser(), **{f"planlagt {name}": parser for name, parser in subcommands().items()}}
    found = []
    for parser_name, parser in parsers.items():
        for action in parser._actions:
            takes_value = action.nargs != 0 and action.option_strings
            named_like_duration = any(hint in action.dest.lower() for hint in DURATION_HINTS)
            if takes_value and (action.type is float or named_like_duration):
                found.append((parser_name, action))
    return found


@pytest.mark.fast
def test_help_names_duration_units() -> None:
    options = duration_options()

    assert options, "expected at least one option that takes a duration (planlagt demo --duration)"
    for parser_name, action in options:
        assert "second" in (action.help or ""), f"{parser_name} {action.option_strings[0]}: {action.help!r}"


@pytest.mark.fast
def test_next_help_names_zone(capsys: pytest.CaptureFixture[str]) -> None:
    screen = help_screen("next", capsys=capsys)

    assert "IANA time zone" in screen
    assert "ISO8601" in screen
    assert "default: UTC" in screen


@pytest.mark.fast
def test_demo_help_names_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    screen = help_screen("demo", capsys=capsys)

    assert "in seconds" in screen


# -- planlagt backends -------------------------------------------------------------------


@pytest.mark.fast
def test_backends_json_lists_builtins() -> None:
    result = planlagt("backends", "--json")
    plugins = {plugin["scheme"]: plugin for plugin in json.loads(result.stdout)}

    assert result.returncode == 0, result.stderr
    for scheme in ("redis", "sqlite", "memory"):
        assert scheme in plugins
        assert plugins[scheme]["error"] is None
        capabilities = plugins[scheme]["capabilities"]
        assert capabilities["min_ttl_s"] > 0
        assert isinstance(capabilities["durable_fencing_tokens"], bool)
        assert isinstance(capabilities["features"], list)


@pytest.mark.fast
def test_backends_json_memory_capabilities() -> None:
    result = planlagt("backends", "--json")
    plugins = {plugin["scheme"]: plugin for plugin in json.loads(result.stdout)}

    memory = plugins["memory"]["capabilities"]
    assert memory["multi_process"] is False
    assert memory["durable_fencing_tokens"] is False
    assert "control" in memory["features"]


# -- planlagt run ------------------------------------------------------------------------

TICK_SERVICE = textwrap.dedent(
    """
    from pathlib import Path

    from planlagt_core.scheduler import Scheduler

    HERE = Path(__file__).resolve().parent
    scheduler = Scheduler(f"sqlite:///{HERE / 'cli.db'}", instance_id="cli-run", lease_ttl_s=2.0, heartbeat_s=0.5)


    @scheduler.job("* * * * * *", name="tick")
    def tick() -> None:
        with open(HERE / "ticks.txt", "a", encoding="utf-8") as ticks:
            ticks.write("tick\\n")
    """
)

DEFAULT_BACKEND_SERVICE = textwrap.dedent(
    """
    from planlagt_core.scheduler import Scheduler

    scheduler = Scheduler(instance_id="cli-default", lease_ttl_s=2.0, heartbeat_s=0.5)


    @scheduler.job("@daily", name="nightly")
    def nightly() -> None:
        pass
    """
)


def tick_count(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_text(encoding="utf-8").count("tick\n")


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``planlagt`` processes in ``tmp_path``; kill any still running at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        stdout = open(tmp_path / "stdout.txt", "wb")  # noqa: SIM115 - closed when the process ends
        stderr = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 - closed when the process ends
        process = subprocess.Popen(
            [*PLANLAGT, *args], cwd=tmp_path, env=environment_without_backend(), stdout=stdout, stderr=stderr
        )
        stdout.close()
        stderr.close()
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.fast
def test_run_stops_on_sigterm(tmp_path: Path, started: Callable[..., subprocess.Popen[bytes]]) -> None:
    (tmp_path / "tick_service.py").write_text(TICK_SERVICE, encoding="utf-8")
    ticks = tmp_path / "ticks.txt"

    process = started("run", "tick_service:scheduler")
    wait_for(lambda: tick_count(ticks) >= 2 or process.poll() is not None, "two ticks from planlagt run")
    running_before_signal = process.poll() is None
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=STOP_TIMEOUT_S)

    stderr = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert running_before_signal, stderr
    assert tick_count(ticks) >= 2
    assert status == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.fast
def test_run_default_backend_message(tmp_path: Path, started: Callable[..., subprocess.Popen[bytes]]) -> None:
    (tmp_path / "default_service.py").write_text(DEFAULT_BACKEND_SERVICE, encoding="utf-8")
    stderr_path = tmp_path / "stderr.txt"

    process = started("run", "default_service:scheduler")
    wait_for(
        lambda: (
            "Scheduler cli-default started" in stderr_path.read_text(errors="replace") or process.poll() is not None
        ),
        "planlagt run to start the scheduler",
    )
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=STOP_TIMEOUT_S)

    stderr = stderr_path.read_text(errors="replace")
    assert "sqlite:///planlagt.db" in stderr
    assert str(tmp_path) in stderr
    assert (tmp_path / "planlagt.db").exists()
    assert status == 0, stderr


@pytest.mark.fast
def test_run_invalid_target(tmp_path: Path) -> None:
    result = planlagt("run", "no_such_module_here:scheduler", "--backend", "memory://", cwd=tmp_path)

    assert result.returncode == 2
    assert "'no_such_module_here'" in result.stderr
    assert "Traceback" not in result.stderr


# -- planlagt demo -----------------------------------------------------------------------


def seconds_step(expression: str) -> int:
    """Return N for a demo schedule that fires every N seconds ("* ..." or "*/N ..." with 6 fields)."""
    fields = expression.split()
    assert len(fields) == 6, f"demo schedule {expression!r} is not a 6-field cron expression; update this test"
    assert fields[1:] == ["*"] * 5, f"demo schedule {expression!r} fires less often than each minute"
    if fields[0] == "*":
        return 1
    assert fields[0].startswith("*/"), f"demo schedule {expression!r} has an unexpected seconds field"
    step = int(fields[0][2:])
    assert 60 % step == 0, f"demo schedule {expression!r}: 60 is not a multiple of {step}"
    return step


def expected_fires(start: int, end: int) -> list[tuple[str, str]]:
    """Return the (job, UTC ISO fire time) pairs of the demo jobs with ``start`` <= t <= ``end``."""
    expected = []
    for name, (expression, _work_s, _attempts) in DEMO_JOBS.items():
        step = seconds_step(expression)
        for second in range(start, end + 1):
            if second % step == 0:
                expected.append((name, datetime.fromtimestamp(second, tz=timezone.utc).isoformat()))
    return expected


def tally(lines: list[dict[str, Any]], start: int, end: int) -> dict[str, Any]:
    """Count the journal lines of the fire times due in ``[start, end]`` as the demo's JSON does."""
    by_fire: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        by_fire[(line["job"], line["fire_time"])].append(line)
    counts: dict[str, Any] = {key: 0 for key in DEMO_KEYS if key not in ("per_instance", "killed_instance")}
    per_instance: Counter[str] = Counter()
    expected = expected_fires(start, end)
    counts["fire_times"] = len(expected)
    for key in expected:
        outcomes = by_fire.get(key, [])
        succeeded = [line["instance"] for line in outcomes if line["outcome"] == "succeeded"]
        killed = [line["instance"] for line in outcomes if line["outcome"] == "killed"]
        if succeeded:
            counts["completed"] += 1
            if len(succeeded) > 1:
                counts["duplicates"] += 1
            per_instance.update(succeeded)
            if killed and set(succeeded) - {killed[0]}:
                counts["retried_after_kill"] += 1
        elif any(line["outcome"] == "skipped" for line in outcomes):
            counts["skipped"] += 1
        else:
            counts["missed"] += 1
    counts["per_instance"] = dict(per_instance)
    return counts


def run_demo(tmp_path: Path, *backend_args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    journal = tmp_path / "journal.jsonl"
    command = [*PLANLAGT, "demo", "--json", "--duration", str(DEMO_DURATION_S), "--journal", str(journal)]
    result = subprocess.run(
        [*command, *backend_args],
        cwd=tmp_path,
        env=environment_without_backend(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    return result, journal


def check_demo(result: subprocess.CompletedProcess[str], journal: Path) -> None:
    """Check the demo's exit status, its JSON and the agreement of the JSON with the journal."""
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    lines = [json.loads(text) for text in journal.read_text(encoding="utf-8").splitlines() if text.strip()]
    ttl_s = float(re.search(r"lease TTL ([0-9.]+) s", result.stderr).group(1))  # type: ignore[union-attr]

    assert sorted(report) == sorted(DEMO_KEYS + DEMO_WINDOW_KEYS)
    assert report["duplicates"] == 0
    assert report["missed"] == 0
    assert report["retried_after_kill"] >= 1
    assert report["fire_times"] > 0
    assert report["completed"] + report["skipped"] == report["fire_times"]

    instances = {f"demo-{index + 1}" for index in range(DEMO_INSTANCES)}
    assert set(report["per_instance"]) == instances
    for instance in instances:
        assert report["per_instance"][instance] >= 1, instance
    assert report["killed_instance"] in instances
    survivors = [count for instance, count in report["per_instance"].items() if instance != report["killed_instance"]]
    assert max(survivors) <= DEMO_BALANCE_FACTOR * min(survivors), report["per_instance"]

    killed_lines = [line for line in lines if line["outcome"] == "killed"]
    assert [line["instance"] for line in killed_lines] == [report["killed_instance"]]
    succeeded = Counter((line["job"], line["fire_time"]) for line in lines if line["outcome"] == "succeeded")
    assert [key for key, count in succeeded.items() if count > 1] == []

    start = datetime.fromisoformat(report["window_start"]).timestamp()
    end = datetime.fromisoformat(report["window_end"]).timestamp()
    assert end - start == pytest.approx(DEMO_DURATION_S - ttl_s)
    expected_report = {key: value for key, value in report.items() if key in DEMO_KEYS and key != "killed_instance"}
    assert tally(lines, int(start), int(end)) == expected_report


@pytest.mark.multiprocess
def test_demo_default_backend(tmp_path: Path) -> None:
    result, journal = run_demo(tmp_path)

    check_demo(result, journal)


@pytest.mark.multiprocess
@pytest.mark.redis
def test_demo_redis_backend(tmp_path: Path) -> None:
    url = get_redis_url()
    prefixed = url + ("&" if "?" in url else "?") + f"prefix=demo-{secrets.token_hex(4)}"

    result, journal = run_demo(tmp_path, "--backend", prefixed)

    check_demo(result, journal)
