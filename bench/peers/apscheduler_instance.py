"""One APScheduler 4 scheduler sharing a PostgreSQL data store with the others of a benchmark.

Run as ``python -m bench.peers.apscheduler_instance CONFIG.json``. Each process runs an
``AsyncScheduler`` (scheduler and worker roles) on a ``SQLAlchemyDataStore`` over asyncpg
with an ``AsyncpgEventBroker`` and adds one schedule per job of the workload. The first
process to add a schedule wins and the others leave it. Every run is journaled.

The clock offset is injected where APScheduler reads the time: the ``datetime`` name in
its scheduler and SQLAlchemy data-store modules is replaced by a subclass whose ``now()``
adds the offset. That moves when this scheduler finds schedules due, when it computes
fire times and when it judges locks expired, as a wrong system clock would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..journal import Journal
from . import workload

__all__ = ["main"]

# Set in the instance process before the scheduler starts; read by the job functions.
_journal: Journal | None = None
_instance = ""
_state_dir = Path(".")


def inject_clock_offset(offset_s: float) -> None:
    """Make APScheduler's scheduler and data store read a clock shifted by ``offset_s``."""
    import apscheduler._schedulers.async_ as scheduler_module
    import apscheduler.datastores.sqlalchemy as datastore_module

    offset = timedelta(seconds=offset_s)

    class OffsetDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + offset

    scheduler_module.datetime = OffsetDatetime  # type: ignore[attr-defined]
    datastore_module.datetime = OffsetDatetime  # type: ignore[attr-defined]


async def run_job(job_name: str) -> None:
    """The job function of every schedule: journal the start, work, journal the end."""
    import anyio
    from apscheduler import current_job

    assert _journal is not None
    fire_ms = round(current_job.get().scheduled_fire_time.timestamp() * 1000)
    started = time.time()
    _journal.write({"e": "start", "job": job_name, "fire_ms": fire_ms, "attempt": 1,
                    "instance": _instance, "t": started})  # fmt: skip
    marker = _state_dir / f"{_instance}.{job_name}.running"
    if job_name == workload.LONG_JOB:
        marker.write_text(json.dumps({"fire_ms": fire_ms, "t": started}), encoding="utf-8")
    await anyio.sleep(workload.work_seconds(job_name))
    _journal.write({"e": "end", "job": job_name, "fire_ms": fire_ms, "attempt": 1, "outcome": "succeeded",
                    "instance": _instance, "t": time.time()})  # fmt: skip
    marker.unlink(missing_ok=True)


async def run(config: dict[str, Any]) -> None:
    import anyio
    from apscheduler import AsyncScheduler, ConflictPolicy
    from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
    from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker
    from apscheduler.triggers.cron import CronTrigger
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(config["sqlalchemy_url"])
    data_store = SQLAlchemyDataStore(engine)
    event_broker = AsyncpgEventBroker.from_async_sqla_engine(engine)
    scheduler = AsyncScheduler(
        data_store, event_broker, identity=_instance, lease_duration=timedelta(seconds=workload.LEASE_TTL_S)
    )
    async with scheduler:
        for job_name, expression in workload.job_schedules().items():
            second = expression.split()[0]
            # A whole-second start time: CronTrigger keeps the start time's microseconds in its fire times.
            whole_second = datetime.fromtimestamp(int(time.time()), tz=timezone.utc)
            trigger = CronTrigger(second=second, timezone="UTC", start_time=whole_second)
            await scheduler.add_schedule(
                run_job, trigger, id=job_name, args=[job_name], conflict_policy=ConflictPolicy.do_nothing
            )
        await scheduler.start_in_background()
        (_state_dir / f"{_instance}.ready").write_text(json.dumps({"pid": os.getpid()}), encoding="utf-8")
        stopped = anyio.Event()
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with anyio.create_task_group() as group:

                async def wait_for_signal() -> None:
                    async for _signal in signals:
                        stopped.set()
                        return

                group.start_soon(wait_for_signal)
                await stopped.wait()
                group.cancel_scope.cancel()
        await scheduler.stop()
    await engine.dispose()


def start(config: dict[str, Any]) -> None:
    """Run one scheduler until SIGTERM (called on the imported module, so job references resolve to it)."""
    global _journal, _instance, _state_dir
    _instance = config["instance_id"]
    _state_dir = Path(config["state_dir"])
    _journal = Journal(_state_dir / f"{_instance}.journal", buffered=False)
    inject_clock_offset(config["clock_offset_s"])
    import anyio

    anyio.run(run, config)
    _journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="one APScheduler 4 peer instance of a benchmark")
    parser.add_argument("config", type=Path)
    args = parser.parse_args()
    from bench.peers import apscheduler_instance

    apscheduler_instance.start(json.loads(args.config.read_text(encoding="utf-8")))


if __name__ == "__main__":
    main()
