"""A WSGI application served by gunicorn; each worker also runs a scheduler (see ``gunicorn.conf.py``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import cron


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Return this worker's pid and its scheduler's health, whatever the path."""
    scheduler = cron.scheduler
    healthy = scheduler is not None and scheduler.healthy()
    body = json.dumps({"pid": os.getpid(), "scheduler_healthy": healthy}).encode() + b"\n"
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
