"""planlagt's ZooKeeper backend: ``zookeeper://``, ``zk://`` and ``kazoo://`` URLs, built on kazoo."""

from __future__ import annotations

from .backend import MIN_SESSION_TIMEOUT_S, MIN_TTL_S, ZooKeeperBackend
from .layout import NodeLayout
from .options import ZooKeeperOptions, parse_zookeeper_url
from .session import ConnectionState

__all__ = [
    "MIN_SESSION_TIMEOUT_S",
    "MIN_TTL_S",
    "ConnectionState",
    "NodeLayout",
    "ZooKeeperBackend",
    "ZooKeeperOptions",
    "parse_zookeeper_url",
]
