"""ZooKeeper backend URLs: the accepted forms and options, and the kazoo client they build.

Forms (``zk://`` and ``kazoo://`` are aliases of ``zookeeper://``)::

    zookeeper://[user:password@]host[:port][,host[:port]...][/chroot][?options]

Several hosts are the members of one ensemble. kazoo connects to one of them, and when the
connection drops it moves to another within the same session. The port defaults to 2181.
The path is a chroot: every node the backend writes lies below it, and the backend creates
it when missing. ``user:password`` turns on ZooKeeper's ``digest`` authentication, and
every node the backend creates then gets an ACL that grants access to that user only.

Options:

``prefix``
    Name of the node under the chroot that holds everything of one application (default
    ``planlagt``). It is one path component, so ``/`` in it is escaped, never nested.
``session_timeout``
    Session timeout to request, in seconds (default 60). The server grants a value between
    its ``minSessionTimeout`` and ``maxSessionTimeout`` (2 and 20 ticks unless configured);
    the backend reads the granted value back and never uses the requested one.
``connect_timeout``
    Seconds one connection attempt to one host may take, the TCP connection and the
    session handshake together (default 5). The first connection is awaited that long
    for each host.
``request_timeout``
    Seconds each request may take before the call raises ``BackendUnavailable`` (default 5).
``password_file``
    Read the digest password from this file instead of the URL.
``use_ssl``, ``ca``, ``certfile``, ``keyfile``, ``keyfile_password_file``, ``verify_certs``, ``check_hostname``
    TLS, named as kazoo's ``KazooClient`` arguments are: ``use_ssl=true`` turns it on
    (the server needs a ``secureClientPort``); ``ca`` is the CA bundle (PEM) that signed
    the server's certificate; ``certfile`` and ``keyfile`` are a client certificate and its
    key (PEM), for servers with ``ssl.clientAuth=need``; ``keyfile_password_file`` reads the
    key's password from a file. ``verify_certs`` (default true) checks the server's
    certificate, and ``check_hostname`` (default: as ``verify_certs``) checks that it names
    the host in the URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planlagt_core.url import BackendURL, parse_bool, parse_prefix, parse_seconds

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_SESSION_TIMEOUT_S",
    "SCHEMES",
    "ZooKeeperOptions",
    "parse_zookeeper_url",
]

DEFAULT_PORT = 2181
DEFAULT_PREFIX = "planlagt"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_REQUEST_TIMEOUT_S = 5.0

DEFAULT_SESSION_TIMEOUT_S = 60.0
"""Session timeout requested by default, in seconds.

A lease's TTL cannot be longer than the session timeout the server grants, so the default
requests a long one. A server with default settings grants at most 40 s (20 ticks of 2 s).
"""

SCHEMES = ("zookeeper", "zk", "kazoo")
RESERVED_CHROOT = "/zookeeper"
"""ZooKeeper's own subtree (quotas, configuration); a chroot may not lie in it."""


def parse_pem_path(text: str) -> str:
    """Check that a certificate or key option names an existing file."""
    if not text:
        raise ValueError("expected a file path")
    if not Path(text).is_file():
        raise ValueError("file not found")
    return text


OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": parse_prefix,
    "session_timeout": parse_seconds,
    "connect_timeout": parse_seconds,
    "request_timeout": parse_seconds,
    "use_ssl": parse_bool,
    "ca": parse_pem_path,
    "certfile": parse_pem_path,
    "keyfile": parse_pem_path,
    "keyfile_password_file": parse_pem_path,
    "verify_certs": parse_bool,
    "check_hostname": parse_bool,
}

TLS_OPTIONS = ("ca", "certfile", "keyfile", "keyfile_password_file", "verify_certs", "check_hostname")


