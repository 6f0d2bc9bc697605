"""Control state: paused jobs (one key each) and trigger requests (one key each)."""

from __future__ import annotations

from pyetcd.transactions import Create, Get, Put

from planlagt_core.models import ControlState, TriggerRequest

from .keys import KeyLayout, range_end
from .store import EtcdStore

__all__ = ["Control"]


class Control:
    """Read and change the control state under one key layout."""

    def __init__(self, store: EtcdStore, layout: KeyLayout) -> None:
        self._store = store
        self._layout = layout

    def read(self) -> ControlState:
        """Read paused jobs and trigger requests in one transaction, so both come from one revision."""
        paused, triggers = self._layout.paused_prefix, self._layout.triggers
        result = self._store.txn(
            "read_control", [], [Get(paused, range_end(paused)), Get(triggers, range_end(triggers))]
        )
        requests = [
            self._store.parse("trigger request", entry.key, TriggerRequest.from_json, entry.value)
            for entry in result.reads[1]
        ]
        requests.sort(key=lambda request: (request.requested_at, request.request_id))
        return ControlState(
            paused=frozenset(entry.value.decode() for entry in result.reads[0]),
            triggers=tuple(requests),
        )

    def set_paused(self, job: str, paused: bool) -> None:
        key = self._layout.paused(job)
        if paused:
            self._store.put("set_paused", key, job.encode())
        else:
            self._store.delete("set_paused", key)

    def add_trigger(self, request: TriggerRequest) -> None:
        """Store the request unless one with its id exists (one transaction)."""
        key = self._layout.trigger(request.request_id)
        self._store.txn("add_trigger", [Create(key) == 0], [Put(key, request.to_json().encode())])

    def remove_trigger(self, request_id: str) -> bool:
        return self._store.delete("remove_trigger", self._layout.trigger(request_id))
