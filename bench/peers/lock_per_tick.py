"""The lock-per-tick pattern of synchronized-cron-task (Go), rebuilt on redis-py's ``Lock``.

As in that library: on every cron tick of a job, each instance tries once, without
waiting, to take a Redis lock named ``<job>.lock`` with a timeout; the instance that gets
it runs the job, extends the lock every heartbeat while the job runs, and releases it when
the job ends. An instance skips a tick while its own previous run of the job is still
going. Nothing records which tick ran, so a tick is neither retried after a crash nor
protected from a second run once the lock is free again.

Run as ``python -m bench.peers.lock_per_tick CONFIG.json``. The ticks follow this
instance's clock shifted by ``clock_offset_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import redis

from ..journal import Journal
from . import workload

__all__ = ["main"]


class LockPerTickInstance:
    def __init__(self, config: dict[str, Any]) -> None:
        self.name = config["instance_id"]
        self.offset_s = config["clock_offset_s"]
        self.state_dir = Path(config["state_dir"])
        self.client = redis.Redis.from_url(config["redis_url"])
        self.journal = Journal(self.state_dir / f"{self.name}.journal", buffered=False)
        self.stop = threading.Event()
        self._running: set[str] = set()
        self._guard = threading.Lock()

    def ticker(self, job: str) -> None:
        """Fire ``job`` at each of its ticks on the offset clock, each tick in its own thread."""
        while True:
            fire = workload.next_fire_time(job, time.time() + self.offset_s)
            if not workload.sleep_until_offset(self.offset_s, fire, self.stop):
                return
            threading.Thread(target=self.on_tick, args=(job, fire), daemon=True).start()

    def on_tick(self, job: str, fire: int) -> None:
        with self._guard:
            if job in self._running:
                return
            self._running.add(job)
        try:
            lock = self.client.lock(f"{job}.lock", timeout=workload.LEASE_TTL_S, blocking=False)
            if lock.acquire():
                try:
                    self.run_locked(job, fire, lock)
                finally:
                    lock.release()
        finally:
            with self._guard:
                self._running.discard(job)

    def run_locked(self, job: str, fire: int, lock: Any) -> None:
        fire_ms = fire * 1000
        started = time.time()
        self.journal.write({"e": "start", "job": job, "fire_ms": fire_ms, "attempt": 1,
                            "instance": self.name, "t": started})  # fmt: skip
        marker = self.state_dir / f"{self.name}.{job}.running"
        if job == workload.LONG_JOB:
            marker.write_text(json.dumps({"fire_ms": fire_ms, "t": started}), encoding="utf-8")
        deadline = time.monotonic() + workload.work_seconds(job)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, workload.HEARTBEAT_S))
            if deadline - time.monotonic() > 0:
                lock.reacquire()
        self.journal.write({"e": "end", "job": job, "fire_ms": fire_ms, "attempt": 1, "outcome": "succeeded",
                            "instance": self.name, "t": time.time()})  # fmt: skip
        marker.unlink(missing_ok=True)

    def run(self) -> None:
        self.client.ping()
        for job in workload.job_schedules():
            threading.Thread(target=self.ticker, args=(job,), daemon=True).start()
        ready = {"pid": os.getpid()}
        (self.state_dir / f"{self.name}.ready").write_text(json.dumps(ready), encoding="utf-8")
        self.stop.wait()
        self.journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="one lock-per-tick peer instance of a benchmark")
    parser.add_argument("config", type=Path)
    args = parser.parse_args()
    instance = LockPerTickInstance(json.loads(args.config.read_text(encoding="utf-8")))
    signal.signal(signal.SIGTERM, lambda signum, frame: instance.stop.set())
    instance.run()


if __name__ == "__main__":
    main()
