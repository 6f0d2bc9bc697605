"""The ``planlagt`` command line.

Every error caused by input (a bad expression, zone, URL or option) exits with status 2
and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .cli_metrics import add_metrics_options, start_metrics
from .cli_operator import add_operator_commands
from .errors import ConfigurationError, PlanlagtError
from .plugins import DEFAULT_URL, list_plugins
from .schedule import parse_schedule

__all__ = ["main"]

LOG = logging.getLogger(__name__)

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["conformance"]:
        # The suite has its own parser (URL, --json, -k); hand it everything, --help included.
        return _conformance(argparse.Namespace(rest=arguments[1:]))
    parser = build_parser()
    args = parser.parse_args(arguments)
    _configure_logging(args.log_level)
    try:
        return int(args.handler(args))
    except PlanlagtError as exc:
        print(f"planlagt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigurationError) else 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="planlagt",
        description="Distributed cron: each job runs once per fire time on one live instance.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level for messages on standard error (default: INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_next(commands)
    _add_demo(commands)
    _add_backends(commands)
    _add_conformance(commands)
    add_operator_commands(commands, _backend_option)
    return parser


def _backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        metavar="URL",
        help="backend URL, e.g. redis://localhost:6379 (default: $PLANLAGT_BACKEND, else sqlite:///planlagt.db)",
    )


# -- run -------------------------------------------------------------------------------


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("run", help="run the scheduler found at MODULE:ATTRIBUTE until stopped")
    parser.add_argument(
        "target", metavar="MODULE:ATTRIBUTE", help="where the Scheduler object is, e.g. myapp.cron:scheduler"
    )
    _backend_option(parser)
    parser.add_argument("--instance-id", metavar="ID", help="this instance's id (default: hostname-pid-random)")
    add_metrics_options(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from .scheduler import Scheduler

    _export_backend(args.backend)
    if args.instance_id:
        os.environ["PLANLAGT_INSTANCE_ID"] = args.instance_id
    scheduler = _load_target(args.target)
    if not isinstance(scheduler, Scheduler):
        raise ConfigurationError(f"{args.target} is a {type(scheduler).__name__}, not a planlagt Scheduler")
    with start_metrics(args, scheduler):
        scheduler.run()
    return 0


def _export_backend(url: str | None) -> None:
    """Make ``url`` (or the default) the backend of schedulers created without one."""
    if url:
        os.environ["PLANLAGT_BACKEND"] = url
    elif not os.environ.get("PLANLAGT_BACKEND"):
        print(
            f"planlagt: no backend given (--backend or PLANLAGT_BACKEND); using the embedded default "
            f"{DEFAULT_URL} in {os.getcwd()}",
            file=sys.stderr,
        )
        os.environ["PLANLAGT_BACKEND"] = DEFAULT_URL


def _load_target(target: str) -> object:
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(f"invalid target {target!r}: write MODULE:ATTRIBUTE, e.g. myapp.cron:scheduler")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import module {module_name!r} from {target!r}: {exc}") from exc
    value: object = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    return value


# -- next ------------------------------------------------------------------------------


def _add_next(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("next", help="print the next fire times of a schedule, with the scheduler's own rules")
    parser.add_argument("expression", metavar="EXPRESSION", help="cron expression, e.g. '30 2 * * *' or '@every 90s'")
    parser.add_argument("--tz", default="UTC", metavar="ZONE", help="IANA time zone of the schedule (default: UTC)")
    parser.add_argument("-n", "--count", type=int, default=5, metavar="COUNT", help="how many fire times (default: 5)")
    parser.add_argument(
        "--after",
        metavar="ISO8601",
        help="start after this instant instead of now; read in the --tz zone when it has no offset",
    )
    parser.set_defaults(handler=_next)


def _next(args: argparse.Namespace) -> int:
    schedule = parse_schedule(args.expression, args.tz)
    if args.count < 1:
        raise ConfigurationError(f"--count must be at least 1, not {args.count}")
    after = _parse_after(args.after, args.tz) if args.after else datetime.now(timezone.utc)
    for fire in schedule.fire_times(after, args.count):
        print(fire.isoformat())
    return 0


def _parse_after(text: str, zone: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"invalid --after {text!r}: use ISO 8601, e.g. 2026-03-28T00:00 or 2026-03-28T00:00+01:00"
        ) from None
    if instant.tzinfo is None:
        try:
            instant = instant.replace(tzinfo=ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"unknown time zone {zone!r}") from None
    return instant


# -- demo ------------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo", help="run several real instance processes of a demo service and tally what ran where"
    )
    _backend_option(parser)
    parser.add_argument(
        "--instances", type=int, default=3, metavar="N", help="number of instance processes (default: 3)"
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, metavar="SECONDS", help="length of the run in seconds (default: 30)"
    )
    parser.add_argument("--journal", metavar="PATH", help="keep the JSON-lines journal of attempts at PATH")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the tally instead of tables")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        backend=args.backend,
        instances=args.instances,
        duration_s=args.duration,
        journal=args.journal,
        as_json=args.json,
    )


# -- backends --------------------------------------------------------------------------


def _add_backends(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("backends", help="list installed backend plugins and their capabilities")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_backends)


def _backends(args: argparse.Namespace) -> int:
    plugins = list_plugins()
    if args.json:
        print(json.dumps([plugin.to_dict() for plugin in plugins], indent=2))
        return 0
    for plugin in plugins:
        print(f"{plugin.scheme:<12} {plugin.distribution} {plugin.version}  {plugin.target}")
        if plugin.backend is None:
            print(f"{'':<12} cannot load: {plugin.error}")
            continue
        caps = plugin.backend.capabilities.to_dict()
        features = ", ".join(caps.pop("features")) or "none"
        print(f"{'':<12} " + ", ".join(f"{key}={value}" for key, value in caps.items()))
        print(f"{'':<12} features: {features}")
    return 0


# -- conformance -----------------------------------------------------------------------


def _add_conformance(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "conformance", help="run the backend conformance suite against a backend URL", add_help=False
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="URL [--json] [-k PATTERN]")
    parser.set_defaults(handler=_conformance)


def _conformance(args: argparse.Namespace) -> int:
    try:
        from planlagt_conformance.cli import main as conformance_main
    except ImportError:
        print(
            'planlagt: the conformance suite needs pytest; install it with: pip install "planlagt[conformance]"',
            file=sys.stderr,
        )
        return EXIT_USAGE
    return conformance_main(args.rest)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
