"""One scheduler instance process for the scheduler cases, configured by a JSON spec file.

Run as ``python -m planlagt_conformance.instance --spec FILE.json``. The spec (see
:class:`InstanceSpec`) names the backend, the instance id, the lease and clock settings
and the jobs. The URL is read from the file, not from the command line, so a password in
it does not show in process lists.

The process appends one JSON object per line to the shared journal, each with a single
``write`` so that lines from several processes never interleave:

``ready``
    The scheduler is healthy (its first heartbeat reached the backend).
``started``
    An attempt is about to call the job function: its fire time, attempt number and
    fencing token.
``lease``
    The attempt's run context reported a change: the new lease state (``held``,
    ``at_risk`` or ``lost``) and the stop reason, if any.
``finished``
    The scheduler wrote a run record: an attempt's outcome, or a fire time closed as
    ``skipped``, ``missed`` or ``failed`` without running. An attempt's ``succeeded``
    means its completion was recorded under its lease, and ``lease_lost`` means it was not.
``stopped``
    ``Scheduler.run()`` returned after SIGTERM.
``acquired``, ``renewed``, ``released``
    The scheduler's backend granted a lease, renewed one, or was sent a release: the key,
    the token and ``valid_until`` (the lease's local deadline, on the same monotonic clock
    as ``mono``). ``mono`` of ``acquired`` is taken after the reply, and that of
    ``released`` before the request.

Every event carries ``instance``, ``pid``, ``wall`` (``time.time()`` of the host, never the
instance's shifted clock) and ``mono`` (``time.monotonic()``). On Linux the monotonic
clock is shared by all processes of the host, so ``mono`` values of different instances
can be compared. Fire times are Unix seconds (floats).

While an attempt runs, a marker file ``{instance}.{job}.{fire time in ms}.running`` in
the state folder contains its ``started`` event. The file ``{instance}.ready`` appears once
the instance is healthy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from planlagt_core.backend import Backend, Lease
from planlagt_core.clock import OffsetClock
from planlagt_core.context import RunContext
from planlagt_core.listeners import Listener
from planlagt_core.models import RunRecord
from planlagt_core.plugins import connect
from planlagt_core.scheduler import Scheduler
from planlagt_core.url import parse_url

__all__ = ["InstanceSpec", "JobSpec", "append_event", "main"]

LOG = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
"""How long the scheduler may take to become healthy before the process gives up."""

READY_POLL_S = 0.02


@dataclass(frozen=True)
class JobSpec:
    """One job of an instance: its function waits ``work_s`` seconds, or less when its run context requests a stop."""

    name: str
    schedule: str
    work_s: float = 0.05
    max_attempts: int = 1
    overlap: str = "skip"
    retry_backoff_s: float = 0.5


@dataclass(frozen=True)
class InstanceSpec:
    """Everything one instance process needs. Durations are seconds.

    ``backend_class`` (``module:qualname``) builds the backend directly, for backend
    classes registered without an entry point; when empty, the URL's scheme picks the
    installed plugin. ``clock_offset_s`` shifts this instance's wall clock (through
    :class:`~planlagt_core.clock.OffsetClock`) to model a host whose clock is off.
    """

    backend_url: str
    instance_id: str
    journal: str
    state_dir: str
    jobs: tuple[JobSpec, ...]
    backend_class: str = ""
    lease_ttl_s: float = 1.0
    heartbeat_s: float = 0.25
    max_skew_s: float = 1.0
    clock_offset_s: float = 0.0
    shutdown_grace_s: float = 5.0
    max_workers: int = 8
    log_level: str = "INFO"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InstanceSpec:
        data = json.loads(text)
        data["jobs"] = tuple(JobSpec(**job) for job in data["jobs"])
        return cls(**data)

    def ready_path(self) -> Path:
        return Path(self.state_dir) / f"{self.instance_id}.ready"


def append_event(journal: Path, event: str, **fields: Any) -> dict[str, Any]:
    """Append one event line to ``journal`` with a single write; return the event."""
    line = {"event": event, "pid": os.getpid(), "wall": time.time(), "mono": time.monotonic(), **fields}
    encoded = (json.dumps(line, sort_keys=True) + "\n").encode()
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, encoded)
    finally:
        os.close(fd)
    return line


class JournalListener(Listener):
    """Journals run starts, lease-state changes and run records; keeps running-attempt markers."""

    def __init__(self, spec: InstanceSpec) -> None:
        self._journal = Path(spec.journal)
        self._state_dir = Path(spec.state_dir)
        self._instance_id = spec.instance_id

    def run_started(self, context: RunContext) -> None:
        event = append_event(self._journal, "started", **self._attempt_fields(context))
        self._marker(context.job, context.fire_time.timestamp()).write_text(json.dumps(event), encoding="utf-8")
        context.on_change(self._lease_changed)

    def run_finished(self, record: RunRecord) -> None:
        append_event(
            self._journal,
            "finished",
            instance=self._instance_id,
            job=record.job,
            fire_time=record.fire_time,
            attempt=record.attempt,
            token=record.fencing_token,
            outcome=record.outcome.value,
            reason=record.reason,
            ran=record.started_at is not None,
        )
        if record.started_at is not None:
            self._marker(record.job, record.fire_time).unlink(missing_ok=True)

    def _lease_changed(self, context: RunContext) -> None:
        # Runs on the scheduler's heartbeat thread: one append, nothing that blocks for long.
        append_event(
            self._journal,
            "lease",
            state=context.lease_state.value,
            stop_reason=context.stop_reason,
            **self._attempt_fields(context),
        )

    def _attempt_fields(self, context: RunContext) -> dict[str, Any]:
        return {
            "instance": self._instance_id,
            "job": context.job,
            "fire_time": context.fire_time.timestamp(),
            "attempt": context.attempt,
            "token": context.fencing_token,
        }

    def _marker(self, job: str, fire_time: float) -> Path:
        return self._state_dir / f"{self._instance_id}.{job}.{round(fire_time * 1000)}.running"


def journal_leases(backend: Backend, journal: Path, instance_id: str) -> None:
    """Make ``backend`` journal each lease it grants or renews and each release it is sent.

    The wrappers replace the methods on this one object, so the scheduler's own calls go
    through them. Failed acquisitions and renewals are not journaled.
    """
    acquire, renew, release = backend.acquire, backend.renew, backend.release

    def journaled_acquire(key: str, ttl_s: float, *, holder: str = "") -> Lease | None:
        lease = acquire(key, ttl_s, holder=holder)
        if lease is not None:
            append_event(journal, "acquired", **_lease_fields(instance_id, lease))
        return lease

    def journaled_renew(lease: Lease, ttl_s: float | None = None) -> Lease:
        renewed = renew(lease, ttl_s)
        append_event(journal, "renewed", **_lease_fields(instance_id, renewed))
        return renewed

    def journaled_release(lease: Lease, *, keep_s: float = 0.0) -> bool:
        # Journaled before the request: the holder stops relying on the lease once it sends it.
        append_event(journal, "released", **_lease_fields(instance_id, lease))
        return release(lease, keep_s=keep_s)

    backend.acquire = journaled_acquire  # type: ignore[method-assign]
    backend.renew = journaled_renew  # type: ignore[method-assign]
    backend.release = journaled_release  # type: ignore[method-assign]


def _lease_fields(instance_id: str, lease: Lease) -> dict[str, Any]:
    return {"instance": instance_id, "key": lease.key, "token": lease.token, "valid_until": lease.valid_until}


def job_function(work_s: float) -> Callable[[RunContext], None]:
    """Return a job function that waits ``work_s`` seconds, or less when its run context requests a stop."""

    def work(context: RunContext) -> None:
        deadline = time.monotonic() + work_s
        while not context.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            context.wait(left)

    return work


def open_backend(spec: InstanceSpec) -> Backend:
    """Build the backend of ``spec``: from ``backend_class`` when given, else through the plugins."""
    if not spec.backend_class:
        return connect(spec.backend_url)
    module_name, _, qualname = spec.backend_class.partition(":")
    backend_class: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        backend_class = getattr(backend_class, part)
    return backend_class.from_url(parse_url(spec.backend_url))


def build_scheduler(spec: InstanceSpec) -> Scheduler:
    """Return a scheduler for ``spec`` with its jobs registered (not started)."""
    backend = open_backend(spec)
    journal_leases(backend, Path(spec.journal), spec.instance_id)
    scheduler = Scheduler(
        backend,
        instance_id=spec.instance_id,
        lease_ttl_s=spec.lease_ttl_s,
        heartbeat_s=spec.heartbeat_s,
        max_skew_s=spec.max_skew_s,
        max_workers=spec.max_workers,
        shutdown_grace_s=spec.shutdown_grace_s,
        clock=OffsetClock(spec.clock_offset_s),
        listeners=[JournalListener(spec)],
    )
    for job in spec.jobs:
        scheduler.add_job(
            job_function(job.work_s),
            job.schedule,
            name=job.name,
            max_attempts=job.max_attempts,
            overlap=job.overlap,
            retry_backoff_s=job.retry_backoff_s,
        )
    return scheduler


def wait_until_healthy(scheduler: Scheduler) -> None:
    """Poll ``scheduler.healthy()``; raise ``TimeoutError`` after ``READY_TIMEOUT_S``."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not scheduler.healthy():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"scheduler {scheduler.instance_id} was not healthy within {READY_TIMEOUT_S:g} s; "
                f"is the backend {scheduler.backend.url} reachable?"
            )
        time.sleep(READY_POLL_S)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # Only until Scheduler.run() installs its own handler: a SIGTERM that arrives while
    # the scheduler starts ends the process through the `finally` below, which stops it.
    raise SystemExit(128 + signum)


def run_instance(spec: InstanceSpec) -> None:
    """Start the scheduler, mark it ready once healthy, and run until SIGTERM or SIGINT."""
    journal = Path(spec.journal)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    scheduler = build_scheduler(spec)
    try:
        scheduler.start()
        wait_until_healthy(scheduler)
        append_event(journal, "ready", instance=spec.instance_id)
        spec.ready_path().write_text(str(os.getpid()), encoding="utf-8")
        LOG.info("Instance %s is ready (pid %d)", spec.instance_id, os.getpid())

        scheduler.run()
    finally:
        scheduler.stop()
        scheduler.backend.close()
    append_event(journal, "stopped", instance=spec.instance_id)


def main(argv: list[str] | None = None) -> int:
    """Run one instance from the spec file named by ``--spec``; return the exit status."""
    parser = argparse.ArgumentParser(description="one scheduler instance of the planlagt scheduler cases")
    parser.add_argument("--spec", required=True, type=Path, help="JSON file with the instance spec")
    args = parser.parse_args(argv)

    spec = InstanceSpec.from_json(args.spec.read_text(encoding="utf-8"))
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s {spec.instance_id} %(threadName)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    run_instance(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
