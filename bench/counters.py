"""Counting backend traffic inside an instance process, for measurement 2.

Three counts, installed by patching client classes in the instance process only:

- backend calls: every public :class:`~planlagt_core.backend.Backend` method call;
- round trips: every request redis-py writes to a socket (a pipeline or a script call is
  one), or every SQLite transaction;
- statements: every SQL statement SQLite runs (Redis commands are counted by the server).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

from planlagt_core.backend import Backend

__all__ = ["BACKEND_METHODS", "TrafficCounters"]

BACKEND_METHODS = (
    "acquire", "renew", "release", "inspect", "begin_attempt", "finish_fire", "get_fire",
    "record_run", "list_runs", "trim_runs", "heartbeat", "leave", "list_instances",
    "announce_jobs", "list_job_definitions", "read_control", "set_paused", "add_trigger",
    "remove_trigger",
)  # fmt: skip


class TrafficCounters:
    """Counters that only grow; :meth:`snapshot` reads them all at once."""

    def __init__(self) -> None:
        self._calls = {name: itertools.count() for name in BACKEND_METHODS}
        self._round_trips = itertools.count()
        self._statements = itertools.count()

    def snapshot(self) -> dict[str, Any]:
        calls = {name: _read(counter) for name, counter in self._calls.items()}
        return {"calls": calls, "round_trips": _read(self._round_trips), "statements": _read(self._statements)}

    def wrap_backend(self, backend: Backend) -> None:
        """Count every public method call on ``backend`` (instance attributes shadow the class)."""
        for name in BACKEND_METHODS:
            method = getattr(backend, name)
            setattr(backend, name, self._counted(method, self._calls[name]))

    @staticmethod
    def _counted(method: Any, counter: Any) -> Any:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            next(counter)
            return method(*args, **kwargs)

        return call

    def count_redis_requests(self) -> None:
        """Count every packed request redis-py sends on any connection of this process."""
        from redis.connection import AbstractConnection

        original = AbstractConnection.send_packed_command
        counter = self._round_trips

        def send_packed_command(connection: Any, command: Any, check_health: bool = True) -> Any:
            next(counter)
            return original(connection, command, check_health)

        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]

    def count_sqlite_transactions(self) -> None:
        """Count every SQLite transaction and statement of the planlagt SQLite backend in this process."""
        from planlagt_sqlite.connections import ConnectionManager

        transaction = ConnectionManager.transaction
        open_connection = ConnectionManager._open
        transactions, statements = self._round_trips, self._statements

        def counted_transaction(manager: Any, *, write: bool) -> Any:
            next(transactions)
            return transaction(manager, write=write)

        def counted_open(manager: Any) -> Any:
            connection = open_connection(manager)
            connection.set_trace_callback(lambda _statement: next(statements))
            return connection

        ConnectionManager.transaction = counted_transaction  # type: ignore[method-assign]
        ConnectionManager._open = counted_open  # type: ignore[method-assign]


def _read(counter: Any) -> int:
    # itertools.count is incremented atomically under the GIL but has no accessor: its repr shows the value.
    return int(repr(counter)[len("count(") : -1])
