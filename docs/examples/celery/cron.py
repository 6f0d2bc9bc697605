"""The planlagt side: decides when, and sends the work to Celery.

Run it with ``planlagt run cron:scheduler`` on as many hosts as you like: each fire time
sends one task, from one instance. The task is sent by name, so this process needs no
task code, only the broker URL in ``CELERY_BROKER_URL``.

Sending is at least once: if this instance loses its lease after sending and before the
fire time is recorded, another instance may send the task again for the same fire time.
The task receives the fire time, so it can recognise a repeat.
"""

from __future__ import annotations

import os

from celery import Celery

from planlagt_core.context import RunContext
from planlagt_core.scheduler import Scheduler

TICK_SCHEDULE = os.environ.get("TICK_SCHEDULE", "* * * * *")
"""Every minute; the tests use a schedule with seconds, such as ``*/2 * * * * *``."""

celery = Celery("cron", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"))
scheduler = Scheduler()


@scheduler.job(TICK_SCHEDULE, name="tick")
def tick(context: RunContext) -> None:
    """Send one ``tasks.record_tick`` task for this fire time; the task id names the fire time."""
    fire_time = context.fire_time.isoformat()
    celery.send_task("tasks.record_tick", args=[fire_time, context.instance_id], task_id=f"tick-{fire_time}")
