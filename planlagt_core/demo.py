"""``planlagt demo``: several real instance processes of one service on one backend.

The demo starts N processes (see :mod:`planlagt_core.demo_service`) and waits until all
are live. It lets them run for the window and SIGKILLs one of them while it runs the
``batch`` job. Then it stops the rest with SIGTERM and tallies the journal that every
process appended to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .demo_service import DEMO_JOBS, append_line, lease_ttl_for
from .errors import ConfigurationError
from .plugins import connect
from .schedule import parse_schedule

__all__ = ["Tally", "run_demo", "tally_journal"]

READY_TIMEOUT_S = 60.0
KILL_AFTER_FRACTION = 0.3
"""The kill happens once this fraction of the window has passed, at the next batch run."""
PROGRESS_EVERY_S = 3.0
KILLED_JOB = "batch"


@dataclass
class Instance:
    instance_id: str
    process: subprocess.Popen[bytes]
    log: Any


@dataclass
class Tally:
    """Counts of the journal's fire times in the counted window."""

    fire_times: int = 0
    completed: int = 0
    duplicates: int = 0
    missed: int = 0
    skipped: int = 0
    retried_after_kill: int = 0
    per_instance: dict[str, int] = field(default_factory=dict)
    per_instance_job: dict[str, dict[str, int]] = field(default_factory=dict)
    killed_instance: str | None = None
    missed_fire_times: list[str] = field(default_factory=list)
    window_start: float = 0.0
    window_end: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "fire_times": self.fire_times,
            "completed": self.completed,
            "duplicates": self.duplicates,
            "missed": self.missed,
            "skipped": self.skipped,
            "retried_after_kill": self.retried_after_kill,
            "per_instance": dict(sorted(self.per_instance.items())),
            "killed_instance": self.killed_instance,
            "window_start": _iso(self.window_start),
            "window_end": _iso(self.window_end),
        }


def run_demo(*, backend: str | None, instances: int, duration_s: float, journal: str | None, as_json: bool) -> int:
    """Run the demo; return 0 when no fire time was completed twice or missed."""
    if instances < 2:
        raise ConfigurationError(f"--instances must be at least 2 (one is killed), not {instances}")
    if duration_s < 15:
        raise ConfigurationError(f"--duration must be at least 15 seconds, not {duration_s:g}")
    with tempfile.TemporaryDirectory(prefix="planlagt-demo-") as tmp:
        workdir = Path(tmp)
        url = backend or f"sqlite:///{workdir / 'demo.db'}"
        journal_path = Path(journal) if journal else workdir / "journal.jsonl"
        journal_path.unlink(missing_ok=True)
        ttl = lease_ttl_for(connect(url).capabilities.min_ttl_s)
        say = _progress_printer(as_json)
        say(f"demo: {instances} instances on {connect(url).url}, {duration_s:g} s window, lease TTL {ttl:g} s")
        tally = _run_window(url, instances, duration_s, ttl, workdir, journal_path, say)
    _report(tally, as_json, journal_path if journal else None)
    return 0 if tally.duplicates == 0 and tally.missed == 0 else 1


def _run_window(url: str, count: int, duration_s: float, ttl: float, workdir: Path, journal: Path, say: Any) -> Tally:
    state_dir = workdir / "state"
    state_dir.mkdir()
    started = [_spawn(url, f"demo-{index + 1}", journal, state_dir) for index in range(count)]
    try:
        _wait_ready(started, state_dir)
        window_start = float(int(time.time()) + 1)
        window_end = window_start + duration_s
        killed = _watch(started, state_dir, journal, window_start, window_end, say)
        drain_until = window_end + 2 * ttl + 4.0
        while time.time() < drain_until:
            time.sleep(0.2)
    finally:
        _stop_all(started)
    tally = tally_journal(journal, window_start, window_end - ttl)
    tally.killed_instance = killed
    return tally


