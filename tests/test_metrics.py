"""The metrics extra and the health check: scraped over real HTTP on 127.0.0.1.

Schedulers run in this process on ``memory://`` stores with jobs that fire every second.
Values are read back by parsing the exposition text, and compared with the run history
the backend stored.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import secrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from planlagt_memory import MemoryBackend
from prometheus_client.parser import text_string_to_metric_families

from planlagt_core.backend import Lease, LeaseState
from planlagt_core.cli_metrics import add_metrics_options, start_metrics
from planlagt_core.context import RunContext
from planlagt_core.errors import BackendUnavailable, ConfigurationError
from planlagt_core.history import History
from planlagt_core.housekeeping import SUCCESS_AGE_JOB, TRIM_JOB
from planlagt_core.metrics import MetricsServer, SchedulerMetrics
from planlagt_core.models import Outcome
from planlagt_core.scheduler import Scheduler

DEADLINE_S = 30.0
POLL_S = 0.05
LEASE_TTL_S = 1.0
HEARTBEAT_S = 0.2

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def wait_for(condition: Callable[[], Any], description: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {description}")


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def health_status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(f"{url}/healthz", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def new_scheduler(backend: str | MemoryBackend, instance_id: str) -> Scheduler:
    return Scheduler(backend, instance_id=instance_id, lease_ttl_s=LEASE_TTL_S, heartbeat_s=HEARTBEAT_S)


@pytest.fixture
def store_url() -> str:
    return f"memory://metrics-{secrets.token_hex(4)}"


@pytest.fixture
def served() -> Iterator[Callable[[Scheduler], tuple[SchedulerMetrics, MetricsServer]]]:
    """Attach metrics to schedulers and serve them on free ports; stop everything afterwards."""
    started: list[tuple[Scheduler, MetricsServer]] = []

    def serve(scheduler: Scheduler) -> tuple[SchedulerMetrics, MetricsServer]:
        metrics = SchedulerMetrics(scheduler)
        server = metrics.serve(0)
        started.append((scheduler, server))
        return metrics, server

    yield serve
    for scheduler, server in started:
        scheduler.stop(grace_s=0)
        server.close()


# -- Runs, histograms and health -----------------------------------------------


def test_runs_counted_by_job_and_outcome(store_url: str, served) -> None:
    scheduler = new_scheduler(store_url, "metrics-1")

    @scheduler.job("* * * * * *", name="ok")
    def ok() -> None:
        pass

    @scheduler.job("* * * * * *", name="boom")
    def boom() -> None:
        raise RuntimeError("disk full")

    _, server = served(scheduler)
    before = scrape(server.url)
    assert value(before, "planlagt_runs_total", job="ok", outcome="succeeded") == 0
    assert value(before, "planlagt_runs_total", job="boom", outcome="failed") == 0
    assert value(before, "planlagt_live_instances") == 0
    assert health_status(server.url) == 503

    scheduler.start()
    wait_for(
        lambda: (
            (value(scrape(server.url), "planlagt_runs_total", job="ok", outcome="succeeded") or 0) >= 2
            and (value(scrape(server.url), "planlagt_runs_total", job="boom", outcome="failed") or 0) >= 2
        ),
        "two runs of each job in the metrics",
    )
    scheduler.stop()
    after = scrape(server.url)

    counts = {job: History(scheduler.backend).counts(job=job) for job in ("ok", "boom")}
    assert value(after, "planlagt_runs_total", job="ok", outcome="succeeded") == counts["ok"][Outcome.SUCCEEDED]
    assert value(after, "planlagt_runs_total", job="boom", outcome="failed") == counts["boom"][Outcome.FAILED]
    assert value(after, "planlagt_runs_total", job="ok", outcome="failed") == 0
    assert value(after, "planlagt_runs_total", job="boom", outcome="succeeded") == 0


def test_histograms_count_each_attempt(store_url: str, served) -> None:
    scheduler = new_scheduler(store_url, "metrics-1")

    @scheduler.job("* * * * * *", name="ok")
    def ok() -> None:
        time.sleep(0.02)

    _, server = served(scheduler)
    before = scrape(server.url)
    assert value(before, "planlagt_run_duration_seconds_count", job="ok", outcome="succeeded") is None
    assert value(before, "planlagt_run_lateness_seconds_count", job="ok") is None

    scheduler.start()
    wait_for(
        lambda: (value(scrape(server.url), "planlagt_runs_total", job="ok", outcome="succeeded") or 0) >= 3,
        "three runs of the job",
    )
    scheduler.stop()
    after = scrape(server.url)

    runs = value(after, "planlagt_runs_total", job="ok", outcome="succeeded")
    assert value(after, "planlagt_run_duration_seconds_count", job="ok", outcome="succeeded") == runs
    assert value(after, "planlagt_run_lateness_seconds_count", job="ok") == runs
    duration_sum = value(after, "planlagt_run_duration_seconds_sum", job="ok", outcome="succeeded")
    assert duration_sum is not None
    assert duration_sum >= 0.02 * runs
    assert value(after, "planlagt_run_duration_seconds_bucket", job="ok", outcome="succeeded", le="+Inf") == runs


def test_health_check_follows_scheduler_state(store_url: str, served) -> None:
    scheduler = new_scheduler(store_url, "metrics-1")
    scheduler.add_job(lambda: None, "@every 1h", name="hourly")
    _, server = served(scheduler)
    assert health_status(server.url) == 503

    scheduler.start()
    wait_for(lambda: health_status(server.url) == 200, "the health check to pass after start")
    assert health_status(server.url, method="HEAD") == 200
    assert value(scrape(server.url), "planlagt_scheduler_healthy") == 1

    scheduler.stop()
    assert health_status(server.url) == 503
    assert value(scrape(server.url), "planlagt_scheduler_healthy") == 0


def test_health_body_shows_backend_contact(store_url: str, served) -> None:
    scheduler = new_scheduler(store_url, "metrics-1")
    scheduler.add_job(lambda: None, "@every 1h", name="hourly")
    _, server = served(scheduler)
    scheduler.start()
    wait_for(lambda: health_status(server.url) == 200, "the health check to pass")

    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
        body = response.read().decode()
    assert '"instance_id": "metrics-1"' in body
    assert '"running": true' in body
    assert '"backend_contact_age_s": null' not in body


def test_series_of_later_jobs_start_at_zero(store_url: str, served) -> None:
    scheduler = new_scheduler(store_url, "metrics-1")
    _, server = served(scheduler)
    scheduler.add_job(lambda: None, "@every 1h", name="added-later")
    assert value(scrape(server.url), "planlagt_runs_total", job="added-later", outcome="failed") == 0

    scheduler.start()
    assert value(scrape(server.url), "planlagt_runs_total", job=TRIM_JOB, outcome="succeeded") == 0


# -- Cluster view --------------------------------------------------------------


def test_live_instances_and_jobs_owned(store_url: str, served) -> None:
    schedulers = [new_scheduler(store_url, f"metrics-{n}") for n in (1, 2)]
    for scheduler in schedulers:
        for name in ("a", "b", "c", "d"):
            scheduler.add_job(lambda: None, "@every 1h", name=name)
    servers = [served(scheduler)[1] for scheduler in schedulers]
    assert value(scrape(servers[0].url), "planlagt_live_instances") == 0

    for scheduler in schedulers:
        scheduler.start()
    job_count = len(schedulers[0].jobs)
    for server in servers:
        wait_for(lambda server=server: value(scrape(server.url), "planlagt_live_instances") == 2, "two live instances")

    for server in servers:
        samples = scrape(server.url)
        owned = [value(samples, "planlagt_jobs_owned", instance_id=f"metrics-{n}") for n in (1, 2)]
        assert None not in owned
        assert sum(owned) == job_count

    schedulers[1].stop()
    wait_for(lambda: value(scrape(servers[0].url), "planlagt_live_instances") == 1, "one live instance after a stop")
    samples = scrape(servers[0].url)
    assert value(samples, "planlagt_jobs_owned", instance_id="metrics-1") == job_count
    assert value(samples, "planlagt_jobs_owned", instance_id="metrics-2") is None


class RenewalFailingBackend(MemoryBackend):
    """A memory backend whose lease renewals fail as if the server were unreachable, on request."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_renewals = threading.Event()

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        if self.fail_renewals.is_set():
            raise BackendUnavailable("renewal failed on purpose in the test")
        return super()._do_renew(lease, ttl_s)


