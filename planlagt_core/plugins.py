"""Finding and loading backend plugins.

A backend plugin is an entry point in the group ``planlagt.backends`` whose name is a URL
scheme and whose target is a :class:`~planlagt_core.backend.Backend` subclass. The built-in
backends register exactly that way. Only the plugin for the requested scheme is imported
(through stevedore); the list of installed schemes comes from package metadata alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from stevedore import DriverManager
from stevedore.exception import NoMatches

from .backend import Backend
from .errors import InvalidURL, PluginLoadError, UnknownBackend
from .url import backend_url_from_env, parse_url, redact_url

__all__ = ["ENTRY_POINT_GROUP", "PluginInfo", "connect", "installed_schemes", "list_plugins"]

LOG = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "planlagt.backends"

# Extras of the planlagt distribution that install the client library of a built-in plugin.
EXTRA_FOR_SCHEME = {
    "etcd": "etcd",
    "etcds": "etcd",
    "zookeeper": "zookeeper",
    "zk": "zookeeper",
    "kazoo": "zookeeper",
    "postgresql": "postgres",
    "postgres": "postgres",
}

DEFAULT_URL = "sqlite:///planlagt.db"


@dataclass(frozen=True)
class PluginInfo:
    """One installed backend plugin, as ``planlagt backends`` shows it."""

    scheme: str
    target: str
    distribution: str
    version: str
    backend: type[Backend] | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        caps = self.backend.capabilities.to_dict() if self.backend is not None else None
        return {
            "scheme": self.scheme,
            "target": self.target,
            "distribution": self.distribution,
            "version": self.version,
            "capabilities": caps,
            "error": self.error,
        }


def _entry_points() -> dict[str, list[metadata.EntryPoint]]:
    """Return the registered entry points by scheme; a scheme may come from several distributions."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, []).append(entry_point)
    return found


def _distribution_name(entry_point: metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return dist.metadata["Name"] if dist is not None else "unknown distribution"


def installed_schemes() -> tuple[str, ...]:
    """Return the URL schemes of every installed plugin, sorted, without importing any."""
    return tuple(sorted(_entry_points()))


def load_backend_class(scheme: str) -> type[Backend]:
    """Import and return the backend class registered for ``scheme``.

    Raises ``UnknownBackend`` (listing the installed schemes and the extra to install) when
    no plugin has that name, and ``PluginLoadError`` when the plugin fails to import.
    """
    entry_points = _entry_points()
    if scheme not in entry_points:
        raise _unknown_scheme(scheme, tuple(sorted(entry_points)))
    if len(entry_points[scheme]) > 1:
        names = ", ".join(sorted(_distribution_name(ep) for ep in entry_points[scheme]))
        raise PluginLoadError(
            f"backend scheme {scheme!r} is registered by several distributions ({names}); uninstall all but one"
        )
    failure: list[BaseException] = []
    try:
        manager = DriverManager(
            namespace=ENTRY_POINT_GROUP,
            name=scheme,
            invoke_on_load=False,
            on_load_failure_callback=lambda _manager, _ep, exc: failure.append(exc),
        )
    except NoMatches:
        if failure:
            raise _load_error(scheme, entry_points[scheme][0], failure[0]) from failure[0]
        raise _unknown_scheme(scheme, tuple(sorted(entry_points))) from None
    backend_class = manager.driver
    if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
        raise PluginLoadError(
            f"plugin for scheme {scheme!r} ({entry_points[scheme][0].value}) is not a planlagt Backend subclass"
        )
    return backend_class


def connect(url: str | None = None) -> Backend:
    """Build the backend for ``url``, or for ``PLANLAGT_BACKEND`` when ``url`` is None.

    Raises ``InvalidURL`` for a malformed URL or option, ``UnknownBackend`` for a scheme no
    plugin handles, ``PluginLoadError`` for a plugin that cannot be imported. Does not
    connect to the server: backends connect on first use.
    """
    chosen = backend_url_from_env(url)
    if chosen is None:
        raise InvalidURL("no backend URL given; pass one or set PLANLAGT_BACKEND, for example redis://localhost:6379")
    parsed = parse_url(chosen)
    backend_class = load_backend_class(parsed.scheme)
    backend = backend_class.from_url(parsed)
    LOG.debug("Using backend %s", backend.url)
    return backend


def list_plugins() -> list[PluginInfo]:
    """Return every installed plugin, importing each to read its capabilities.

    A plugin that fails to import is listed with the error instead of raising.
    """
    plugins = []
    for scheme, entry_points in sorted(_entry_points().items()):
        backend_class: type[Backend] | None = None
        error = None
        try:
            backend_class = load_backend_class(scheme)
        except PluginLoadError as exc:
            error = str(exc)
        for entry_point in entry_points:
            dist = entry_point.dist
            plugins.append(
                PluginInfo(
                    scheme=scheme,
                    target=entry_point.value,
                    distribution=_distribution_name(entry_point),
                    version=dist.version if dist is not None else "unknown",
                    backend=backend_class,
                    error=error,
                )
            )
    return plugins


def _unknown_scheme(scheme: str, installed: tuple[str, ...]) -> UnknownBackend:
    hint = ""
    if scheme in EXTRA_FOR_SCHEME:
        hint = f'; install it with: pip install "planlagt[{EXTRA_FOR_SCHEME[scheme]}]"'
    return UnknownBackend(
        f"no backend plugin for URL scheme {scheme!r}; installed schemes: {', '.join(installed) or 'none'}{hint}",
        scheme=scheme,
        installed=installed,
    )


def _load_error(scheme: str, entry_point: metadata.EntryPoint, exc: BaseException) -> PluginLoadError:
    dist_name = _distribution_name(entry_point)
    cause = redact_url(f"{type(exc).__name__}: {exc}")
    hint = ""
    if isinstance(exc, ImportError) and scheme in EXTRA_FOR_SCHEME:
        hint = f'; install its client library with: pip install "planlagt[{EXTRA_FOR_SCHEME[scheme]}]"'
    LOG.debug("Loading plugin %r from %s failed", scheme, dist_name, exc_info=exc)
    return PluginLoadError(f"backend plugin {scheme!r} from {dist_name} failed to load ({cause}){hint}")