def _spawn(url: str, instance_id: str, journal: Path, state_dir: Path) -> Instance:
    log = open(state_dir / f"{instance_id}.log", "wb")  # noqa: SIM115 - closed in _stop_all
    command = [
        sys.executable, "-m", "planlagt_core.demo_service",
        "--backend", url, "--instance-id", instance_id,
        "--journal", str(journal), "--state-dir", str(state_dir),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Instance(instance_id, process, log)


def _wait_ready(started: list[Instance], state_dir: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for instance in started:
            if instance.process.poll() is not None:
                log = (state_dir / f"{instance.instance_id}.log").read_text(errors="replace")[-2000:]
                raise ConfigurationError(f"demo instance {instance.instance_id} exited at start:\n{log}")
        if all((state_dir / f"{i.instance_id}.ready").exists() for i in started):
            return
        time.sleep(0.1)
    raise ConfigurationError(f"demo instances were not ready within {READY_TIMEOUT_S:g} s; is the backend reachable?")


def _watch(
    started: list[Instance], state_dir: Path, journal: Path, window_start: float, window_end: float, say: Any
) -> str | None:
    kill_from = window_start + (window_end - window_start) * KILL_AFTER_FRACTION
    killed: str | None = None
    next_progress = time.time()
    while time.time() < window_end:
        if killed is None and time.time() >= kill_from:
            killed = _kill_during_batch(started, state_dir, journal)
            if killed:
                say(f"demo: killed {killed} (SIGKILL) while it was running {KILLED_JOB}")
        if time.time() >= next_progress:
            say(_progress_line(journal, window_start))
            next_progress = time.time() + PROGRESS_EVERY_S
        time.sleep(0.02)
    return killed


def _kill_during_batch(started: list[Instance], state_dir: Path, journal: Path) -> str | None:
    """SIGKILL an instance that is running only the batch job; journal its killed attempt."""
    for instance in started:
        markers = list(state_dir.glob(f"{instance.instance_id}.*.running"))
        if [m.name for m in markers] != [f"{instance.instance_id}.{KILLED_JOB}.running"]:
            continue
        try:
            attempt = json.loads(markers[0].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        os.kill(instance.process.pid, signal.SIGKILL)
        instance.process.wait()
        attempt.update(outcome="killed", end=time.time())
        append_line(journal, attempt)
        return instance.instance_id
    return None


def _stop_all(started: list[Instance]) -> None:
    for instance in started:
        if instance.process.poll() is None:
            instance.process.send_signal(signal.SIGTERM)
    for instance in started:
        try:
            instance.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            instance.process.kill()
            instance.process.wait()
        instance.log.close()


def _progress_line(journal: Path, window_start: float) -> str:
    lines = _read_journal(journal)
    runs = Counter(line["instance"] for line in lines if line.get("outcome") == "succeeded")
    elapsed = time.time() - window_start
    shown = ", ".join(f"{instance}: {count}" for instance, count in sorted(runs.items())) or "none yet"
    return f"demo: {elapsed:5.1f} s, completed runs per instance: {shown}"


def _read_journal(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line.strip()]


def expected_fire_times(start: float, end: float) -> dict[tuple[str, str], None]:
    """Return the (job, UTC ISO fire time) pairs due in ``[start, end]``, in job order."""
    expected: dict[tuple[str, str], None] = {}
    begin = datetime.fromtimestamp(start - 0.001, tz=timezone.utc)
    finish = datetime.fromtimestamp(end, tz=timezone.utc)
    for name, (expression, _work_s, _attempts) in DEMO_JOBS.items():
        for fire in parse_schedule(expression).fire_times_between(begin, finish):
            expected[(name, fire.astimezone(timezone.utc).isoformat())] = None
    return expected


def tally_journal(journal: Path, start: float, end: float) -> Tally:
    """Count what the journal shows for the demo fire times due in ``[start, end]``."""
    expected = expected_fire_times(start, end)
    by_fire: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in _read_journal(journal):
        by_fire[(line["job"], line["fire_time"])].append(line)
    tally = Tally(fire_times=len(expected), window_start=start, window_end=end)
    per_job: dict[str, Counter[str]] = defaultdict(Counter)
    for key in expected:
        _tally_fire_time(tally, key, by_fire.get(key, []), per_job)
    tally.per_instance_job = {instance: dict(jobs) for instance, jobs in per_job.items()}
    return tally


def _tally_fire_time(
    tally: Tally, key: tuple[str, str], lines: list[dict[str, Any]], per_job: dict[str, Counter[str]]
) -> None:
    succeeded = [line for line in lines if line["outcome"] == "succeeded"]
    killed = [line for line in lines if line["outcome"] == "killed"]
    if succeeded:
        tally.completed += 1
        tally.duplicates += len(succeeded) > 1
        for line in succeeded:
            tally.per_instance[line["instance"]] = tally.per_instance.get(line["instance"], 0) + 1
            per_job[line["instance"]][key[0]] += 1
        if killed and any(line["instance"] != killed[0]["instance"] for line in succeeded):
            tally.retried_after_kill += 1
    elif any(line["outcome"] == "skipped" for line in lines):
        tally.skipped += 1
    else:
        tally.missed += 1
        tally.missed_fire_times.append(f"{key[0]}@{key[1]}")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


def _report(tally: Tally, as_json: bool, kept_journal: Path | None) -> None:
    if as_json:
        print(json.dumps(tally.to_dict(), sort_keys=True))
        return
    jobs = list(DEMO_JOBS)
    print(f"\n{'instance':<12}" + "".join(f"{job:>9}" for job in jobs) + f"{'total':>9}")
    for instance, per_job in sorted(tally.per_instance_job.items()):
        marker = " (killed)" if instance == tally.killed_instance else ""
        counts = "".join(f"{per_job.get(job, 0):>9}" for job in jobs)
        print(f"{instance:<12}{counts}{tally.per_instance.get(instance, 0):>9}{marker}")
    print(
        f"\nfire times {tally.fire_times}, completed {tally.completed}, duplicates {tally.duplicates}, "
        f"missed {tally.missed}, skipped {tally.skipped}, retried after kill {tally.retried_after_kill}"
    )
    if tally.missed_fire_times:
        print("missed: " + ", ".join(tally.missed_fire_times[:20]))
    if kept_journal:
        print(f"journal: {kept_journal}")


def _progress_printer(as_json: bool) -> Any:
    stream = sys.stderr if as_json else sys.stdout

    def say(message: str) -> None:
        print(message, file=stream, flush=True)

    return say
