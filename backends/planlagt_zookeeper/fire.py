"""Fire state: one persistent node per (job, fire time), written by fenced transactions.

A fenced write is one transaction that checks the lease's holder node and writes the fire
state node with a version check (or creates it). The run record of a closed fire time is
created in the same transaction. When the fire state changed between the read and the
write, the operation reads it again and retries.

A fire state is kept ``keep_ms`` after its last write (the node's ``mtime``, leader's
clock). Expired states are deleted lazily: by ``finish_fire`` for its own job at most
every :data:`SWEEP_INTERVAL_S` seconds, and for every job by ``trim_runs``. Until then
``get_fire`` still returns them, which the contract allows (kept longer, never shorter).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass

from kazoo.client import TransactionRequest
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import ZnodeStat

from planlagt_core.backend import Lease
from planlagt_core.errors import BackendError
from planlagt_core.models import FireState, RunRecord

from .layout import decode_name
from .leases import LeaseOperations, session_expiry_as_loss, to_ms
from .session import first_failure
from .store import NodeStore, dump_json, expires_at_ms

__all__ = ["SWEEP_INTERVAL_S", "FireOperations"]

MAX_WRITE_TRIES = 50
"""Reads and conditional writes of one fire state before giving up on a node that keeps changing."""

SWEEP_INTERVAL_S = 300.0
"""Minimum time between two sweeps of one job's expired fire states by one backend."""


@dataclass(frozen=True)
class StoredFire:
    """A fire state as read, with the stat its conditional write checks."""

    state: FireState
    stat: ZnodeStat


