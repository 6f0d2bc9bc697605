"""The tables of the SQLite backend, created on first use.

Every table has a ``prefix`` column that leads its primary key, so applications that share
one file with different prefixes never see each other's rows. Instants are Unix seconds
(REAL) on the host's wall clock; values of shared data are JSON text.
"""

from __future__ import annotations

import sqlite3

from planlagt_core.errors import BackendError

__all__ = ["SCHEMA_VERSION", "create_schema"]

SCHEMA_VERSION = 1
"""Version of the table layout below; raise it, with a migration, when the layout changes."""

_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS planlagt_schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS planlagt_leases (
        prefix TEXT NOT NULL,
        key TEXT NOT NULL,
        owner TEXT NOT NULL,
        token INTEGER NOT NULL,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL,
        released INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (prefix, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS planlagt_fencing_tokens (
        prefix TEXT NOT NULL,
        key TEXT NOT NULL,
        last_token INTEGER NOT NULL,
        PRIMARY KEY (prefix, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS planlagt_fires (
        prefix TEXT NOT NULL,
        job TEXT NOT NULL,
        fire_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (prefix, job, fire_ms)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS planlagt_fires_by_expiry ON planlagt_fires (prefix, expires_at)",
    # AUTOINCREMENT keeps ids increasing even after the newest rows are deleted, so the id
    # orders records of one fire time by insertion.
    """CREATE TABLE IF NOT EXISTS planlagt_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        prefix TEXT NOT NULL,
        job TEXT NOT NULL,
        fire_time REAL NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS planlagt_runs_by_job ON planlagt_runs (prefix, job, fire_time)",
    "CREATE INDEX IF NOT EXISTS planlagt_runs_by_time ON planlagt_runs (prefix, fire_time)",
    """CREATE TABLE IF NOT EXISTS planlagt_instances (
        prefix TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        info TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (prefix, instance_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS planlagt_job_definitions (
        prefix TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        definitions TEXT NOT NULL,
        PRIMARY KEY (prefix, instance_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS planlagt_paused_jobs (
        prefix TEXT NOT NULL,
        job TEXT NOT NULL,
        PRIMARY KEY (prefix, job)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS planlagt_triggers (
        prefix TEXT NOT NULL,
        request_id TEXT NOT NULL,
        requested_at REAL NOT NULL,
        request TEXT NOT NULL,
        PRIMARY KEY (prefix, request_id)
    ) WITHOUT ROWID""",
)


def create_schema(connection: sqlite3.Connection, url: str) -> None:
    """Create missing tables and record the schema version, inside the caller's transaction.

    Idempotent. The caller has opened a write transaction (``BEGIN IMMEDIATE``), so processes
    that start at once on a new file create the tables one after another. Raises
    ``BackendError`` when the file was written by a newer schema version.
    """
    for statement in _STATEMENTS:
        connection.execute(statement)

    row = connection.execute("SELECT max(version) FROM planlagt_schema_version").fetchone()
    found = row[0]
    if found is None:
        connection.execute("INSERT INTO planlagt_schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif found > SCHEMA_VERSION:
        raise BackendError(
            f"SQLite database has schema version {found}, newer than version {SCHEMA_VERSION} "
            "that this planlagt understands; upgrade planlagt",
            backend=url,
        )
