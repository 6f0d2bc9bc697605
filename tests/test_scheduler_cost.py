"""Cost bounds of the scheduler against a real Redis server.

Backend calls are counted in process, not at the server. :class:`CountingBackend` is a
``Backend`` subclass that wraps the Redis backend from ``planlagt_core.connect``. It records
one call per public backend method call (such as ``acquire`` or ``heartbeat``), with the
job and fire time the call concerns. Each scheduler gets its own wrapper, so calls are
counted per instance.

The bounds: an idle instance makes the same calls per heartbeat whatever the number of
jobs; per fire time only the instance that runs it calls the backend, the same number of
times with 3 instances as with 6; and 10,000 jobs need no more threads than a handful.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from planlagt_conformance.servers import get_redis_url

from planlagt_core import connect
from planlagt_core.backend import Backend, Lease, LeaseInfo
from planlagt_core.context import RunContext
from planlagt_core.models import ControlState, FireState, InstanceInfo, RunRecord, TriggerRequest
from planlagt_core.scheduler import Scheduler
from planlagt_core.url import BackendURL

pytestmark = pytest.mark.redis

LEASE_TTL_S = 3.0
HEARTBEAT_S = 0.5
POLL_INTERVAL_S = 0.05
SETTLE_DEADLINE_S = 180.0
MEASURED_HEARTBEATS = 5
QUIET_HEARTBEATS = 3
"""Heartbeats with no call besides the heartbeat's own before an instance counts as settled."""
TEST_JOB_PREFIX = "cost-"


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = SETTLE_DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns a true value; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


# -- Counting wrapper --------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One backend call: the method, the job and fire time (ms) it concerns, and when (monotonic and wall)."""

    method: str
    job: str | None
    fire_ms: int | None
    at: float
    wall: float


def _job_of_key(key: str) -> str | None:
    """Return the job name of a lease key (``job:NAME`` or ``job:NAME@FIRE_MS``)."""
    if not key.startswith("job:"):
        return None
    return key[len("job:") :].split("@", 1)[0]


def _fire_of_holder(holder: str) -> int | None:
    try:
        data = json.loads(holder)
    except ValueError:
        return None
    value = data.get("fire_ms") if isinstance(data, dict) else None
    return value if isinstance(value, int) else None


