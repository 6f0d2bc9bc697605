"""``python -m bench``: start the servers, run every measurement, print the tables, write the JSON.

Quick mode (``--quick``) uses scaled-down settings, labelled as such in the output, and
finishes in about three minutes on two cores with Redis and SQLite. The full mode runs
the full-size settings (1,000 jobs per second, 10,000 jobs, 20 fail-over
trials, 60 s windows) in under 30 minutes on two cores: measurements 2, 4 and 6 on Redis
only (and PostgreSQL for the APScheduler peer), the others on every selected backend.
A measurement that fails is recorded in the results with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .balance import measure_balance
from .environment import command_line, describe_environment, source_revision
from .failover import measure_failover
from .lease_rtt import measure_lease_round_trip
from .load import measure_load
from .peers.compare import SYSTEMS, measure_peers
from .report import render_tables
from .scale import measure_scale
from .scenario import progress
from .servers import ALL_BACKENDS, backend_status, postgres_harness_status, server_set

__all__ = ["FULL", "QUICK", "Settings", "main", "parse_args"]

MEASUREMENTS = ("lease", "load", "scale", "failover", "balance", "peers")


@dataclass(frozen=True)
class Settings:
    """Sizes of every measurement. ``load_runs`` lists (jobs per second, instances, window seconds)."""

    lease_pairs: int
    load_runs: tuple[tuple[int, int, float], ...]
    load_backends_all: bool
    scale_jobs: int
    scale_idle_s: float
    failover_trials: int
    failover_backends_all: bool
    balance_jobs: int
    balance_instances: int
    balance_s: float
    peers_s: float


QUICK = Settings(
    lease_pairs=2000,
    load_runs=((200, 3, 8.0), (200, 6, 8.0)),
    load_backends_all=True,
    scale_jobs=2000,
    scale_idle_s=5.0,
    failover_trials=2,
    failover_backends_all=True,
    balance_jobs=30,
    balance_instances=3,
    balance_s=8.0,
    peers_s=20.0,
)

FULL = Settings(
    lease_pairs=5000,
    load_runs=((1000, 3, 60.0), (300, 3, 60.0), (300, 6, 60.0)),
    load_backends_all=False,
    scale_jobs=10_000,
    scale_idle_s=60.0,
    failover_trials=20,
    failover_backends_all=False,
    balance_jobs=30,
    balance_instances=3,
    balance_s=60.0,
    peers_s=60.0,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark planlagt against the raw clients and peer schedulers on servers started here.",
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down settings (about 3 minutes on 2 cores)")
    parser.add_argument(
        "--backends",
        default="redis,sqlite",
        help=f"comma-separated backends to measure, from {','.join(ALL_BACKENDS)} (default: redis,sqlite)",
    )
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated measurements to run, from {','.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument("--output", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    args.backends = _split(parser, args.backends, ALL_BACKENDS, "--backends")
    args.only = _split(parser, args.only, MEASUREMENTS, "--only")
    return args


def _split(parser: argparse.ArgumentParser, text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = [value for value in values if value not in allowed]
    if unknown or not values:
        parser.error(f"{option}: invalid value(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}")
    return values


class Run:
    """One benchmark run: results so far, and a guard that records a failing measurement."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        self.results: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "command": command_line(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": asdict(settings),
            "environment": describe_environment(),
            "errors": [],
        }

    def guarded(self, measurement: str, backend: str | None, work: Callable[[], Any]) -> Any:
        # The machine may be shared: keep the load average each measurement started under.
        self.results.setdefault("load_average_1m", []).append(
            {"measurement": measurement, "backend": backend or "", "value": round(os.getloadavg()[0], 2)}
        )
        try:
            return work()
        except Exception as exc:
            logging.getLogger(__name__).debug("Measurement failed", exc_info=True)
            progress(f"  {measurement} on {backend or 'all'} failed: {exc}\n{traceback.format_exc(limit=3)}")
            self.results["errors"].append(
                {"measurement": measurement, "backend": backend or "", "error": summarize_error(exc)}
            )
            return None


