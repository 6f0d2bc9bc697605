"""Leases as session-level advisory locks, each held on a connection of its own.

Acquiring a lease checks out a connection, takes ``pg_try_advisory_lock`` on the lease's
64-bit key there, sets the session's ``idle_session_timeout`` to the TTL and writes the
lease row with a new fencing token. The connection then belongs to the lease until it is
released: no other lease, in this process or any other, ever uses it, so a session never
re-enters a lock it already holds for someone else. Released connections are unlocked
with ``pg_advisory_unlock_all()`` before they return to the pool.

A renewal is a cheap ``UPDATE`` on the lease's connection, which restarts the server's
idle timer. When the holder stops sending requests (a hung or paused process, a host that
vanished), the server ends the session once it has been idle for the TTL, and the lock goes
with it. A lease whose connection is gone is lost at once for its holder: the lock belonged
to that session, and a new connection never holds it.

The lease row also records the expiry on the server's clock (``now()`` plus the TTL, at
acquisition and at every renewal). A session that ends early (the holder crashed, its
connection broke, the server restarted) frees the lock at once, but acquisition rejects
the key until the expiry stored in the row has passed. So a key is never free sooner than
one TTL after the holder's last renewal, unless the holder released it.

Fenced writes run on the lease's own connection, inside a transaction whose first
statement checks, in ``pg_locks`` and the lease row, that this very session holds the
lock. A stale holder cannot write: its session is gone (so is the lock), or the check fails.
A write that commits while the session lives commits while the lock is held, because the
server frees a session's locks only after it ends, after any commit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from planlagt_core.backend import Lease, LeaseInfo, new_owner_token, renewed
from planlagt_core.errors import BackendError, LeaseLost

from .connections import ConnectionPool, Session, keep_inherited
from .errors import pooling_error
from .keys import pg_locks_ids
from .statements import Statements

__all__ = ["LeaseManager", "LockSession"]

LOG = logging.getLogger(__name__)

MS_PER_S = 1000
MIN_RENEW_TIMEOUT_S = 0.5
"""Shortest deadline for a renewal, even when the lease has less time left than this."""


def to_ms(seconds: float) -> int:
    """Convert seconds to whole milliseconds, rounding up, at least 1."""
    return max(1, math.ceil(round(seconds * MS_PER_S, 6)))


@dataclass
class LockSession:
    """A held lease and the connection whose session holds its advisory lock."""

    session: Session
    key: str
    lock_key: int
    owner: str
    token: int
    ttl_ms: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    ended: bool = False

    def parameters(self, prefix: str, **extra: Any) -> dict[str, Any]:
        """Return the parameters of ``HELD_BY_THIS_SESSION`` for this lease, plus ``extra``."""
        classid, objid = pg_locks_ids(self.lock_key)
        return {
            "prefix": prefix,
            "key": self.key,
            "owner": self.owner,
            "token": self.token,
            "classid": classid,
            "objid": objid,
            **extra,
        }


class LeaseManager:
    """Acquires, renews, releases and inspects the leases of one backend, and runs fenced writes.

    ``statements`` returns the composed statements (the schema is known only after the
    pool's first connection); ``lock_key`` maps a lease key to its advisory lock key.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        statements: Callable[[], Statements],
        lock_key: Callable[[str], int],
        prefix: str,
    ) -> None:
        self._pool = pool
        self._statements = statements
        self._lock_key = lock_key
        self._prefix = prefix
        self._held: dict[str, LockSession] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def url(self) -> str:
        return self._pool.url

    def lost(self, lease: Lease, why: str = "") -> LeaseLost:
        reason = why or "it expired, was released, or its connection to the server was lost"
        return LeaseLost(
            f"lease on {lease.key!r} (token {lease.token}) is no longer held: {reason}",
            key=lease.key,
            token=lease.token,
            backend=self.url,
        )

    # -- Acquire ----------------------------------------------------------------------

    def acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        sent_at = time.monotonic()
        ttl_ms = to_ms(ttl_s)
        lock_key = self._lock_key(key)
        session = self._pool.checkout("acquire")
        try:
            if not self._try_lock(session, lock_key, ttl_ms):
                self._pool.checkin(session)
                return None
            owner = new_owner_token()
            token = self._issue(session, key, owner, holder, ttl_ms)
        except BaseException:
            # Ending the session frees any lock it took.
            self._pool.discard(session)
            raise
        if token is None:
            self._unlock_and_return(session)
            return None

        self._remember(
            LockSession(session=session, key=key, lock_key=lock_key, owner=owner, token=token, ttl_ms=ttl_ms)
        )
        return Lease(key=key, token=token, owner=owner, ttl_s=ttl_s, valid_until=sent_at + ttl_s, holder=holder)

    def _try_lock(self, session: Session, lock_key: int, ttl_ms: int) -> bool:
        parameters = {"marker": session.marker, "lock_key": lock_key, "ttl_ms": ttl_ms}
        with self._pool.request(session, "acquire") as connection:
            row = connection.execute(self._statements().try_lock, parameters).fetchone()
        locked = row[0] if row is not None else None
        if locked is None:
            raise pooling_error(
                self.url,
                f"the connection to server process {session.backend_pid} found another session's marker",
            )
        return bool(locked)

    def _issue(self, session: Session, key: str, owner: str, holder: str, ttl_ms: int) -> int | None:
        parameters = {"prefix": self._prefix, "key": key, "owner": owner, "holder": holder, "ttl_ms": ttl_ms}
        with self._pool.request(session, "acquire") as connection:
            row = connection.execute(self._statements().issue_lease, parameters).fetchone()
        return None if row is None else int(row[0])

    def _unlock_and_return(self, session: Session) -> None:
        try:
            with self._pool.request(session, "release") as connection:
                connection.execute(self._statements().unlock_all)
        except BackendError as exc:
            LOG.debug("Unlocking a connection to %s failed, closing it: %s", self.url, exc)
            self._pool.discard(session)
            return
        self._pool.checkin(session)

    # -- Renew ------------------------------------------------------------------------

    def renew(self, lease: Lease, ttl_s: float) -> Lease:
        sent_at = time.monotonic()
        ttl_ms = to_ms(ttl_s)
        held = self._find(lease)
        if held is None:
            raise self.lost(lease)

        # Wait no longer than the lease has left, so a holder hears of a loss by then.
        timeout = min(self._pool.options.socket_timeout_s, max(lease.valid_until - sent_at, MIN_RENEW_TIMEOUT_S))
        with held.lock:
            if held.ended:
                raise self.lost(lease)
            with (
                self._on_session_loss(held, lease),
                self._pool.request(held.session, "renew", timeout) as connection,
            ):
                if ttl_ms != held.ttl_ms:
                    connection.execute(self._statements().set_ttl, {"ttl_ms": ttl_ms})
                    held.ttl_ms = ttl_ms
                row = connection.execute(
                    self._statements().touch_lease, held.parameters(self._prefix, ttl_ms=ttl_ms)
                ).fetchone()
            if row is None:
                self._end(held, unlock=True)
                raise self.lost(lease, "its TTL ran out, or this session no longer holds its advisory lock")
        return renewed(lease, ttl_s=ttl_s, sent_at=sent_at)

    # -- Release ----------------------------------------------------------------------

    def release(self, lease: Lease, keep_ms: int) -> bool:
        held = self._find(lease)
        if held is None:
            return False
        statements = self._statements()
        with held.lock:
            if held.ended:
                return False
            statement = statements.keep_released if keep_ms > 0 else statements.delete_lease
            try:
                with self._pool.request(held.session, "release") as connection:
                    row = connection.execute(statement, held.parameters(self._prefix, keep_ms=keep_ms)).fetchone()
            except BackendError as exc:
                self._end(held, unlock=False)
                if held.session.connection.broken:
                    LOG.info("Lease on %r ended with its connection before release: %s", lease.key, exc)
                    return False
                raise
            self._end(held, unlock=True)
        return row is not None

    # -- Inspect ----------------------------------------------------------------------

    def inspect(self, key: str) -> LeaseInfo | None:
        classid, objid = pg_locks_ids(self._lock_key(key))
        parameters = {"prefix": self._prefix, "key": key, "classid": classid, "objid": objid}
        session = self._pool.checkout("inspect")
        try:
            with self._pool.request(session, "inspect") as connection:
                row = connection.execute(self._statements().inspect, parameters).fetchone()
        finally:
            self._pool.checkin(session)
        if row is None or not row[4]:
            return None
        token, holder, released, remaining_s, _ = row
        return LeaseInfo(
            key=key,
            token=int(token),
            holder=str(holder),
            ttl_remaining_s=remaining_s if remaining_s is not None and remaining_s > 0 else None,
            released=bool(released),
        )

    # -- Fenced writes ----------------------------------------------------------------

    @contextlib.contextmanager
    def fenced(self, lease: Lease, operation: str) -> Iterator[psycopg.Connection]:
        """Yield the lease's connection inside a transaction that has checked the lease is held.

        Raises ``LeaseLost`` (nothing written) when the lease is not held or its connection
        is found gone by the check. A failure of the connection after the check raises
        ``BackendUnavailable`` (the outcome is unknown), and the lease counts as lost from then on.
        """
        held = self._find(lease)
        if held is None:
            raise self.lost(lease)
        with held.lock:
            if held.ended:
                raise self.lost(lease)
            checked = False
            try:
                with self._pool.request(held.session, operation) as connection, connection.transaction():
                    row = connection.execute(
                        self._statements().touch_lease, held.parameters(self._prefix, ttl_ms=held.ttl_ms)
                    ).fetchone()
                    if row is None:
                        raise self.lost(lease, "its TTL ran out, or this session no longer holds its advisory lock")
                    checked = True
                    yield connection
            except LeaseLost:
                self._end(held, unlock=True)
                raise
            except BackendError as exc:
                if not held.session.connection.broken:
                    raise
                self._end(held, unlock=False)
                if not checked:
                    raise self.lost(lease, f"its connection to the server was lost ({exc})") from exc
                raise

    # -- Bookkeeping ------------------------------------------------------------------

    def _remember(self, held: LockSession) -> None:
        self._check_fork()
        with self._lock:
            self._held[held.owner] = held

    def _find(self, lease: Lease) -> LockSession | None:
        """Return the lock session of ``lease`` if this process holds it (by owner and token)."""
        self._check_fork()
        with self._lock:
            held = self._held.get(lease.owner)
        if held is None or held.token != lease.token or held.key != lease.key:
            return None
        return held

    @contextlib.contextmanager
    def _on_session_loss(self, held: LockSession, lease: Lease) -> Iterator[None]:
        """Turn a failure that broke the lease's connection into ``LeaseLost``; re-raise others."""
        try:
            yield
        except BackendError as exc:
            if not held.session.connection.broken:
                raise
            self._end(held, unlock=False)
            raise self.lost(lease, f"its connection to the server was lost ({exc})") from exc

    def _end(self, held: LockSession, *, unlock: bool) -> None:
        """Forget a lock session; unlock and pool its connection, or close it (which frees the lock)."""
        held.ended = True
        with self._lock:
            self._held.pop(held.owner, None)
        if unlock and not held.session.connection.broken:
            self._unlock_and_return(held.session)
        else:
            self._pool.discard(held.session)

    def _check_fork(self) -> None:
        if self._pid == os.getpid():
            return
        # The parent's lock sessions belong to the parent: the child holds none of them,
        # and must not close them, which would end the parent's sessions.
        for held in self._held.values():
            keep_inherited(held.session.connection)
        self._held = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def close(self) -> None:
        """Close the connection of every lease still held, which ends its session and frees its lock.

        The lease rows stay, so each key remains blocked until its TTL runs out, as if the
        holder had stopped renewing.
        """
        self._check_fork()
        with self._lock:
            sessions = list(self._held.values())
            self._held = {}
        for held in sessions:
            with held.lock:
                held.ended = True
                self._pool.discard(held.session)
