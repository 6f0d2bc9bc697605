"""Membership and the job registry: a persistent node per instance and one per job set.

An instance is live until its TTL runs out after its last heartbeat: the member node's
``mtime`` plus ``ttl_ms``, by the leader's clock. Member nodes are persistent rather than
ephemeral because the contract keeps an instance live for its TTL even after its process
exits without ``leave()``, while the end of a session deletes ephemeral nodes at once.
Heartbeats delete expired member nodes and their job definitions; listing skips them.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from planlagt_core.errors import BackendError, ConfigurationError
from planlagt_core.models import InstanceInfo

from .layout import decode_name
from .leases import to_ms
from .session import request
from .store import NodeStore, dump_json, expires_at_ms

__all__ = ["MembershipOperations"]

MAX_WRITE_TRIES = 10
MS_PER_S = 1000


class MembershipOperations:
    """Heartbeats, the live instance list and the job registry under one :class:`NodeStore`."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.session = store.session
        self.layout = store.layout

    # -- Membership -----------------------------------------------------------------

    def heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        path = self.layout.member(info.instance_id)
        data = dump_json({"info": json.loads(replace(info, last_heartbeat=None).to_json()), "ttl_ms": to_ms(ttl_s)})
        stat = self._write_member(path, data)
        return self._live("heartbeat", int(stat.mtime), drop_expired=True)

    def list_instances(self) -> list[InstanceInfo]:
        return self._live("list_instances", self.store.server_time_ms("list_instances"), drop_expired=False)

    def leave(self, instance_id: str) -> None:
        paths = [self.layout.member(instance_id), self.layout.jobs(instance_id)]
        self.session.call_all("leave", [request("delete", path) for path in paths])

    def _write_member(self, path: str, data: bytes) -> ZnodeStat:
        """Write the member node (creating it when missing) and return its stat."""
        for _ in range(MAX_WRITE_TRIES):
            try:
                return self.session.call("heartbeat", lambda client: client.set_async(path, data))
            except NoNodeError:
                pass
            try:
                _, stat = self.session.call(
                    "heartbeat", lambda client: client.create_async(path, data, include_data=True)
                )
            except NodeExistsError:
                continue
            return stat
        raise BackendError(f"member node {path!r} at {self.store.url} kept appearing and vanishing")

    def _live(self, operation: str, now_ms: int, *, drop_expired: bool) -> list[InstanceInfo]:
        names = self.store.children(operation, self.layout.members)
        paths = [f"{self.layout.members}/{name}" for name in names]
        live = []
        for name, path, node in zip(names, paths, self.store.read_all(operation, paths), strict=True):
            if node is None:
                continue
            data, stat = node
            fields = self.store.parse_object("member", path, data)
            if expires_at_ms(stat, self.store.parse("member", path, int, fields["ttl_ms"])) > now_ms:
                info = self.store.parse(
                    "member", path, lambda value: InstanceInfo.from_json(json.dumps(value)), fields["info"]
                )
                live.append(replace(info, last_heartbeat=stat.mtime / MS_PER_S))
            elif drop_expired:
                self._drop(operation, decode_name(name), path, stat)
        return sorted(live, key=lambda instance: instance.instance_id)

    def _drop(self, operation: str, instance_id: str, path: str, stat: ZnodeStat) -> None:
        if self.store.delete_if_unchanged(operation, path, stat):
            with contextlib.suppress(NoNodeError):
                self.session.call(operation, lambda client: client.delete_async(self.layout.jobs(instance_id)))

    # -- Job registry ---------------------------------------------------------------

    def announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        try:
            data = dump_json(definitions)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"job definitions of instance {instance_id!r} are not JSON data: {exc}") from exc

        path = self.layout.jobs(instance_id)
        for _ in range(MAX_WRITE_TRIES):
            try:
                self.session.call("announce_jobs", lambda client: client.set_async(path, data))
                return
            except NoNodeError:
                pass
            try:
                self.session.call("announce_jobs", lambda client: client.create_async(path, data))
                return
            except NodeExistsError:
                continue
        raise BackendError(f"job registry node {path!r} at {self.store.url} kept appearing and vanishing")

    def list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        live = self.list_instances()
        paths = [self.layout.jobs(instance.instance_id) for instance in live]
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for instance, path, node in zip(live, paths, self.store.read_all("list_job_definitions", paths), strict=True):
            result[instance.instance_id] = (
                {} if node is None else self.store.parse_object("job definitions", path, node[0])
            )
        return result
