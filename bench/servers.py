"""The coordination servers a benchmark run needs, started through the test harness.

Every server is a real binary on a free loopback port in a temporary directory, started
by the classes in :mod:`planlagt_conformance` and stopped by its own PID when the run
ends. SQLite needs no server: each measurement gets its own database file.

A backend is *available* when its plugin loads and, for server backends, its harness
module exists and the server binary is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from planlagt_core.errors import PlanlagtError
from planlagt_core.plugins import connect

__all__ = ["ALL_BACKENDS", "ServerSet", "backend_status", "server_set"]

LOG = logging.getLogger(__name__)

ALL_BACKENDS = ("redis", "sqlite", "etcd", "zookeeper", "postgres")
"""Backends in the order the tables show them."""

# backend: (harness module, harness class, a URL that loads the plugin without connecting)
HARNESS = {
    "redis": ("planlagt_conformance.servers", "RedisServer", "redis://127.0.0.1:1"),
    "etcd": ("planlagt_conformance.etcd_server", "EtcdServer", "etcd://127.0.0.1:1"),
    "zookeeper": ("planlagt_conformance.zookeeper_server", "ZooKeeperServer", "zookeeper://127.0.0.1:1"),
    "postgres": ("planlagt_conformance.postgres_server", "PostgresServer", "postgresql://u@127.0.0.1:1/db"),
}


def _harness_class(backend: str) -> type[Any]:
    module_name, class_name, _url = HARNESS[backend]
    return getattr(importlib.import_module(module_name), class_name)


def backend_status(backend: str) -> str | None:
    """Return None when ``backend`` can be benchmarked here, else the reason it cannot."""
    if backend == "sqlite":
        return None
    if backend not in HARNESS:
        return f"unknown backend {backend!r}; choose from {', '.join(ALL_BACKENDS)}"
    try:
        connect(HARNESS[backend][2]).close()
    except PlanlagtError as exc:
        return f"the {backend} plugin does not load: {exc}"
    try:
        _harness_class(backend)
    except (ImportError, AttributeError) as exc:
        return f"the {backend} test-server harness is missing: {exc}"
    return None


def postgres_harness_status() -> str | None:
    """Return None when a PostgreSQL server can be started for the APScheduler peer, else why not."""
    try:
        _harness_class("postgres")
    except (ImportError, AttributeError) as exc:
        return f"the PostgreSQL test-server harness is missing: {exc}"
    return None


@dataclass
class ServerSet:
    """Running servers by backend name, and URLs for isolated parts of a run."""

    workdir: Path
    servers: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def server(self, backend: str) -> Any:
        """Return the running harness server of ``backend``, starting it on first use."""
        if backend not in self.servers:
            server = _harness_class(backend)()
            server.start()
            self._closers.append(server.close)
            self.servers[backend] = server
            LOG.info("Started %s for the benchmarks (pid %s)", backend, server.pid)
        return self.servers[backend]

    def url(self, backend: str, part: str) -> str:
        """Return a backend URL whose data no other ``part`` of the run can see.

        SQLite gets one file per part; server backends get one key prefix per part.
        """
        if backend == "sqlite":
            return f"sqlite:///{self.workdir / (part + '.db')}"
        server = self.server(backend)
        if backend in ("redis", "etcd", "zookeeper"):
            return server.url_for(prefix=part)
        base = server.url
        return base + ("&" if "?" in base else "?") + urlencode({"prefix": part})

    def redis_admin(self) -> Any:
        """Return a redis-py client of the benchmark's Redis server, for INFO and CONFIG."""
        return self.server("redis").client()

    def postgres_sqlalchemy_url(self) -> str:
        """Return a SQLAlchemy asyncpg URL of the PostgreSQL server (for the APScheduler peer)."""
        url = self.server("postgres").url
        return url.replace("postgresql://", "postgresql+asyncpg://", 1)

    def close(self) -> None:
        """Stop every server started here."""
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:
                LOG.exception("Stopping a benchmark server failed")


@contextlib.contextmanager
def server_set() -> Iterator[ServerSet]:
    """Yield a :class:`ServerSet` in a temporary directory; stop its servers on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="planlagt-bench-"))
    servers = ServerSet(workdir)
    try:
        yield servers
    finally:
        servers.close()
        shutil.rmtree(workdir, ignore_errors=True)
