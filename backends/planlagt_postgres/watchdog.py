"""A client-side deadline for requests on psycopg connections.

psycopg's synchronous connections wait for the server's response without a time limit.
libpq's TCP settings do not help when the server's host still acknowledges packets but
the server does not respond (a frozen process, a stalled disk). The :class:`Watchdog`
thread shuts down the socket of a request that passes its deadline. libpq then reads end
of file, psycopg raises ``OperationalError`` and marks the connection broken, and the
caller learns that the request timed out. The connection cannot be used again.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

__all__ = ["Watch", "Watchdog"]

LOG = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


@dataclass
class Watch:
    """One request under a deadline. ``expired`` is true once the watchdog cut its connection."""

    fileno: int
    deadline: float
    expired: bool = False
    done: bool = False


class Watchdog:
    """One thread per backend that cuts connections whose request passed its deadline.

    The thread starts on the first :meth:`watch` and ends at :meth:`close`. After a fork
    the child starts its own thread on its next :meth:`watch`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        _WATCHDOGS.add(self)

    @contextlib.contextmanager
    def watch(self, connection: psycopg.Connection, timeout_s: float) -> Iterator[Watch]:
        """Cut the socket of ``connection`` if the block has not finished within ``timeout_s`` seconds.

        The caller must keep the connection open until the block ends, so its descriptor
        cannot be reused by another file meanwhile. Raises ``psycopg.OperationalError``
        when the connection is already closed.
        """
        entry = Watch(fileno=connection.fileno(), deadline=time.monotonic() + timeout_s)
        with self._condition:
            self._start_if_needed()
            heapq.heappush(self._heap, (entry.deadline, next(self._counter), entry))
            if self._heap[0][2] is entry:
                self._condition.notify()
        try:
            yield entry
        finally:
            with self._condition:
                entry.done = True

    def close(self) -> None:
        """Stop the thread and wait for it. Safe to call more than once."""
        with self._condition:
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
            self._thread = None
            self._condition.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT_S)

    def reset_after_fork(self) -> None:
        """Forget the parent's thread and requests in a forked child; the child starts its own thread."""
        # The parent's thread may have held the condition's lock at fork time, so it is replaced.
        self._condition = threading.Condition()
        self._heap = []
        self._thread = None
        self._pid = os.getpid()

    def _start_if_needed(self) -> None:
        if self._pid != os.getpid():
            self.reset_after_fork()
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, name=f"planlagt-postgres-watchdog-{self._name}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        with self._condition:
            while not self._closed:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._condition.wait()
                    continue
                deadline, _, entry = self._heap[0]
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._condition.wait(remaining)
                    continue
                heapq.heappop(self._heap)
                self._cut(entry)

    def _cut(self, entry: Watch) -> None:
        """Shut down the socket of ``entry`` (called with the condition held, so the request is still running)."""
        entry.expired = True
        try:
            duplicate = os.dup(entry.fileno)
        except OSError as exc:
            LOG.warning("Could not cut a PostgreSQL connection that timed out: %s", exc)
            return
        with socket.socket(fileno=duplicate) as sock, contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


_WATCHDOGS: weakref.WeakSet[Watchdog] = weakref.WeakSet()


def _reset_watchdogs_after_fork() -> None:
    for watchdog in list(_WATCHDOGS):
        watchdog.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_watchdogs_after_fork)
