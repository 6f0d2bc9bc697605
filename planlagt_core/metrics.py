"""Prometheus metrics and the health check of one scheduler instance.

Needs the ``metrics`` extra (``pip install "planlagt[metrics]"``, which installs
prometheus-client); importing this module without it raises ``ImportError`` naming the
extra.

:class:`SchedulerMetrics` is a listener (it counts the runs this instance records) and a
collector (it reads membership, lease renewal failures, overdue jobs and health when
scraped). Serve it on its own port with :meth:`SchedulerMetrics.serve`, or mount
:meth:`~SchedulerMetrics.wsgi_app` / :meth:`~SchedulerMetrics.asgi_app` in your
application. Either way, a request path ending in ``/healthz`` gets the health check
(200 when :meth:`Scheduler.healthy` is true, else 503), and any other path gets the
metrics, as prometheus-client's own apps do.

Every value describes this instance and its own view of the cluster. Sum the counters
over instances for cluster totals. ``planlagt_live_instances`` and
``planlagt_jobs_owned`` are the same on every instance once their views agree.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .context import RunContext
from .errors import ConfigurationError
from .housekeeping import SUCCESS_AGE_JOB
from .listeners import Listener
from .models import Outcome, RunRecord

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app, make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:
    raise ImportError(
        'planlagt metrics need prometheus-client; install it with: pip install "planlagt[metrics]"',
        name=exc.name,
    ) from exc

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["DEFAULT_METRICS_HOST", "HEALTH_PATH", "MetricsServer", "SchedulerMetrics"]

LOG = logging.getLogger(__name__)

DEFAULT_METRICS_HOST = "127.0.0.1"
HEALTH_PATH = "/healthz"

LATENESS_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Buckets of ``planlagt_run_lateness_seconds``, from 10 ms to 5 minutes."""

