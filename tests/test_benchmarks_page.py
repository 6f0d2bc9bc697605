"""The benchmark results page and the benchmark command line, without running a benchmark.

Benchmarks never run in the test suite and no test here asserts a timing. These tests
check that ``docs/benchmarks.md`` is what ``bench.report`` renders from the committed
JSON and that verdicts against targets are computed as the page states them. They also
check that the quick mode's code paths import and its arguments parse.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import pytest

from bench import cli, report, targets

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
RESULTS = "bench/results/full.json"
PAGE = REPO / "docs" / "benchmarks.md"


def load_results() -> dict:
    return json.loads((REPO / RESULTS).read_text(encoding="utf-8"))


def test_page_matches_committed_results():
    expected = report.render_page(load_results(), source=RESULTS)

    assert PAGE.read_text(encoding="utf-8") == expected, (
        f"docs/benchmarks.md is out of date; run: python -m bench.report {RESULTS} > docs/benchmarks.md"
    )


def test_committed_results_are_full_mode():
    results = load_results()

    assert results["mode"] == "full"
    assert "--quick" not in results["command"]
    assert results["elapsed_s"] < 30 * 60


def test_page_states_every_lease_ratio_and_verdict():
    results = load_results()
    page = PAGE.read_text(encoding="utf-8")

    for row in results["lease_round_trip"]:
        line = next(line for line in page.splitlines() if line.startswith(f"| {row['backend']} | {row['pairs']} |"))
        assert f"{row['ratio_p50']:.2f}" in line
        assert targets.at_most(row["ratio_p50"], targets.LEASE_RATIO, "x") in line


def test_page_names_machine_and_command():
    results = load_results()
    page = PAGE.read_text(encoding="utf-8")

    assert results["environment"]["cpu_model"] in page
    assert f"{results['environment']['cores']} cores" in page
    assert results["command"] in page
    assert results["environment"]["python"] in page


def test_at_most_reports_miss_and_margin():
    assert targets.at_most(1.1, 1.15, "x") == "met"
    assert targets.at_most(1.15, 1.15, "x") == "met"
    assert targets.at_most(1.38, 1.15, "x") == "**missed** by 0.23x (20 % over)"
    assert targets.at_most(None, 1.15) == "no figure"


def test_below_rejects_equal_value():
    assert targets.below(1.9, 2.0, " %") == "met"
    assert targets.below(2.0, 2.0, " %").startswith("**missed**")
    assert targets.below(3.0, 2.0, " %") == "**missed** by 1 % (50 % over)"


def test_missed_lateness_target_shown_on_page():
    results = copy.deepcopy(load_results())
    spec_runs = [row for row in results["load"] if row["jobs"] == 1000 and row["instances"] == 3]
    assert spec_runs, "the full run has no 1,000 jobs/s run over 3 instances"
    spec_runs[0]["lateness_ms"]["p99"] = 45.0

    tables = report.render_tables(results)

    assert "**missed** by 25 ms (125 % over)" in tables


def test_replica_table_compares_three_and_six():
    results = copy.deepcopy(load_results())
    rows = [row for row in results["load"] if row["jobs"] == 300]
    by_instances = {row["instances"]: row for row in rows}
    by_instances[3]["round_trips_per_fire"] = 4.0
    by_instances[6]["round_trips_per_fire"] = 4.8

    tables = report.render_tables(results)

    assert "| redis | 300 | 4.0 | 4.8 | +20.0 % | **missed** by 15.0 points |" in tables


def test_blocked_peer_is_labelled():
    results = copy.deepcopy(load_results())
    results["peers"] = {"blocked": "the PostgreSQL harness is missing"}

    tables = report.render_tables(results)

    assert "**Not measured:** the PostgreSQL harness is missing" in tables


def test_quick_arguments_parse():
    args = cli.parse_args(["--quick", "--backends", "redis,sqlite", "--output", "out.json"])

    assert args.quick is True
    assert args.backends == ["redis", "sqlite"]
    assert args.only == list(cli.MEASUREMENTS)
    assert args.output == Path("out.json")


@pytest.mark.parametrize("argv", [["--backends", "mongodb"], ["--only", "speed"], ["--backends", ","]])
def test_invalid_arguments_exit(argv):
    with pytest.raises(SystemExit) as raised:
        cli.parse_args(argv)

    assert raised.value.code == 2


def test_quick_settings_are_scaled_down():
    assert cli.QUICK.lease_pairs >= 2000
    assert cli.QUICK.scale_jobs < cli.FULL.scale_jobs
    assert cli.QUICK.failover_trials < cli.FULL.failover_trials
    assert max(run[2] for run in cli.QUICK.load_runs) < max(run[2] for run in cli.FULL.load_runs)
    assert cli.FULL.failover_trials == 20
    assert cli.FULL.scale_jobs == 10_000
    assert (1000, 3, 60.0) in cli.FULL.load_runs


@pytest.mark.parametrize(
    "module",
    [
        "bench.instance",
        "bench.load",
        "bench.scale",
        "bench.failover",
        "bench.balance",
        "bench.lease_rtt",
        "bench.peers.compare",
        "bench.peers.lock_per_tick",
        "bench.peers.apscheduler_instance",
    ],
)
def test_quick_code_paths_import(module):
    assert importlib.import_module(module).__doc__