def summarize_error(exc: BaseException) -> str:
    """Return one line for a failed measurement: the exception type, its first line and its last line.

    A process that exited at start-up reports its log tail, whose last line is the error that ended it.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{type(exc).__name__}: {lines[0]}"
    if len(lines) > 1:
        text += f" ... {lines[-1]}"
    return text[:600]


def select_backends(requested: list[str]) -> tuple[list[str], dict[str, str]]:
    """Return the requested backends that can run here, and the reason for each that cannot."""
    ready, skipped = [], {}
    for backend in requested:
        reason = backend_status(backend)
        if reason is None:
            ready.append(backend)
        else:
            skipped[backend] = reason
    return ready, skipped


def run_all(run: Run, backends: list[str], servers: Any) -> None:
    settings, only = run.settings, run.args.only
    workdir = servers.workdir
    results = run.results
    if "lease" in only:
        progress("1. lease round trip")
        rows = [
            run.guarded("lease", b, lambda b=b: measure_lease_round_trip(b, servers, settings.lease_pairs))
            for b in backends
        ]
        results["lease_round_trip"] = [row for row in rows if row]
    if "load" in only:
        progress("2. scheduler under load")
        load_backends = backends if settings.load_backends_all else [b for b in backends if b == "redis"]
        rows = [
            run.guarded(
                "load",
                b,
                lambda b=b, j=j, n=n, d=d: measure_load(b, servers, workdir, jobs=j, instances=n, duration_s=d),
            )
            for b in load_backends
            for (j, n, d) in settings.load_runs
        ]
        results["load"] = [row for row in rows if row]
    if "scale" in only:
        progress("3. scale")
        rows = [
            run.guarded(
                "scale",
                b,
                lambda b=b: measure_scale(b, servers, workdir, jobs=settings.scale_jobs, idle_s=settings.scale_idle_s),
            )
            for b in backends
        ]
        results["scale"] = [row for row in rows if row]
    if "failover" in only:
        progress("4. fail-over")
        failover_backends = backends if settings.failover_backends_all else [b for b in backends if b == "redis"]
        rows = [
            run.guarded(
                "failover", b, lambda b=b: measure_failover(b, servers, workdir, trials=settings.failover_trials)
            )
            for b in failover_backends
        ]
        results["failover"] = [row for row in rows if row]
    if "balance" in only:
        progress("5. balance")
        rows = [
            run.guarded(
                "balance",
                b,
                lambda b=b: measure_balance(
                    b,
                    servers,
                    workdir,
                    jobs=settings.balance_jobs,
                    instances=settings.balance_instances,
                    duration_s=settings.balance_s,
                ),
            )
            for b in backends
        ]
        results["balance"] = [row for row in rows if row]
    if "peers" in only:
        progress("6. peers side by side")
        results["peers"] = run_peers(run, servers, backends)


def run_peers(run: Run, servers: Any, backends: list[str]) -> dict[str, Any]:
    if "redis" not in backends:
        return {"blocked": "planlagt and the lock-per-tick peer run on Redis, which is not among --backends"}
    systems = list(SYSTEMS)
    not_measured: dict[str, str] = {}
    postgres_problem = postgres_harness_status()
    if postgres_problem is not None:
        systems.remove("apscheduler")
        not_measured["apscheduler"] = f"blocked on the PostgreSQL test-server harness ({postgres_problem})"
    measured = run.guarded(
        "peers",
        "redis",
        lambda: measure_peers(servers, servers.workdir, duration_s=run.settings.peers_s, systems=systems),
    )
    if measured is None:
        return {"blocked": "the peer comparison failed; see the errors table"}
    if not_measured:
        measured["not_measured"] = not_measured
    return measured


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = QUICK if args.quick else FULL
    run = Run(args, settings)
    backends, skipped = select_backends(args.backends)
    run.results["backends"] = backends
    run.results["skipped_backends"] = skipped
    for backend, reason in skipped.items():
        progress(f"skipping {backend}: {reason}")
    started = time.monotonic()
    progress(f"planlagt benchmarks, {'quick' if args.quick else 'full'} mode, backends: {', '.join(backends)}")
    with server_set() as servers:
        run_all(run, backends, servers)
    run.results["elapsed_s"] = round(time.monotonic() - started, 1)
    run.results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run.results["source_at_end"] = source_revision()
    print(render_tables(run.results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(run.results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        progress(f"results written to {args.output}")
    return 1 if run.results["errors"] else 0
