"""PostgreSQL backend URLs: the accepted forms and options, and the libpq connection string they build.

Forms::

    postgresql://[user[:password]@][host[:port][,host[:port]...]][/dbname][?options]
    postgres://...                                                  the same

A host may be a Unix socket directory, percent-encoded (``postgresql://%2Fvar%2Frun%2Fpostgresql/app``)
or given as the ``host`` option. Several hosts are tried in order, as libpq does.

planlagt's own options:

- ``prefix``: isolates applications sharing tables (default ``planlagt``).
- ``schema``: schema of the tables (default the first existing schema of the ``search_path``).
- ``password_file``: file to read the password from.
- ``socket_timeout``: seconds a request may take before the client gives up (default 10).
- ``connect_timeout``: seconds to open a connection (default 5). libpq rounds it up to
  whole seconds, at least 2.
- ``max_idle_connections``: connections kept open for reuse (default 4).

Every other option in :data:`LIBPQ_OPTIONS` is handed to libpq unchanged, for example
``sslmode``, ``sslrootcert``, ``options`` and ``target_session_attrs``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from psycopg.conninfo import make_conninfo

from planlagt_core.url import BackendURL, parse_prefix, parse_seconds

__all__ = [
    "DEFAULT_PREFIX",
    "LIBPQ_OPTIONS",
    "PostgresOptions",
    "parse_postgres_url",
]

DEFAULT_PREFIX = "planlagt"
DEFAULT_SOCKET_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_IDLE_CONNECTIONS = 4
DEFAULT_APPLICATION_NAME = "planlagt"

SCHEMES = ("postgresql", "postgres")

# TCP keepalives, so a connection to a host that vanished fails instead of waiting for
# ever: the first probe after 10 s of silence, then every 5 s, dropped after 3 unanswered.
DEFAULT_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
GSSENC_MODES = ("disable", "prefer", "require")
CHANNEL_BINDINGS = ("disable", "prefer", "require")
LOAD_BALANCE = ("disable", "random")

_SCHEMA_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
MAX_IDENTIFIER_LENGTH = 63


def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    """Return a converter that accepts only ``choices``."""

    def convert(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return convert


def non_negative_integer(text: str) -> str:
    """Check a libpq option that takes a whole number (``"0"``, ``"30"``)."""
    if not text.isdigit():
        raise ValueError("expected a whole number, 0 or greater")
    return text


def any_text(text: str) -> str:
    return text


def parse_schema(text: str) -> str:
    """Check a ``schema`` option: a plain SQL identifier of at most 63 characters."""
    if not _SCHEMA_NAME_RE.match(text) or len(text) > MAX_IDENTIFIER_LENGTH:
        raise ValueError("expected a schema name of letters, digits, _ and $, starting with a letter or _")
    return text


def parse_positive_integer(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError("expected a whole number, 1 or greater")
    return int(text)


LIBPQ_OPTIONS: dict[str, Callable[[str], str]] = {
    "host": any_text,
    "hostaddr": any_text,
    "port": any_text,
    "dbname": any_text,
    "user": any_text,
    "passfile": any_text,
    "options": any_text,
    "application_name": any_text,
    "sslmode": one_of(SSL_MODES),
    "sslrootcert": any_text,
    "sslcert": any_text,
    "sslkey": any_text,
    "sslcrl": any_text,
    "sslcrldir": any_text,
    "sslsni": one_of(("0", "1")),
    "ssl_min_protocol_version": any_text,
    "ssl_max_protocol_version": any_text,
    "requirepeer": any_text,
    "gssencmode": one_of(GSSENC_MODES),
    "krbsrvname": any_text,
    "channel_binding": one_of(CHANNEL_BINDINGS),
    "target_session_attrs": one_of(SESSION_ATTRS),
    "load_balance_hosts": one_of(LOAD_BALANCE),
    "service": any_text,
    "keepalives": one_of(("0", "1")),
    "keepalives_idle": non_negative_integer,
    "keepalives_interval": non_negative_integer,
    "keepalives_count": non_negative_integer,
    "tcp_user_timeout": non_negative_integer,
}
"""libpq connection parameters accepted as URL options and passed on unchanged."""

OWN_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": parse_prefix,
    "schema": parse_schema,
    "socket_timeout": parse_seconds,
    "connect_timeout": parse_seconds,
    "max_idle_connections": parse_positive_integer,
}


@dataclass(frozen=True)
class PostgresOptions:
    """Everything needed to connect and to lay out the tables. ``repr()`` leaves out the password.

    ``libpq`` contains the libpq connection parameters (host, port, dbname, user, TLS and the
    rest) without the password. ``socket_timeout_s`` bounds every request on the client
    side; ``connect_timeout_s`` bounds opening a connection.
    """

    libpq: Mapping[str, str] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    schema: str | None = None
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_idle_connections: int = DEFAULT_MAX_IDLE_CONNECTIONS

    def conninfo(self) -> str:
        """Return the libpq connection string, password included: never log it."""
        parameters: dict[str, Any] = {
            "application_name": DEFAULT_APPLICATION_NAME,
            **DEFAULT_KEEPALIVES,
            # Sent data left unacknowledged this long drops the connection (Linux only).
            "tcp_user_timeout": str(math.ceil(self.socket_timeout_s * 1000)),
            **self.libpq,
            "connect_timeout": str(max(1, math.ceil(self.connect_timeout_s))),
        }
        if self.password is not None:
            parameters["password"] = self.password
        return make_conninfo("", **parameters)


def parse_postgres_url(url: BackendURL) -> PostgresOptions:
    """Build :class:`PostgresOptions` from a parsed ``postgresql://`` or ``postgres://`` URL.

    Raises ``InvalidURL`` naming the fault: an unknown scheme or option, an invalid option
    value, a part given both in the URL and as an option, or an unreadable ``password_file``.
    """
    if url.scheme not in SCHEMES:
        raise url.error(f"scheme {url.scheme!r} is not a PostgreSQL scheme; use one of {', '.join(SCHEMES)}")
    values = url.read_options({**OWN_OPTIONS, **LIBPQ_OPTIONS})
    password = url.resolved_password()

    libpq = {name: value for name, value in values.items() if name in LIBPQ_OPTIONS}
    libpq.update(_url_parts(url, libpq))
    return PostgresOptions(
        libpq=libpq,
        password=password,
        prefix=values.get("prefix", DEFAULT_PREFIX),
        schema=values.get("schema"),
        socket_timeout_s=values.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT_S),
        connect_timeout_s=values.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S),
        max_idle_connections=values.get("max_idle_connections", DEFAULT_MAX_IDLE_CONNECTIONS),
    )


def _url_parts(url: BackendURL, options: Mapping[str, str]) -> dict[str, str]:
    """Return the libpq parameters named by the URL's user, hosts and path, checking for duplicates."""
    parts: dict[str, str] = {}
    if url.username:
        parts["user"] = url.username
    if url.hosts:
        parts["host"] = ",".join(unquote(host) for host, _ in url.hosts)
        if any(port is not None for _, port in url.hosts):
            parts["port"] = ",".join("" if port is None else str(port) for _, port in url.hosts)
    database = url.path.lstrip("/")
    if "/" in database:
        raise url.error(f"path {url.path!r} is not a database name; write postgresql://host/dbname")
    if database:
        parts["dbname"] = database

    for name in parts:
        if name in options:
            raise url.error(f"{name} is given both in the URL and as option {name!r}; give it once")
    return parts
