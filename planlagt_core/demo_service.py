"""One instance of the demo service started by ``planlagt demo`` (run as a module).

Every run record this instance writes becomes one JSON line in the journal, a file that
does not depend on the backend, so the demo can check the backend's work independently.
While an attempt runs, a marker file in the state folder names it, so the demo can kill
the instance in the middle of a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from .context import RunContext
from .listeners import Listener
from .models import RunRecord
from .plugins import connect
from .scheduler import Scheduler

__all__ = ["DEMO_JOBS", "JournalListener", "build_scheduler"]

DEMO_LEASE_TTL_S = 2.0
DEMO_HEARTBEAT_S = 0.5

# name: (schedule, work in seconds, max attempts). "slow" takes longer than its interval,
# so every other fire time finds the previous run going and is skipped. "batch" runs long
# enough to be killed in the middle and fires rarely enough to be retried before its next
# fire time.
DEMO_JOBS: dict[str, tuple[str, float, int]] = {
    "tick-a": ("* * * * * *", 0.01, 1),
    "tick-b": ("* * * * * *", 0.01, 1),
    "tick-c": ("* * * * * *", 0.01, 1),
    "report": ("*/2 * * * * *", 0.05, 1),
    "rollup": ("*/2 * * * * *", 0.05, 1),
    "slow": ("*/2 * * * * *", 2.5, 1),
    "batch": ("*/10 * * * * *", 3.0, 3),
}


def lease_ttl_for(backend_min_ttl_s: float) -> float:
    """Return the demo's lease TTL: 2 s, or the backend's minimum when that is longer."""
    return max(DEMO_LEASE_TTL_S, backend_min_ttl_s)


class JournalListener(Listener):
    """Appends one JSON line per run record and keeps a marker of the runs in progress."""

    def __init__(self, journal: Path, state_dir: Path, instance_id: str) -> None:
        self._journal = journal
        self._state_dir = state_dir
        self._instance_id = instance_id

    def run_started(self, context: RunContext) -> None:
        marker = self._marker(context.job)
        data = {
            "job": context.job,
            "fire_time": context.fire_time.astimezone(timezone.utc).isoformat(),
            "attempt": context.attempt,
            "instance": self._instance_id,
            "pid": os.getpid(),
            "start": time.time(),
        }
        marker.write_text(json.dumps(data), encoding="utf-8")

    def run_finished(self, record: RunRecord) -> None:
        end = time.time()
        line = {
            "job": record.job,
            "fire_time": datetime.fromtimestamp(record.fire_time, tz=timezone.utc).isoformat(),
            "instance": self._instance_id,
            "pid": os.getpid(),
            "attempt": record.attempt,
            "outcome": record.outcome.value,
            "start": record.started_at,
            "end": end if record.started_at is not None else None,
        }
        append_line(self._journal, line)
        if record.started_at is not None:
            self._marker(record.job).unlink(missing_ok=True)

    def _marker(self, job: str) -> Path:
        return self._state_dir / f"{self._instance_id}.{job}.running"


def append_line(path: Path, data: dict[str, object]) -> None:
    """Append one JSON line with a single write, so lines from several processes never interleave."""
    encoded = (json.dumps(data, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, encoded)
    finally:
        os.close(fd)


def _work(seconds: float) -> Callable[[RunContext], None]:
    def run(context: RunContext) -> None:
        deadline = time.monotonic() + seconds
        while not context.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            context.wait(left)

    return run


def build_scheduler(backend_url: str, instance_id: str, journal: Path, state_dir: Path) -> Scheduler:
    """Return the demo service's scheduler with its jobs registered."""
    backend = connect(backend_url)
    ttl = lease_ttl_for(backend.capabilities.min_ttl_s)
    scheduler = Scheduler(
        backend,
        instance_id=instance_id,
        lease_ttl_s=ttl,
        heartbeat_s=min(DEMO_HEARTBEAT_S, ttl / 4),
        shutdown_grace_s=10.0,
        listeners=[JournalListener(journal, state_dir, instance_id)],
    )
    for name, (schedule, work_s, attempts) in DEMO_JOBS.items():
        scheduler.add_job(_work(work_s), schedule, name=name, max_attempts=attempts, retry_backoff_s=0.5)
    return scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description="one instance of the planlagt demo service")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--journal", required=True, type=Path)
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheduler = build_scheduler(args.backend, args.instance_id, args.journal, args.state_dir)
    scheduler.start()
    while not scheduler.healthy():
        time.sleep(0.05)
    (args.state_dir / f"{args.instance_id}.ready").write_text(str(os.getpid()), encoding="utf-8")
    scheduler.run()


if __name__ == "__main__":
    main()
