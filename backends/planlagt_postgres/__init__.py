"""planlagt's PostgreSQL backend: ``postgresql://`` and ``postgres://`` URLs, built on psycopg 3.

Leases are session-level advisory locks; see :class:`PostgresBackend` and
``docs/backends/postgresql.md``.
"""

from __future__ import annotations

from .backend import PostgresBackend
from .errors import ServerTooOld, TransactionPoolingError
from .keys import advisory_key
from .options import PostgresOptions, parse_postgres_url

__all__ = [
    "PostgresBackend",
    "PostgresOptions",
    "ServerTooOld",
    "TransactionPoolingError",
    "advisory_key",
    "parse_postgres_url",
]
