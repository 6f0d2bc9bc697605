"""The scheduler the Deployment in ``deployment.yaml`` runs, one per replica.

Each pod runs ``planlagt run cron:scheduler --metrics-port 9090 --metrics-host 0.0.0.0``.
On SIGTERM the scheduler stops claiming fire times and lets running jobs finish for
``SHUTDOWN_GRACE_S`` seconds. The pod's ``terminationGracePeriodSeconds`` must be longer,
or the kubelet kills the job with SIGKILL first.
"""

from __future__ import annotations

import os
import time

from planlagt_core.context import RunContext
from planlagt_core.scheduler import Scheduler

SHUTDOWN_GRACE_S = float(os.environ.get("SHUTDOWN_GRACE_S", "30"))
REPORT_SCHEDULE = os.environ.get("REPORT_SCHEDULE", "*/5 * * * *")
"""Every five minutes; the tests use a schedule with seconds, such as ``*/2 * * * * *``."""

REPORT_SECONDS = float(os.environ.get("REPORT_SECONDS", "5"))
"""How long one report run takes, standing in for real work."""

MARKS_FILE = os.environ.get("MARKS_FILE", "marks.log")

scheduler = Scheduler(shutdown_grace_s=SHUTDOWN_GRACE_S)


@scheduler.job(REPORT_SCHEDULE, name="report")
def report(context: RunContext) -> None:
    """Work for ``REPORT_SECONDS``, marking the start and the end; stop early when asked to."""
    fire_time = context.fire_time.isoformat()
    _mark(f"started {fire_time}")
    deadline = time.monotonic() + REPORT_SECONDS
    while time.monotonic() < deadline:
        if context.stop_requested:
            _mark(f"stopped {fire_time} ({context.stop_reason})")
            return
        context.wait(min(0.1, max(deadline - time.monotonic(), 0.0)))
    _mark(f"finished {fire_time}")


def _mark(text: str) -> None:
    with open(MARKS_FILE, "a", encoding="utf-8") as marks:
        marks.write(text + "\n")