class CountingBackend(Backend):
    """Delegates every operation to ``inner`` and records each call as a :class:`Call`."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(url=inner.url, prefix=inner.prefix)
        self.inner = inner
        self.capabilities = inner.capabilities  # type: ignore[misc]
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: BackendURL) -> Backend:
        raise NotImplementedError("build a CountingBackend around a connected backend")

    def close(self) -> None:
        self.inner.close()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def _count(self, method: str, job: str | None = None, fire_time: float | None = None) -> None:
        fire_ms = None if fire_time is None else round(fire_time * 1000)
        self._count_ms(method, job, fire_ms)

    def _count_ms(self, method: str, job: str | None, fire_ms: int | None) -> None:
        with self._lock:
            self.calls.append(Call(method, job, fire_ms, time.monotonic(), time.time()))

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        self._count_ms("acquire", _job_of_key(key), _fire_of_holder(holder))
        return self.inner._do_acquire(key, ttl_s, holder)

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        self._count_ms("renew", _job_of_key(lease.key), _fire_of_holder(lease.holder))
        return self.inner._do_renew(lease, ttl_s)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        self._count_ms("release", _job_of_key(lease.key), _fire_of_holder(lease.holder))
        return self.inner._do_release(lease, keep_s)

    def _do_inspect(self, key: str) -> LeaseInfo | None:
        self._count("inspect", _job_of_key(key))
        return self.inner._do_inspect(key)

    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState:
        self._count("begin_attempt", job, fire_time)
        return self.inner._do_begin_attempt(lease, job, fire_time, max_attempts, keep_s)

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        self._count("finish_fire", record.job, record.fire_time)
        return self.inner._do_finish_fire(record, lease, keep_s)

    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None:
        self._count("get_fire", job, fire_time)
        return self.inner._do_get_fire(job, fire_time)

    def _do_record_run(self, record: RunRecord) -> None:
        self._count("record_run", record.job, record.fire_time)
        self.inner._do_record_run(record)

    def _do_list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        self._count("list_runs", job)
        return self.inner._do_list_runs(job, limit, since, until)

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        self._count("trim_runs")
        return self.inner._do_trim_runs(max_per_job, max_age_s)

    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        self._count("heartbeat")
        return self.inner._do_heartbeat(info, ttl_s)

    def _do_leave(self, instance_id: str) -> None:
        self._count("leave")
        self.inner._do_leave(instance_id)

    def _do_list_instances(self) -> list[InstanceInfo]:
        self._count("list_instances")
        return self.inner._do_list_instances()

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        self._count("announce_jobs")
        self.inner._do_announce_jobs(instance_id, definitions)

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        self._count("list_job_definitions")
        return self.inner._do_list_job_definitions()

    def _do_read_control(self) -> ControlState:
        self._count("read_control")
        return self.inner._do_read_control()

    def _do_set_paused(self, job: str, paused: bool) -> None:
        self._count("set_paused", job)
        self.inner._do_set_paused(job, paused)

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        self._count("add_trigger", request.job)
        self.inner._do_add_trigger(request)

    def _do_remove_trigger(self, request_id: str) -> bool:
        self._count("remove_trigger")
        return self.inner._do_remove_trigger(request_id)


# -- Fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def redis_prefix_url() -> str:
    """The URL of the test Redis server with a prefix of its own for this test."""
    url = get_redis_url()
    return url + ("&" if "?" in url else "?") + f"prefix=cost-{secrets.token_hex(6)}"


@pytest.fixture
def schedulers() -> Iterator[list[Scheduler]]:
    """Schedulers a test started; stopped at the end."""
    started: list[Scheduler] = []
    yield started
    for scheduler in started:
        if scheduler.running:
            scheduler.stop(grace_s=2.0)


def counted_scheduler(url: str, instance_id: str, **options: Any) -> tuple[Scheduler, CountingBackend]:
    backend = CountingBackend(connect(url))
    options.setdefault("lease_ttl_s", LEASE_TTL_S)
    options.setdefault("heartbeat_s", HEARTBEAT_S)
    return Scheduler(backend, instance_id=instance_id, **options), backend


def noop() -> None:
    pass


def idle_daily_expression(index: int) -> str:
    """Return a daily schedule twelve hours from now, so no job fires during the test."""
    hour = (datetime.now(timezone.utc).hour + 12) % 24
    return f"{index % 60} {hour} * * *"


def heartbeat_times(backend: CountingBackend) -> list[float]:
    return [call.at for call in backend.snapshot() if call.method == "heartbeat"]


def calls_between(backend: CountingBackend, start: float, end: float) -> Counter[str]:
    """Count calls by method made at or after ``start`` and before ``end`` (monotonic times)."""
    return Counter(call.method for call in backend.snapshot() if start <= call.at < end)


def quiet_since(backend: CountingBackend, beats: int) -> bool:
    """Return whether the last ``beats`` heartbeat intervals had no calls but the heartbeat's own."""
    times = heartbeat_times(backend)
    if len(times) < beats + 1:
        return False
    calls = calls_between(backend, times[-beats - 1], times[-1])
    return set(calls) <= {"heartbeat", "read_control"}


