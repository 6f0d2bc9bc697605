"""etcd backend URLs: the accepted forms and options.

Forms::

    etcd://[user[:password]@]host[:port][,host[:port]...][?options]
    etcds://[user[:password]@]host[:port][,host[:port]...][?options]     TLS

Several hosts are the client endpoints of one cluster; requests go to one of them and
move to the next when it fails. The port defaults to 2379.

Options:

- ``prefix``: key prefix, default ``planlagt``. It must not contain ``:``, which ends the
  prefix in every key.
- ``timeout``: seconds each request may take, default 5.
- ``min_ttl``: the server's minimum lease TTL in whole seconds, default 2. Raise it for a
  cluster whose election timeout is longer than the default 1 s.
- ``password_file``: read the password from a file.
- With ``etcds://`` only: ``cacert`` (CA bundle, PEM; default the system's trusted CAs),
  ``cert`` and ``key`` (client certificate and its private key, PEM), named after
  ``etcdctl``'s flags.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planlagt_core.url import BackendURL, parse_prefix, parse_seconds

__all__ = [
    "DEFAULT_MIN_TTL_S",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT_S",
    "EtcdOptions",
    "parse_etcd_url",
]

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "planlagt"
DEFAULT_TIMEOUT_S = 5.0

DEFAULT_MIN_TTL_S = 2
"""etcd's minimum lease TTL with default settings, in seconds.

etcd (checked with 3.4) raises every lease TTL to at least 1.5 election timeouts, rounded
up to whole seconds: 1.5 times 1000 ms gives 2 s.
"""

PREFIX_END = ":"
SCHEMES = ("etcd", "etcds")


def parse_etcd_prefix(text: str) -> str:
    """Check a ``prefix`` option: non-empty, without NUL or ``:``."""
    prefix = parse_prefix(text)
    if PREFIX_END in prefix:
        raise ValueError(f"a prefix must not contain {PREFIX_END!r}, which ends the prefix in every key")
    return prefix


def parse_min_ttl(text: str) -> int:
    """Convert a ``min_ttl`` option (whole seconds, at least the etcd default of 2) to an int."""
    value = float(text)
    if not math.isfinite(value) or value != int(value) or value < DEFAULT_MIN_TTL_S:
        raise ValueError(f"expected a whole number of seconds of at least {DEFAULT_MIN_TTL_S}")
    return int(value)


def parse_pem_path(text: str) -> str:
    """Check that a certificate or key option names an existing file."""
    if not text:
        raise ValueError("expected a file path")
    if not Path(text).is_file():
        raise ValueError("file not found")
    return text


COMMON_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": parse_etcd_prefix,
    "timeout": parse_seconds,
    "min_ttl": parse_min_ttl,
}

TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "cacert": parse_pem_path,
    "cert": parse_pem_path,
    "key": parse_pem_path,
}


@dataclass(frozen=True)
class EtcdOptions:
    """Everything needed to reach an etcd cluster. ``repr()`` leaves out the password."""

    endpoints: tuple[tuple[str, int], ...] = (("localhost", DEFAULT_PORT),)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    timeout_s: float = DEFAULT_TIMEOUT_S
    min_ttl_s: int = DEFAULT_MIN_TTL_S
    tls: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def describe(self) -> str:
        """Return a URL for these options with the password redacted, for ``repr`` and messages."""
        auth = ""
        if self.username is not None:
            auth = self.username + (":***" if self.password is not None else "") + "@"
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.endpoints)
        return f"{'etcds' if self.tls else 'etcd'}://{auth}{hosts}?prefix={self.prefix}"


def parse_etcd_url(url: BackendURL) -> EtcdOptions:
    """Build :class:`EtcdOptions` from a parsed ``etcd://`` or ``etcds://`` URL.

    Raises ``InvalidURL`` naming the fault. Faults are an unknown scheme or option (TLS
    options with ``etcd://`` included), an invalid option value, a path, a user without a
    password or a password without a user, a client key without its certificate or the
    reverse, and an unreadable ``password_file``.
    """
    if url.scheme not in SCHEMES:
        raise url.error(f"scheme {url.scheme!r} is not an etcd scheme; use one of {', '.join(SCHEMES)}")
    if url.scheme == "etcd" and any(name in url.options for name in TLS_OPTIONS):
        raise url.error("options cacert, cert and key need TLS; write etcds:// instead of etcd://")
    accepted = {**COMMON_OPTIONS, **(TLS_OPTIONS if url.scheme == "etcds" else {})}
    values = url.read_options(accepted)
    if url.path not in ("", "/"):
        raise url.error(f"an etcd URL takes no path, not {url.path!r}; choose the key prefix with ?prefix=NAME")

    username, password = _credentials(url)
    if "key" in values and "cert" not in values:
        raise url.error("option key needs cert (the client certificate) as well")
    if "cert" in values and "key" not in values:
        raise url.error("option cert needs key (the client certificate's private key) as well")
    return EtcdOptions(
        endpoints=tuple((host, port or DEFAULT_PORT) for host, port in url.hosts) or (("localhost", DEFAULT_PORT),),
        username=username,
        password=password,
        prefix=values.get("prefix", DEFAULT_PREFIX),
        timeout_s=values.get("timeout", DEFAULT_TIMEOUT_S),
        min_ttl_s=values.get("min_ttl", DEFAULT_MIN_TTL_S),
        tls=url.scheme == "etcds",
        cacert=values.get("cacert"),
        cert=values.get("cert"),
        key=values.get("key"),
    )


def _credentials(url: BackendURL) -> tuple[str | None, str | None]:
    """Return the user and password; etcd authenticates with both or with neither."""
    password = url.resolved_password()
    username = url.username or None
    if username is None and password is not None:
        raise url.error("a password needs a user name; write etcd://USER:PASSWORD@HOST:PORT")
    if username is not None and password is None:
        raise url.error(f"user {username!r} needs a password; add it to the URL or give password_file")
    return username, password
