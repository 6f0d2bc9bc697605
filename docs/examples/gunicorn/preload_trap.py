"""A mistake to avoid: starting the scheduler when the application module is imported.

With ``gunicorn --preload`` this module is imported once, in the master, before the
workers are forked. The scheduler's threads then run in the master, and the copy each
worker inherits cannot be used: ``post_fork`` calls ``cron.start()``, which raises
``SchedulerError``, so the workers fail to boot and gunicorn exits with that error in
its log. Run it with ``gunicorn --preload -c gunicorn.conf.py preload_trap:application``.
"""

import cron
from app import application

cron.start()

__all__ = ["application"]
