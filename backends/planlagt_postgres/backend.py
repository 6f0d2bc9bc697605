"""The ``postgresql://`` and ``postgres://`` backend, built on psycopg 3."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import quote

import psycopg

from planlagt_core.backend import Backend, Capabilities, Lease, LeaseInfo, fire_time_key
from planlagt_core.errors import ConfigurationError
from planlagt_core.models import ControlState, FireState, InstanceInfo, Outcome, RunRecord, TriggerRequest
from planlagt_core.url import BackendURL

from .connections import ConnectionPool
from .errors import invalid_data
from .keys import LOCK_NAMESPACE, advisory_key
from .leases import LeaseManager, to_ms
from .options import PostgresOptions, parse_postgres_url
from .schema import Tables
from .statements import Statements

__all__ = ["PostgresBackend"]

LOG = logging.getLogger(__name__)


class PostgresBackend(Backend):
    """A backend on one PostgreSQL database (14 or newer; tested with 15), through psycopg 3.

    Where it differs from the contract, or adds to it:

    - Mutual exclusion comes from session-level advisory locks (``pg_try_advisory_lock``
      on a 64-bit key, see :mod:`planlagt_postgres.keys`), each held on a connection of
      its own for as long as the lease is held: every held lease uses one connection.
    - The TTL is enforced twice, both on the server. The lock session's
      ``idle_session_timeout`` is the TTL, so the server ends a session that sends nothing
      for that long, and its lock with it. Every renewal is a request on that session. The
      lease row stores ``now()`` plus the TTL, and acquisition refuses a key whose row has
      not expired, so a session that ends early (crash, broken connection, server restart)
      does not free the key before its TTL. Worst-case takeover after the holder's last
      renewal: the TTL, plus the time the server takes to end the session, plus the
      contender's polling interval.
    - A lease is never at risk: when a renewal cannot reach the server, its connection is
      closed, and a closed session can never be proven to hold the lock again, so the
      renewal raises ``LeaseLost`` at once. So does a renewal after
      ``pg_terminate_backend`` or a server restart.
    - Fencing tokens come from a table, so they keep increasing across restarts.
    - The tables are created on first use in ``schema`` (default: the first existing
      schema of the ``search_path``); every row carries the prefix. Every expiry is
      decided with the server's ``now()``.
    - ``close()`` closes the connections of leases still held; their keys stay blocked
      until their TTL runs out.
    - Poolers in transaction or statement mode are detected on first use and rejected
      with :class:`~planlagt_postgres.errors.TransactionPoolingError`.

    Connection loss: a request that gets no answer within ``socket_timeout`` (10 s by
    default) raises ``BackendUnavailable``; opening a connection gives up after
    ``connect_timeout``. Once the server answers again, new connections are opened on the
    next call without any action by the caller.
    """

    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    client_library: ClassVar[str] = "psycopg"
    capabilities: ClassVar[Capabilities] = Capabilities(
        # idle_session_timeout counts milliseconds, but a TTL must also outlast the time
        # from one renewal to the next on a loaded client, so 1 s is the shortest allowed.
        min_ttl_s=1.0,
        ttl_granularity_s=0.001,
        durable_fencing_tokens=True,
        session_bound_leases=False,
    )

    def __init__(self, options: PostgresOptions | None = None, *, url: str = "") -> None:
        """Create a backend for ``options`` (default: libpq's defaults). Does not connect.

        ``url`` is the redacted URL shown in ``repr`` and messages.
        """
        options = options or PostgresOptions()
        super().__init__(url=url or _describe(options), prefix=options.prefix)
        self.options = options
        self.pool = ConnectionPool(options, self.url)
        self.leases = LeaseManager(self.pool, self.statements, self.lock_key, options.prefix)
        self._statements: Statements | None = None
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: BackendURL) -> PostgresBackend:
        """Build a backend from a ``postgresql://`` or ``postgres://`` URL (see ``planlagt_postgres.options``).

        Raises ``InvalidURL`` naming the option or part at fault. Never connects.
        """
        return cls(parse_postgres_url(url), url=url.redacted())

    def close(self) -> None:
        """Close every connection; keys of leases still held stay blocked until their TTL runs out.

        Later calls raise ``BackendError``.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.leases.close()
        self.pool.close()
        LOG.debug("Closed backend %s", self.url)

    # -- Plumbing -------------------------------------------------------------------

    def statements(self) -> Statements:
        """Return the statements for the backend's schema, connecting first if needed to learn it."""
        if self._statements is None:
            if self.pool.schema is None:
                self.pool.checkin(self.pool.checkout("connect"))
            assert self.pool.schema is not None
            self._statements = Statements(Tables(self.pool.schema))
        return self._statements

    def lock_key(self, key: str) -> int:
        """Return the advisory lock key of lease ``key``: a hash of the schema, prefix and key.

        Tests override it to force collisions between keys.
        """
        return advisory_key(LOCK_NAMESPACE, self.statements().tables.schema, self.prefix, key)

    @contextmanager
    def _connection(self, operation: str) -> Iterator[psycopg.Connection]:
        """Yield a pooled connection for one operation, translating its errors."""
        session = self.pool.checkout(operation)
        try:
            with self.pool.request(session, operation) as connection:
                yield connection
        finally:
            self.pool.checkin(session)

    def _execute(self, operation: str, statement: Any, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement on a pooled connection and return its rows (none for a statement without results)."""
        with self._connection(operation) as connection:
            cursor = connection.execute(statement, parameters)
            return cursor.fetchall() if cursor.description is not None else []

    def _rowcount(self, operation: str, statement: Any, parameters: dict[str, Any]) -> int:
        with self._connection(operation) as connection:
            return connection.execute(statement, parameters).rowcount

    def _parse(self, what: str, table: Any, parse: Any, value: Any) -> Any:
        """Parse JSON read from a table with ``parse``, raising ``BackendError`` for invalid data."""
        try:
            return parse(value)
        except (ValueError, TypeError, KeyError) as exc:
            raise invalid_data(self.url, what, table.as_string(), exc) from exc

    def _fire_parameters(self, job: str, fire_time: float, keep_s: float | None = None) -> dict[str, Any]:
        parameters: dict[str, Any] = {"prefix": self.prefix, "job": job, "fire_ms": int(fire_time_key(fire_time))}
        if keep_s is not None:
            parameters["keep_ms"] = to_ms(keep_s)
        return parameters

    # -- Leases ---------------------------------------------------------------------

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        return self.leases.acquire(key, ttl_s, holder)

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        return self.leases.renew(lease, ttl_s)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        return self.leases.release(lease, to_ms(keep_s) if keep_s > 0 else 0)

    def _do_inspect(self, key: str) -> LeaseInfo | None:
        return self.leases.inspect(key)

    # -- Fire state -----------------------------------------------------------------

    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState:
        parameters = {
            **self._fire_parameters(job, fire_time, keep_s),
            "token": lease.token,
            "instance_id": lease.holder,
            "max_attempts": max_attempts,
        }
        statements = self.statements()
        with self.leases.fenced(lease, "begin_attempt") as connection:
            row = connection.execute(statements.begin_attempt, parameters).fetchone()
            if row is None:
                # Unchanged: the fire time is closed or out of attempts; its row is locked.
                row = connection.execute(statements.get_fire, parameters).fetchone()
        assert row is not None
        return self._fire_state(row)

    def _fire_state(self, row: tuple[Any, ...]) -> FireState:
        attempts, outcome, token, instance_id = row
        return FireState(
            attempts=int(attempts),
            outcome=None
            if outcome is None
            else self._parse("fire state", self.statements().tables.fires, Outcome, outcome),
            token=None if token is None else int(token),
            instance_id=instance_id,
        )

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        parameters = {
            **self._fire_parameters(record.job, record.fire_time, keep_s),
            "outcome": record.outcome.value,
            "token": lease.token if lease is not None else None,
            "instance_id": record.instance_id,
            "fenced": lease is not None,
            "fire_time": float(record.fire_time),
            "record": record.to_json(),
        }
        statement = self.statements().finish_fire
        if lease is None:
            return bool(self._execute("finish_fire", statement, parameters))
        with self.leases.fenced(lease, "finish_fire") as connection:
            return connection.execute(statement, parameters).fetchone() is not None

    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None:
        rows = self._execute("get_fire", self.statements().get_fire, self._fire_parameters(job, fire_time))
        return self._fire_state(rows[0]) if rows else None

    # -- Run history ----------------------------------------------------------------

    def _do_record_run(self, record: RunRecord) -> None:
        parameters = {
            "prefix": self.prefix,
            "job": record.job,
            "fire_time": float(record.fire_time),
            "record": record.to_json(),
        }
        self._execute("record_run", self.statements().record_run, parameters)

    def _do_list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        statements = self.statements()
        query = statements.list_runs(job=job is not None, since=since is not None, until=until is not None)
        parameters = {"prefix": self.prefix, "job": job, "since": since, "until": until, "limit": limit}
        rows = self._execute("list_runs", query, parameters)
        return [self._parse("run record", statements.tables.runs, RunRecord.from_json, row[0]) for row in rows]

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        parameters = {"prefix": self.prefix, "max_per_job": max_per_job, "max_age_s": float(max_age_s)}
        return self._rowcount("trim_runs", self.statements().trim_runs, parameters)

    # -- Membership -----------------------------------------------------------------

    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        parameters = {
            "prefix": self.prefix,
            "instance_id": info.instance_id,
            "info": replace(info, last_heartbeat=None).to_json(),
            "ttl_ms": to_ms(ttl_s),
        }
        return self._instances(self._execute("heartbeat", self.statements().heartbeat, parameters))

    def _do_leave(self, instance_id: str) -> None:
        self._execute("leave", self.statements().leave, {"prefix": self.prefix, "instance_id": instance_id})

    def _do_list_instances(self) -> list[InstanceInfo]:
        return self._instances(
            self._execute("list_instances", self.statements().list_instances, {"prefix": self.prefix})
        )

    def _instances(self, rows: list[tuple[Any, ...]]) -> list[InstanceInfo]:
        table = self.statements().tables.instances
        instances = [
            replace(self._parse("instance", table, InstanceInfo.from_json, info), last_heartbeat=float(heartbeat))
            for _, info, heartbeat in rows
        ]
        return sorted(instances, key=lambda instance: instance.instance_id)

    # -- Job registry ---------------------------------------------------------------

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        try:
            encoded = json.dumps(definitions, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"job definitions of instance {instance_id!r} are not JSON data: {exc}") from exc
        parameters = {"prefix": self.prefix, "instance_id": instance_id, "definitions": encoded}
        self._execute("announce_jobs", self.statements().announce_jobs, parameters)

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        statements = self.statements()
        rows = self._execute("list_job_definitions", statements.list_job_definitions, {"prefix": self.prefix})
        return {
            str(instance_id): self._parse("job definitions", statements.tables.job_definitions, _json_object, text)
            for instance_id, text in rows
        }

    # -- Control state --------------------------------------------------------------

    def _do_read_control(self) -> ControlState:
        statements = self.statements()
        ((paused, requests),) = self._execute("read_control", statements.read_control, {"prefix": self.prefix})
        triggers = [
            self._parse("trigger request", statements.tables.triggers, TriggerRequest.from_json, text)
            for text in requests
        ]
        triggers.sort(key=lambda request: (request.requested_at, request.request_id))
        return ControlState(paused=frozenset(paused), triggers=tuple(triggers))

    def _do_set_paused(self, job: str, paused: bool) -> None:
        statements = self.statements()
        statement = statements.pause if paused else statements.resume
        self._execute("set_paused", statement, {"prefix": self.prefix, "job": job})

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        parameters = {
            "prefix": self.prefix,
            "request_id": request.request_id,
            "requested_at": float(request.requested_at),
            "request": request.to_json(),
        }
        self._execute("add_trigger", self.statements().add_trigger, parameters)

    def _do_remove_trigger(self, request_id: str) -> bool:
        parameters = {"prefix": self.prefix, "request_id": request_id}
        return self._rowcount("remove_trigger", self.statements().remove_trigger, parameters) > 0


def _describe(options: PostgresOptions) -> str:
    """Return a URL for ``options`` with the password redacted, for ``repr`` and messages."""
    libpq = options.libpq
    auth = libpq.get("user", "") + (":***" if options.password is not None else "")
    hosts = libpq.get("host", "")
    if "port" in libpq and "," not in hosts:
        hosts += f":{libpq['port']}"
    return f"postgresql://{auth + '@' if auth else ''}{quote(hosts, safe=':,')}/{libpq.get('dbname', '')}"


def _json_object(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data
