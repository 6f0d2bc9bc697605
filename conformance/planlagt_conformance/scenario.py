"""Parent side of the scheduler cases: instance processes, the faults done to them, and their journal.

A :class:`Scenario` owns one folder with the shared journal, the state folder (ready and
running markers), and a spec file and a log file per instance. It starts instance
processes (:mod:`planlagt_conformance.instance`) and kills, pauses, resumes and stops them
by PID. Each of those actions is appended to the journal too (events ``killed``,
``paused``, ``resumed`` and ``terminated``, with the same ``wall`` and ``mono`` fields),
so one file contains the whole timeline. :meth:`Scenario.close`, which the context
manager calls, ends every process the scenario started.

:class:`Journal` reads the journal back. It returns the attempts with their start, end
and lease states, the leases with their validity, the run records of each (job, fire
time), and the completions per instance.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from planlagt_conformance.instance import InstanceSpec, JobSpec, append_event
from planlagt_core.schedule import parse_schedule

__all__ = [
    "CLOSING_OUTCOMES",
    "COMPLETED_OUTCOMES",
    "INTERRUPTED_OUTCOMES",
    "POLL_INTERVAL_S",
    "Attempt",
    "FireTally",
    "InstanceProcess",
    "Journal",
    "LeaseInterval",
    "Scenario",
    "expected_fire_times",
    "fire_key",
    "iso",
]

T = TypeVar("T")

READY_TIMEOUT_S = 60.0
"""How long instances may take to start: an interpreter, the imports and a first heartbeat each."""

STOP_TIMEOUT_S = 30.0
"""How long an instance may take to exit after SIGTERM before it is killed."""

POLL_INTERVAL_S = 0.02
"""Pause between two polls of the journal or of a process."""

PROBE_TIMEOUT_S = 0.5
"""How long a backend request may take while an instance is paused before the pause is retried."""

PAUSE_TRIES = 20
LOG_TAIL_LINES = 15

CLOSING_OUTCOMES = frozenset({"succeeded", "skipped", "missed", "failed", "timed_out"})
"""Run record outcomes that close a fire time; ``lease_lost`` does not."""

INTERRUPTED_OUTCOMES = frozenset({"killed", "lease_lost"})
"""Attempt outcomes of runs that ended without recording a completion."""

COMPLETED_OUTCOMES = frozenset({"succeeded", "timed_out"})
"""Attempt outcomes recorded by a fenced write, which succeeds only while the lease is held."""


def fire_key(job: str, fire_time: float) -> tuple[str, float]:
    """Return the key of one fire time: the job and the fire time rounded to milliseconds."""
    return (job, round(fire_time, 3))


def iso(timestamp: float) -> str:
    """Return a Unix timestamp as a UTC ISO string, for messages."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def expected_fire_times(jobs: Iterable[JobSpec], start: float, end: float) -> list[tuple[str, float]]:
    """Return the keys of every fire time of ``jobs`` from ``start`` to ``end`` (Unix seconds, inclusive)."""
    begin = datetime.fromtimestamp(start - 0.001, tz=timezone.utc)
    finish = datetime.fromtimestamp(end, tz=timezone.utc)
    keys = []
    for job in jobs:
        for fire in parse_schedule(job.schedule).fire_times_between(begin, finish):
            keys.append(fire_key(job.name, fire.timestamp()))
    return keys


# -- Reading the journal ------------------------------------------------------------


@dataclass
class Attempt:
    """One attempt as the journal shows it.

    ``end_mono`` and ``end_wall`` are when its run record was journaled, or when its
    process was killed; None while it runs. ``outcome`` is the run record's outcome,
    ``killed``, or None.
    ``lease_states`` lists the context's lease-state changes as (state, mono) pairs.
    """

    instance: str
    job: str
    fire_time: float
    attempt: int
    token: int
    start_mono: float
    start_wall: float
    end_mono: float | None = None
    end_wall: float | None = None
    outcome: str | None = None
    lease_states: list[tuple[str, float]] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        """Whether the attempt was killed or lost its lease before it could record its outcome."""
        return self.outcome in INTERRUPTED_OUTCOMES

    @property
    def completed(self) -> bool:
        """Whether a fenced write recorded this attempt's outcome, proving its lease held to the end."""
        return self.outcome in COMPLETED_OUTCOMES

    def describe(self) -> str:
        return (
            f"{self.job}@{iso(self.fire_time)} attempt {self.attempt} on {self.instance} "
            f"(token {self.token}, outcome {self.outcome})"
        )


