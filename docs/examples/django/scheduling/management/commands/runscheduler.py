"""``manage.py runscheduler``: run the project's jobs in a process of its own."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from planlagt_core.cli_metrics import add_metrics_options, start_metrics
from scheduling.jobs import create_scheduler


class Command(BaseCommand):
    help = (
        "Run the scheduler until SIGTERM or SIGINT, then let running jobs finish for its shutdown grace period. "
        "Start one per host or container; each fire time runs in one of them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--instance-id", metavar="ID", help="this instance's id (default: hostname-pid-random)")
        add_metrics_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        scheduler = create_scheduler(instance_id=options["instance_id"])
        with start_metrics(argparse.Namespace(**options), scheduler):
            scheduler.run()