@dataclass(frozen=True)
class ZooKeeperOptions:
    """Everything needed to build the kazoo client. ``repr()`` leaves out the passwords.

    ``chroot`` is ``""`` or an absolute path without a trailing ``/``. Durations are seconds.
    """

    hosts: tuple[tuple[str, int], ...] = (("localhost", DEFAULT_PORT),)
    chroot: str = ""
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    use_ssl: bool = False
    ca: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = field(default=None, repr=False)
    verify_certs: bool = True
    check_hostname: bool = True

    @property
    def hosts_text(self) -> str:
        """The hosts as kazoo takes them: ``host:port,host:port`` (IPv6 hosts in brackets)."""
        return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.hosts)

    @property
    def auth_data(self) -> list[tuple[str, str]]:
        """The digest credentials for kazoo's ``auth_data``, or an empty list."""
        if self.username is None or self.password is None:
            return []
        return [("digest", f"{self.username}:{self.password}")]

    def client_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for ``kazoo.client.KazooClient`` (without the ACL and retry settings)."""
        kwargs: dict[str, Any] = {
            "hosts": self.hosts_text,
            "timeout": self.session_timeout_s,
            "auth_data": self.auth_data,
        }
        if self.use_ssl:
            kwargs.update(
                use_ssl=True,
                ca=self.ca,
                certfile=self.certfile,
                keyfile=self.keyfile,
                keyfile_password=self.keyfile_password,
                verify_certs=self.verify_certs,
                check_hostname=self.check_hostname,
            )
        return kwargs


def parse_zookeeper_url(url: BackendURL) -> ZooKeeperOptions:
    """Build :class:`ZooKeeperOptions` from a parsed ``zookeeper://``, ``zk://`` or ``kazoo://`` URL.

    Raises ``InvalidURL`` naming the fault: an unknown scheme or option, an invalid option
    value, a user without a password (or the reverse), an invalid chroot, TLS options
    without ``use_ssl=true``, or an unreadable password file.
    """
    if url.scheme not in SCHEMES:
        raise url.error(f"scheme {url.scheme!r} is not a ZooKeeper scheme; use one of {', '.join(SCHEMES)}")
    values = url.read_options(OPTIONS)
    username, password = _credentials(url)

    return ZooKeeperOptions(
        hosts=tuple((host, port or DEFAULT_PORT) for host, port in url.hosts) or (("localhost", DEFAULT_PORT),),
        chroot=_chroot(url),
        prefix=values.get("prefix", DEFAULT_PREFIX),
        username=username,
        password=password,
        session_timeout_s=values.get("session_timeout", DEFAULT_SESSION_TIMEOUT_S),
        connect_timeout_s=values.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S),
        request_timeout_s=values.get("request_timeout", DEFAULT_REQUEST_TIMEOUT_S),
        **_tls_options(url, values),
    )


def _credentials(url: BackendURL) -> tuple[str | None, str | None]:
    password = url.resolved_password()
    username = url.username or None
    if username is None and password is not None:
        raise url.error("a password needs a user name for digest authentication; write zookeeper://USER:PASSWORD@host")
    if username is not None and password is None:
        raise url.error(
            f"user {username!r} has no password; digest authentication needs both "
            "(give it in the URL or with password_file)"
        )
    if username is not None and ":" in username:
        raise url.error("a digest user name must not contain ':'")
    return username, password


def _chroot(url: BackendURL) -> str:
    path = url.path.rstrip("/")
    if not path:
        return ""
    components = path[1:].split("/")
    if any(component in ("", ".", "..") for component in components):
        raise url.error(f"chroot {url.path!r} has an empty, '.' or '..' component; write /name or /a/b")
    if path == RESERVED_CHROOT or path.startswith(RESERVED_CHROOT + "/"):
        raise url.error(f"chroot {url.path!r} lies in ZooKeeper's reserved {RESERVED_CHROOT} subtree")
    return path


def _tls_options(url: BackendURL, values: dict[str, Any]) -> dict[str, Any]:
    use_ssl = values.get("use_ssl", False)
    given = [name for name in TLS_OPTIONS if name in values]
    if given and not use_ssl:
        raise url.error(f"option {given[0]!r} needs use_ssl=true")
    if not use_ssl:
        return {}
    if "keyfile" in values and "certfile" not in values:
        raise url.error("option keyfile needs certfile (the client certificate) as well")
    verify = values.get("verify_certs", True)
    check_hostname = values.get("check_hostname", verify)
    if check_hostname and not verify:
        raise url.error("check_hostname=true needs verify_certs=true; drop it or turn certificate checks on")
    return {
        "use_ssl": True,
        "ca": values.get("ca"),
        "certfile": values.get("certfile"),
        "keyfile": values.get("keyfile"),
        "keyfile_password": _read_secret(url, values.get("keyfile_password_file")),
        "verify_certs": verify,
        "check_hostname": check_hostname,
    }


def _read_secret(url: BackendURL, path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise url.error(f"cannot read keyfile_password_file {path!r}: {exc.strerror}") from None