@dataclass
class FireTally:
    """The run records journaled for one (job, fire time)."""

    job: str
    fire_time: float
    records: list[dict[str, Any]] = field(default_factory=list)

    def with_outcome(self, *outcomes: str) -> list[dict[str, Any]]:
        return [record for record in self.records if record["outcome"] in outcomes]

    @property
    def successes(self) -> list[dict[str, Any]]:
        return self.with_outcome("succeeded")

    @property
    def closing(self) -> list[dict[str, Any]]:
        return [record for record in self.records if record["outcome"] in CLOSING_OUTCOMES]

    def describe(self) -> str:
        found = ", ".join(
            f"{record['outcome']} by {record['instance']} (attempt {record['attempt']}, token {record['token']})"
            for record in self.records
        )
        return f"{self.job}@{iso(self.fire_time)}: {found or 'no run record'}"


class Journal:
    """The events of one scenario, in the order they were appended."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    @classmethod
    def read(cls, path: Path) -> Journal:
        """Read ``path``; a last line still being written (no newline yet) is left out."""
        if not path.exists():
            return cls([])
        text = path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        return cls([json.loads(line) for line in complete.splitlines() if line.strip()])

    def of(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Return the events of kind ``event`` whose fields equal ``match``."""
        return [
            item
            for item in self.events
            if item["event"] == event and all(item.get(name) == value for name, value in match.items())
        ]

    def records_of(self, job: str, fire_time: float) -> list[dict[str, Any]]:
        """Return the ``finished`` events (run records) of one fire time."""
        key = fire_key(job, fire_time)
        return [item for item in self.of("finished") if fire_key(item["job"], item["fire_time"]) == key]

    def tally(self, keys: Iterable[tuple[str, float]]) -> dict[tuple[str, float], FireTally]:
        """Return the run records of each fire time in ``keys``, in the order of ``keys``."""
        tallies = {key: FireTally(job=key[0], fire_time=key[1]) for key in keys}
        for item in self.of("finished"):
            tally = tallies.get(fire_key(item["job"], item["fire_time"]))
            if tally is not None:
                tally.records.append(item)
        return tallies

    def open_fire_times(self, keys: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
        """Return the keys that have no closing run record yet."""
        return [key for key, tally in self.tally(keys).items() if not tally.closing]

    def completions_per_instance(self, keys: Iterable[tuple[str, float]]) -> Counter[str]:
        """Count the successful run records per instance over the fire times in ``keys``."""
        counts: Counter[str] = Counter()
        for tally in self.tally(keys).values():
            counts.update(record["instance"] for record in tally.successes)
        return counts

    def lease_intervals(self) -> list[LeaseInterval]:
        """Return the validity of every lease the instances were granted, ordered by start."""
        return _lease_intervals(self.events)

    def attempts(self) -> list[Attempt]:
        """Return every attempt that started, ordered by start time.

        An attempt without a run record whose process was killed ends at the kill.
        """
        found = {_attempt_key(item): _attempt_from(item) for item in self.of("started")}
        for item in self.of("lease"):
            attempt = found.get(_attempt_key(item))
            if attempt is not None:
                attempt.lease_states.append((item["state"], item["mono"]))
        for item in self.of("finished", ran=True):
            attempt = found.get(_attempt_key(item))
            if attempt is not None:
                _end(attempt, item, item["outcome"])

        kills = {item["instance"]: item for item in self.of("killed")}
        for attempt in found.values():
            if attempt.outcome is None and attempt.instance in kills:
                _end(attempt, kills[attempt.instance], "killed")
        return sorted(found.values(), key=lambda attempt: attempt.start_mono)


@dataclass
class LeaseInterval:
    """When one lease was valid by the backend contract, as its holder journaled it (monotonic seconds).

    It starts when the acquisition's reply arrived and ends at the latest ``valid_until``
    of the lease, or earlier when the holder sent its release. That is never longer than
    the lease was really held, so two intervals of one key that overlap prove two holders.
    """

    key: str
    token: int
    instance: str
    start_mono: float
    end_mono: float

    def describe(self) -> str:
        return f"lease on {self.key!r} with token {self.token} held by {self.instance}"


def _end(attempt: Attempt, event: dict[str, Any], outcome: str) -> None:
    attempt.end_mono, attempt.end_wall, attempt.outcome = event["mono"], event["wall"], outcome


def _lease_intervals(events: list[dict[str, Any]]) -> list[LeaseInterval]:
    found: dict[tuple[str, int], LeaseInterval] = {}
    for item in events:
        key = (item.get("key", ""), item.get("token", 0))
        interval = found.get(key)
        if item["event"] == "acquired":
            found[key] = LeaseInterval(item["key"], item["token"], item["instance"], item["mono"], item["valid_until"])
        elif item["event"] == "renewed" and interval is not None:
            interval.end_mono = max(interval.end_mono, item["valid_until"])
        elif item["event"] == "released" and interval is not None:
            interval.end_mono = min(interval.end_mono, item["mono"])
    return sorted(found.values(), key=lambda interval: interval.start_mono)


def _attempt_key(event: dict[str, Any]) -> tuple[str, str, float, int]:
    return (event["instance"], *fire_key(event["job"], event["fire_time"]), event["token"])


def _attempt_from(started: dict[str, Any]) -> Attempt:
    return Attempt(
        instance=started["instance"],
        job=started["job"],
        fire_time=started["fire_time"],
        attempt=started["attempt"],
        token=started["token"],
        start_mono=started["mono"],
        start_wall=started["wall"],
    )


class _ProbeThread(threading.Thread):
    """Runs one probe request and keeps what it raised."""

    def __init__(self, probe: Callable[[], object]) -> None:
        super().__init__(name="scenario-probe", daemon=True)
        self._probe = probe
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._probe()
        except BaseException as exc:
            self.error = exc

    def check(self) -> None:
        """Raise ``AssertionError`` from the probe's exception, if it raised one."""
        if self.error is not None:
            raise AssertionError(f"the backend probe failed while an instance was paused: {self.error}") from self.error


# -- Instance processes ---------------------------------------------------------------


@dataclass
class InstanceProcess:
    """One instance process started by a :class:`Scenario`.

    ``ended`` is true once the scenario killed or stopped it on purpose, so an exit is
    not reported as a crash.
    """

    spec: InstanceSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    ended: bool = False
    paused: bool = False

    @property
    def instance_id(self) -> str:
        return self.spec.instance_id

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(log not readable: {exc})"
        return "\n".join(text.splitlines()[-lines:])


class Scenario:
    """Instance processes on one backend, sharing one journal, in ``directory``.

    Durations are seconds. The defaults given here (``lease_ttl_s``, ``heartbeat_s``,
    ``max_skew_s``) go into every spec built by :meth:`spec`.
    """

    def __init__(
        self,
        directory: Path,
        backend_url: str,
        *,
        backend_class: str = "",
        lease_ttl_s: float = 1.0,
        heartbeat_s: float = 0.25,
        max_skew_s: float = 1.0,
    ) -> None:
        self.directory = directory
        self.state_dir = directory / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.journal_path = directory / "journal.jsonl"
        self._base = InstanceSpec(
            backend_url=backend_url,
            backend_class=backend_class,
            instance_id="",
            journal=str(self.journal_path),
            state_dir=str(self.state_dir),
            jobs=(),
            lease_ttl_s=lease_ttl_s,
            heartbeat_s=heartbeat_s,
            max_skew_s=max_skew_s,
        )
        self.instances: dict[str, InstanceProcess] = {}

    def __enter__(self) -> Scenario:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def lease_ttl_s(self) -> float:
        return self._base.lease_ttl_s

    @property
    def heartbeat_s(self) -> float:
        return self._base.heartbeat_s

    @property
    def max_skew_s(self) -> float:
        return self._base.max_skew_s

    def spec(self, instance_id: str, jobs: Iterable[JobSpec], **changes: Any) -> InstanceSpec:
        """Return a spec with the scenario's defaults, ``jobs`` and any field in ``changes``."""
        return replace(self._base, instance_id=instance_id, jobs=tuple(jobs), **changes)

    # -- Starting -------------------------------------------------------------------

    def start(self, *specs: InstanceSpec) -> list[InstanceProcess]:
        """Start one process per spec and return them once all are ready."""
        started = [self._spawn(spec) for spec in specs]
        self.wait_ready(started)
        return started

    def _spawn(self, spec: InstanceSpec) -> InstanceProcess:
        if spec.instance_id in self.instances:
            raise ValueError(f"instance id {spec.instance_id!r} was already used in this scenario")
        spec_path = self.directory / f"{spec.instance_id}.json"
        # The spec may hold the backend's password, so only this user may read it.
        spec_path.touch(mode=0o600)
        spec_path.write_text(spec.to_json(), encoding="utf-8")
        log_path = self.directory / f"{spec.instance_id}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "planlagt_conformance.instance", "--spec", str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        instance = InstanceProcess(spec=spec, process=process, log_path=log_path)
        self.instances[spec.instance_id] = instance
        return instance

    def wait_ready(self, instances: Iterable[InstanceProcess]) -> None:
        """Wait until every instance wrote its ready marker; raise ``AssertionError`` on an exit or timeout."""
        waiting = list(instances)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while waiting:
            self.check_running()
            waiting = [instance for instance in waiting if not instance.spec.ready_path().exists()]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(instance.instance_id for instance in waiting)
                raise AssertionError(
                    f"instances {names} were not ready within {READY_TIMEOUT_S:g} s\n{self.describe_logs(waiting)}"
                )
            time.sleep(POLL_INTERVAL_S)

    # -- Faults ---------------------------------------------------------------------

    def kill(self, instance: InstanceProcess) -> float:
        """End ``instance`` with SIGKILL, as a crash would; return the monotonic time of the kill."""
        instance.ended = True
        instance.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        instance.process.wait()
        append_event(self.journal_path, "killed", instance=instance.instance_id, target_pid=instance.pid)
        return killed_at

    def pause(self, instance: InstanceProcess) -> float:
        """Freeze ``instance`` with SIGSTOP; return the monotonic time of the pause."""
        instance.process.send_signal(signal.SIGSTOP)
        instance.paused = True
        return append_event(self.journal_path, "paused", instance=instance.instance_id)["mono"]

    def resume(self, instance: InstanceProcess) -> float:
        """Let a paused ``instance`` run again with SIGCONT; return the monotonic time of the resume."""
        instance.process.send_signal(signal.SIGCONT)
        instance.paused = False
        return append_event(self.journal_path, "resumed", instance=instance.instance_id)["mono"]

    def pause_between_requests(self, instance: InstanceProcess, probe: Callable[[], object]) -> float:
        """Pause ``instance`` at a moment when it blocks no other client; return the time of the pause.

        A process frozen inside a backend request can keep a lock that every other client
        waits for (a SQLite write transaction, for one). So after each pause ``probe`` (a
        backend write) runs on a helper thread. When it does not return within
        ``PROBE_TIMEOUT_S``, the instance is resumed and paused again a moment later.
        """
        for _ in range(PAUSE_TRIES):
            paused_at = self.pause(instance)
            helper = _ProbeThread(probe)
            helper.start()
            helper.join(PROBE_TIMEOUT_S)
            if not helper.is_alive():
                helper.check()
                return paused_at
            self.resume(instance)
            helper.join()
            helper.check()
            time.sleep(POLL_INTERVAL_S)
        raise AssertionError(
            f"every one of {PAUSE_TRIES} pauses of {instance.instance_id} blocked other clients of the backend "
            f"for more than {PROBE_TIMEOUT_S:g} s"
        )

    def terminate(self, instance: InstanceProcess) -> float:
        """Send SIGTERM to ``instance`` (a graceful stop) without waiting; return the monotonic time."""
        instance.ended = True
        instance.process.send_signal(signal.SIGTERM)
        return append_event(self.journal_path, "terminated", instance=instance.instance_id)["mono"]

    def wait_exit(self, instance: InstanceProcess, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Wait for ``instance`` to exit; return its exit status or raise ``AssertionError``."""
        try:
            return instance.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"instance {instance.instance_id} did not exit within {timeout_s:g} s\n{self.describe_logs([instance])}"
            ) from None

    # -- Watching -------------------------------------------------------------------

    def journal(self) -> Journal:
        return Journal.read(self.journal_path)

    def check_running(self) -> None:
        """Raise ``AssertionError`` with its log when an instance exited that the scenario did not end."""
        crashed = [i for i in self.instances.values() if not i.ended and i.process.poll() is not None]
        if crashed:
            names = ", ".join(f"{i.instance_id} (status {i.process.returncode})" for i in crashed)
            raise AssertionError(f"instances exited on their own: {names}\n{self.describe_logs(crashed)}")

    def wait_for(self, condition: Callable[[Journal], T | None], timeout_s: float, what: str) -> T:
        """Poll ``condition(journal)`` until it returns a true value; return that value.

        Raises ``AssertionError`` naming ``what`` after ``timeout_s``, or at once when an
        instance exits on its own.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_running()
            result = condition(self.journal())
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}\n{self.describe_logs()}")
            time.sleep(POLL_INTERVAL_S)

    def wait_for_closed(
        self,
        keys: list[tuple[str, float]],
        timeout_s: float,
        excused: Callable[[Journal], Collection[tuple[str, float]]] | None = None,
    ) -> None:
        """Wait until every fire time in ``keys`` has a closing run record in the journal.

        ``excused(journal)`` returns fire times that need not close.
        """

        def still_open(journal: Journal) -> list[tuple[str, float]]:
            skipped = set() if excused is None else set(excused(journal))
            return [key for key in journal.open_fire_times(keys) if key not in skipped]

        try:
            self.wait_for(lambda journal: not still_open(journal), timeout_s, "every fire time in the window to close")
        except AssertionError as exc:
            left = still_open(self.journal())
            listed = ", ".join(f"{job}@{iso(fire)}" for job, fire in left[:20])
            raise AssertionError(f"{len(left)} fire times never closed: {listed}\n{exc}") from None

    def sleep_until_wall(self, instant: float) -> None:
        """Wait until ``time.time()`` reaches ``instant``, checking that no instance exits meanwhile."""
        while time.time() < instant:
            self.check_running()
            time.sleep(min(POLL_INTERVAL_S * 5, max(instant - time.time(), 0.0)))

    def describe_logs(self, instances: Iterable[InstanceProcess] | None = None) -> str:
        """Return the tail of each instance's log, with the scenario folder, for failure messages."""
        chosen = list(self.instances.values()) if instances is None else list(instances)
        parts = [f"scenario folder: {self.directory}"]
        for instance in chosen:
            parts.append(f"--- last lines of {instance.log_path.name} ---\n{instance.log_tail()}")
        return "\n".join(parts)

    # -- Stopping -------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every instance still running: SIGCONT if paused, SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``."""
        running = [instance for instance in self.instances.values() if instance.process.poll() is None]
        for instance in running:
            if instance.paused:
                self.resume(instance)
            instance.ended = True
            instance.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for instance in running:
            try:
                instance.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                instance.process.kill()
                instance.process.wait()

    def close(self) -> None:
        """End every process this scenario started. Safe to call more than once."""
        try:
            self.stop_all()
        finally:
            for instance in self.instances.values():
                if instance.process.poll() is None:
                    instance.process.kill()
                    instance.process.wait()
