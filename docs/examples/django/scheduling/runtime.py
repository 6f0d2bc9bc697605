"""The scheduler that runs inside a web server process, started once per process."""

from __future__ import annotations

import atexit
import threading

from planlagt_core.scheduler import Scheduler

from .jobs import create_scheduler

_lock = threading.Lock()
_scheduler: Scheduler | None = None


def start() -> Scheduler:
    """Create and start this process's scheduler on the first call; return it on every call.

    It stops when the interpreter exits normally. A process killed by a signal without a
    handler skips that stop, and its leases expire on the backend by their TTL.
    """
    global _scheduler
    with _lock:
        if _scheduler is None:
            scheduler = create_scheduler()
            scheduler.start()
            atexit.register(scheduler.stop)
            _scheduler = scheduler
        return _scheduler


def current() -> Scheduler | None:
    """Return this process's scheduler, or None when it was not started here."""
    return _scheduler
