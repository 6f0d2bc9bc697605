"""The tables of the PostgreSQL backend, created on first use, and their names.

Every table has a ``prefix`` column that leads its primary key, so applications sharing
one schema with different prefixes never see each other's rows. Instants that decide an
expiry are ``timestamptz`` values compared with the server's ``now()``; instants that are
data (fire times, heartbeats) are Unix seconds. Shared values are JSON text.

========================  =====================================================================
table                     rows
========================  =====================================================================
planlagt_schema_version   the layout version (one row)
planlagt_leases           one per lease key: owner, token, holder, backend pid of the lock
                          session, server expiry, and ``kept_until`` after a release with keep
planlagt_fencing_tokens   last token issued per lease key; never deleted
planlagt_fires            fire state per (job, fire time in ms), with its keep-until instant
planlagt_runs             run records (JSON), ordered by fire time and insertion id
planlagt_instances        live instances: InstanceInfo JSON, last heartbeat, expiry
planlagt_job_definitions  job definitions (JSON object) announced per instance
planlagt_paused_jobs      paused job names
planlagt_triggers         pending trigger requests (JSON)
========================  =====================================================================
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from planlagt_core.errors import BackendError

from .keys import SCHEMA_LOCK_NAMESPACE, advisory_key

__all__ = ["SCHEMA_VERSION", "Tables", "ensure_schema"]

SCHEMA_VERSION = 1
"""Version of the table layout below; raise it, with a migration, when the layout changes."""

_CREATE_TABLES = (
    "CREATE TABLE IF NOT EXISTS {schema}.planlagt_schema_version (version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {schema}.planlagt_leases (
        prefix text NOT NULL,
        key text NOT NULL,
        owner text NOT NULL,
        token bigint NOT NULL,
        holder text NOT NULL,
        pid integer NOT NULL,
        expires_at timestamptz NOT NULL,
        released boolean NOT NULL DEFAULT false,
        kept_until timestamptz,
        PRIMARY KEY (prefix, key)
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.planlagt_fencing_tokens (
        prefix text NOT NULL,
        key text NOT NULL,
        last_token bigint NOT NULL,
        PRIMARY KEY (prefix, key)
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.planlagt_fires (
        prefix text NOT NULL,
        job text NOT NULL,
        fire_ms bigint NOT NULL,
        attempts integer NOT NULL,
        outcome text,
        token bigint,
        instance_id text,
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (prefix, job, fire_ms)
    )""",
    "CREATE INDEX IF NOT EXISTS planlagt_fires_by_expiry ON {schema}.planlagt_fires (prefix, expires_at)",
    """CREATE TABLE IF NOT EXISTS {schema}.planlagt_runs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        prefix text NOT NULL,
        job text NOT NULL,
        fire_time double precision NOT NULL,
        record text NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS planlagt_runs_by_job ON {schema}.planlagt_runs (prefix, job, fire_time)",
    "CREATE INDEX IF NOT EXISTS planlagt_runs_by_time ON {schema}.planlagt_runs (prefix, fire_time)",
    """CREATE TABLE IF NOT EXISTS {schema}.planlagt_instances (
        prefix text NOT NULL,
        instance_id text NOT NULL,
        info text NOT NULL,
        last_heartbeat double precision NOT NULL,
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (prefix, instance_id)
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.planlagt_job_definitions (
        prefix text NOT NULL,
        instance_id text NOT NULL,
        definitions text NOT NULL,
        PRIMARY KEY (prefix, instance_id)
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.planlagt_paused_jobs (
        prefix text NOT NULL,
        job text NOT NULL,
        PRIMARY KEY (prefix, job)
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.planlagt_triggers (
        prefix text NOT NULL,
        request_id text NOT NULL,
        requested_at double precision NOT NULL,
        request text NOT NULL,
        PRIMARY KEY (prefix, request_id)
    )""",
)


class Tables:
    """Schema-qualified names of the backend's tables, ready to compose into SQL."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.leases = self._table("leases")
        self.fencing_tokens = self._table("fencing_tokens")
        self.fires = self._table("fires")
        self.runs = self._table("runs")
        self.instances = self._table("instances")
        self.job_definitions = self._table("job_definitions")
        self.paused_jobs = self._table("paused_jobs")
        self.triggers = self._table("triggers")

    def _table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, f"planlagt_{name}")


def ensure_schema(connection: psycopg.Connection, schema: str, url: str) -> None:
    """Create the schema and tables unless they exist at the current version. Idempotent.

    When the version table already contains :data:`SCHEMA_VERSION`, nothing else runs, so a
    user without CREATE privilege can use tables an administrator created. Otherwise the
    tables are created inside one transaction holding a transaction-level advisory lock
    for the schema, so processes starting at once on an empty database create them one
    after another. Raises ``BackendError`` when the tables were written by a newer version.
    """
    found = _stored_version(connection, schema)
    if found == SCHEMA_VERSION:
        return
    if found is not None and found > SCHEMA_VERSION:
        raise _newer_version_error(schema, found, url)

    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(SCHEMA_LOCK_NAMESPACE, schema),))
        schema_exists = connection.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", (schema,)
        ).fetchone()
        if not (schema_exists and schema_exists[0]):
            connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for statement in _CREATE_TABLES:
            connection.execute(sql.SQL(statement).format(schema=sql.Identifier(schema)))
        version_table = sql.Identifier(schema, "planlagt_schema_version")
        row = connection.execute(sql.SQL("SELECT max(version) FROM {}").format(version_table)).fetchone()
        stored = row[0] if row else None
        if stored is None:
            connection.execute(sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(version_table), (SCHEMA_VERSION,))
        elif stored > SCHEMA_VERSION:
            raise _newer_version_error(schema, stored, url)


def _stored_version(connection: psycopg.Connection, schema: str) -> int | None:
    """Return the stored layout version, or None when the version table does not exist yet."""
    exists = connection.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'planlagt_schema_version')",
        (schema,),
    ).fetchone()
    if not (exists and exists[0]):
        return None
    row = connection.execute(
        sql.SQL("SELECT max(version) FROM {}").format(sql.Identifier(schema, "planlagt_schema_version"))
    ).fetchone()
    return row[0] if row else None


def _newer_version_error(schema: str, found: int, url: str) -> BackendError:
    return BackendError(
        f"PostgreSQL schema {schema!r} at {url} contains planlagt tables of layout version {found}, newer than "
        f"version {SCHEMA_VERSION} that this planlagt understands; upgrade planlagt",
        backend=url,
    )
