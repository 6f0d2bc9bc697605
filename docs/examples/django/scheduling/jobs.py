"""The jobs of the example project."""

from __future__ import annotations

import os

from planlagt_core.context import RunContext
from planlagt_core.scheduler import Scheduler

TICK_SCHEDULE = os.environ.get("TICK_SCHEDULE", "* * * * *")
"""Every minute; the tests use a schedule with seconds, such as ``*/2 * * * * *``."""

TICKS_FILE = os.environ.get("TICKS_FILE", "ticks.log")


def create_scheduler(instance_id: str | None = None) -> Scheduler:
    """Build a scheduler with the project's jobs; the backend comes from ``PLANLAGT_BACKEND``."""
    scheduler = Scheduler(instance_id=instance_id, shutdown_grace_s=10)

    @scheduler.job(TICK_SCHEDULE, name="tick")
    def tick(context: RunContext) -> None:
        with open(TICKS_FILE, "a", encoding="utf-8") as ticks:
            ticks.write(f"{context.fire_time.isoformat()} {os.getpid()} {context.instance_id}\n")

    return scheduler
