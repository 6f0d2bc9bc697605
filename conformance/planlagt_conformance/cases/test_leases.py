"""Leases: mutual exclusion, expiry, renewal and release, including release with ``keep_s``."""

from __future__ import annotations

import random
import threading
import time
from itertools import pairwise
from pathlib import Path

import pytest

from planlagt_conformance.cases._support import (
    BARRIER_TIMEOUT_S,
    POLL_INTERVAL_S,
    Timing,
    acquire_when_free,
    poll,
    require_feature,
    sleep_until,
)
from planlagt_conformance.cases._workers import backend_spec, run_workers
from planlagt_conformance.plugin import BackendFactory, backend_class_for
from planlagt_core.backend import Backend, Capabilities, Feature
from planlagt_core.errors import LeaseLost

CONTENDING_THREADS = 16
ROUNDS_PER_THREAD = 10
CONTENDING_PROCESSES = 8
ROUNDS_PER_PROCESS = 25
THREAD_JOIN_TIMEOUT_S = 120.0

CRITICAL_SECTION_PAUSE_S = 0.0005
"""Pause inside the critical section, so a second holder would interleave and lose an update."""


# -- Acquire and inspect ----------------------------------------------------------


def test_acquire_returns_lease(backend: Backend, timing: Timing):
    before = time.monotonic()
    lease = backend.acquire("report", timing.long_ttl_s, holder="instance-a")
    after = time.monotonic()

    assert lease is not None
    assert lease.key == "report"
    assert isinstance(lease.token, int)
    assert lease.owner
    assert lease.holder == "instance-a"
    assert lease.ttl_s >= timing.long_ttl_s
    assert before - 1e-6 <= lease.valid_until - lease.ttl_s <= after + 1e-6, (
        "valid_until must be time.monotonic() from before the request was sent, plus ttl_s"
    )


