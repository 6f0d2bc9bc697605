"""The Celery side: the worker that does the work. Run it with ``celery -A tasks worker``.

The broker URL comes from ``CELERY_BROKER_URL`` (a Redis URL).
"""

from __future__ import annotations

import os

from celery import Celery

TICKS_FILE = os.environ.get("TICKS_FILE", "ticks.log")

app = Celery("tasks", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"))


@app.task(name="tasks.record_tick")
def record_tick(fire_time: str, instance_id: str) -> None:
    """Do the work of one fire time. ``fire_time`` identifies it, so a resent task can be ignored."""
    with open(TICKS_FILE, "a", encoding="utf-8") as ticks:
        ticks.write(f"{fire_time} {os.getpid()} {instance_id}\n")
