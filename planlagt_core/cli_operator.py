"""The operator commands of the ``planlagt`` command line: status, history, trigger, pause, resume."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from .operator import ClusterStatus, Operator

__all__ = ["add_operator_commands"]

EXIT_RUN_FAILED = 1


def add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], backend_option: Any) -> None:
    """Add the operator subcommands to the ``planlagt`` parser."""
    status = commands.add_parser("status", help="show jobs, runs in progress and live instances")
    backend_option(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(handler=_status)

    history = commands.add_parser("history", help="show the run history of one job or of all jobs")
    history.add_argument("job", nargs="?", metavar="JOB", help="job name (default: all jobs)")
    backend_option(history)
    history.add_argument("--limit", type=int, default=20, metavar="N", help="how many records (default: 20)")
    history.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    history.set_defaults(handler=_history)

    trigger = commands.add_parser("trigger", help="run a job once now on the instance that owns it")
    trigger.add_argument("job", metavar="JOB", help="job name")
    backend_option(trigger)
    trigger.add_argument("--no-wait", action="store_true", help="return once the request is stored")
    trigger.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="give up waiting after this many seconds"
    )
    trigger.set_defaults(handler=_trigger)

    for name, verb in (("pause", "pause"), ("resume", "resume")):
        parser = commands.add_parser(name, help=f"{verb} a job on every instance (within one heartbeat)")
        parser.add_argument("job", metavar="JOB", help="job name")
        backend_option(parser)
        parser.set_defaults(handler=_pause if name == "pause" else _resume)


def _operator(args: argparse.Namespace) -> Operator:
    return Operator(args.backend)


def _status(args: argparse.Namespace) -> int:
    operator = _operator(args)
    try:
        status = operator.status()
    finally:
        operator.close()
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        _print_status(status)
    return 0


def _print_status(status: ClusterStatus) -> None:
    print(f"backend {status.backend} at {status.generated_at}\n")
    rows = [["JOB", "SCHEDULE", "ZONE", "PAUSED", "NEXT FIRE", "LAST RUN", "ON", "OUTCOME", "DURATION", "RUNNING"]]
    for job in status.jobs:
        last = job.last_run or {}
        running = job.running
        rows.append(
            [
                job.name + (" (overdue)" if job.success_overdue else ""),
                job.schedule,
                job.timezone,
                "yes" if job.paused else "no",
                job.next_fire_time or "-",
                last.get("fire_time") or "-",
                last.get("instance") or "-",
                last.get("outcome") or "-",
                _seconds(last.get("duration_s")),
                f"on {running['instance']} since {running['since']}" if running else "-",
            ]
        )
    _print_table(rows)
    print()
    instance_rows = [["INSTANCE", "HOST", "PID", "LAST HEARTBEAT", "JOBS OWNED"]]
    for instance in status.instances:
        owned = ", ".join(instance.jobs_owned) or "-"
        instance_rows.append(
            [instance.instance_id, instance.hostname, str(instance.pid), instance.last_heartbeat or "-", owned]
        )
    _print_table(instance_rows)


def _history(args: argparse.Namespace) -> int:
    operator = _operator(args)
    try:
        records = operator.runs(args.job, limit=args.limit)
    finally:
        operator.close()
    if args.json:
        for record in records:
            print(record.to_json())
        return 0
    rows = [["FIRE TIME", "JOB", "INSTANCE", "ATTEMPT", "OUTCOME", "DURATION", "DETAIL"]]
    for record in records:
        detail = record.reason or (f"{record.error_type}: {record.error_message}" if record.error_type else "")
        rows.append(
            [
                _iso(record.fire_time),
                record.job + (" (manual)" if record.manual else ""),
                record.instance_id,
                str(record.attempt),
                record.outcome.value,
                _seconds(record.duration_s),
                detail,
            ]
        )
    _print_table(rows)
    return 0


def _trigger(args: argparse.Namespace) -> int:
    operator = _operator(args)
    try:
        result = operator.trigger(args.job, wait=not args.no_wait, timeout_s=args.timeout)
    finally:
        operator.close()
    print(f"trigger {result.request.request_id} for job {result.request.job!r} at {_iso(result.request.requested_at)}")
    if args.no_wait:
        return 0
    if result.state is None or result.state.outcome is None:
        print(f"no outcome within {args.timeout} s; the run may still happen", file=sys.stderr)
        return EXIT_RUN_FAILED
    record = result.record
    where = f" on {record.instance_id} in {_seconds(record.duration_s)}" if record else ""
    print(f"outcome: {result.state.outcome.value}{where}")
    if record is not None and record.error_type:
        print(f"error: {record.error_type}: {record.error_message}")
    return 0 if result.succeeded else EXIT_RUN_FAILED


def _pause(args: argparse.Namespace) -> int:
    operator = _operator(args)
    try:
        operator.pause(args.job)
    finally:
        operator.close()
    print(f"paused job {args.job!r}; every instance honours it within one heartbeat")
    return 0


def _resume(args: argparse.Namespace) -> int:
    operator = _operator(args)
    try:
        operator.resume(args.job)
    finally:
        operator.close()
    print(f"resumed job {args.job!r}")
    return 0


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()
