"""The conformance suite tested on itself: each deliberately broken backend must fail its case.

Every broken variant below wraps the memory backend and breaks one promise of the contract.
The suite runs in a child process (as ``planlagt conformance`` does) with the variant
registered under its own URL scheme, and the cases aimed at that promise must fail, while
the unbroken memory backend passes the whole suite.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from planlagt_memory import MemoryBackend
from planlagt_memory.store import LeaseEntry, Namespace

from planlagt_core.backend import Capabilities, Feature, Lease, fire_time_key, renewed
from planlagt_core.models import ControlState, RunRecord

SUITE_TIMEOUT_S = 240.0

# The child process loads this file as a module, registers the variants and runs the suite.
DRIVER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("conformance_selftest_backends", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module.register_variants()
from planlagt_conformance import run
sys.exit(run(sys.argv[2], json=sys.argv[3] == "json", pattern=sys.argv[4] or None))
"""


# -- Variants ---------------------------------------------------------------------


class HonestMemory(MemoryBackend):
    """The memory backend unchanged, under its own scheme: the control group."""

    schemes: ClassVar[tuple[str, ...]] = ("honestmemory",)


class ReleaseWithoutOwnerCheck(MemoryBackend):
    """Release deletes the key even when another holder has it (no compare-and-delete)."""

    schemes: ClassVar[tuple[str, ...]] = ("releaseanyholder",)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        with self.store.lock:
            self._namespace().leases.pop(lease.key, None)
        return True


class RenewAlwaysSucceeds(MemoryBackend):
    """Renew never checks the lease: it reports success even for lost leases."""

    schemes: ClassVar[tuple[str, ...]] = ("renewalways",)

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        with self.store.lock:
            entry = self._namespace().leases.get(lease.key)
            if entry is not None and entry.owner == lease.owner:
                entry.expires_at = self.clock.monotonic() + ttl_s
        return renewed(lease, ttl_s=ttl_s, sent_at=self.clock.monotonic())


class TokensDoNotIncrease(MemoryBackend):
    """Every acquisition gets fencing token 1."""

    schemes: ClassVar[tuple[str, ...]] = ("flattokens",)

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        lease = super()._do_acquire(key, ttl_s, holder)
        with self.store.lock:
            self._namespace().last_tokens[key] = 0
        return lease


class PrefixIgnored(MemoryBackend):
    """Every prefix reads and writes one namespace."""

    schemes: ClassVar[tuple[str, ...]] = ("noprefix",)

    def _namespace(self) -> Namespace:
        return self.store.namespace("one-for-all")


class MinHoldDeclaredButIgnored(MemoryBackend):
    """Declares ``Feature.MIN_HOLD`` (as the memory backend does) but frees the key at once."""

    schemes: ClassVar[tuple[str, ...]] = ("falseminhold",)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        return super()._do_release(lease, 0.0)


class ExpiresEarly(MemoryBackend):
    """Leases expire after half their TTL."""

    schemes: ClassVar[tuple[str, ...]] = ("expiresearly",)

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        lease = super()._do_acquire(key, ttl_s / 2, holder)
        return None if lease is None else replace(lease, ttl_s=ttl_s)


class BeginAttemptUnfenced(MemoryBackend):
    """begin_attempt and finish_fire write without checking the lease (renew breaks too)."""

    schemes: ClassVar[tuple[str, ...]] = ("unfenced",)

    def _require_held(self, space: Namespace, lease: Lease, now: float) -> LeaseEntry:
        return LeaseEntry(owner=lease.owner, token=lease.token, holder=lease.holder, expires_at=now)


class ClosesFireTimeTwice(MemoryBackend):
    """finish_fire deletes the stored outcome first, so every call closes the fire time again."""

    schemes: ClassVar[tuple[str, ...]] = ("closestwice",)

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        with self.store.lock:
            self._namespace().fires.pop((record.job, fire_time_key(record.fire_time)), None)
        return super()._do_finish_fire(record, lease, keep_s)


