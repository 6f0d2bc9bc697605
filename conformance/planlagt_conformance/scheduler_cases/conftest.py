"""Fixtures of the scheduler cases, on top of those of :mod:`planlagt_conformance.plugin`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from planlagt_conformance.plugin import BackendFactory, backend_class_for
from planlagt_conformance.scenario import Scenario
from planlagt_conformance.scheduler_cases._support import SchedulerTiming
from planlagt_conformance.scheduler_cases.server_control import SERVER_CONTROL_ENV, ServerControl
from planlagt_core.backend import Backend, Capabilities
from planlagt_core.url import redact_url


@pytest.fixture
def scheduler_timing(capabilities: Capabilities) -> SchedulerTiming:
    """Lease TTL, heartbeat and clock skew for the instances of one case."""
    return SchedulerTiming.for_capabilities(capabilities)


@pytest.fixture
def scenario(
    backend_url: str,
    capabilities: Capabilities,
    backend_factory: BackendFactory,
    scheduler_timing: SchedulerTiming,
    tmp_path: Path,
) -> Iterator[Scenario]:
    """A :class:`Scenario` on the case's own prefix; every process it started is ended afterwards."""
    if not capabilities.multi_process:
        pytest.skip("backend capabilities exclude multi_process: the scheduler cases run several processes")
    backend_class = backend_class_for(backend_url)
    with Scenario(
        tmp_path / "scenario",
        backend_factory.url_for(),
        backend_class=f"{backend_class.__module__}:{backend_class.__qualname__}",
        lease_ttl_s=scheduler_timing.lease_ttl_s,
        heartbeat_s=scheduler_timing.heartbeat_s,
        max_skew_s=scheduler_timing.max_skew_s,
    ) as scenario:
        yield scenario


@pytest.fixture
def observer(backend_factory: BackendFactory) -> Backend:
    """The test's own client of the backend, on the scenario's prefix, for reading what the instances stored."""
    return backend_factory()


@pytest.fixture
def server_control(backend_url: str) -> ServerControl:
    """A client that pauses, stops and restarts the server at ``backend_url``.

    Skips the case when the backend has no server process, or when no process that
    manages the server at ``backend_url`` serves fault requests to this run.
    """
    if not backend_class_for(backend_url).capabilities.server_process:
        pytest.skip("backend has no server process")
    control = ServerControl.from_environment()
    if control is None or control.url() != backend_url:
        pytest.skip(
            f"the server at {redact_url(backend_url)} is not managed by this test run; "
            f"set {SERVER_CONTROL_ENV} to the socket of a ServerControlService for it to run server fault cases"
        )
    return control
