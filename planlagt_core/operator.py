"""Operator API: cluster status, history, and pause, resume and trigger across every instance.

Everything here goes through the backend, so it works from any process that can reach it
(the ``planlagt status``, ``history``, ``trigger``, ``pause`` and ``resume`` commands use
it), with no connection to the instances themselves. Jobs are known from the definitions
the live instances announce.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .assignment import assign
from .backend import Backend, Feature
from .errors import ConfigurationError, InvalidJob, InvalidSchedule
from .history import History
from .job import schedule_weight
from .models import FireState, InstanceInfo, Outcome, RunRecord, TriggerRequest
from .plugins import DEFAULT_URL, connect
from .schedule import parse_schedule
from .url import backend_url_from_env

__all__ = ["ClusterStatus", "InstanceStatus", "JobStatus", "Operator", "TriggerResult"]

HISTORY_SCAN_FOR_STATUS = 1000
"""Newest run records read to find jobs that ran but are no longer announced."""

TRIGGER_POLL_S = 0.2
"""How often ``trigger(wait=True)`` reads the fire state of the manual run."""


@dataclass
class JobStatus:
    """One job as the live instances announce it, with its last and current runs.

    A job that only appears in recent run history (no live instance announces it) has
    no schedule, zone, owner or next fire time.
    """

    name: str
    schedule: str
    timezone: str
    paused: bool
    next_fire_time: str | None
    owner: str | None
    last_run: dict[str, Any] | None = None
    running: dict[str, Any] | None = None
    instances: list[str] = field(default_factory=list)
    definitions_differ: bool = False
    success_overdue: bool | None = None


@dataclass
class InstanceStatus:
    """One live instance."""

    instance_id: str
    hostname: str
    pid: int
    last_heartbeat: str | None
    jobs_owned: list[str]


@dataclass
class ClusterStatus:
    """Everything ``planlagt status`` shows."""

    backend: str
    generated_at: str
    jobs: list[JobStatus]
    instances: list[InstanceStatus]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TriggerResult:
    """The outcome of a manual run, or only its request when not waited for."""

    request: TriggerRequest
    state: FireState | None
    record: RunRecord | None

    @property
    def succeeded(self) -> bool:
        return self.state is not None and self.state.outcome is Outcome.SUCCEEDED


class Operator:
    """Reads and steers a cluster through its backend (a URL, a Backend, or the default)."""

    def __init__(self, backend: str | Backend | None = None) -> None:
        if isinstance(backend, Backend):
            self.backend = backend
        else:
            self.backend = connect(backend_url_from_env(backend) or DEFAULT_URL)
        self.history = History(self.backend)

    def close(self) -> None:
        self.backend.close()

    # -- Reading -------------------------------------------------------------------

    def definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Return ``{job: {instance: definition}}`` from the live instances' announcements."""
        by_job: dict[str, dict[str, dict[str, Any]]] = {}
        for instance_id, jobs in self.backend.list_job_definitions().items():
            for name, definition in jobs.items():
                by_job.setdefault(name, {})[instance_id] = definition
        return by_job

    def known_jobs(self) -> list[str]:
        return sorted(self.definitions())

    def check_job(self, job: str) -> str:
        """Return ``job`` if a live instance announces it; else raise ``InvalidJob`` listing the known ones."""
        known = self.known_jobs()
        if job not in known:
            raise InvalidJob(f"unknown job {job!r}; jobs announced by live instances: {', '.join(known) or 'none'}")
        return job

    def status(self, *, now: float | None = None) -> ClusterStatus:
        """Return jobs, their last and current runs, and the live instances with the jobs each owns."""
        now = time.time() if now is None else now
        members = self.backend.list_instances()
        definitions = self.definitions()
        paused = (
            self.backend.read_control().paused if self.backend.capabilities.supports(Feature.CONTROL) else frozenset()
        )
        owners = _owners(definitions, members)
        jobs = [
            self._job_status(name, by_instance, name in paused, owners.get(name), now)
            for name, by_instance in sorted(definitions.items())
        ]
        jobs += [self._history_only_status(name, name in paused) for name in self._jobs_in_history(definitions)]
        instances = [
            InstanceStatus(
                instance_id=member.instance_id,
                hostname=member.hostname,
                pid=member.pid,
                last_heartbeat=_iso(member.last_heartbeat),
                jobs_owned=sorted(name for name, owner in owners.items() if owner == member.instance_id),
            )
            for member in members
        ]
        return ClusterStatus(backend=self.backend.url, generated_at=_iso(now) or "", jobs=jobs, instances=instances)

    def _job_status(
        self, name: str, by_instance: dict[str, dict[str, Any]], paused: bool, owner: str | None, now: float
    ) -> JobStatus:
        definition = next(iter(by_instance.values()))
        differ = any(other != definition for other in by_instance.values())
        last = self.history.last_run(name)
        status = JobStatus(
            name=name,
            schedule=str(definition.get("schedule")),
            timezone=str(definition.get("timezone")),
            paused=paused,
            next_fire_time=_next_fire(definition, now),
            owner=owner,
            last_run=_record_summary(last),
            running=self._running(name),
            instances=sorted(by_instance),
            definitions_differ=differ,
        )
        max_age = (definition.get("policy") or {}).get("max_success_age_s")
        if isinstance(max_age, (int, float)):
            age = self.history.success_age_s(name, now)
            status.success_overdue = age is None or age > max_age
        return status

    def _jobs_in_history(self, announced: dict[str, Any]) -> list[str]:
        """Return jobs with recent run records that no live instance announces (they stopped)."""
        recent = self.backend.list_runs(limit=HISTORY_SCAN_FOR_STATUS)
        return sorted({record.job for record in recent} - set(announced))

    def _history_only_status(self, name: str, paused: bool) -> JobStatus:
        return JobStatus(
            name=name,
            schedule="-",
            timezone="-",
            paused=paused,
            next_fire_time=None,
            owner=None,
            last_run=_record_summary(self.history.last_run(name)),
            running=self._running(name),
        )

    def _running(self, job: str) -> dict[str, Any] | None:
        info = self.backend.inspect(f"job:{job}")
        if info is None or info.released:
            return None
        try:
            holder = json.loads(info.holder)
        except ValueError:
            holder = {}
        fire_ms = holder.get("fire_ms")
        return {
            "instance": holder.get("instance"),
            "fire_time": _iso(fire_ms / 1000) if isinstance(fire_ms, (int, float)) else None,
            "since": _iso(holder.get("since")),
            "fencing_token": info.token,
            "manual": bool(holder.get("manual")),
        }

    def runs(self, job: str | None = None, *, limit: int = 20) -> list[RunRecord]:
        """Return the newest ``limit`` run records of ``job`` (or of all jobs)."""
        if job is not None:
            self.check_job(job)
        return self.backend.list_runs(job, limit=limit)

    # -- Steering ------------------------------------------------------------------

    def pause(self, job: str) -> None:
        """Pause ``job`` on every instance; each honours it within one heartbeat."""
        self.backend.set_paused(self.check_job(job), True)

    def resume(self, job: str) -> None:
        """Resume a paused job on every instance."""
        self.backend.set_paused(self.check_job(job), False)

    def trigger(self, job: str, *, wait: bool = True, timeout_s: float | None = None) -> TriggerResult:
        """Ask the instance that owns ``job`` to run it once now, under the job's lock.

        With ``wait``, block until the manual run has a final outcome, or ``timeout_s``
        passed (then ``state`` is the last seen, without an outcome). The manual run's fire
        time is the request's ``requested_at``.
        """
        request = TriggerRequest(
            request_id=secrets.token_hex(8),
            job=self.check_job(job),
            requested_at=round(time.time(), 3),
            requested_by=f"{socket.gethostname()} (planlagt trigger)",
        )
        self.backend.add_trigger(request)
        if not wait:
            return TriggerResult(request, None, None)
        return self._wait_for(request, timeout_s)

    def _wait_for(self, request: TriggerRequest, timeout_s: float | None) -> TriggerResult:
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout_s!r}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        state = None
        while deadline is None or time.monotonic() < deadline:
            state = self.backend.get_fire(request.job, request.requested_at)
            if state is not None and state.outcome is not None:
                records = self.backend.list_runs(
                    request.job, limit=10, since=request.requested_at, until=request.requested_at
                )
                record = next((r for r in records if r.trigger_id == request.request_id), None)
                return TriggerResult(request, state, record)
            time.sleep(TRIGGER_POLL_S)
        return TriggerResult(request, state, None)


