"""A FastAPI service whose scheduler starts and stops with the application (the lifespan).

Run it with ``uvicorn app:app --workers 2``: each worker process runs its own scheduler,
and the workers share the backend in ``PLANLAGT_BACKEND``, so each fire time runs in one
worker only. ``/ops/metrics`` serves the Prometheus metrics and ``/ops/healthz`` the
health check (needs ``planlagt[metrics]``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from planlagt_core.context import RunContext
from planlagt_core.metrics import SchedulerMetrics
from planlagt_core.scheduler import Scheduler

TICK_SCHEDULE = os.environ.get("TICK_SCHEDULE", "* * * * *")
"""Every minute; the tests use a schedule with seconds, such as ``*/2 * * * * *``."""

TICKS_FILE = os.environ.get("TICKS_FILE", "ticks.log")

logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")

# uvicorn starts its workers with the "spawn" method, so each worker imports this module
# and creates its own scheduler. Under gunicorn --preload, which imports the module
# before forking, create the scheduler in the lifespan instead.
scheduler = Scheduler(shutdown_grace_s=10)
metrics = SchedulerMetrics(scheduler)


@scheduler.job(TICK_SCHEDULE, name="tick")
async def tick(context: RunContext) -> None:
    """Append the fire time to the ticks file: one line per fire time across all workers."""
    line = f"{context.fire_time.isoformat()} {os.getpid()} {context.instance_id}\n"
    await asyncio.to_thread(_append, line)


def _append(line: str) -> None:
    with open(TICKS_FILE, "a", encoding="utf-8") as ticks:
        ticks.write(line)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the scheduler with the application; on shutdown, let running jobs finish first."""
    scheduler.start()
    try:
        yield
    finally:
        # stop() blocks for up to shutdown_grace_s while jobs finish, so keep it off the event loop.
        await asyncio.to_thread(scheduler.stop)


app = FastAPI(lifespan=lifespan)
app.mount("/ops", metrics.asgi_app())


@app.get("/")
def index() -> dict[str, object]:
    return {"pid": os.getpid(), "instance_id": scheduler.instance_id, "jobs": sorted(scheduler.jobs)}
