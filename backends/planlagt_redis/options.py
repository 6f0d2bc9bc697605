"""Redis backend URLs: the accepted forms and options, and the redis-py client they build.

Forms::

    redis://[user[:password]@]host[:port][/db][?options]
    rediss://[user[:password]@]host[:port][/db][?options]      TLS
    unix://[user[:password]@]/path/to/redis.sock[?db=N&options]

Options: ``prefix`` (key prefix, default ``planlagt``), ``db`` (database number, default
0), ``password_file`` (read the password from a file), ``socket_timeout`` and
``connect_timeout`` (seconds, default 5 each). With ``rediss://`` also ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile`` (PEM file paths), ``ssl_cert_reqs`` (``required``,
``optional`` or ``none``; default ``required``) and ``ssl_check_hostname`` (default true
unless ``ssl_cert_reqs=none``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planlagt_core.url import BackendURL, parse_bool, parse_prefix, parse_seconds

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "RedisOptions", "parse_redis_url"]

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "planlagt"
DEFAULT_SOCKET_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0

SCHEMES = ("redis", "rediss", "unix")
CERT_REQS = ("required", "optional", "none")


def parse_db(text: str) -> int:
    """Convert a database number option (``"0"``, ``"15"``) to an int."""
    if not text.isdigit():
        raise ValueError("expected a database number, 0 or greater")
    return int(text)


def parse_cert_reqs(text: str) -> str:
    """Check an ``ssl_cert_reqs`` option value."""
    if text not in CERT_REQS:
        raise ValueError(f"expected one of {', '.join(CERT_REQS)}")
    return text


def parse_pem_path(text: str) -> str:
    """Check that a certificate or key option names an existing file."""
    if not text:
        raise ValueError("expected a file path")
    if not Path(text).is_file():
        raise ValueError("file not found")
    return text


COMMON_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": parse_prefix,
    "db": parse_db,
    "socket_timeout": parse_seconds,
    "connect_timeout": parse_seconds,
}

TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": parse_pem_path,
    "ssl_certfile": parse_pem_path,
    "ssl_keyfile": parse_pem_path,
    "ssl_cert_reqs": parse_cert_reqs,
    "ssl_check_hostname": parse_bool,
}


@dataclass(frozen=True)
class RedisOptions:
    """Everything needed to build the redis-py client. ``repr()`` leaves out the password."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    unix_socket_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True

    def client_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for ``redis.Redis`` (without retry and decoding settings)."""
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
        }
        if self.unix_socket_path is not None:
            kwargs["unix_socket_path"] = self.unix_socket_path
            return kwargs
        kwargs.update(host=self.host, port=self.port)
        if self.ssl:
            kwargs.update(
                ssl=True,
                ssl_ca_certs=self.ssl_ca_certs,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        return kwargs


def parse_redis_url(url: BackendURL) -> RedisOptions:
    """Build :class:`RedisOptions` from a parsed ``redis://``, ``rediss://`` or ``unix://`` URL.

    Raises ``InvalidURL`` naming the fault: an unknown scheme or option, an invalid option
    value, several hosts, a path that is not a database number, a database given twice, or
    an unreadable ``password_file``.
    """
    if url.scheme not in SCHEMES:
        raise url.error(f"scheme {url.scheme!r} is not a Redis scheme; use one of {', '.join(SCHEMES)}")
    accepted = {**COMMON_OPTIONS, **(TLS_OPTIONS if url.scheme == "rediss" else {})}
    values = url.read_options(accepted)
    password = url.resolved_password()

    common: dict[str, Any] = {
        "username": url.username or None,
        "password": password,
        "prefix": values.get("prefix", DEFAULT_PREFIX),
        "socket_timeout_s": values.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT_S),
        "connect_timeout_s": values.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S),
    }
    if url.scheme == "unix":
        return _unix_options(url, values, common)
    return RedisOptions(
        host=_single_host(url),
        port=url.port or DEFAULT_PORT,
        db=_database(url, values),
        **common,
        **_tls_options(url, values),
    )


def _unix_options(url: BackendURL, values: dict[str, Any], common: dict[str, Any]) -> RedisOptions:
    if url.hosts:
        raise url.error("a unix:// URL takes no host; write unix:///path/to/redis.sock")
    if not url.path or url.path == "/":
        raise url.error("a unix:// URL needs the socket path; write unix:///path/to/redis.sock")
    return RedisOptions(unix_socket_path=url.path, db=values.get("db", 0), **common)


def _single_host(url: BackendURL) -> str:
    # NOTE: Redis Cluster and Sentinel are not supported, so one host is the only valid form.
    if len(url.hosts) > 1:
        raise url.error("a Redis URL takes one host; Redis Cluster and Sentinel are not supported")
    return url.host or "localhost"


def _database(url: BackendURL, values: dict[str, Any]) -> int:
    path = url.path.strip("/")
    if not path:
        return values.get("db", 0)
    try:
        db = parse_db(path)
    except ValueError:
        raise url.error(f"path {url.path!r} is not a database number; write redis://host:port/0") from None
    if "db" in values and values["db"] != db:
        raise url.error(f"database {db} in the path conflicts with option db={values['db']}; give it once")
    return db


def _tls_options(url: BackendURL, values: dict[str, Any]) -> dict[str, Any]:
    if url.scheme != "rediss":
        return {}
    cert_reqs = values.get("ssl_cert_reqs", "required")
    check_hostname = values.get("ssl_check_hostname", cert_reqs != "none")
    if check_hostname and cert_reqs == "none":
        raise url.error("ssl_check_hostname=true needs certificate checks; drop it or set ssl_cert_reqs=required")
    if "ssl_keyfile" in values and "ssl_certfile" not in values:
        raise url.error("option ssl_keyfile needs ssl_certfile (the client certificate) as well")
    return {
        "ssl": True,
        "ssl_ca_certs": values.get("ssl_ca_certs"),
        "ssl_certfile": values.get("ssl_certfile"),
        "ssl_keyfile": values.get("ssl_keyfile"),
        "ssl_cert_reqs": cert_reqs,
        "ssl_check_hostname": check_hostname,
    }