class ControlUndeclaredButServed(MemoryBackend):
    """Leaves ``Feature.CONTROL`` out of its capabilities but serves read_control anyway."""

    schemes: ClassVar[tuple[str, ...]] = ("undeclaredcontrol",)
    capabilities: ClassVar[Capabilities] = replace(
        MemoryBackend.capabilities, features=frozenset(Feature) - {Feature.CONTROL}
    )

    def read_control(self) -> ControlState:
        return self._do_read_control()


class LeaksThreadAndFile(MemoryBackend):
    """Starts a thread and opens a file on first use, and close() stops neither."""

    schemes: ClassVar[tuple[str, ...]] = ("leaky",)

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        if not hasattr(self, "_leaked_fd"):
            self._leaked_fd = os.open(os.devnull, os.O_RDONLY)
            self._leaked_stop = threading.Event()
            threading.Thread(target=self._leaked_stop.wait, name="leaked-helper", daemon=True).start()
        return super()._do_acquire(key, ttl_s, holder)


VARIANTS = [
    HonestMemory,
    ReleaseWithoutOwnerCheck,
    RenewAlwaysSucceeds,
    TokensDoNotIncrease,
    PrefixIgnored,
    MinHoldDeclaredButIgnored,
    ExpiresEarly,
    BeginAttemptUnfenced,
    ClosesFireTimeTwice,
    ControlUndeclaredButServed,
    LeaksThreadAndFile,
]


def register_variants() -> None:
    """Register every variant under its scheme (called in the child process)."""
    from planlagt_conformance.plugin import register_test_backend

    for variant in VARIANTS:
        register_test_backend(variant.schemes[0], variant)


# -- Running the suite in a child process -------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """The cases that must fail against one variant, and a ``-k`` pattern that selects them."""

    variant: type[MemoryBackend]
    must_fail: tuple[str, ...]
    pattern: str


EXPECTATIONS = [
    Expectation(
        ReleaseWithoutOwnerCheck,
        ("test_stale_holder_cannot_touch_new_lease", "test_release_frees_key_at_once"),
        "test_leases",
    ),
    Expectation(
        RenewAlwaysSucceeds,
        (
            "test_renew_after_expiry_raises_lease_lost",
            "test_renew_of_released_lease_raises_lease_lost",
            "test_stale_holder_cannot_touch_new_lease",
        ),
        "test_leases",
    ),
    Expectation(
        TokensDoNotIncrease,
        (
            "test_tokens_increase_across_holders_and_releases",
            "test_tokens_increase_with_keys_held_together",
            "test_threads_never_hold_key_at_once",
        ),
        "test_fencing or test_threads_never_hold_key_at_once",
    ),
    Expectation(
        PrefixIgnored,
        (
            "test_prefixes_isolate_leases",
            "test_prefixes_isolate_fire_state_and_runs",
            "test_prefixes_isolate_membership",
            "test_prefixes_isolate_job_registry",
            "test_prefixes_isolate_control",
        ),
        "test_isolation",
    ),
    Expectation(
        MinHoldDeclaredButIgnored,
        ("test_release_with_keep_blocks_key_for_keep_s", "test_kept_key_is_reported_released"),
        "keep or kept",
    ),
    Expectation(ExpiresEarly, ("test_unrenewed_lease_expires_within_ttl",), "test_unrenewed_lease_expires_within_ttl"),
    Expectation(
        BeginAttemptUnfenced,
        ("test_fenced_writes_with_released_lease_raise", "test_fenced_writes_by_expired_holder_raise"),
        "test_fenced_writes",
    ),
    Expectation(
        ClosesFireTimeTwice,
        ("test_finish_fire_closes_once", "test_finish_fire_from_many_threads_closes_once"),
        "test_finish_fire",
    ),
    Expectation(ControlUndeclaredButServed, ("test_undeclared_feature_raises_not_supported",), "test_undeclared"),
    Expectation(
        LeaksThreadAndFile,
        ("test_acquire_returns_lease", "test_close_leaves_no_threads_or_connections"),
        ("test_acquire_returns_lease or test_close_leaves_no_threads_or_connections"),
    ),
]


