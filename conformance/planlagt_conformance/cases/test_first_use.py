"""First use of an empty prefix by several clients at the same moment: every call must succeed.

Backends that create tables, scripts or keys on first use race each other here. Only the
prefix is fresh. To cover a server or database file that is empty as a whole, run these
cases alone against a new one (``-k first_use``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from planlagt_conformance.cases._support import BARRIER_TIMEOUT_S, Timing
from planlagt_conformance.cases._workers import TASKS, backend_spec, run_workers
from planlagt_conformance.plugin import BackendFactory, backend_class_for
from planlagt_core.backend import Capabilities

CLIENTS = 8
THREAD_JOIN_TIMEOUT_S = 120.0


def check_first_use(results: list[dict[str, Any]], backend_factory: BackendFactory, names: list[str]) -> None:
    assert sum(result["won_shared"] for result in results) == 1, "exactly one client must acquire the shared key"
    assert all(result["acquired_own"] for result in results)

    observer = backend_factory()
    assert [instance.instance_id for instance in observer.list_instances()] == sorted(names)
    assert sorted(record.job for record in observer.list_runs()) == sorted(f"job-{name}" for name in names)


def test_first_use_from_many_threads(backend_factory: BackendFactory, timing: Timing):
    names = [f"client-{index}" for index in range(CLIENTS)]
    backends = [backend_factory() for _ in names]
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    start = threading.Barrier(CLIENTS, timeout=BARRIER_TIMEOUT_S)

    def first_use(index: int) -> None:
        try:
            start.wait()
            results.append(TASKS["first_use"](backends[index], {"name": names[index], "ttl_s": timing.long_ttl_s}))
        except Exception as exc:
            errors.append(f"{names[index]}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=first_use, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_JOIN_TIMEOUT_S)

    assert errors == []
    assert len(results) == CLIENTS
    check_first_use(results, backend_factory, names)


def test_first_use_from_many_processes(
    backend_factory: BackendFactory, capabilities: Capabilities, timing: Timing, tmp_path: Path
):
    if not capabilities.multi_process:
        pytest.skip("capability multi_process is false")
    names = [f"client-{index}" for index in range(CLIENTS)]
    spec = backend_spec(backend_class_for(backend_factory.base_url))
    arguments = [
        {"url": backend_factory.url_for(), "backend_spec": spec, "name": name, "ttl_s": timing.long_ttl_s}
        for name in names
    ]

    results = run_workers("first_use", arguments, tmp_path)

    check_first_use(results, backend_factory, names)
