"""Worker processes for the multi-process cases.

A case starts each worker as ``python -m planlagt_conformance.cases._workers TASK`` and
writes the task's arguments as one JSON line to its standard input (not to the command
line, where a password in the backend URL would show in process lists). The worker builds
its backend (which does not connect yet), creates the file named by ``ready_path`` and
waits for a second line, so every worker starts its task at nearly the same moment. It then
prints one JSON object on standard output and exits.

:func:`run_workers` is the parent's side: it starts the workers, waits until all are
ready, releases them together and collects their results.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from planlagt_core.backend import Backend
from planlagt_core.models import InstanceInfo, Outcome, RunRecord
from planlagt_core.url import parse_url

READY_TIMEOUT_S = 60.0
"""How long all workers may take to start: a Python interpreter and the backend's imports each."""

TASK_TIMEOUT_S = 120.0
"""How long the workers may take for their task once released."""

CRITICAL_SECTION_PAUSE_S = 0.001
"""Pause between reading and writing the counter: it widens the window in which a second
holder would interleave, so a broken lease shows as a lost update."""

RETRY_PAUSE_MAX_S = 0.002
"""Maximum random pause after a failed acquisition, so workers do not retry in lockstep."""


# -- Parent side ------------------------------------------------------------------


def backend_spec(backend_class: type[Backend]) -> str:
    """Return ``module:qualname`` of a backend class, for workers to import it directly."""
    return f"{backend_class.__module__}:{backend_class.__qualname__}"


def run_workers(task: str, arguments: list[dict[str, Any]], ready_directory: Path) -> list[dict[str, Any]]:
    """Run one worker per entry of ``arguments`` and return their JSON results in the same order.

    Raises ``AssertionError`` with the worker's standard error when a worker exits early,
    fails, or misses a deadline. Every worker started here has ended when it returns.
    """
    processes: list[subprocess.Popen[str]] = []
    try:
        for index, worker_arguments in enumerate(arguments):
            ready_path = ready_directory / f"ready-{index}"
            payload = json.dumps({**worker_arguments, "ready_path": str(ready_path)})
            processes.append(_start(task))
            _send_line(processes[-1], payload)

        _wait_until_ready(processes, ready_directory)

        for process in processes:
            _send_line(process, "go")

        return [_collect(process, index) for index, process in enumerate(processes)]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def _start(task: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", __name__, task],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _send_line(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def _wait_until_ready(processes: list[subprocess.Popen[str]], ready_directory: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        ready = sum(1 for index in range(len(processes)) if (ready_directory / f"ready-{index}").exists())
        if ready == len(processes):
            return
        for index, process in enumerate(processes):
            if process.poll() is not None:
                _, stderr = process.communicate()
                raise AssertionError(
                    f"worker {index} exited with status {process.returncode} before it was ready:\n{stderr}"
                )
        if time.monotonic() >= deadline:
            raise AssertionError(f"only {ready} of {len(processes)} workers were ready after {READY_TIMEOUT_S} s")
        time.sleep(0.01)


def _collect(process: subprocess.Popen[str], index: int) -> dict[str, Any]:
    try:
        stdout, stderr = process.communicate(timeout=TASK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker {index} did not finish within {TASK_TIMEOUT_S} s") from None
    lines = stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        raise AssertionError(f"worker {index} exited with status {process.returncode}:\n{stderr}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise AssertionError(f"worker {index} failed:\n{result['error']}")
    return result


# -- Worker side ------------------------------------------------------------------


def _open(url: str, spec: str | None) -> Backend:
    if spec:
        module_name, _, qualname = spec.partition(":")
        backend_class: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            backend_class = getattr(backend_class, part)
        return backend_class.from_url(parse_url(url))
    from planlagt_conformance.plugin import open_backend

    return open_backend(url)


def _count_under_lease(backend: Backend, arguments: dict[str, Any]) -> dict[str, Any]:
    """Acquire, read the counter file, write it plus one and release, ``rounds`` times."""
    counter = Path(arguments["counter_path"])
    scratch = counter.with_name(f"{counter.name}.{os.getpid()}")
    deadline = time.monotonic() + TASK_TIMEOUT_S
    sections: list[list[int]] = []
    release_failures = 0

    for _ in range(arguments["rounds"]):
        lease = backend.acquire(arguments["key"], arguments["ttl_s"], holder=f"pid-{os.getpid()}")
        while lease is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not acquire {arguments['key']!r} within {TASK_TIMEOUT_S} s")
            time.sleep(random.uniform(0, RETRY_PAUSE_MAX_S))
            lease = backend.acquire(arguments["key"], arguments["ttl_s"], holder=f"pid-{os.getpid()}")

        text = counter.read_text(encoding="ascii") if counter.exists() else ""
        value = int(text) if text else 0
        time.sleep(CRITICAL_SECTION_PAUSE_S)
        scratch.write_text(str(value + 1), encoding="ascii")
        os.replace(scratch, counter)

        sections.append([value, lease.token])
        if not backend.release(lease):
            release_failures += 1

    return {"sections": sections, "release_failures": release_failures}


def _first_use(backend: Backend, arguments: dict[str, Any]) -> dict[str, Any]:
    """Heartbeat, acquire a shared and an own key, and record a run, all on a fresh prefix."""
    name = arguments["name"]
    ttl_s = arguments["ttl_s"]
    backend.heartbeat(InstanceInfo(instance_id=name, heartbeat_s=ttl_s / 2), ttl_s)
    shared = backend.acquire("shared", ttl_s, holder=name)
    own = backend.acquire(f"own-{name}", ttl_s, holder=name)
    backend.record_run(RunRecord(job=f"job-{name}", fire_time=1.0, instance_id=name, outcome=Outcome.SUCCEEDED))
    return {"won_shared": shared is not None, "acquired_own": own is not None}


TASKS: dict[str, Callable[[Backend, dict[str, Any]], dict[str, Any]]] = {
    "count_under_lease": _count_under_lease,
    "first_use": _first_use,
}


def main(argv: list[str]) -> int:
    (task,) = argv
    arguments = json.loads(sys.stdin.readline())
    backend = _open(arguments["url"], arguments.get("backend_spec"))
    try:
        Path(arguments["ready_path"]).touch()
        sys.stdin.readline()
        try:
            result = TASKS[task](backend, arguments)
        except Exception:
            result = {"error": traceback.format_exc()}
    finally:
        backend.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
