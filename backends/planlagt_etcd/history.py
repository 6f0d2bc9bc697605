"""Run history: each record stored twice, under its job and in the history of all jobs, sorted by fire time.

Keys carry the fire time as :func:`~planlagt_etcd.keys.sortable_ms`, so a range read
sorted by key in descending order lists the newest fire times first. Records of one fire
time follow the record id, which starts with the writer's clock in nanoseconds, so they
are listed newest first as far as the writers' clocks agree.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

from pyetcd.transactions import Delete, Put

from planlagt_core.models import RunRecord

from .keys import KeyLayout, ms_from_sortable, range_end, sortable_ms
from .store import EtcdStore

__all__ = ["RunHistory"]

MAX_TXN_DELETES = 64
"""Records deleted per transaction: two keys each, within etcd's default limit of 128 operations."""

MS_PER_S = 1000


def new_record_id() -> str:
    """Return an id that orders records of one fire time by the writer's clock; the random tail keeps it unique."""
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


class RunHistory:
    """Append, list and trim run records under one key layout."""

    def __init__(self, store: EtcdStore, layout: KeyLayout) -> None:
        self._store = store
        self._layout = layout

    def record_puts(self, record: RunRecord) -> list[Put]:
        """Return the two writes that append ``record``, for a transaction."""
        record_id = new_record_id()
        value = record.to_json().encode()
        return [
            Put(self._layout.job_run(record.job, record.fire_time, record_id), value),
            Put(self._layout.all_run(record.job, record.fire_time, record_id), value),
        ]

    def append(self, record: RunRecord) -> None:
        self._store.txn("record_run", [], self.record_puts(record))

    def list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        """Read newest first, one page at a time, until ``limit`` records within the bounds are found.

        Keys bound the fire time to the millisecond; the exact bounds are checked on the
        records themselves.
        """
        base = self._layout.all_runs if job is None else self._layout.job_runs(job)
        start = base if since is None else base + sortable_ms(since).encode()
        end = range_end(base) if until is None else range_end(base + sortable_ms(until).encode())

        found: list[RunRecord] = []
        for entry in self._store.scan("list_runs", start, end, descending=True):
            record = self._store.parse("run record", entry.key, RunRecord.from_json, entry.value)
            if (since is None or record.fire_time >= since) and (until is None or record.fire_time <= until):
                found.append(record)
            if len(found) >= limit:
                break
        return found

    def trim(self, max_per_job: int, max_age_s: float) -> int:
        """Delete records beyond the newest ``max_per_job`` per job or with a fire time older than ``max_age_s``.

        The age is measured on this process's clock, because etcd does not report its own
        time, and at millisecond precision.
        """
        cutoff_ms = (time.time() - max_age_s) * MS_PER_S
        doomed = list(self._doomed_keys(max_per_job, cutoff_ms))

        deleted = 0
        for first in range(0, len(doomed), MAX_TXN_DELETES):
            batch = doomed[first : first + MAX_TXN_DELETES]
            operations: list[Any] = []
            for key in batch:
                operations += [Delete(key), Delete(self._layout.all_run_for(key))]
            result = self._store.txn("trim_runs", [], operations)
            deleted += sum(result.deleted[0::2])
        return deleted

    def _doomed_keys(self, max_per_job: int, cutoff_ms: float) -> Iterator[bytes]:
        prefix = self._layout.job_runs_prefix
        by_job: dict[bytes, list[bytes]] = {}
        for entry in self._store.scan("trim_runs", prefix, range_end(prefix), keys_only=True):
            job = entry.key[len(prefix) :].split(b"/", 1)[0]
            by_job.setdefault(job, []).append(entry.key)

        for keys in by_job.values():
            kept_from = len(keys) - max_per_job
            for index, key in enumerate(keys):
                fire_ms = ms_from_sortable(key.split(b"/")[-2].decode())
                if index < kept_from or fire_ms < cutoff_ms:
                    yield key
