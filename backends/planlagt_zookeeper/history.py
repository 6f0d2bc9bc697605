"""Run history: one persistent sequential node per record, named so that names sort by fire time.

A record of job ``J`` is ``R/runs/J/TIME-SEQ``: ``TIME`` is the fire time in milliseconds
(offset to stay positive, zero-padded) and ``SEQ`` the sequence number ZooKeeper appends,
so records of one fire time keep their insertion order. Listing reads the names first and
only the data of the records it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kazoo.exceptions import NoNodeError

from planlagt_core.models import RunRecord

from .layout import decode_name, parse_run_node
from .session import request
from .store import NodeStore

__all__ = ["RunHistory"]

READ_BATCH = 64
"""Records read at once while listing."""

MS_PER_S = 1000


@dataclass(frozen=True, order=True)
class RunNode:
    """A run record's node, ordered by fire time (ms) and then sequence number."""

    fire_ms: int
    sequence: int
    path: str


class RunHistory:
    """Appends, lists and trims run records under one :class:`NodeStore`."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.session = store.session
        self.layout = store.layout

    def record(self, record: RunRecord) -> None:
        prefix = self.layout.run_prefix(record.job, record.fire_time)
        data = record.to_json().encode("utf-8")
        self.session.call("record_run", lambda client: client.create_async(prefix, data, sequence=True, makepath=True))

    def list_records(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        nodes = sorted(self._nodes("list_runs", job, since, until), reverse=True)
        records: list[RunRecord] = []
        index = 0
        # Names give the fire time only to the millisecond, so past the limit the records
        # of the last millisecond taken are read too, and the exact times decide.
        while index < len(nodes) and (len(records) < limit or nodes[index].fire_ms == _ms(records[-1])):
            batch = nodes[index : index + READ_BATCH]
            index += len(batch)
            records.extend(record for record in self._read(batch) if _within(record, since, until))

        records.sort(key=lambda record: record.fire_time, reverse=True)
        return records[:limit]

    def trim(self, max_per_job: int, max_age_s: float) -> int:
        cutoff_ms = self.store.server_time_ms("trim_runs") - max_age_s * MS_PER_S
        deleted = 0
        for job in self._jobs("trim_runs"):
            nodes = sorted(self._nodes("trim_runs", job, None, None), reverse=True)
            doomed = [node for rank, node in enumerate(nodes) if rank >= max_per_job or node.fire_ms < cutoff_ms]
            deleted += self._delete(doomed)
        return deleted

    # -- Helpers --------------------------------------------------------------------

    def _jobs(self, operation: str) -> list[str]:
        return [decode_name(name) for name in self.store.children(operation, self.layout.runs_root)]

    def _nodes(self, operation: str, job: str | None, since: float | None, until: float | None) -> list[RunNode]:
        jobs = [job] if job is not None else self._jobs(operation)
        directories = [self.layout.runs(name) for name in jobs]
        listings = self.session.call_all(operation, [request("get_children", path) for path in directories])
        # One millisecond of slack on each bound: names round the fire time to the millisecond.
        lowest = -math.inf if since is None else math.floor(since * MS_PER_S) - 1
        highest = math.inf if until is None else math.ceil(until * MS_PER_S) + 1

        nodes = []
        for directory, names in zip(directories, listings, strict=True):
            if isinstance(names, NoNodeError):
                continue
            for name in names:
                fire_ms, sequence = self.store.parse("run record name", f"{directory}/{name}", parse_run_node, name)
                if lowest <= fire_ms <= highest:
                    nodes.append(RunNode(fire_ms=fire_ms, sequence=sequence, path=f"{directory}/{name}"))
        return nodes

    def _read(self, nodes: list[RunNode]) -> list[RunRecord]:
        results = self.store.read_all("list_runs", [node.path for node in nodes])
        return [
            self.store.parse("run record", node.path, RunRecord.from_json, result[0])
            for node, result in zip(nodes, results, strict=True)
            if result is not None  # trimmed since it was listed
        ]

    def _delete(self, nodes: list[RunNode]) -> int:
        results = self.session.call_all("trim_runs", [request("delete", node.path) for node in nodes])
        return sum(1 for result in results if not isinstance(result, NoNodeError))


def _ms(record: RunRecord) -> int:
    return round(record.fire_time * MS_PER_S)


def _within(record: RunRecord, since: float | None, until: float | None) -> bool:
    return (since is None or record.fire_time >= since) and (until is None or record.fire_time <= until)
