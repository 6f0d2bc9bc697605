"""The ``sqlite`` backend: coordination between processes on one host through a SQLite file."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import replace
from typing import Any, ClassVar

from planlagt_core.backend import (
    Backend,
    Capabilities,
    Lease,
    LeaseInfo,
    fire_time_key,
    new_owner_token,
    renewed,
)
from planlagt_core.errors import ConfigurationError, LeaseLost
from planlagt_core.models import ControlState, FireState, InstanceInfo, RunRecord, TriggerRequest
from planlagt_core.url import BackendURL, parse_prefix, parse_seconds

from .connections import ConnectionManager

__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "SQLiteBackend", "database_path"]

DEFAULT_PREFIX = "planlagt"
DEFAULT_BUSY_TIMEOUT_S = 5.0
"""How long an operation waits for another process's write lock before failing, in seconds."""


def database_path(url: BackendURL) -> str:
    """Return the file path of a ``sqlite://`` URL, absolute, resolved against the working directory.

    As in SQLAlchemy, the path follows the third slash: ``sqlite:///planlagt.db`` is
    ``planlagt.db`` in the working directory and ``sqlite:////var/lib/app/planlagt.db`` is
    the absolute path ``/var/lib/app/planlagt.db``. Raises ``InvalidURL`` for a host, a
    user or password, a missing path, or ``:memory:``.
    """
    if url.username is not None or url.password is not None or "password_file" in url.options:
        raise url.error("SQLite has no users or passwords; remove them and protect the file with permissions")
    if url.hosts:
        raise url.error(
            "a sqlite URL names a file, not a host; write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = url.path[1:] if url.path.startswith("/") else url.path
    if not path:
        raise url.error("the database path is missing; write sqlite:///planlagt.db for a file in the working directory")
    if path == ":memory:":
        raise url.error(
            "every connection to :memory: gets its own empty database, so threads could not share it; use memory://"
        )
    if path.endswith("/"):
        raise url.error(f"the database path {path!r} names a directory; add a file name")
    return os.path.abspath(path)


class SQLiteBackend(Backend):
    """A backend in one SQLite file, shared by the processes of one host (no server needed).

    Meant for one machine running several worker processes (gunicorn, uwsgi) or several
    programs. Every read-modify-write runs in a ``BEGIN IMMEDIATE`` transaction, so it is
    atomic across threads and processes. The file is in WAL mode, so readers do not wait
    for the writer. Each thread has its own connection, and a forked child opens new ones.
    Tables are created on first use. Fencing tokens are stored in the file and keep
    increasing across restarts.

    Expiry is decided by the host's wall clock (``time.time()``), read inside each write
    transaction, so every process on the host uses the same clock.

    .. warning::
        NOTE: only local filesystems are supported. On NFS or other network filesystems,
        SQLite's file locks and WAL shared memory do not work between hosts, and the hosts'
        clocks differ, so two hosts could hold one lease. A step of the host's wall clock
        (NTP correction, manual change) shortens or lengthens leases by the size of the step.
    """

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    capabilities: ClassVar[Capabilities] = Capabilities(
        min_ttl_s=0.01,
        ttl_granularity_s=0.001,
        durable_fencing_tokens=True,
        multi_process=True,
        multi_host=False,
        server_process=False,
        server_clock=True,
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        url: str = "",
    ) -> None:
        """Use the SQLite file at ``path`` (created on first use), relative to the working directory.

        ``busy_timeout_s`` is how long an operation waits for a lock another connection
        holds. Raises ``ConfigurationError`` for an empty path or prefix or a busy timeout
        that is not a positive number. Opens nothing until the first operation.
        """
        path_text = os.fspath(path)
        self.check_text("database path", path_text, allow_empty=False)
        self.check_text("prefix", prefix, allow_empty=False)
        self.check_positive("busy_timeout_s", busy_timeout_s)
        absolute = os.path.abspath(path_text)
        if not url:
            url = f"sqlite:///{absolute}" + ("" if prefix == DEFAULT_PREFIX else f"?prefix={prefix}")
        super().__init__(url=url, prefix=prefix)
        self.path = absolute
        self.connections = ConnectionManager(absolute, busy_timeout_s=busy_timeout_s, url=self.url)

    @classmethod
    def from_url(cls, url: BackendURL) -> SQLiteBackend:
        """Build a backend from ``sqlite:///PATH``; options ``prefix`` and ``busy_timeout`` (seconds)."""
        path = database_path(url)
        options = url.read_options({"prefix": parse_prefix, "busy_timeout": parse_seconds})
        return cls(
            path,
            prefix=options.get("prefix", DEFAULT_PREFIX),
            busy_timeout_s=options.get("busy_timeout", DEFAULT_BUSY_TIMEOUT_S),
            url=url.redacted(),
        )

    def close(self) -> None:
        """Close this process's connections; later operations raise ``BackendError``."""
        self.connections.close()

    def _lease_lost(self, lease: Lease) -> LeaseLost:
        return LeaseLost(
            f"lease on {lease.key!r} (token {lease.token}) is no longer held: "
            "it expired, was released, or the key has another holder",
            key=lease.key,
            token=lease.token,
            backend=self.url,
        )

    def _is_held(self, connection: sqlite3.Connection, lease: Lease, now: float) -> bool:
        row = connection.execute(
            "SELECT owner, released, expires_at FROM planlagt_leases WHERE prefix = ? AND key = ?",
            (self.prefix, lease.key),
        ).fetchone()
        return row is not None and row[0] == lease.owner and not row[1] and row[2] > now

    def _require_held(self, connection: sqlite3.Connection, lease: Lease, now: float) -> None:
        if not self._is_held(connection, lease, now):
            raise self._lease_lost(lease)

    # -- Leases -------------------------------------------------------------------

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        sent_at = time.monotonic()
        owner = new_owner_token()
        with self.connections.transaction(write=True) as connection:
            now = time.time()
            row = connection.execute(
                "SELECT expires_at FROM planlagt_leases WHERE prefix = ? AND key = ?", (self.prefix, key)
            ).fetchone()
            if row is not None and row[0] > now:
                return None
            token = self._next_token(connection, key)
            connection.execute(
                "INSERT OR REPLACE INTO planlagt_leases (prefix, key, owner, token, holder, expires_at, released) "
                "VALUES (?, ?, ?, ?, ?, ?, 0)",
                (self.prefix, key, owner, token, holder, now + ttl_s),
            )
        return Lease(key=key, token=token, owner=owner, ttl_s=ttl_s, valid_until=sent_at + ttl_s, holder=holder)

    def _next_token(self, connection: sqlite3.Connection, key: str) -> int:
        row = connection.execute(
            "SELECT last_token FROM planlagt_fencing_tokens WHERE prefix = ? AND key = ?", (self.prefix, key)
        ).fetchone()
        token = (row[0] if row is not None else 0) + 1
        connection.execute(
            "INSERT OR REPLACE INTO planlagt_fencing_tokens (prefix, key, last_token) VALUES (?, ?, ?)",
            (self.prefix, key, token),
        )
        return token

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        sent_at = time.monotonic()
        with self.connections.transaction(write=True) as connection:
            now = time.time()
            self._require_held(connection, lease, now)
            connection.execute(
                "UPDATE planlagt_leases SET expires_at = ? WHERE prefix = ? AND key = ?",
                (now + ttl_s, self.prefix, lease.key),
            )
        return renewed(lease, ttl_s=ttl_s, sent_at=sent_at)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        with self.connections.transaction(write=True) as connection:
            now = time.time()
            if not self._is_held(connection, lease, now):
                return False
            if keep_s > 0:
                connection.execute(
                    "UPDATE planlagt_leases SET released = 1, expires_at = ? WHERE prefix = ? AND key = ?",
                    (now + keep_s, self.prefix, lease.key),
                )
            else:
                connection.execute("DELETE FROM planlagt_leases WHERE prefix = ? AND key = ?", (self.prefix, lease.key))
        return True

    def _do_inspect(self, key: str) -> LeaseInfo | None:
        with self.connections.transaction(write=False) as connection:
            now = time.time()
            row = connection.execute(
                "SELECT token, holder, expires_at, released FROM planlagt_leases WHERE prefix = ? AND key = ?",
                (self.prefix, key),
            ).fetchone()
        if row is None or row[2] <= now:
            return None
        return LeaseInfo(key=key, token=row[0], holder=row[1], ttl_remaining_s=row[2] - now, released=bool(row[3]))

    # -- Fire state ---------------------------------------------------------------

    def _read_fire(self, connection: sqlite3.Connection, job: str, fire_ms: int, now: float) -> FireState | None:
        row = connection.execute(
            "SELECT state, expires_at FROM planlagt_fires WHERE prefix = ? AND job = ? AND fire_ms = ?",
            (self.prefix, job, fire_ms),
        ).fetchone()
        if row is None or row[1] <= now:
            return None
        return FireState.from_json(row[0])

    def _write_fire(
        self, connection: sqlite3.Connection, job: str, fire_ms: int, state: FireState, expires_at: float, now: float
    ) -> None:
        """Store a fire state and delete every fire state of this prefix that expired."""
        connection.execute(
            "DELETE FROM planlagt_fires WHERE prefix = ? AND expires_at <= ?",
            (self.prefix, now),
        )
        connection.execute(
            "INSERT OR REPLACE INTO planlagt_fires (prefix, job, fire_ms, state, expires_at) VALUES (?, ?, ?, ?, ?)",
            (self.prefix, job, fire_ms, state.to_json(), expires_at),
        )

    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState:
        fire_ms = int(fire_time_key(fire_time))
        with self.connections.transaction(write=True) as connection:
            now = time.time()
            self._require_held(connection, lease, now)
            state = self._read_fire(connection, job, fire_ms, now) or FireState()
            if state.outcome is not None or state.attempts >= max_attempts:
                return state
            state = FireState(attempts=state.attempts + 1, token=lease.token, instance_id=lease.holder)
            self._write_fire(connection, job, fire_ms, state, now + keep_s, now)
        return state

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        fire_ms = int(fire_time_key(record.fire_time))
        record_json = record.to_json()
        with self.connections.transaction(write=True) as connection:
            now = time.time()
            if lease is not None:
                self._require_held(connection, lease, now)
            state = self._read_fire(connection, record.job, fire_ms, now) or FireState()
            if state.outcome is not None:
                return False
            if lease is None and state.attempts > 0:
                # Unfenced closes never overwrite a fire time at which an attempt began.
                return False
            token = lease.token if lease is not None else state.token
            closed = replace(state, outcome=record.outcome, token=token, instance_id=record.instance_id)
            self._write_fire(connection, record.job, fire_ms, closed, now + keep_s, now)
            self._insert_run(connection, record, record_json)
        return True

    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None:
        with self.connections.transaction(write=False) as connection:
            return self._read_fire(connection, job, int(fire_time_key(fire_time)), time.time())

    # -- Run history --------------------------------------------------------------

    def _insert_run(self, connection: sqlite3.Connection, record: RunRecord, record_json: str) -> None:
        connection.execute(
            "INSERT INTO planlagt_runs (prefix, job, fire_time, record) VALUES (?, ?, ?, ?)",
            (self.prefix, record.job, record.fire_time, record_json),
        )

    def _do_record_run(self, record: RunRecord) -> None:
        record_json = record.to_json()
        with self.connections.transaction(write=True) as connection:
            self._insert_run(connection, record, record_json)

    def _do_list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        conditions = ["prefix = ?"]
        parameters: list[Any] = [self.prefix]
        for condition, value in (("job = ?", job), ("fire_time >= ?", since), ("fire_time <= ?", until)):
            if value is not None:
                conditions.append(condition)
                parameters.append(value)
        query = (
            f"SELECT record FROM planlagt_runs WHERE {' AND '.join(conditions)} "
            "ORDER BY fire_time DESC, id DESC LIMIT ?"
        )
        with self.connections.transaction(write=False) as connection:
            rows = connection.execute(query, (*parameters, limit)).fetchall()
        return [RunRecord.from_json(row[0]) for row in rows]

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        """Delete records by count per job and by age of their fire time (host wall clock)."""
        with self.connections.transaction(write=True) as connection:
            deleted = connection.execute(
                "DELETE FROM planlagt_runs WHERE prefix = ? AND fire_time < ?",
                (self.prefix, time.time() - max_age_s),
            ).rowcount
            jobs = [
                row[0]
                for row in connection.execute("SELECT DISTINCT job FROM planlagt_runs WHERE prefix = ?", (self.prefix,))
            ]
            for job in jobs:
                deleted += connection.execute(
                    "DELETE FROM planlagt_runs WHERE prefix = ? AND job = ? AND id NOT IN ("
                    "SELECT id FROM planlagt_runs WHERE prefix = ? AND job = ? "
                    "ORDER BY fire_time DESC, id DESC LIMIT ?)",
                    (self.prefix, job, self.prefix, job, max_per_job),
                ).rowcount
        return deleted

    # -- Membership ---------------------------------------------------------------

    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        with self.connections.transaction(write=True) as connection:
            now = time.time()
            stamped = replace(info, last_heartbeat=now)
            connection.execute(
                "INSERT OR REPLACE INTO planlagt_instances (prefix, instance_id, info, expires_at) VALUES (?, ?, ?, ?)",
                (self.prefix, info.instance_id, stamped.to_json(), now + ttl_s),
            )
            self._drop_expired_instances(connection, now)
            return self._live_instances(connection, now)

    def _drop_expired_instances(self, connection: sqlite3.Connection, now: float) -> None:
        connection.execute(
            "DELETE FROM planlagt_job_definitions WHERE prefix = ? AND instance_id IN ("
            "SELECT instance_id FROM planlagt_instances WHERE prefix = ? AND expires_at <= ?)",
            (self.prefix, self.prefix, now),
        )
        connection.execute(
            "DELETE FROM planlagt_instances WHERE prefix = ? AND expires_at <= ?",
            (self.prefix, now),
        )

    def _live_instances(self, connection: sqlite3.Connection, now: float) -> list[InstanceInfo]:
        rows = connection.execute(
            "SELECT info FROM planlagt_instances WHERE prefix = ? AND expires_at > ? ORDER BY instance_id",
            (self.prefix, now),
        ).fetchall()
        return [InstanceInfo.from_json(row[0]) for row in rows]

    def _do_leave(self, instance_id: str) -> None:
        with self.connections.transaction(write=True) as connection:
            for table in ("planlagt_instances", "planlagt_job_definitions"):
                connection.execute(
                    f"DELETE FROM {table} WHERE prefix = ? AND instance_id = ?", (self.prefix, instance_id)
                )

    def _do_list_instances(self) -> list[InstanceInfo]:
        with self.connections.transaction(write=False) as connection:
            return self._live_instances(connection, time.time())

    # -- Job registry -------------------------------------------------------------

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        try:
            definitions_json = json.dumps(definitions, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"job definitions of instance {instance_id!r} are not JSON data: {exc}") from exc
        with self.connections.transaction(write=True) as connection:
            connection.execute(
                "INSERT OR REPLACE INTO planlagt_job_definitions (prefix, instance_id, definitions) VALUES (?, ?, ?)",
                (self.prefix, instance_id, definitions_json),
            )

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self.connections.transaction(write=False) as connection:
            rows = connection.execute(
                "SELECT d.instance_id, d.definitions FROM planlagt_job_definitions AS d "
                "JOIN planlagt_instances AS i ON i.prefix = d.prefix AND i.instance_id = d.instance_id "
                "WHERE d.prefix = ? AND i.expires_at > ? ORDER BY d.instance_id",
                (self.prefix, time.time()),
            ).fetchall()
        return {instance_id: json.loads(text) for instance_id, text in rows}

    # -- Control state ------------------------------------------------------------

    def _do_read_control(self) -> ControlState:
        with self.connections.transaction(write=False) as connection:
            paused = connection.execute("SELECT job FROM planlagt_paused_jobs WHERE prefix = ?", (self.prefix,))
            paused_jobs = frozenset(row[0] for row in paused)
            triggers = connection.execute(
                "SELECT request FROM planlagt_triggers WHERE prefix = ? ORDER BY requested_at, request_id",
                (self.prefix,),
            ).fetchall()
        return ControlState(paused=paused_jobs, triggers=tuple(TriggerRequest.from_json(row[0]) for row in triggers))

    def _do_set_paused(self, job: str, paused: bool) -> None:
        statement = (
            "INSERT OR IGNORE INTO planlagt_paused_jobs (prefix, job) VALUES (?, ?)"
            if paused
            else "DELETE FROM planlagt_paused_jobs WHERE prefix = ? AND job = ?"
        )
        with self.connections.transaction(write=True) as connection:
            connection.execute(statement, (self.prefix, job))

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        with self.connections.transaction(write=True) as connection:
            connection.execute(
                "INSERT OR IGNORE INTO planlagt_triggers (prefix, request_id, requested_at, request) "
                "VALUES (?, ?, ?, ?)",
                (self.prefix, request.request_id, request.requested_at, request.to_json()),
            )

    def _do_remove_trigger(self, request_id: str) -> bool:
        with self.connections.transaction(write=True) as connection:
            cursor = connection.execute(
                "DELETE FROM planlagt_triggers WHERE prefix = ? AND request_id = ?", (self.prefix, request_id)
            )
            return cursor.rowcount > 0