def test_held_key_cannot_be_acquired(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    lease = first.acquire("report", timing.long_ttl_s, holder="first")

    assert lease is not None
    assert second.acquire("report", timing.long_ttl_s, holder="second") is None
    assert first.acquire("report", timing.long_ttl_s, holder="first") is None


def test_inspect_shows_holder(backend: Backend, timing: Timing):
    lease = backend.acquire("report", timing.long_ttl_s, holder="instance-a")
    assert lease is not None

    info = backend.inspect("report")

    assert info is not None
    assert info.key == "report"
    assert info.token == lease.token
    assert info.holder == "instance-a"
    assert info.released is False
    assert info.ttl_remaining_s is None or 0 < info.ttl_remaining_s <= lease.ttl_s + timing.early_slack_s
    assert backend.inspect("never-acquired") is None


# -- Mutual exclusion under contention --------------------------------------------


class SharedCounter:
    """A counter updated without a lock of its own: only the lease guards it."""

    def __init__(self) -> None:
        self.value = 0
        self.holders = 0
        self.max_holders = 0
        self.sections: list[tuple[int, int]] = []
        self.release_failures = 0
        self.errors: list[str] = []
        self.bookkeeping = threading.Lock()

    def enter(self) -> None:
        with self.bookkeeping:
            self.holders += 1
            self.max_holders = max(self.max_holders, self.holders)

    def leave(self, value_read: int, token: int) -> None:
        with self.bookkeeping:
            self.holders -= 1
            self.sections.append((value_read, token))


def _contend(backend: Backend, counter: SharedCounter, start: threading.Barrier, name: str, ttl_s: float) -> None:
    try:
        start.wait()
        deadline = time.monotonic() + THREAD_JOIN_TIMEOUT_S
        for _ in range(ROUNDS_PER_THREAD):
            lease = backend.acquire("contended", ttl_s, holder=name)
            while lease is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not acquire the key within {THREAD_JOIN_TIMEOUT_S} s")
                time.sleep(random.uniform(0, 0.001))
                lease = backend.acquire("contended", ttl_s, holder=name)

            counter.enter()
            value = counter.value
            time.sleep(CRITICAL_SECTION_PAUSE_S)
            counter.value = value + 1
            counter.leave(value, lease.token)

            if not backend.release(lease):
                counter.release_failures += 1
    except Exception as exc:
        counter.errors.append(f"{name}: {type(exc).__name__}: {exc}")


def test_threads_never_hold_key_at_once(backend_factory: BackendFactory, timing: Timing):
    backends = [backend_factory(), backend_factory()]
    counter = SharedCounter()
    start = threading.Barrier(CONTENDING_THREADS, timeout=BARRIER_TIMEOUT_S)
    threads = [
        threading.Thread(
            target=_contend,
            args=(backends[index % 2], counter, start, f"thread-{index}", timing.long_ttl_s),
            name=f"conformance-contender-{index}",
        )
        for index in range(CONTENDING_THREADS)
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_JOIN_TIMEOUT_S)

    total = CONTENDING_THREADS * ROUNDS_PER_THREAD
    assert not any(thread.is_alive() for thread in threads), (
        f"contending threads still running after {THREAD_JOIN_TIMEOUT_S} s"
    )
    assert counter.errors == []
    assert counter.max_holders == 1, f"{counter.max_holders} threads held the lease at once"
    assert counter.value == total, f"{total - counter.value} updates lost: two holders overlapped"
    assert sorted(value for value, _ in counter.sections) == list(range(total))
    assert counter.release_failures == 0

    tokens_in_order = [token for _, token in sorted(counter.sections)]
    assert all(a < b for a, b in pairwise(tokens_in_order)), "fencing tokens did not increase from holder to holder"


def test_processes_never_hold_key_at_once(
    backend_factory: BackendFactory, capabilities: Capabilities, timing: Timing, tmp_path: Path
):
    if not capabilities.multi_process:
        pytest.skip("capability multi_process is false")
    counter_path = tmp_path / "counter"
    worker_arguments = {
        "url": backend_factory.url_for(),
        "backend_spec": backend_spec(backend_class_for(backend_factory.base_url)),
        "key": "contended",
        "ttl_s": timing.long_ttl_s,
        "counter_path": str(counter_path),
        "rounds": ROUNDS_PER_PROCESS,
    }

    results = run_workers("count_under_lease", [worker_arguments] * CONTENDING_PROCESSES, tmp_path)

    sections = sorted(tuple(section) for result in results for section in result["sections"])
    total = CONTENDING_PROCESSES * ROUNDS_PER_PROCESS
    assert len(sections) == total
    assert int(counter_path.read_text(encoding="ascii")) == total, "updates were lost: two holders overlapped"
    assert [value for value, _ in sections] == list(range(total)), "two holders read the same counter value"
    assert sum(result["release_failures"] for result in results) == 0
    assert all(a[1] < b[1] for a, b in pairwise(sections)), "fencing tokens did not increase from holder to holder"


# -- Expiry and renewal -----------------------------------------------------------


def test_unrenewed_lease_expires_within_ttl(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    started = time.monotonic()
    lease = first.acquire("expiring", timing.ttl_s, holder="first")
    assert lease is not None

    taken, taken_at = acquire_when_free(
        second, "expiring", timing.long_ttl_s, timing.ttl_s + timing.late_tolerance_s + 2
    )

    elapsed = taken_at - started
    assert taken is not None, f"key still held {elapsed:.2f} s after a lease with TTL {timing.ttl_s} s"
    assert elapsed >= timing.ttl_s - timing.early_slack_s, f"key was free after {elapsed:.3f} s, before its TTL"
    assert elapsed <= timing.ttl_s + timing.late_tolerance_s, f"key was free only after {elapsed:.3f} s"
    assert taken.token > lease.token


def test_renew_extends_lease(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    ttl = timing.ttl_s
    started = time.monotonic()
    lease = first.acquire("renewed", ttl, holder="first")
    assert lease is not None

    sleep_until(started + ttl / 2)
    renew_sent = time.monotonic()
    renewed = first.renew(lease)

    assert (renewed.key, renewed.token, renewed.owner) == (lease.key, lease.token, lease.owner)
    assert renewed.valid_until > lease.valid_until

    # Past the original deadline but short of the renewed one, the key must stay held.
    while time.monotonic() < started + ttl * 1.25:
        assert second.acquire("renewed", ttl) is None, (
            f"key was free {time.monotonic() - started:.2f} s after acquisition, though renewed at {ttl / 2} s"
        )
        time.sleep(POLL_INTERVAL_S)

    taken, taken_at = acquire_when_free(second, "renewed", timing.long_ttl_s, ttl + timing.late_tolerance_s + 2)
    since_renew = taken_at - renew_sent
    assert taken is not None
    assert since_renew >= ttl - timing.early_slack_s, f"renewed key was free {since_renew:.3f} s after renewal"
    assert since_renew <= ttl + timing.late_tolerance_s, f"renewed key was free only {since_renew:.3f} s after renewal"


def test_renew_sets_new_ttl(backend: Backend, timing: Timing):
    lease = backend.acquire("renewed", timing.ttl_s)
    assert lease is not None

    renewed = backend.renew(lease, ttl_s=timing.long_ttl_s)

    assert renewed.ttl_s >= timing.long_ttl_s
    info = backend.inspect("renewed")
    assert info is not None
    assert info.ttl_remaining_s is None or info.ttl_remaining_s > timing.ttl_s


def test_renew_after_expiry_raises_lease_lost(backend: Backend, timing: Timing):
    lease = backend.acquire("lapsing", timing.ttl_s)
    assert lease is not None
    expired = poll(lambda: backend.inspect("lapsing") is None, timing.ttl_s + timing.late_tolerance_s)
    assert expired, f"inspect() still shows the lease {timing.ttl_s + timing.late_tolerance_s} s after acquisition"

    with pytest.raises(LeaseLost) as raised:
        backend.renew(lease)

    assert raised.value.key == "lapsing"
    assert "lapsing" in str(raised.value)
    assert backend.inspect("lapsing") is None, "a failed renewal must not revive the expired lease"


def test_stale_holder_cannot_touch_new_lease(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    stale = first.acquire("contested", timing.ttl_s, holder="stale")
    assert stale is not None
    fresh, _ = acquire_when_free(second, "contested", timing.long_ttl_s, timing.ttl_s + timing.late_tolerance_s)
    assert fresh is not None

    assert first.release(stale) is False, "release by a holder whose lease expired and was taken over returned True"
    with pytest.raises(LeaseLost) as raised:
        first.renew(stale)
    assert raised.value.key == "contested"

    info = second.inspect("contested")
    assert info is not None
    assert (info.token, info.holder, info.released) == (fresh.token, "poller", False)
    assert second.renew(fresh).token == fresh.token
    assert fresh.token > stale.token


# -- Release ----------------------------------------------------------------------


def test_release_frees_key_at_once(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    lease = first.acquire("report", timing.long_ttl_s)
    assert lease is not None

    assert first.release(lease) is True
    assert first.inspect("report") is None
    successor = second.acquire("report", timing.long_ttl_s, holder="second")
    assert successor is not None
    assert first.release(lease) is False, "a second release of the same lease returned True"

    info = second.inspect("report")
    assert info is not None
    assert info.token == successor.token


def test_renew_of_released_lease_raises_lease_lost(backend: Backend, timing: Timing):
    lease = backend.acquire("report", timing.long_ttl_s)
    assert lease is not None
    assert backend.release(lease) is True

    with pytest.raises(LeaseLost) as raised:
        backend.renew(lease)

    assert raised.value.key == "report"
    assert backend.inspect("report") is None, "a failed renewal must not take the key again"


def test_release_with_keep_blocks_key_for_keep_s(
    backend_factory: BackendFactory, capabilities: Capabilities, timing: Timing
):
    require_feature(capabilities, Feature.MIN_HOLD)
    first, second = backend_factory(), backend_factory()
    keep = timing.ttl_s
    lease = first.acquire("kept", timing.long_ttl_s)
    assert lease is not None

    released_at = time.monotonic()
    assert first.release(lease, keep_s=keep) is True
    taken, taken_at = acquire_when_free(second, "kept", timing.long_ttl_s, keep + timing.late_tolerance_s + 2)

    elapsed = taken_at - released_at
    assert taken is not None, f"key still blocked {elapsed:.2f} s after release with keep_s={keep}"
    assert elapsed >= keep - timing.early_slack_s, f"key was free {elapsed:.3f} s after release with keep_s={keep}"
    assert elapsed <= keep + timing.late_tolerance_s, f"key was free only {elapsed:.3f} s after release"
    assert taken.token > lease.token


def test_kept_key_is_reported_released(backend_factory: BackendFactory, capabilities: Capabilities, timing: Timing):
    require_feature(capabilities, Feature.MIN_HOLD)
    first, second = backend_factory(), backend_factory()
    lease = first.acquire("kept", timing.long_ttl_s, holder="first")
    assert lease is not None
    assert first.release(lease, keep_s=timing.long_ttl_s) is True

    info = first.inspect("kept")
    assert info is not None, "a key kept after release must still show in inspect()"
    assert (info.token, info.released) == (lease.token, True)
    with pytest.raises(LeaseLost):
        first.renew(lease)
    assert first.release(lease) is False, "a second release must not end the keep period early"
    assert second.acquire("kept", timing.long_ttl_s) is None
