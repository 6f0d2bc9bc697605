"""Fire state: attempts begun and the final outcome of each fire time, written in fenced transactions.

etcd transactions compare and write, but cannot compute a new value from a stored one.
So each write is optimistic: it compares the lease key (when fenced) and the fire state's
mod revision as last read, and writes only if neither changed. When the comparison fails,
the failure branch reads both keys in the same transaction, and the next attempt starts
from what it read. The first attempt assumes the fire state does not exist yet (mod
revision 0, which etcd reports for a missing key), so the common case costs one request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pyetcd.transactions import BaseCompare, Get, Mod, Put

from planlagt_core.backend import Lease
from planlagt_core.errors import BackendError
from planlagt_core.models import FireState, RunRecord

from .errors import LeaseNotFound
from .history import RunHistory
from .keys import KeyLayout
from .leases import LeaseStore, held_compares, is_held
from .retention import RetentionLeases
from .store import Entry, EtcdStore, Txn

__all__ = ["FireStates"]

MAX_CONFLICTS = 100
"""How many times a write is tried again after another client changed the fire state first."""


class FireStates:
    """Begin attempts at, close and read fire times under one key layout."""

    def __init__(
        self,
        store: EtcdStore,
        layout: KeyLayout,
        leases: LeaseStore,
        retention: RetentionLeases,
        history: RunHistory,
    ) -> None:
        self._store = store
        self._layout = layout
        self._leases = leases
        self._retention = retention
        self._history = history

    def begin_attempt(self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float) -> FireState:
        lease_key = self._layout.lease(lease.key)
        fire_key = self._layout.fire(job, fire_time)
        state: FireState | None = None
        mod_revision = 0

        for _ in range(MAX_CONFLICTS):
            if state is not None and (state.outcome is not None or state.attempts >= max_attempts):
                return state
            begun = FireState(
                attempts=(state.attempts if state else 0) + 1,
                outcome=None,
                token=lease.token,
                instance_id=lease.holder,
            )
            begun_json = begun.to_json()
            result = self._write(
                "begin_attempt",
                [*held_compares(lease_key, lease), Mod(fire_key) == mod_revision],
                lambda retention_id, value=begun_json: [Put(fire_key, value, lease=retention_id)],
                [Get(lease_key), Get(fire_key)],
                keep_s,
            )
            if result.succeeded:
                return begun
            if not is_held(result.read(0), lease):
                raise self._leases.lost(lease)
            state, mod_revision = self._state_of(fire_key, result.read(1))
        raise self._too_many_conflicts("begin_attempt", fire_key)

    def finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        fire_key = self._layout.fire(record.job, record.fire_time)
        fenced: list[BaseCompare] = []
        reads = [Get(fire_key)]
        if lease is not None:
            lease_key = self._layout.lease(lease.key)
            fenced = held_compares(lease_key, lease)
            reads = [Get(lease_key), Get(fire_key)]
        history_puts = self._history.record_puts(record)
        state: FireState | None = None
        mod_revision = 0

        for _ in range(MAX_CONFLICTS):
            if state is not None and (state.outcome is not None or (lease is None and state.attempts > 0)):
                return False
            # A fenced close stores its own token; an unfenced one keeps the token stored before.
            token = state.token if state is not None else None
            if lease is not None:
                token = lease.token
            closed = FireState(
                attempts=state.attempts if state else 0,
                outcome=record.outcome,
                token=token,
                instance_id=record.instance_id,
            )
            closed_json = closed.to_json()
            result = self._write(
                "finish_fire",
                [*fenced, Mod(fire_key) == mod_revision],
                lambda retention_id, value=closed_json: [Put(fire_key, value, lease=retention_id), *history_puts],
                reads,
                keep_s,
            )
            if result.succeeded:
                return True
            if lease is not None and not is_held(result.read(0), lease):
                raise self._leases.lost(lease)
            state, mod_revision = self._state_of(fire_key, result.read(len(reads) - 1))
        raise self._too_many_conflicts("finish_fire", fire_key)

    def get(self, job: str, fire_time: float) -> FireState | None:
        fire_key = self._layout.fire(job, fire_time)
        state, _ = self._state_of(fire_key, self._store.get("get_fire", fire_key))
        return state

    def _write(
        self,
        operation: str,
        compare: Sequence[BaseCompare],
        success: Callable[[int], list[Any]],
        failure: Sequence[Any],
        keep_s: float,
    ) -> Txn:
        """Run the transaction with the retention lease for ``keep_s``; once more with a new one if etcd lost it."""
        retention_id = self._retention.lease_for(keep_s)
        try:
            return self._store.txn(operation, compare, success(retention_id), failure)
        except LeaseNotFound:
            self._retention.forget(retention_id)
        return self._store.txn(operation, compare, success(self._retention.lease_for(keep_s)), failure)

    def _state_of(self, fire_key: bytes, entry: Entry | None) -> tuple[FireState | None, int]:
        if entry is None:
            return None, 0
        return self._store.parse("fire state", fire_key, FireState.from_json, entry.value), entry.mod_revision

    def _too_many_conflicts(self, operation: str, fire_key: bytes) -> BackendError:
        return BackendError(
            f"etcd at {self._store.url}: {operation} gave up after {MAX_CONFLICTS} attempts, each overtaken by "
            f"another write to {fire_key.decode(errors='replace')!r}",
            backend=self._store.url,
        )
