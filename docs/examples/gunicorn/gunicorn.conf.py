"""gunicorn settings: four workers, each starting its own scheduler after the fork.

Run with ``gunicorn -c gunicorn.conf.py app:application`` (``--preload`` works too). The
scheduler is created and started in ``post_fork``, in the worker, because a scheduler
started before the fork has its threads in the master only. planlagt rejects the use of
such a scheduler in a forked worker with ``SchedulerError``; ``preload_trap.py`` shows that
mistake.
"""

import logging
import os

import cron

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = 4
graceful_timeout = 30
"""Seconds a worker gets to finish after SIGTERM; more than the scheduler's shutdown_grace_s."""

logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")


def post_fork(server, worker):
    """Start the worker's scheduler, in the worker process."""
    scheduler = cron.start()
    server.log.info("Worker %s started scheduler %s", worker.pid, scheduler.instance_id)


def worker_exit(server, worker):
    """Stop the worker's scheduler: running jobs get its shutdown grace period to finish."""
    cron.stop()