def run_suite(scheme: str, *, pattern: str = "", output: str = "json") -> tuple[int, str, str]:
    """Run the suite against a fresh named store of ``scheme`` and return status, stdout and stderr."""
    url = f"{scheme}://selftest-{secrets.token_hex(4)}"
    completed = subprocess.run(
        [sys.executable, "-c", DRIVER, str(Path(__file__).resolve()), url, output, pattern],
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
    )
    return completed.returncode, completed.stdout, completed.stderr


def run_suite_json(scheme: str, pattern: str = "") -> dict[str, Any]:
    status, stdout, stderr = run_suite(scheme, pattern=pattern)
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        pytest.fail(f"the suite printed no JSON report (status {status}); its output:\n{stdout}\n{stderr[-4000:]}")
    assert report["exit_status"] == status
    return report


def case_function(name: str) -> str:
    """Return the test function of a case name such as ``test_x.py::test_y[memory-z]``."""
    return name.split("::")[-1].split("[")[0]


def outcomes(report: dict[str, Any], outcome: str) -> dict[str, str | None]:
    return {case["name"]: case["message"] for case in report["cases"] if case["outcome"] == outcome}


# -- Tests ------------------------------------------------------------------------


def test_honest_memory_passes_whole_suite():
    report = run_suite_json("honestmemory")

    failed = outcomes(report, "failed")
    assert failed == {}, "the unbroken memory backend failed:\n" + "\n".join(f"{k}: {v}" for k, v in failed.items())
    assert report["exit_status"] == 0
    assert report["passed"] > 80
    assert set(outcomes(report, "skipped").values()) == {
        "capability multi_process is false",
        "capability min_hold is declared",
        "capability job_registry is declared",
        "capability control is declared",
        "capability run_retention is declared",
    }


@pytest.mark.parametrize("expectation", EXPECTATIONS, ids=lambda expectation: expectation.variant.schemes[0])
def test_broken_variant_fails_its_cases(expectation: Expectation):
    report = run_suite_json(expectation.variant.schemes[0], expectation.pattern)

    failed_functions = {case_function(name) for name in outcomes(report, "failed")}
    for case in expectation.must_fail:
        assert case in failed_functions, (
            f"{case} did not fail against {expectation.variant.__name__} ({expectation.variant.__doc__.strip()}); "
            f"failed cases: {sorted(failed_functions)}"
        )
    assert report["exit_status"] == 1


def test_leak_failure_names_thread_and_descriptor():
    report = run_suite_json("leaky", "test_acquire_returns_lease")

    (message,) = outcomes(report, "failed").values()
    assert "leaked-helper" in message
    assert os.devnull in message


def test_text_report_ends_with_counts():
    pattern = "test_release_frees_key_at_once or test_renew_keeps_token or test_acquire_returns_lease"
    status, stdout, _ = run_suite("releaseanyholder", pattern=pattern, output="text")

    assert stdout.strip().splitlines()[-1] == "2 passed, 1 failed"
    assert status == 1


def test_text_report_counts_skips():
    status, stdout, _ = run_suite("honestmemory", pattern="test_processes_never_hold_key_at_once", output="text")

    assert stdout.strip().splitlines()[-1] == "0 passed, 0 failed, 1 skipped"
    assert status == 0


def test_missing_pytest_reported(tmp_path: Path):
    # A module named pytest that fails to import hides the installed pytest from the child.
    (tmp_path / "pytest.py").write_text("raise ImportError('pytest is hidden for this test')\n", encoding="utf-8")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    completed = subprocess.run(
        [sys.executable, "-m", "planlagt_conformance.cli", "memory://x"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )

    assert completed.returncode == 2
    assert 'install it with `pip install "planlagt[conformance]"`' in completed.stderr
