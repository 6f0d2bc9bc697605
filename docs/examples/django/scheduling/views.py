"""The health check of the scheduler that runs in this web server process."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from . import runtime


def healthz(request: HttpRequest) -> JsonResponse:
    """Return 200 while this process's scheduler is healthy, else 503.

    With ``PLANLAGT_START_WITH_APP`` off, no scheduler runs here, so the check passes.
    """
    if not settings.PLANLAGT_START_WITH_APP:
        return JsonResponse({"healthy": True, "scheduler": "not started in web processes"})
    scheduler = runtime.current()
    healthy = scheduler is not None and scheduler.healthy()
    instance_id = None if scheduler is None else scheduler.instance_id
    return JsonResponse({"healthy": healthy, "instance_id": instance_id}, status=200 if healthy else 503)