class FireOperations:
    """Fire state operations of the backend, fenced by :class:`LeaseOperations`."""

    def __init__(self, store: NodeStore, leases: LeaseOperations) -> None:
        self.store = store
        self.session = store.session
        self.layout = store.layout
        self.leases = leases
        self.sweep_interval_s = SWEEP_INTERVAL_S
        self._last_sweep: dict[str, float] = {}
        self._sweep_lock = threading.Lock()

    # -- begin_attempt --------------------------------------------------------------

    def begin_attempt(self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float) -> FireState:
        holder_path = self.leases.prepare_fence(lease, "begin_attempt")
        path = self.layout.fire(job, fire_time)

        with session_expiry_as_loss(self.store.url, lease):
            for _ in range(MAX_WRITE_TRIES):
                stored = self.read(path)
                if stored is not None and (stored.state.outcome is not None or stored.state.attempts >= max_attempts):
                    if self._unchanged_under_fence(lease, holder_path, path, stored):
                        return stored.state
                    continue

                attempts = stored.state.attempts if stored is not None else 0
                begun = FireState(attempts=attempts + 1, token=lease.token, instance_id=lease.holder)
                if self._write(lease, holder_path, path, stored, begun, keep_s):
                    return begun
        raise self._too_busy(path)

    def _unchanged_under_fence(self, lease: Lease, holder_path: str, path: str, stored: StoredFire) -> bool:
        """Return whether, in one transaction, the lease is held and the fire state is as read."""

        def check(txn: TransactionRequest) -> None:
            txn.check(holder_path, -1)
            txn.check(path, stored.stat.version)

        failure = first_failure(self.session.commit("begin_attempt", check))
        if failure is None:
            return True
        if failure[0] == 0:
            raise self.leases.fence_failed(lease)
        return False

    # -- finish_fire ----------------------------------------------------------------

    def finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        holder_path = None if lease is None else self.leases.prepare_fence(lease, "finish_fire")
        path = self.layout.fire(record.job, record.fire_time)
        fenced = contextlib.nullcontext() if lease is None else session_expiry_as_loss(self.store.url, lease)

        with fenced:
            for _ in range(MAX_WRITE_TRIES):
                stored = self.read(path)
                if stored is not None and stored.state.outcome is not None:
                    if lease is not None and holder_path is not None:
                        self._require_fence(lease, holder_path)
                    return False
                if lease is None and stored is not None and stored.state.attempts > 0:
                    return False

                closed = _closed_state(record, lease, stored)
                if self._write(lease, holder_path, path, stored, closed, keep_s, run_record=record):
                    self._maybe_sweep(record.job)
                    return True
        raise self._too_busy(path)

    def _require_fence(self, lease: Lease, holder_path: str) -> None:
        failure = first_failure(self.session.commit("finish_fire", lambda txn: txn.check(holder_path, -1)))
        if failure is not None:
            raise self.leases.fence_failed(lease)

    # -- The conditional write ------------------------------------------------------

    def _write(
        self,
        lease: Lease | None,
        holder_path: str | None,
        path: str,
        stored: StoredFire | None,
        state: FireState,
        keep_s: float,
        *,
        run_record: RunRecord | None = None,
    ) -> bool:
        """Write ``state`` if the fire state is still as read (and the lease held); return whether it was written.

        Raises ``LeaseLost`` when the lease's holder node is gone.
        """
        data = fire_data(state, keep_s)
        run_prefix = None if run_record is None else self.layout.run_prefix(run_record.job, run_record.fire_time)

        def build(txn: TransactionRequest) -> None:
            if holder_path is not None:
                txn.check(holder_path, -1)
            if stored is None:
                txn.create(path, data)
            else:
                txn.set_data(path, data, version=stored.stat.version)
            if run_prefix is not None and run_record is not None:
                txn.create(run_prefix, run_record.to_json().encode("utf-8"), sequence=True)

        operation = "begin_attempt" if run_record is None else "finish_fire"
        failure = first_failure(self.session.commit(operation, build))
        if failure is None:
            return True

        index, error = failure
        if holder_path is not None and index == 0 and lease is not None:
            raise self.leases.fence_failed(lease)
        if isinstance(error, NoNodeError):
            # A parent is missing: the job's first fire state or first run record.
            self.store.ensure_parent(operation, path)
            if run_prefix is not None:
                self.store.ensure_parent(operation, run_prefix)
        return False

    # -- Reads and sweeps -----------------------------------------------------------

    def read(self, path: str) -> StoredFire | None:
        """Return the fire state stored at ``path`` with its stat, or None."""
        node = self.store.read("get_fire", path)
        if node is None:
            return None
        data, stat = node
        fields = self.store.parse_object("fire state", path, data)
        state = self.store.parse(
            "fire state", path, lambda value: FireState.from_json(json.dumps(value)), fields["state"]
        )
        return StoredFire(state=state, stat=stat)

    def get_fire(self, job: str, fire_time: float) -> FireState | None:
        stored = self.read(self.layout.fire(job, fire_time))
        return None if stored is None else stored.state

    def sweep_all(self) -> int:
        """Delete every expired fire state under the prefix; return how many were deleted."""
        now_ms = self.store.server_time_ms("trim_runs")
        jobs = [decode_name(name) for name in self.store.children("trim_runs", self.layout.fire_root)]
        return sum(self._sweep(job, now_ms) for job in jobs)

    def _maybe_sweep(self, job: str) -> None:
        now = time.monotonic()
        with self._sweep_lock:
            if now - self._last_sweep.get(job, -self.sweep_interval_s) < self.sweep_interval_s:
                return
            self._last_sweep[job] = now
        self._sweep(job, self.store.server_time_ms("finish_fire"))

    def _sweep(self, job: str, now_ms: int) -> int:
        directory = self.layout.fire_job(job)
        names = self.store.children("sweep fire states", directory)
        paths = [f"{directory}/{name}" for name in names]
        deleted = 0
        for path, node in zip(paths, self.store.read_all("sweep fire states", paths), strict=True):
            if node is None:
                continue
            keep_ms = self.store.parse("fire state", path, lambda data: int(json.loads(data)["keep_ms"]), node[0])
            if expires_at_ms(node[1], keep_ms) <= now_ms and self.store.delete_if_unchanged("sweep", path, node[1]):
                deleted += 1
        return deleted

    def _too_busy(self, path: str) -> BackendError:
        return BackendError(
            f"fire state {path!r} at {self.store.url} changed under every one of {MAX_WRITE_TRIES} conditional "
            "writes; another client is writing it in a loop",
            backend=self.store.url,
        )


def fire_data(state: FireState, keep_s: float) -> bytes:
    """Return the data of a fire state node: the state and how long to keep it, in ms."""
    return dump_json({"keep_ms": to_ms(keep_s), "state": json.loads(state.to_json())})


def _closed_state(record: RunRecord, lease: Lease | None, stored: StoredFire | None) -> FireState:
    attempts = 0
    token = None
    if stored is not None:
        attempts = stored.state.attempts
        token = stored.state.token
    if lease is not None:
        token = lease.token
    return FireState(attempts=attempts, outcome=record.outcome, token=token, instance_id=record.instance_id)