DURATION_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0)
"""Buckets of ``planlagt_run_duration_seconds``, from sub-second jobs to six-hour batches."""

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SchedulerMetrics(Listener):
    """Metrics of ``scheduler``, registered in ``registry`` (a new ``CollectorRegistry`` when None).

    Creating it adds it to the scheduler's listeners, so create it before
    :meth:`Scheduler.start` to count every run. Each job's ``planlagt_runs_total`` series
    exist at 0 from the first scrape after the job is registered. Pass ``registry=prometheus_client.REGISTRY``
    to expose these metrics next to the application's own; only one ``SchedulerMetrics``
    fits in one registry, because the metric names would clash.

    Metrics (durations in seconds):

    - ``planlagt_runs_total{job, outcome}``: run records this instance wrote, one per
      attempt, skip or miss; ``outcome`` is a value of :class:`~planlagt_core.models.Outcome`.
    - ``planlagt_run_lateness_seconds{job}``: how long after its fire time the first
      attempt of a scheduled run started (manual runs and retries are not observed).
    - ``planlagt_run_duration_seconds{job, outcome}``: run time of attempts that ran.
    - ``planlagt_lease_renewal_failures_total``: lease renewals that failed, at-risk and
      lost alike.
    - ``planlagt_live_instances``: live instances in this instance's last heartbeat.
    - ``planlagt_jobs_owned{instance_id}``: jobs each live instance owns, as this
      instance computes it for the jobs it has registered.
    - ``planlagt_job_success_overdue{job}``: 1 when the job's last success is older than
      its ``max_success_age_s``, else 0. Only the instance that currently owns the
      ``planlagt.check-success-age`` job reports it, so take ``max by (job)``.
    - ``planlagt_scheduler_healthy``: 1 while :meth:`Scheduler.healthy` is true.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        registry: CollectorRegistry | None = None,
        *,
        lateness_buckets_s: Iterable[float] = LATENESS_BUCKETS_S,
        duration_buckets_s: Iterable[float] = DURATION_BUCKETS_S,
    ) -> None:
        self.scheduler = scheduler
        self.registry = registry if registry is not None else CollectorRegistry()
        # Registered first, so that each scrape adds the series of new jobs (such as the
        # housekeeping jobs added by start()) before the run counter below is collected.
        self.registry.register(_ClusterCollector(scheduler, before_collect=self._add_job_series))
        self._runs = Counter(
            "planlagt_runs",
            "Run records this instance wrote: attempts, skipped and missed fire times.",
            ["job", "outcome"],
            registry=self.registry,
        )
        self._lateness = Histogram(
            "planlagt_run_lateness_seconds",
            "Seconds from a fire time to the start of its first attempt (scheduled runs only).",
            ["job"],
            buckets=tuple(lateness_buckets_s),
            registry=self.registry,
        )
        self._duration = Histogram(
            "planlagt_run_duration_seconds",
            "Run time of attempts in seconds, by outcome.",
            ["job", "outcome"],
            buckets=tuple(duration_buckets_s),
            registry=self.registry,
        )
        self._jobs_with_series: set[str] = set()
        self._add_job_series()
        scheduler.listeners.add(self)

    def _add_job_series(self) -> None:
        """Create the ``planlagt_runs_total`` series of every registered job at 0, so rates start at once."""
        for job in self.scheduler.jobs.keys() - self._jobs_with_series:
            for outcome in Outcome:
                self._runs.labels(job, outcome.value)
            self._jobs_with_series.add(job)

    # -- Listener ------------------------------------------------------------------

    def run_started(self, context: RunContext) -> None:
        if context.manual or context.attempt != 1:
            return
        lateness_s = self.scheduler.clock.time() - context.fire_time.timestamp()
        self._lateness.labels(context.job).observe(max(lateness_s, 0.0))

    def run_finished(self, record: RunRecord) -> None:
        self._runs.labels(record.job, record.outcome.value).inc()
        if record.duration_s is not None:
            self._duration.labels(record.job, record.outcome.value).observe(record.duration_s)

    # -- Serving -------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Return whether the scheduler is healthy, and the details the health check shows."""
        scheduler = self.scheduler
        contact = scheduler.last_backend_contact
        details = {
            "healthy": scheduler.healthy(),
            "instance_id": scheduler.instance_id,
            "running": scheduler.running,
            "backend_contact_age_s": None if contact is None else round(scheduler.clock.monotonic() - contact, 3),
            "max_backend_contact_age_s": scheduler.membership_ttl_s,
        }
        return bool(details["healthy"]), details

    def wsgi_app(self) -> WSGIApp:
        """Return a WSGI app: the health check on paths ending in ``/healthz``, else the metrics."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if not _is_health_path(environ.get("PATH_INFO", "")):
                return metrics_app(environ, start_response)
            status, body = self._health_response()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

        return app

    def asgi_app(self) -> Callable[..., Any]:
        """Return an ASGI app: the health check on paths ending in ``/healthz``, else the metrics."""
        metrics_app = make_asgi_app(self.registry)

        async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
            if scope["type"] != "http" or not _is_health_path(scope.get("path", "")):
                await metrics_app(scope, receive, send)
                return
            status, body = self._health_response()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": int(status.split()[0]), "headers": headers})
            await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

        return app

    def serve(self, port: int, host: str = DEFAULT_METRICS_HOST) -> MetricsServer:
        """Serve :meth:`wsgi_app` on ``host``:``port`` from a background thread; return the server.

        Port 0 picks a free port (see :attr:`MetricsServer.port`). Raises
        ``ConfigurationError`` when the address cannot be bound.
        """
        return MetricsServer(self.wsgi_app(), host, port)

    def _health_response(self) -> tuple[str, bytes]:
        healthy, details = self.health()
        status = "200 OK" if healthy else "503 Service Unavailable"
        return status, (json.dumps(details) + "\n").encode()


def _is_health_path(path: str) -> bool:
    return path.rstrip("/").endswith(HEALTH_PATH)


# -- Values read when scraped ------------------------------------------------------


@dataclass(frozen=True)
class _ClusterSnapshot:
    live: tuple[str, ...]
    owners: Mapping[str, str]
    renewal_failures: int


def _snapshot(scheduler: Scheduler) -> _ClusterSnapshot:
    return _ClusterSnapshot(
        live=scheduler.live_instances,
        owners=scheduler.job_owners,
        renewal_failures=scheduler.lease_renewal_failures,
    )


class _ClusterCollector:
    """Reads the values that are states, not events, each time the registry is scraped."""

    def __init__(self, scheduler: Scheduler, before_collect: Callable[[], None]) -> None:
        self._scheduler = scheduler
        self._before_collect = before_collect

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        self._before_collect()
        snapshot = _snapshot(self._scheduler)
        renewals, live, owned, overdue, healthy = self._families()
        renewals.add_metric([], snapshot.renewal_failures)
        live.add_metric([], len(snapshot.live))
        counts = dict.fromkeys(snapshot.live, 0)
        for owner in snapshot.owners.values():
            counts[owner] = counts.get(owner, 0) + 1
        for instance_id, count in sorted(counts.items()):
            owned.add_metric([instance_id], count)
        if snapshot.owners.get(SUCCESS_AGE_JOB) == self._scheduler.instance_id:
            flagged = dict(self._scheduler.overdue)
            for name, job in sorted(self._scheduler.jobs.items()):
                if job.policy.max_success_age_s is not None:
                    overdue.add_metric([name], 1 if name in flagged else 0)
        healthy.add_metric([], 1 if self._scheduler.healthy() else 0)
        yield from (renewals, live, owned, overdue, healthy)

    @staticmethod
    def _families() -> tuple[Metric, ...]:
        return (
            CounterMetricFamily(
                "planlagt_lease_renewal_failures", "Lease renewals that failed on this instance, at risk or lost."
            ),
            GaugeMetricFamily("planlagt_live_instances", "Live instances in this instance's last heartbeat."),
            GaugeMetricFamily(
                "planlagt_jobs_owned",
                "Jobs each live instance owns, as this instance computes it.",
                labels=["instance_id"],
            ),
            GaugeMetricFamily(
                "planlagt_job_success_overdue",
                "1 when the last success is older than max_success_age_s (reported by the checking instance).",
                labels=["job"],
            ),
            GaugeMetricFamily("planlagt_scheduler_healthy", "1 while the scheduler loops run and reach the backend."),
        )


# -- HTTP server -------------------------------------------------------------------


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("Metrics request from %s: " + format, self.address_string(), *args)


class MetricsServer:
    """An HTTP server for a WSGI app in a daemon thread; :meth:`close` stops it."""

    def __init__(self, app: WSGIApp, host: str, port: int) -> None:
        server_class = type("_Server", (_ThreadingServer,), {"address_family": _address_family(host)})
        try:
            self._httpd = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}; choose another port") from exc
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="planlagt-metrics", daemon=True)
        self._thread.start()
        LOG.info("Serving metrics on %s and the health check on %s%s", self.url, self.url, HEALTH_PATH)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and close the socket. Safe to call more than once."""
        if not self._thread.is_alive():
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _address_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
