"""The ``--metrics-port`` and ``--metrics-host`` options of ``planlagt run``."""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .metrics import MetricsServer
    from .scheduler import Scheduler

__all__ = ["add_metrics_options", "start_metrics"]

MAX_PORT = 65535


def add_metrics_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--metrics-port`` and ``--metrics-host`` to the ``run`` parser."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help='serve Prometheus metrics, and the health check at /healthz, on this TCP port (needs "planlagt[metrics]")',
    )
    parser.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="address the metrics port binds to (default: 127.0.0.1; 0.0.0.0 for every interface, "
        "which a Kubernetes probe needs)",
    )


def start_metrics(args: argparse.Namespace, scheduler: Scheduler) -> MetricsServer | contextlib.nullcontext[None]:
    """Start serving the metrics of ``scheduler`` when ``--metrics-port`` is given.

    Returns a context manager that stops the server on exit (a no-op one without
    ``--metrics-port``). Raises ``ConfigurationError`` for a port out of range,
    ``--metrics-host`` without ``--metrics-port``, a missing ``metrics`` extra, or an
    address that cannot be bound.
    """
    if args.metrics_port is None:
        if args.metrics_host is not None:
            raise ConfigurationError("--metrics-host is invalid without --metrics-port; add --metrics-port PORT")
        return contextlib.nullcontext()
    if not 0 <= args.metrics_port <= MAX_PORT:
        raise ConfigurationError(f"--metrics-port must be from 0 to {MAX_PORT}, not {args.metrics_port}")

    try:
        from .metrics import DEFAULT_METRICS_HOST, SchedulerMetrics
    except ImportError as exc:
        raise ConfigurationError(f"--metrics-port: {exc}") from exc

    metrics = SchedulerMetrics(scheduler)
    return metrics.serve(args.metrics_port, args.metrics_host or DEFAULT_METRICS_HOST)
