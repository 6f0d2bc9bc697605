"""Typed reads and writes of the nodes under one prefix, shared by every part of the backend."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from .errors import invalid_data
from .layout import NodeLayout
from .session import ZooKeeperSession, request

__all__ = ["Node", "NodeStore", "dump_json", "expires_at_ms"]

T = TypeVar("T")

Node = tuple[bytes, ZnodeStat]
"""A node's data and its stat, as kazoo's ``get`` returns them."""


def dump_json(value: Any) -> bytes:
    """Return ``value`` as compact JSON bytes with sorted keys."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def expires_at_ms(stat: ZnodeStat, lifetime_ms: int) -> int:
    """Return when a node written with a lifetime expires: its ``mtime`` (leader's clock, ms) plus the lifetime."""
    return int(stat.mtime) + lifetime_ms


class NodeStore:
    """Reads and writes nodes of one :class:`NodeLayout` through one session.

    The persistent parents of the layout are created on first use, by whichever client
    gets there first; the others find them in place.
    """

    def __init__(self, session: ZooKeeperSession, layout: NodeLayout) -> None:
        self.session = session
        self.layout = layout
        self.url = session.url
        self._prepared = False
        self._prepare_lock = threading.Lock()

    def prepare(self, operation: str) -> None:
        """Connect and create the layout's parents and clock node if they are missing."""
        self.session.client(operation)
        if self._prepared:
            return
        with self._prepare_lock:
            if self._prepared:
                return
            if self.session.call(operation, lambda client: client.exists_async(self.layout.clock)) is None:
                self._create_layout(operation)
            self._prepared = True

    def _create_layout(self, operation: str) -> None:
        for path in self.layout.directories:
            self.session.call(operation, request("ensure_path", path))
        with contextlib.suppress(NodeExistsError):
            self.session.call(operation, lambda client: client.create_async(self.layout.clock, b""))

    # -- Reads ----------------------------------------------------------------------

    def read(self, operation: str, path: str) -> Node | None:
        """Return the data and stat of ``path``, or None when it does not exist."""
        try:
            return self.session.call(operation, lambda client: client.get_async(path))
        except NoNodeError:
            return None

    def read_all(self, operation: str, paths: Sequence[str]) -> list[Node | None]:
        """Read several nodes at once; a missing node gives None in its place."""
        starts = [request("get", path) for path in paths]
        results = self.session.call_all(operation, starts)
        return [None if isinstance(result, NoNodeError) else result for result in results]

    def children(self, operation: str, path: str) -> list[str]:
        """Return the names of the children of ``path``, sorted; empty when it does not exist."""
        try:
            return sorted(self.session.call(operation, lambda client: client.get_children_async(path)))
        except NoNodeError:
            return []

    def server_time_ms(self, operation: str) -> int:
        """Return the ZooKeeper leader's clock now, in Unix milliseconds.

        ZooKeeper has no request that returns the time, but the leader stamps every write
        with its clock: this writes the clock node and reads the stamp back.
        """
        stat = self.session.call(operation, lambda client: client.set_async(self.layout.clock, b""))
        return int(stat.mtime)

    def parse(self, what: str, path: str, parse: Callable[[Any], T], data: Any) -> T:
        """Parse node data with ``parse``, raising ``BackendError`` for data planlagt did not write."""
        try:
            return parse(data)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise invalid_data(self.url, what, path, exc) from exc

    def parse_object(self, what: str, path: str, data: bytes) -> dict[str, Any]:
        """Parse node data that must be a JSON object."""
        return self.parse(what, path, _json_object, data)

    # -- Writes ---------------------------------------------------------------------

    def ensure_parent(self, operation: str, path: str) -> None:
        """Create the persistent parent of ``path`` (and its parents) if missing."""
        parent = path.rsplit("/", 1)[0]
        self.session.call(operation, lambda client: client.ensure_path_async(parent))

    def delete_if_unchanged(self, operation: str, path: str, stat: ZnodeStat) -> bool:
        """Delete ``path`` if it still has the version in ``stat``; return whether this call deleted it."""
        try:
            self.session.call(operation, lambda client: client.delete_async(path, version=stat.version))
        except (NoNodeError, BadVersionError):
            return False
        return True


def _json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value
