"""Render benchmark results (the JSON written by ``python -m bench``) as Markdown.

``python -m bench.report RESULTS.json > docs/benchmarks.md`` writes the results page;
the benchmark command prints the same tables when a run ends. The page is a function of
the JSON alone, so a test can regenerate it and compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import targets
from .targets import at_most, below

__all__ = ["render_page", "render_tables"]

PAGE_TITLE = "# Benchmarks"


def render_page(results: dict[str, Any], *, source: str) -> str:
    """Return the whole results page for ``results``, naming ``source`` as the JSON it came from."""
    parts = [PAGE_TITLE, _intro(results, source), _environment(results), render_tables(results), _notes(results)]
    return "\n\n".join(part for part in parts if part).rstrip() + "\n"


def render_tables(results: dict[str, Any]) -> str:
    """Return the tables of every measurement in ``results``."""
    sections = [
        _lease_table(results.get("lease_round_trip", [])),
        _load_tables(results.get("load", []), results["mode"]),
        _scale_table(results.get("scale", []), results["mode"]),
        _failover_table(results.get("failover", [])),
        _balance_table(results.get("balance", []), results["mode"]),
        _peers_table(results.get("peers", {})),
        _errors(results.get("errors", [])),
    ]
    return "\n\n".join(section for section in sections if section)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Return ``text`` safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _intro(results: dict[str, Any], source: str) -> str:
    mode = "full" if results["mode"] == "full" else "quick (scaled-down settings, not the issue's figures)"
    skipped = results.get("skipped_backends", {})
    lines = [
        f"Generated from `{source}` by `python -m bench.report {source}`; do not edit by hand.",
        "",
        f"- Command: `{results['command']}` ({mode} mode)",
        f"- Run: {results['started_at']}, {results['elapsed_s'] / 60:.1f} minutes",
        f"- Backends measured: {', '.join(results['backends'])}",
    ]
    for backend, reason in sorted(skipped.items()):
        lines.append(f"- Not measured: {backend}: {reason}")
    loads = [entry["value"] for entry in results.get("load_average_1m", [])]
    if loads:
        lines.append(
            f"- 1-minute load average when each measurement started: {min(loads)} to {max(loads)} "
            f"on {results['environment']['cores']} cores (other processes on the machine count too)"
        )
    lines += [
        "",
        "Every server is a real process on 127.0.0.1 started by the test harness "
        "(`planlagt_conformance`) for this run; SQLite is a file in a temporary directory. "
        "Instances are separate Python processes on the same machine as the servers. "
        "Benchmarks never run in the test suite and no test asserts a timing.",
    ]
    return "\n".join(lines)


def _environment(results: dict[str, Any]) -> str:
    env = results["environment"]
    rows = [
        ["CPU", f"{env['cpu_model']}, {env['cores']} cores"],
        ["Memory", f"{env['memory_gib']} GiB"],
        ["OS", env["os"]],
        ["Python", f"{env['python_implementation']} {env['python']}"],
    ]
    source = env.get("source")
    if source:
        modified = f"{source['modified_tracked_files']} tracked files modified"
        rows.append(["planlagt source at the start", f"commit {source['commit']}, {modified}"])
    end = results.get("source_at_end")
    if end:
        modified = f"{end['modified_tracked_files']} tracked files modified"
        rows.append(["planlagt source at the end", f"commit {end['commit']}, {modified}"])
    rows += [[f"server: {name}", version or "not installed"] for name, version in env["servers"].items()]
    rows += [[f"client: {name}", version or "not installed"] for name, version in env["clients"].items()]
    return "## Machine and versions\n\n" + _table(["", "version"], rows)


def _lease_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    body = [
        [
            r["backend"],
            r["pairs"],
            r["planlagt_ms"]["p50"],
            r["planlagt_ms"]["p99"],
            r["raw_ms"]["p50"],
            r["raw_ms"]["p99"],
            f"{r['ratio_p50']:.2f}",
            f"{r['ratio_p99']:.2f}",
            at_most(r["ratio_p50"], targets.LEASE_RATIO, "x"),
        ]
        for r in rows
    ]
    floors = "\n".join(f"- {r['backend']}: {r['floor']}" for r in rows)
    return (
        "## 1. Lease round trip (acquire + release) against the raw client\n\n"
        f"Target: planlagt's median at most {targets.LEASE_RATIO}x the raw floor. "
        "Pairs alternate one by one in one process against one server. Times in ms.\n\n"
        + _table(
            [
                "backend",
                "pairs",
                "planlagt p50",
                "planlagt p99",
                "raw p50",
                "raw p99",
                "ratio p50",
                "ratio p99",
                f"target <= {targets.LEASE_RATIO}x",
            ],
            body,
        )
        + "\n\nRaw floors:\n\n"
        + floors
    )


def _load_tables(rows: list[dict[str, Any]], mode: str) -> str:
    if not rows:
        return ""
    body = []
    for r in rows:
        lateness = r["lateness_ms"]
        spec = r["backend"] == "redis" and r["jobs"] == 1000 and r["instances"] == 3
        verdict = (
            at_most(lateness["p99"], targets.LATENESS_P99_MS, " ms") if spec else "(target applies to 1,000/s on Redis)"
        )
        commands = r.get("server_commands", {}).get("total_per_fire")
        body.append(
            [
                r["backend"],
                r["jobs"],
                r["instances"],
                r["duration_s"],
                r["fire_times"],
                r["completed"],
                r["duplicates"],
                r["missed"],
                lateness["p50"],
                lateness["p99"],
                lateness["max"],
                verdict,
                r["round_trips_per_fire"],
                r["backend_calls_per_fire"],
                commands if commands is not None else "n/a",
                ", ".join(f"{v}" for v in r["cpu_s_per_instance"].values()),
            ]
        )
    scaled = " Scaled down in quick mode." if mode != "full" else ""
    table = _table(
        [
            "backend",
            "jobs/s",
            "instances",
            "window s",
            "fire times",
            "completed",
            "duplicates",
            "missed",
            "lateness p50 ms",
            "p99 ms",
            "max ms",
            f"target p99 <= {targets.LATENESS_P99_MS:g} ms",
            "round trips / fire",
            "backend calls / fire",
            "server commands / fire",
            "CPU s per instance",
        ],
        body,
    )
    return (
        "## 2. Scheduler under load\n\n"
        "No-op jobs firing every second, spread over the instances by planlagt's assignment; "
        "lease TTL 5 s, heartbeat 1 s, 8 worker threads per instance. Lateness is a run's start "
        "behind its fire time. A fire time is missed when no run of it completed before the "
        "instances stopped (2 s after the window). Round trips are counted in each instance "
        "(redis-py requests, SQLite transactions); server commands by Redis `INFO commandstats`, "
        "which counts the commands inside each Lua script as well as the script call; CPU is per "
        f"instance over the window.{scaled}\n\n" + table + "\n\n" + _replica_table(rows)
    )


def _replica_table(rows: list[dict[str, Any]]) -> str:
    by_key = {(r["backend"], r["jobs"], r["instances"]): r for r in rows}
    body = []
    for (backend, jobs, instances), r in sorted(by_key.items()):
        other = by_key.get((backend, jobs, 6))
        if instances != 3 or other is None:
            continue
        three, six = r["round_trips_per_fire"], other["round_trips_per_fire"]
        change = (six - three) / three if three else None
        limit = targets.ROUND_TRIP_TOLERANCE
        verdict = (
            "no figure"
            if change is None
            else ("met" if abs(change) <= limit else f"**missed** by {100 * (abs(change) - limit):.1f} points")
        )
        body.append([backend, jobs, three, six, None if change is None else f"{100 * change:+.1f} %", verdict])
    if not body:
        return ""
    return (
        "Round trips per fire time with 3 and with 6 instances (same jobs; target: the same, "
        f"within {100 * targets.ROUND_TRIP_TOLERANCE:.0f} %):\n\n"
        + _table(["backend", "jobs/s", "3 instances", "6 instances", "change", "target"], body)
    )


def _scale_table(rows: list[dict[str, Any]], mode: str) -> str:
    if not rows:
        return ""
    body = [
        [
            r["backend"],
            r["jobs"],
            r["build_s"],
            r["start_to_healthy_s"],
            r["catch_up_done_s"],
            r["idle_s"],
            r["idle_cpu_percent"],
            below(r["idle_cpu_percent"], targets.IDLE_CPU_PERCENT, " %"),
            r["rss_mib"],
            r.get("peak_rss_mib"),
            below(r["rss_mib"], targets.RSS_MIB, " MiB"),
        ]
        for r in rows
    ]
    scaled = " Scaled down in quick mode." if mode != "full" else ""
    return (
        "## 3. Scale: many jobs in one instance\n\n"
        "Daily jobs, none firing during the measurement; default lease TTL (30 s) and heartbeat (10 s). "
        "Build is creating the scheduler and registering the jobs. Healthy is `start()` until the "
        "first heartbeat. At start-up the instance takes every job over and queues each job's latest "
        "fire time for a check; take-over done is when those checks are all handled, counted from the "
        f"process's start of work. Idle CPU is in percent of one core.{scaled}\n\n"
        + _table(
            [
                "backend",
                "jobs",
                "build s",
                "start to healthy s",
                "take-over done s",
                "idle window s",
                "idle CPU %",
                f"target < {targets.IDLE_CPU_PERCENT:g} %",
                "RSS MiB",
                "peak RSS MiB",
                f"target < {targets.RSS_MIB:g} MiB",
            ],
            body,
        )
    )


def _failover_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    body = []
    for r in rows:
        figures = r["failover_s"]
        limit = r["lease_ttl_s"] + targets.FAILOVER_MARGIN_S
        verdict = "stated, no target (session-bound)" if r["session_bound"] else at_most(figures["max"], limit, " s")
        body.append(
            [
                r["backend"],
                r["trials"],
                r["retried"],
                r["lease_ttl_s"],
                figures.get("min"),
                figures["p50"],
                figures["p99"],
                figures["max"],
                verdict,
            ]
        )
    return (
        "## 4. Fail-over after SIGKILL\n\n"
        "Three instances; each trial SIGKILLs the instance 0.3 s into a run of a job with "
        "`max_attempts=3` and times until another instance starts the retry of the same fire "
        "time. Heartbeat 0.5 s. Target: every trial within the lease TTL + 1 s.\n\n"
        + _table(
            [
                "backend",
                "trials",
                "retried",
                "lease TTL s",
                "min s",
                "p50 s",
                "p99 s",
                "max s",
                "target: max <= TTL + 1 s",
            ],
            body,
        )
    )


def _balance_table(rows: list[dict[str, Any]], mode: str) -> str:
    if not rows:
        return ""
    body = [
        [
            r["backend"],
            r["jobs"],
            r["instances"],
            r["duration_s"],
            ", ".join(f"{name}: {count}" for name, count in r["runs_per_instance"].items()),
            r["max_over_min"],
            at_most(r["max_over_min"], targets.BALANCE_MAX_OVER_MIN),
            r["duplicates"],
            r["missed"],
        ]
        for r in rows
    ]
    scaled = " Window shortened in quick mode." if mode != "full" else ""
    return (
        "## 5. Balance\n\nEqual jobs firing every second, each working 10 ms; completed runs per "
        f"instance over the window.{scaled}\n\n"
        + _table(
            [
                "backend",
                "jobs",
                "instances",
                "window s",
                "runs per instance",
                "max/min",
                f"target <= {targets.BALANCE_MAX_OVER_MIN}",
                "duplicates",
                "missed",
            ],
            body,
        )
    )


def _peers_table(peers: dict[str, Any]) -> str:
    if not peers:
        return ""
    if "blocked" in peers:
        return f"## 6. Peers side by side\n\n**Not measured:** {peers['blocked']}"
    work = peers["workload"]
    body = []
    for system in ("planlagt", "lock-per-tick", "apscheduler"):
        r = peers["systems"].get(system)
        if r is None:
            reason = peers.get("not_measured", {}).get(system, "not run")
            body.append([system, "not measured: " + reason] + [""] * 6)
            continue
        killed = r["killed_fire_time"]
        retried = "no kill"
        if killed is not None:
            retried = "yes" if killed["completed_elsewhere"] else "no"
        balance = r["balance_before_kill"]
        body.append(
            [
                system,
                r["fire_times"],
                r["duplicates"],
                f"{r['missed']} ({r['missed_long']} long, {r['missed_short']} short)",
                retried,
                ", ".join(f"{n}: {c}" for n, c in balance["runs_per_instance"].items()),
                balance["max_over_min"],
                f"{r['lateness_ms']['p50']} / {r['lateness_ms']['p99']}",
            ]
        )
    backends = "planlagt and lock-per-tick on the run's Redis server, APScheduler on its PostgreSQL server"
    offsets = ", ".join(f"{1000 * offset:+.0f}" for offset in work["clock_offsets_s"])
    return (
        "## 6. Peers side by side\n\n"
        f"Same workload for each system, run at the same time ({backends}). Each system has three instances "
        f"with clocks offset by {offsets} ms; {work['short_jobs']} jobs every second working "
        f"{1000 * work['short_work_s']:.0f} ms and one `long` job every "
        f"{work['long_period_s']} s working {work['long_work_s']:g} s; lease, lock or job-lease TTL "
        f"{work['lease_ttl_s']:g} s; {work['duration_s']:g} s window. In the middle of the window the instance "
        f"running `long` is SIGKILLed {work['kill_after_s']} s into the run. Duplicates are fire times completed "
        "more than once; missed are fire times never completed; balance counts completed runs per instance "
        "for the fire times before the kill.\n\n"
        + _table(
            [
                "system",
                "fire times",
                "duplicates",
                "missed",
                "killed run completed elsewhere",
                "runs per instance before the kill",
                "max/min",
                "lateness p50 / p99 ms",
            ],
            body,
        )
        + "\n\n- planlagt: the scheduler in this repository, `max_attempts=3` for `long`, "
        "lease TTL 2 s, heartbeat 0.5 s."
        "\n- lock-per-tick: the pattern of the Go library synchronized-cron-task rebuilt on redis-py's `Lock` "
        "(`bench/peers/lock_per_tick.py`). On every tick each instance tries a non-blocking lock named after "
        "the job, extends it every 0.5 s while the job runs and releases it when the job ends."
        "\n- APScheduler: APScheduler 4 `AsyncScheduler` processes sharing a `SQLAlchemyDataStore` (asyncpg) "
        "with an `AsyncpgEventBroker`, one schedule per job, `lease_duration` 2 s, other settings default "
        "(`bench/peers/apscheduler_instance.py`); the offset is injected into the `datetime.now()` its "
        "scheduler and data store read."
    )


def _notes(results: dict[str, Any]) -> str:
    """Return the cost model behind the load figures and what batching claims would change."""
    spec = [r for r in results.get("load", []) if r["backend"] == "redis" and r["jobs"] == 1000]
    lines = [
        "## Cost model and what would close the gaps",
        "",
        "- Per fire time the owning instance makes four backend round trips: `acquire` (the job's lease, "
        "with a new fencing token), `begin_attempt` (fenced), `finish_fire` (fenced, with the run record) "
        "and `release`, plus lease renewals for runs longer than a heartbeat. Claims are not batched per "
        "instance and fire instant, so to keep up with 1,000 jobs per second the three instances would "
        "need about 4,000 requests per second.",
        "- Heartbeats (`heartbeat` + `read_control`, one each per instance per heartbeat) are the part "
        "that grows with the number of instances; their share of the round trips per fire time falls as "
        "the job rate rises.",
        "- Batching would need a backend operation that claims every job an instance owns at one fire "
        "instant in one request, acquiring and beginning the attempt for N keys and returning the tokens "
        "and states. A second operation would close and release a batch of finished runs. Both belong in "
        "the contract on `planlagt_core.backend.Backend`, as a Lua script on Redis and one statement or "
        "transaction elsewhere, and the timer would hand the scheduler all due jobs of an instant at once. "
        "Round trips "
        "per fire time would then fall from about 4 to about 2 divided by the number of jobs due at that "
        "instant on the instance.",
    ]
    for r in spec:
        lateness = r["lateness_ms"]
        cpu_values = [value for value in r["cpu_s_per_instance"].values() if value is not None]
        cpu_per_run_ms = 1000 * sum(cpu_values) / r["completed"] if r["completed"] else None
        lines.append(
            f"- Measured at {r['jobs']:,} jobs per second over {r['instances']} instances on Redis: "
            f"{r['completed']:,} of {r['fire_times']:,} fire times completed and {r['missed']:,} missed. "
            f"The p99 lateness was {lateness['p99']} ms against the target of {targets.LATENESS_P99_MS:g} ms. "
            f"CPU seconds per instance over the {r['duration_s']:g} s window: "
            f"{', '.join(str(v) for v in r['cpu_s_per_instance'].values())} "
            f"({'n/a' if cpu_per_run_ms is None else f'{cpu_per_run_ms:.1f}'} ms of instance CPU per completed run) "
            f"on {results['environment']['cores']} cores shared with the Redis server and the benchmark itself."
        )
    return "\n".join(lines)


def _errors(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return ""
    body = [[e["measurement"], e.get("backend", ""), _cell(e["error"])] for e in errors]
    return "## Measurements that failed in this run\n\n" + _table(["measurement", "backend", "error"], body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description="render benchmark results as Markdown")
    parser.add_argument("results", type=Path, help="JSON file written by python -m bench --output")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    sys.stdout.write(render_page(results, source=args.results.as_posix()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
