"""The jobs of the example service, and this process's scheduler.

Each gunicorn worker creates and starts its own scheduler after the fork (see
``gunicorn.conf.py``). The workers share the embedded SQLite backend, a file on this
host, so each fire time runs in one worker only.
"""

from __future__ import annotations

import os

from planlagt_core.context import RunContext
from planlagt_core.scheduler import Scheduler

TICK_SCHEDULE = os.environ.get("TICK_SCHEDULE", "* * * * *")
"""Every minute; the tests use a schedule with seconds, such as ``*/2 * * * * *``."""

TICKS_FILE = os.environ.get("TICKS_FILE", "ticks.log")

scheduler: Scheduler | None = None
"""The module's scheduler, once :func:`start` has run."""

_started_in_pid: int | None = None


def create_scheduler() -> Scheduler:
    """Build a scheduler with the service's jobs; the backend comes from ``PLANLAGT_BACKEND``."""
    new = Scheduler(shutdown_grace_s=10)

    @new.job(TICK_SCHEDULE, name="tick")
    def tick(context: RunContext) -> None:
        with open(TICKS_FILE, "a", encoding="utf-8") as ticks:
            ticks.write(f"{context.fire_time.isoformat()} {os.getpid()} {context.instance_id}\n")

    return new


def start() -> Scheduler:
    """Start this process's scheduler, creating it first unless the module already has one.

    Call it in each worker after the fork. Raises ``SchedulerError`` when the scheduler
    was started in the process this one was forked from.
    """
    global scheduler, _started_in_pid
    if scheduler is None:
        scheduler = create_scheduler()
    scheduler.start()
    _started_in_pid = os.getpid()
    return scheduler


def stop() -> None:
    """Stop the module's scheduler if this process started it."""
    if scheduler is not None and _started_in_pid == os.getpid():
        scheduler.stop()
