"""planlagt's embedded default backend: one SQLite file shared by the processes of one host.

URLs: ``sqlite:///relative/path.db`` (relative to the working directory) or
``sqlite:////absolute/path.db``, as in SQLAlchemy. Options: ``prefix`` (isolates
applications sharing one file) and ``busy_timeout`` (seconds to wait for another
process's lock). Only the standard library's ``sqlite3`` module is needed.
"""

from __future__ import annotations

from .backend import DEFAULT_BUSY_TIMEOUT_S, SQLiteBackend, database_path

__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "SQLiteBackend", "database_path"]
