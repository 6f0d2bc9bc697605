"""One planlagt instance process of a benchmark (run as ``python -m bench.instance CONFIG.json``).

The configuration file (written by :mod:`bench.fleet`) names the backend, the jobs, the
scheduler settings, a clock offset and the files to write. The process journals every
run start and run end as one JSON line, keeps a marker file while a marked job runs (so
the parent can SIGKILL it mid-run), and, when asked, samples its traffic counters and CPU
time at every half second of wall time. It writes a ready file once the scheduler is
healthy and sees the expected number of live instances, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from planlagt_core.clock import OffsetClock
from planlagt_core.context import RunContext
from planlagt_core.listeners import Listener
from planlagt_core.models import RunRecord
from planlagt_core.plugins import connect
from planlagt_core.scheduler import Scheduler

from .counters import TrafficCounters
from .journal import Journal

__all__ = ["main"]

LOG = logging.getLogger(__name__)

READY_POLL_S = 0.05
SHUTDOWN_GRACE_S = 3.0


class JournalListener(Listener):
    """Journals run starts and ends in real wall time (never the offset clock)."""

    def __init__(self, journal: Journal, instance_id: str, marked_jobs: set[str], state_dir: Path) -> None:
        self._journal = journal
        self._instance_id = instance_id
        self._marked = marked_jobs
        self._state_dir = state_dir

    def run_started(self, context: RunContext) -> None:
        now = time.time()
        fire_ms = round(context.fire_time.timestamp() * 1000)
        self._journal.write({"e": "start", "job": context.job, "fire_ms": fire_ms, "attempt": context.attempt,
                             "instance": self._instance_id, "t": now})  # fmt: skip
        if context.job in self._marked:
            self._marker(context.job).write_text(json.dumps({"fire_ms": fire_ms, "t": now}), encoding="utf-8")

    def run_finished(self, record: RunRecord) -> None:
        self._journal.write({"e": "end", "job": record.job, "fire_ms": round(record.fire_time * 1000),
                             "attempt": record.attempt, "outcome": record.outcome.value,
                             "instance": self._instance_id, "t": time.time()})  # fmt: skip
        if record.job in self._marked and record.started_at is not None:
            self._marker(record.job).unlink(missing_ok=True)

    def _marker(self, job: str) -> Path:
        return self._state_dir / f"{self._instance_id}.{job}.running"


def make_work(work_s: float, first_attempt_work_s: float | None) -> Any:
    """Return a job function that works ``work_s`` seconds (``first_attempt_work_s`` on attempt 1)."""

    def work(context: RunContext) -> None:
        seconds = first_attempt_work_s if first_attempt_work_s is not None and context.attempt == 1 else work_s
        if seconds > 0:
            context.wait(seconds)

    return work


def build_scheduler(config: dict[str, Any], counters: TrafficCounters, journal: Journal) -> Scheduler:
    backend = connect(config["backend"])
    counters.wrap_backend(backend)
    state_dir = Path(config["state_dir"])
    marked = {group["name"] for group in config["jobs"] if group.get("marked")}
    scheduler = Scheduler(
        backend,
        instance_id=config["instance_id"],
        lease_ttl_s=config["lease_ttl_s"],
        heartbeat_s=config["heartbeat_s"],
        max_workers=config.get("max_workers", 8),
        shutdown_grace_s=SHUTDOWN_GRACE_S,
        clock=OffsetClock(config.get("clock_offset_s", 0.0)),
        listeners=[JournalListener(journal, config["instance_id"], marked, state_dir)],
    )
    for group in config["jobs"]:
        work = make_work(group.get("work_s", 0.0), group.get("first_attempt_work_s"))
        count = group.get("count", 1)
        names = [group["name"]] if count == 1 else [f"{group['name']}-{index}" for index in range(count)]
        for index, name in enumerate(names):
            schedule = group["schedule"].format(index=index, minute=index % 60, hour=(group.get("hour", 0)))
            scheduler.add_job(work, schedule, name=name, max_attempts=group.get("max_attempts", 1),
                              retry_backoff_s=group.get("retry_backoff_s", 0.1))  # fmt: skip
    return scheduler


def sample_until_stopped(counters: TrafficCounters, stop: threading.Event, samples: list[dict[str, Any]]) -> None:
    """Append a sample of the counters and CPU time at every half second of wall time until ``stop``."""
    while not stop.is_set():
        now = time.time()
        next_half = int(now) + 0.5 if now - int(now) < 0.5 else int(now) + 1.5
        if stop.wait(next_half - now):
            return
        times = os.times()
        samples.append({"t": time.time(), "cpu_s": times.user + times.system, **counters.snapshot()})


def wait_ready(scheduler: Scheduler, expect_instances: int) -> None:
    while not scheduler.healthy() or len(scheduler.backend.list_instances()) < expect_instances:
        time.sleep(READY_POLL_S)


def catch_up_drained(scheduler: Scheduler) -> bool:
    # NOTE: reads the scheduler's private queues; only the scale measurement needs to know
    # when the fire times queued at start-up (taking over jobs) have all been handled.
    with scheduler._lock:
        return not scheduler._pending and not scheduler._inflight


def run(config: dict[str, Any]) -> None:
    started = time.monotonic()
    counters = TrafficCounters()
    if config.get("count_traffic"):
        if config["backend"].startswith("redis"):
            counters.count_redis_requests()
        elif config["backend"].startswith("sqlite"):
            counters.count_sqlite_transactions()
    state_dir = Path(config["state_dir"])
    instance_id = config["instance_id"]
    journal = Journal(state_dir / f"{instance_id}.journal", buffered=config.get("buffered_journal", False))
    scheduler = build_scheduler(config, counters, journal)
    built = time.monotonic()
    scheduler.start()
    wait_ready(scheduler, config.get("expect_instances", 1))
    ready = {"pid": os.getpid(), "build_s": built - started, "ready_s": time.monotonic() - started}
    if config.get("wait_catch_up"):
        while not catch_up_drained(scheduler):
            time.sleep(READY_POLL_S)
        ready["catch_up_s"] = time.monotonic() - started
    stop_sampling = threading.Event()
    samples: list[dict[str, Any]] = []
    if config.get("sample"):
        threading.Thread(target=sample_until_stopped, args=(counters, stop_sampling, samples), daemon=True).start()
    (state_dir / f"{instance_id}.ready").write_text(json.dumps(ready), encoding="utf-8")
    scheduler.run()
    stop_sampling.set()
    journal.close()
    (state_dir / f"{instance_id}.samples.json").write_text(json.dumps(samples), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description="one planlagt instance process of a benchmark")
    parser.add_argument("config", type=Path, help="JSON configuration written by bench.fleet")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(json.loads(args.config.read_text(encoding="utf-8")))


if __name__ == "__main__":
    main()