def calls_per_heartbeat(backend: CountingBackend) -> Counter[str]:
    """Settle, then count calls over MEASURED_HEARTBEATS heartbeat intervals, per interval."""
    wait_for(lambda: quiet_since(backend, QUIET_HEARTBEATS), "the instance to settle after start")
    first = len(heartbeat_times(backend)) - 1
    wait_for(lambda: len(heartbeat_times(backend)) > first + MEASURED_HEARTBEATS, "the measured heartbeats")
    times = heartbeat_times(backend)
    total = calls_between(backend, times[first], times[first + MEASURED_HEARTBEATS])
    assert all(count % MEASURED_HEARTBEATS == 0 for count in total.values()), total
    return Counter({method: count // MEASURED_HEARTBEATS for method, count in total.items()})


# -- (a) Idle instance -------------------------------------------------------------------


def idle_cost(url: str, job_count: int, schedulers: list[Scheduler]) -> Counter[str]:
    scheduler, backend = counted_scheduler(url, f"idle-{job_count}")
    for index in range(job_count):
        scheduler.add_job(noop, idle_daily_expression(index), name=f"{TEST_JOB_PREFIX}{index}")
    schedulers.append(scheduler)
    scheduler.start()
    try:
        return calls_per_heartbeat(backend)
    finally:
        scheduler.stop(grace_s=2.0)


def test_idle_calls_independent_of_jobs(schedulers: list[Scheduler]) -> None:
    base = get_redis_url()
    few = idle_cost(base + ("&" if "?" in base else "?") + f"prefix=idle-{secrets.token_hex(6)}", 10, schedulers)
    many = idle_cost(base + ("&" if "?" in base else "?") + f"prefix=idle-{secrets.token_hex(6)}", 10_000, schedulers)

    assert few == many
    assert few["heartbeat"] == 1
    assert sum(few.values()) <= 3, few


# -- (b) Calls per fire time -------------------------------------------------------------

FREQUENT_JOBS = 6
WINDOW_S = 5
WINDOW_DRAIN_S = 30.0
FireKey = tuple[str, int]
"""A fire time of a job: (job name, fire time in Unix milliseconds)."""


def wait_until_all_see_all(backends: dict[str, CountingBackend], observer: Backend) -> None:
    """Wait until every instance is live and has sent two heartbeats since, so every view is complete."""
    wait_for(lambda: len(observer.list_instances()) == len(backends), f"{len(backends)} live instances")
    marks = {name: len(heartbeat_times(backend)) for name, backend in backends.items()}
    for name, backend in backends.items():
        wait_for(lambda b=backend, n=name: len(heartbeat_times(b)) >= marks[n] + 2, f"two heartbeats of {name}")


def wait_until_closed(observer: Backend, keys: list[FireKey]) -> None:
    def closed(key: FireKey) -> bool:
        state = observer.get_fire(key[0], key[1] / 1000)
        return state is not None and state.outcome is not None

    for key in keys:
        wait_for(lambda k=key: closed(k), f"fire time {key} to close", deadline_s=WINDOW_DRAIN_S)


@dataclass
class WindowCosts:
    """Calls per fire time of a window, by instance, and calls made for no fire time during it."""

    by_fire: dict[FireKey, dict[str, Counter[str]]]
    unattributed: list[Call]


def fire_time_costs(url: str, instance_count: int, schedulers: list[Scheduler]) -> WindowCosts:
    """Run ``instance_count`` instances of per-second jobs; count their calls for a window of fire times.

    The window starts after every instance has seen all the others, so the assignment of
    jobs to instances has settled.
    """
    backends: dict[str, CountingBackend] = {}
    for index in range(instance_count):
        instance_id = f"inst-{index}"
        scheduler, backend = counted_scheduler(url, instance_id, max_workers=2)
        for job in range(FREQUENT_JOBS):
            scheduler.add_job(noop, "* * * * * *", name=f"{TEST_JOB_PREFIX}{job}")
        backends[instance_id] = backend
        schedulers.append(scheduler)
        scheduler.start()
    observer = connect(url)
    wait_until_all_see_all(backends, observer)

    window_start = int(time.time()) + 2
    fire_times = [second * 1000 for second in range(window_start, window_start + WINDOW_S)]
    keys = [(f"{TEST_JOB_PREFIX}{job}", fire_ms) for fire_ms in fire_times for job in range(FREQUENT_JOBS)]
    wait_until_closed(observer, keys)

    costs = WindowCosts(by_fire={key: {} for key in keys}, unattributed=[])
    for name, backend in backends.items():
        for call in backend.snapshot():
            if call.job is None or not call.job.startswith(TEST_JOB_PREFIX):
                continue
            key = (call.job, call.fire_ms or 0)
            if key in costs.by_fire:
                costs.by_fire[key].setdefault(name, Counter())[call.method] += 1
            elif call.fire_ms is None and window_start <= call.wall < window_start + WINDOW_S:
                costs.unattributed.append(call)
    return costs


def check_one_caller(costs: WindowCosts) -> set[tuple[tuple[str, int], ...]]:
    """Check that one instance alone called the backend for each fire time; return the call profiles."""
    profiles = set()
    for key, by_instance in costs.by_fire.items():
        assert len(by_instance) == 1, f"{key}: calls by {sorted(by_instance)}"
        calls = next(iter(by_instance.values()))
        profiles.add(tuple(sorted(calls.items())))
    assert costs.unattributed == []
    return profiles


def test_fire_time_calls_same_for_3_and_6(schedulers: list[Scheduler]) -> None:
    base = get_redis_url()
    separator = "&" if "?" in base else "?"
    three = fire_time_costs(f"{base}{separator}prefix=fire3-{secrets.token_hex(6)}", 3, schedulers)
    for scheduler in schedulers:
        scheduler.stop(grace_s=2.0)
    six = fire_time_costs(f"{base}{separator}prefix=fire6-{secrets.token_hex(6)}", 6, schedulers)

    profiles_three = check_one_caller(three)
    profiles_six = check_one_caller(six)
    assert profiles_three == profiles_six
    assert profiles_three == {(("acquire", 1), ("begin_attempt", 1), ("finish_fire", 1), ("release", 1))}


def test_fire_times_spread_over_instances(redis_prefix_url: str, schedulers: list[Scheduler]) -> None:
    costs = fire_time_costs(redis_prefix_url, 3, schedulers)

    runners = Counter(next(iter(by_instance)) for by_instance in costs.by_fire.values() if len(by_instance) == 1)
    assert sorted(runners) == ["inst-0", "inst-1", "inst-2"]
    assert max(runners.values()) == min(runners.values())


# -- (c) Threads and fire times of 10,000 jobs -------------------------------------------

MANY_JOBS = 10_000
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")
FIRST_FIRE_DELAY_S = 15
FIRE_SPREAD_S = 10
EXTRA_THREADS = 3
"""Threads besides the workers: heartbeat and timer, plus one spare for an event loop."""


def daily_at(instant: datetime, zone: str) -> str:
    """Return a 6-field daily schedule that fires at ``instant``, written in the wall time of ``zone``."""
    wall = instant.astimezone(ZoneInfo(zone))
    return f"{wall.second} {wall.minute} {wall.hour} * * *"


def test_many_jobs_bounded_threads(redis_prefix_url: str, schedulers: list[Scheduler]) -> None:
    first_fire = int(time.time()) + FIRST_FIRE_DELAY_S
    expected: dict[str, datetime] = {}
    ran: dict[str, list[str]] = {}
    lock = threading.Lock()

    def record(context: RunContext) -> None:
        with lock:
            ran.setdefault(context.job, []).append(context.fire_time.isoformat())

    scheduler, _backend = counted_scheduler(redis_prefix_url, "many", max_workers=8)
    for index in range(MANY_JOBS):
        zone = ZONES[index % len(ZONES)]
        fire = datetime.fromtimestamp(first_fire + index % FIRE_SPREAD_S, tz=ZoneInfo(zone))
        name = f"{TEST_JOB_PREFIX}{index}"
        expected[name] = fire
        scheduler.add_job(record, daily_at(fire, zone), name=name, tz=zone, late_start_s=120.0)
    threads_before = threading.active_count()
    peak = [threads_before]

    def finished() -> bool:
        peak[0] = max(peak[0], threading.active_count())
        with lock:
            return len(ran) == MANY_JOBS

    schedulers.append(scheduler)
    scheduler.start()
    wait_for(finished, "every job to run once")

    assert peak[0] <= threads_before + scheduler.max_workers + EXTRA_THREADS
    wrong = {name: times for name, times in ran.items() if times != [expected[name].isoformat()]}
    assert wrong == {}