def test_lease_renewal_failures_counted(served) -> None:
    backend = RenewalFailingBackend()
    scheduler = new_scheduler(backend, "metrics-1")
    states: list[LeaseState] = []

    @scheduler.job("@every 1h", name="long")
    def long(context: RunContext) -> None:
        backend.fail_renewals.set()
        deadline = time.monotonic() + DEADLINE_S
        while context.lease_state is LeaseState.HELD and time.monotonic() < deadline:
            context.wait(0.1)
        states.append(context.lease_state)

    _, server = served(scheduler)
    assert value(scrape(server.url), "planlagt_lease_renewal_failures_total") == 0

    scheduler.start()
    scheduler.trigger("long")
    wait_for(lambda: states, "the run to see its lease at risk")
    assert states[0] is not LeaseState.HELD
    assert (value(scrape(server.url), "planlagt_lease_renewal_failures_total") or 0) >= 1
    scheduler.stop(grace_s=0)
    backend.close()


def test_success_overdue_reported_by_checking_instance(store_url: str, served) -> None:
    scheduler = new_scheduler(store_url, "metrics-1")
    scheduler.add_job(lambda: None, "@every 1h", name="fine")

    @scheduler.job("@every 1h", name="never-succeeds", max_success_age_s=60)
    def never_succeeds() -> None:
        raise RuntimeError("upstream down")

    _, server = served(scheduler)
    scheduler.start()
    wait_for(lambda: value(scrape(server.url), "planlagt_live_instances") == 1, "the first heartbeat")
    assert value(scrape(server.url), "planlagt_job_success_overdue", job="never-succeeds") == 0
    assert value(scrape(server.url), "planlagt_job_success_overdue", job="fine") is None

    scheduler.trigger(SUCCESS_AGE_JOB)
    wait_for(
        lambda: value(scrape(server.url), "planlagt_job_success_overdue", job="never-succeeds") == 1,
        "the success-age check to flag the job",
    )
    assert TRIM_JOB in scheduler.jobs


