"""Starts the scheduler with the web application, in the processes that serve requests."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from django.apps import AppConfig
from django.conf import settings

MANAGEMENT_PROGRAMS = ("manage.py", "django-admin", "__main__.py")


class SchedulingConfig(AppConfig):
    name = "scheduling"

    def ready(self) -> None:
        if settings.PLANLAGT_START_WITH_APP and serves_requests(sys.argv, os.environ):
            from . import runtime

            runtime.start()


def serves_requests(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Return whether this process serves the web application, so it should run a scheduler.

    Management commands do not, except ``runserver``. With its autoreloader, ``runserver``
    serves from a child process that Django marks with ``RUN_MAIN=true``, while the parent
    only watches files. Any other program, such as gunicorn loading ``wsgi.py``, does.
    """
    program = os.path.basename(argv[0]) if argv else ""
    if program not in MANAGEMENT_PROGRAMS:
        return True
    command = argv[1] if len(argv) > 1 else "help"
    if command != "runserver":
        return False
    return "--noreload" in argv or environ.get("RUN_MAIN") == "true"
