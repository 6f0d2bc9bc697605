"""Timing bounds, polling and small builders shared by the contract cases."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from planlagt_core.backend import Backend, Capabilities, Feature, Lease
from planlagt_core.models import InstanceInfo, Outcome, RunRecord

T = TypeVar("T")

EXPIRY_TOLERANCE_S = 0.5
"""How much later than its TTL an expiry may be observed, before ``ttl_granularity_s`` is added.

It covers the round trips of the polling requests, the poll interval, thread scheduling on
a loaded test machine, and servers that delete expired entries a little late. Expiring
late is allowed by the contract, so this bound is generous.
"""

EARLY_SLACK_S = 0.05
"""How much sooner than its TTL an expiry may be observed.

The client measures from before its request is sent, so a correct backend never frees a
key sooner than the TTL; this slack covers only timer resolution and the rate difference
between the client's monotonic clock and the server's clock. A key freed earlier than that
lets two callers hold it at once.
"""

POLL_INTERVAL_S = 0.01
"""Pause between two polls of a condition."""

BARRIER_TIMEOUT_S = 60.0
"""How long threads that start a case together wait for each other before the case fails."""

TIMING_TTL_S = 1.0
"""TTL of leases and memberships whose expiry a case waits for, unless the backend's minimum is longer.

Long enough that a renewal sent at half the TTL reaches the server in time on a loaded
machine, short enough that the cases stay quick.
"""

LONG_TTL_S = 60.0
"""TTL of leases and memberships that must not expire while a case runs."""

FIRE_KEEP_S = 600.0
"""How long cases ask the backend to keep fire states (``keep_s``)."""

BASE_FIRE_TIME = 1_700_000_000.0
"""A fixed fire time (2023-11-14 22:13:20 UTC) the cases count from."""


@dataclass(frozen=True)
class Timing:
    """TTLs and time bounds for one backend, derived from its capabilities."""

    ttl_s: float
    long_ttl_s: float
    late_tolerance_s: float
    early_slack_s: float

    @classmethod
    def for_capabilities(cls, capabilities: Capabilities) -> Timing:
        """Return TTLs of at least ``min_ttl_s``, rounded up to the TTL granularity."""
        step = capabilities.ttl_granularity_s
        return cls(
            ttl_s=round_up(max(capabilities.min_ttl_s, TIMING_TTL_S), step),
            long_ttl_s=round_up(max(capabilities.min_ttl_s, LONG_TTL_S), step),
            late_tolerance_s=EXPIRY_TOLERANCE_S + max(step, 0.0),
            early_slack_s=EARLY_SLACK_S,
        )


def round_up(seconds: float, step: float) -> float:
    """Round ``seconds`` up to a multiple of ``step`` (no rounding when ``step`` is not positive)."""
    if step <= 0:
        return seconds
    return math.ceil(round(seconds / step, 9)) * step


def require_feature(capabilities: Capabilities, feature: Feature) -> None:
    """Skip the calling case unless the backend declares ``feature``."""
    if not capabilities.supports(feature):
        pytest.skip(f"capability {feature.value} not declared")


def poll(condition: Callable[[], T], timeout_s: float) -> T:
    """Call ``condition`` until it returns a true value or ``timeout_s`` passes, and return its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(POLL_INTERVAL_S)


def sleep_until(instant: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``instant``: a wait for time itself to pass."""
    time.sleep(max(0.0, instant - time.monotonic()))


def acquire_when_free(backend: Backend, key: str, ttl_s: float, timeout_s: float) -> tuple[Lease | None, float]:
    """Poll ``acquire`` until it succeeds or ``timeout_s`` passes.

    Returns the lease (None on timeout) and the monotonic time just after the successful
    request returned.
    """
    lease = poll(lambda: backend.acquire(key, ttl_s, holder="poller"), timeout_s)
    return lease, time.monotonic()


def make_record(
    job: str,
    fire_time: float,
    outcome: Outcome = Outcome.SUCCEEDED,
    *,
    instance_id: str = "instance-a",
    attempt: int = 1,
    **fields: object,
) -> RunRecord:
    """Build a run record with a full set of fields, so round trips are checked on all of them."""
    values: dict[str, object] = {
        "fencing_token": 7,
        "started_at": fire_time + 0.25,
        "duration_s": 1.5,
        "error_type": None,
        "error_message": None,
        "reason": None,
    }
    values.update(fields)
    return RunRecord(
        job=job,
        fire_time=fire_time,
        instance_id=instance_id,
        outcome=outcome,
        attempt=attempt,
        **values,  # type: ignore[arg-type]
    )


def make_instance(instance_id: str, *, heartbeat_s: float, job_count: int = 2) -> InstanceInfo:
    """Build an instance description with every field set."""
    return InstanceInfo(
        instance_id=instance_id,
        hostname=f"host-{instance_id}",
        pid=4242,
        started_at=BASE_FIRE_TIME,
        heartbeat_s=heartbeat_s,
        jobs_digest=f"digest-{job_count}",
        job_count=job_count,
    )