# -- Mounting in an application ----------------------------------------------------


def call_asgi(app: Callable[..., Any], path: str) -> tuple[int, bytes]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string": b"", "headers": []}
    asyncio.run(app(scope, receive, send))
    status = next(message["status"] for message in messages if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in messages if message["type"] == "http.response.body")
    return status, body


def test_asgi_app_serves_health_and_metrics(store_url: str) -> None:
    scheduler = new_scheduler(store_url, "metrics-1")
    scheduler.add_job(lambda: None, "@every 1h", name="hourly")
    app = SchedulerMetrics(scheduler).asgi_app()

    status, _ = call_asgi(app, "/healthz")
    assert status == 503
    status, body = call_asgi(app, "/metrics")
    assert status == 200
    assert b'planlagt_runs_total{job="hourly",outcome="succeeded"} 0.0' in body

    scheduler.start()
    try:
        wait_for(lambda: call_asgi(app, "/internal/healthz")[0] == 200, "the mounted health check to pass")
    finally:
        scheduler.stop(grace_s=0)


def test_registry_keeps_application_metrics(store_url: str) -> None:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    Gauge("app_queue_depth", "An application metric in the same registry.", registry=registry).set(3)
    scheduler = new_scheduler(store_url, "metrics-1")
    SchedulerMetrics(scheduler, registry=registry)

    assert registry.get_sample_value("app_queue_depth") == 3
    assert registry.get_sample_value("planlagt_live_instances") == 0


# -- The extra and the command-line options ----------------------------------------


@pytest.mark.fast
def test_import_without_prometheus_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "planlagt_core.metrics")

    with pytest.raises(ImportError) as caught:
        importlib.import_module("planlagt_core.metrics")
    assert 'pip install "planlagt[metrics]"' in str(caught.value)


@pytest.mark.fast
def test_cli_without_prometheus_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "planlagt_core.metrics")
    scheduler = Scheduler("memory://", instance_id="metrics-1")

    with pytest.raises(ConfigurationError) as caught:
        start_metrics(parse_run_options("--metrics-port", "0"), scheduler)
    assert "--metrics-port" in str(caught.value)
    assert 'pip install "planlagt[metrics]"' in str(caught.value)


def parse_run_options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_metrics_options(parser)
    return parser.parse_args(argv)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--metrics-host", "0.0.0.0"), "--metrics-host is invalid without --metrics-port"),
        (("--metrics-port", "70000"), "--metrics-port must be from 0 to 65535, not 70000"),
        (("--metrics-port", "-1"), "--metrics-port must be from 0 to 65535, not -1"),
    ],
)
def test_cli_options_reject_bad_values(argv: tuple[str, ...], fragment: str) -> None:
    scheduler = Scheduler("memory://", instance_id="metrics-1")
    with pytest.raises(ConfigurationError) as caught:
        start_metrics(parse_run_options(*argv), scheduler)
    assert fragment in str(caught.value)


@pytest.mark.fast
def test_cli_without_port_serves_nothing() -> None:
    scheduler = Scheduler("memory://", instance_id="metrics-1")
    with start_metrics(parse_run_options(), scheduler) as server:
        assert server is None


@pytest.mark.fast
def test_cli_port_in_use_is_reported() -> None:
    scheduler = Scheduler("memory://", instance_id="metrics-1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as caught:
            start_metrics(parse_run_options("--metrics-port", str(port)), scheduler)
    assert f"cannot serve metrics on 127.0.0.1:{port}" in str(caught.value)


def test_cli_serves_on_loopback_by_default() -> None:
    scheduler = Scheduler("memory://", instance_id="metrics-1")
    scheduler.add_job(lambda: None, "@every 1h", name="hourly")
    with start_metrics(parse_run_options("--metrics-port", "0"), scheduler) as server:
        assert isinstance(server, MetricsServer)
        assert server.host == "127.0.0.1"
        assert value(scrape(server.url), "planlagt_runs_total", job="hourly", outcome="succeeded") == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/metrics", timeout=5)