def _owners(definitions: dict[str, dict[str, dict[str, Any]]], members: list[InstanceInfo]) -> dict[str, str]:
    """Compute the assignment the instances compute, from what they announce."""
    live = [member.instance_id for member in members]
    weights: dict[str, float] = {}
    candidates: dict[str, list[str]] = {}
    for name, by_instance in definitions.items():
        definition = next(iter(by_instance.values()))
        try:
            weights[name] = schedule_weight(parse_schedule(str(definition["schedule"]), str(definition["timezone"])))
        except (InvalidSchedule, KeyError):
            continue
        candidates[name] = [instance for instance in live if instance in by_instance]
    digests = {member.jobs_digest for member in members}
    return assign(weights, live, None if len(digests) <= 1 else candidates)


def _next_fire(definition: dict[str, Any], now: float) -> str | None:
    try:
        schedule = parse_schedule(str(definition["schedule"]), str(definition["timezone"]))
    except (InvalidSchedule, KeyError):
        return None
    return schedule.next_after(datetime.fromtimestamp(now, tz=timezone.utc)).isoformat()


def _record_summary(record: RunRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "fire_time": _iso(record.fire_time),
        "instance": record.instance_id,
        "outcome": record.outcome.value,
        "attempt": record.attempt,
        "started_at": _iso(record.started_at),
        "duration_s": record.duration_s,
        "error": None if record.error_type is None else f"{record.error_type}: {record.error_message}",
        "reason": record.reason,
        "manual": record.manual,
    }


def _iso(timestamp: float | None) -> str | None:
    if not isinstance(timestamp, (int, float)):
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()
