"""Backend URLs: parsing, option checking and password redaction.

A backend URL looks like ``scheme://[user[:password]@]host[:port][,host[:port]...][/path][?options]``.
Several hosts (a cluster) are separated by commas. Options are query parameters; each
backend states which it accepts, and any other option is an error naming the ones it knows.

Passwords never appear in ``repr``, ``str`` or error messages: :func:`redact_url` replaces
them with ``***``. A password can also come from a file (option ``password_file``) so it
does not show in process lists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote

from .errors import InvalidURL

__all__ = [
    "BackendURL",
    "parse_bool",
    "parse_seconds",
    "parse_url",
    "redact_url",
]

T = TypeVar("T")

REDACTED = "***"
_SECRET_OPTIONS = frozenset({"password", "passwd", "secret", "token", "sslpassword"})
_SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*$")
_URL_PASSWORD_RE = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<secret>[^@\s/]*)@")
_QUERY_SECRET_RE = re.compile(
    r"(?P<head>[?&](?:" + "|".join(sorted(_SECRET_OPTIONS)) + r")=)(?P<secret>[^&#\s]*)", re.IGNORECASE
)


def redact_url(text: str) -> str:
    """Return ``text`` with the password of every URL in it replaced by ``***``.

    Covers ``user:password@`` in the authority and secret-looking query options
    (``password=``, ``token=`` and the like).
    """
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    return _QUERY_SECRET_RE.sub(lambda m: f"{m.group('head')}{REDACTED}", text)


@dataclass(frozen=True)
class BackendURL:
    """A parsed backend URL. ``str()`` and ``repr()`` show it with the password redacted."""

    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    raw: str = field(default="", repr=False, compare=False)

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"BackendURL({self.redacted()!r})"

    def redacted(self) -> str:
        """Return the URL with the password replaced by ``***``."""
        return redact_url(self.raw) if self.raw else self._rebuild()

    @property
    def host(self) -> str | None:
        """The first host, or None when the URL names none."""
        return self.hosts[0][0] if self.hosts else None

    @property
    def port(self) -> int | None:
        """The first host's port, or None."""
        return self.hosts[0][1] if self.hosts else None

    def error(self, message: str) -> InvalidURL:
        """Return an ``InvalidURL`` whose message names this URL, redacted."""
        return InvalidURL(f"invalid backend URL {self.redacted()!r}: {message}")

    def read_options(self, accepted: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
        """Convert the URL's options with ``accepted`` (option name to converter).

        Raises ``InvalidURL`` naming the option for one not in ``accepted`` (listing the
        accepted ones) and for a value its converter rejects with ``ValueError``.
        ``password_file`` is always accepted and read into ``password``.
        """
        known = dict(accepted)
        known.setdefault("password_file", str)
        values: dict[str, Any] = {}
        for name, text in self.options.items():
            if name not in known:
                raise self.error(f"unknown option {name!r}; accepted options: {', '.join(sorted(known))}")
            try:
                values[name] = known[name](text)
            except ValueError as exc:
                shown = REDACTED if name in _SECRET_OPTIONS else text
                raise self.error(f"invalid value {shown!r} for option {name!r}: {exc}") from None
        return values

    def resolved_password(self) -> str | None:
        """Return the password from the URL, or read from the ``password_file`` option.

        Raises ``InvalidURL`` when both are given or the file cannot be read.
        """
        path = self.options.get("password_file")
        if path is None:
            return self.password
        if self.password is not None:
            raise self.error("give the password either in the URL or in password_file, not both")
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise self.error(f"cannot read password_file {path!r}: {exc.strerror}") from None

    def _rebuild(self) -> str:
        auth = ""
        if self.username is not None or self.password is not None:
            auth = quote(self.username or "", safe="")
            if self.password is not None:
                auth += f":{REDACTED}"
            auth += "@"
        hosts = ",".join(_format_host(host, port) for host, port in self.hosts)
        query = "&".join(f"{k}={REDACTED if k in _SECRET_OPTIONS else v}" for k, v in self.options.items())
        return f"{self.scheme}://{auth}{hosts}{self.path}" + (f"?{query}" if query else "")


def parse_url(url: str) -> BackendURL:
    """Parse a backend URL; raise ``InvalidURL`` naming the URL (redacted) and the fault."""
    if not isinstance(url, str):
        raise InvalidURL(f"backend URL must be a string, not {type(url).__name__}")
    shown = redact_url(url)
    if not url:
        raise InvalidURL("backend URL is empty; use for example redis://localhost:6379 or sqlite:///planlagt.db")
    if any(ch.isspace() for ch in url):
        raise InvalidURL(f"invalid backend URL {shown!r}: it contains whitespace; remove it")
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME_RE.match(scheme):
        raise InvalidURL(f"invalid backend URL {shown!r}: expected scheme://..., for example redis://localhost:6379")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise InvalidURL(f"invalid backend URL {shown!r}: a URL fragment ('#...') is not allowed")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    username, password, hosts = _split_netloc(netloc, shown)
    return BackendURL(
        scheme=scheme.lower(),
        hosts=hosts,
        username=username,
        password=password,
        path=unquote(slash + path),
        options=_parse_query(query, shown),
        raw=url,
    )


def _split_netloc(netloc: str, shown: str) -> tuple[str | None, str | None, tuple[tuple[str, int | None], ...]]:
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user)
        password = unquote(secret) if colon else None
    hosts = tuple(_parse_host(item, shown) for item in hostlist.split(",")) if hostlist else ()
    return username, password, hosts


def _parse_host(item: str, shown: str) -> tuple[str, int | None]:
    if item.startswith("["):
        host, bracket, tail = item[1:].partition("]")
        if not bracket:
            raise InvalidURL(f"invalid backend URL {shown!r}: unclosed '[' in host {item!r}")
        port_text = tail[1:] if tail.startswith(":") else None
        if tail and port_text is None:
            raise InvalidURL(f"invalid backend URL {shown!r}: unexpected text after host {item!r}")
    else:
        host, colon, port_text_raw = item.partition(":")
        port_text = port_text_raw if colon else None
    if not host:
        raise InvalidURL(f"invalid backend URL {shown!r}: empty host in {item!r}")
    return host, _parse_port(port_text, shown)


def _parse_port(text: str | None, shown: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidURL(f"invalid backend URL {shown!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _parse_query(query: str, shown: str) -> dict[str, str]:
    options: dict[str, str] = {}
    if not query:
        return options
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidURL(f"invalid backend URL {shown!r}: malformed options; write ?name=value&name=value") from None
    for name, value in pairs:
        if name in options:
            raise InvalidURL(f"invalid backend URL {shown!r}: option {name!r} is given more than once")
        options[name] = value
    return options


def _format_host(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def parse_seconds(text: str) -> float:
    """Convert an option value in seconds (``"2.5"``) to a positive float."""
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("expected a positive number of seconds")
    return value


def parse_bool(text: str) -> bool:
    """Convert ``true/false/yes/no/1/0/on/off`` (any case) to a bool."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_prefix(text: str) -> str:
    """Check a ``prefix`` option: non-empty, no whitespace or NUL."""
    if not text or "\x00" in text:
        raise ValueError("expected a non-empty prefix")
    return text


def backend_url_from_env(explicit: str | None) -> str | None:
    """Return ``explicit`` or, when it is None, the ``PLANLAGT_BACKEND`` environment variable."""
    if explicit:
        return explicit
    return os.environ.get("PLANLAGT_BACKEND") or None
