"""Membership and the job registry: one key per instance, attached to an etcd lease of the membership TTL.

etcd deletes an instance's keys when its lease expires, so dead instances drop out on the
server's clock. A heartbeat costs two requests: a keep-alive of the instance's lease
(remembered per backend object), then one transaction that writes the member key and
reads every member. When there is no live lease to keep alive (the first heartbeat, a TTL
change, or a lease that expired meanwhile), a new lease is granted instead, the instance's
job definitions move to it, and the old lease is revoked.

``last_heartbeat`` is the writer's ``time.time()`` at the heartbeat, because etcd does
not report its own clock. Only whether an instance is listed depends on the server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from pyetcd.transactions import Delete, Get, Mod, Put

from planlagt_core.errors import BackendError, ConfigurationError
from planlagt_core.models import InstanceInfo

from .errors import LeaseNotFound
from .keys import KeyLayout, range_end
from .leases import grant_exact
from .retention import RetentionLeases
from .store import Entry, EtcdStore, Txn

__all__ = ["Members"]

LOG = logging.getLogger(__name__)

JOBS_BEFORE_HEARTBEAT_KEEP_S = 3600.0
"""How long job definitions announced before the instance's first heartbeat are kept without one."""

MAX_CONFLICTS = 100
"""How many times a write is tried again after a concurrent heartbeat changed the member key."""


class Members:
    """Heartbeats, departures and the job registry under one key layout."""

    def __init__(self, store: EtcdStore, layout: KeyLayout, retention: RetentionLeases) -> None:
        self._store = store
        self._layout = layout
        self._retention = retention
        self._leases: dict[str, tuple[int, float]] = {}
        """Instance id to the id and TTL of the etcd lease this object keeps alive for it."""
        self._lock = threading.Lock()

    # -- Membership -----------------------------------------------------------------

    def heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        member_key = self._layout.member(info.instance_id)
        jobs_key = self._layout.jobs(info.instance_id)
        value = _member_value(info)

        lease_id = self._kept_alive(info.instance_id, ttl_s)
        fresh = lease_id is None
        if lease_id is None:
            lease_id = grant_exact(self._store, "heartbeat", ttl_s)
        try:
            result = self._write_member(member_key, jobs_key, value, lease_id)
        except LeaseNotFound:
            # The lease expired between the keep-alive and the write.
            lease_id, fresh = grant_exact(self._store, "heartbeat", ttl_s), True
            result = self._write_member(member_key, jobs_key, value, lease_id)

        if fresh:
            self._adopt(info.instance_id, lease_id, ttl_s, jobs_key, result.read(1))
        return self._instances(result.reads[0])

    def _kept_alive(self, instance_id: str, ttl_s: float) -> int | None:
        """Return the remembered lease of the instance after a keep-alive, or None when there is none to keep."""
        with self._lock:
            remembered = self._leases.get(instance_id)
        if remembered is None or remembered[1] != ttl_s:
            return None
        if self._store.keep_alive("heartbeat", remembered[0]) < ttl_s:
            return None
        return remembered[0]

    def _write_member(self, member_key: bytes, jobs_key: bytes, value: bytes, lease_id: int) -> Txn:
        members = self._layout.members
        return self._store.txn(
            "heartbeat",
            [],
            [Put(member_key, value, lease=lease_id), Get(members, range_end(members)), Get(jobs_key)],
        )

    def _adopt(self, instance_id: str, lease_id: int, ttl_s: float, jobs_key: bytes, jobs: Entry | None) -> None:
        """Remember the new lease, move the job definitions to it and revoke the lease it replaces."""
        with self._lock:
            replaced = self._leases.get(instance_id)
            self._leases[instance_id] = (lease_id, ttl_s)
        self._move_jobs(jobs_key, jobs, lease_id)
        if replaced is not None and replaced[0] != lease_id:
            self._store.revoke_quietly("heartbeat", replaced[0])

    def _move_jobs(self, jobs_key: bytes, entry: Entry | None, lease_id: int) -> None:
        for _ in range(MAX_CONFLICTS):
            if entry is None or entry.lease_id == lease_id:
                return
            result = self._store.txn(
                "heartbeat",
                [Mod(jobs_key) == entry.mod_revision],
                [Put(jobs_key, entry.value, lease=lease_id)],
                [Get(jobs_key)],
            )
            if result.succeeded:
                return
            entry = result.read(0)
        LOG.warning("Job definitions under %r kept changing; they stay on their previous lease", jobs_key)

    def leave(self, instance_id: str) -> None:
        self._store.txn("leave", [], [Delete(self._layout.member(instance_id)), Delete(self._layout.jobs(instance_id))])
        with self._lock:
            remembered = self._leases.pop(instance_id, None)
        if remembered is not None:
            self._store.revoke_quietly("leave", remembered[0])

    def list_instances(self) -> list[InstanceInfo]:
        members = self._layout.members
        return self._instances(list(self._store.scan("list_instances", members, range_end(members))))

    def _instances(self, entries: list[Entry]) -> list[InstanceInfo]:
        instances = [self._store.parse("instance", entry.key, _instance_from_value, entry.value) for entry in entries]
        return sorted(instances, key=lambda instance: instance.instance_id)

    # -- Job registry ---------------------------------------------------------------

    def announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        """Store the definitions on the instance's membership lease, or on a retention lease before its first heartbeat.

        The write compares the member key's mod revision, so a heartbeat that moves the
        instance to a new lease meanwhile cannot leave the definitions on the old one.
        """
        try:
            encoded = _compress(json.dumps(definitions, sort_keys=True, separators=(",", ":")).encode())
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"job definitions of instance {instance_id!r} are not JSON data: {exc}") from exc
        member_key = self._layout.member(instance_id)
        jobs_key = self._layout.jobs(instance_id)

        for _ in range(MAX_CONFLICTS):
            member = self._store.get("announce_jobs", member_key)
            if member is not None and member.lease_id:
                lease_id = member.lease_id
            else:
                lease_id = self._retention.lease_for(JOBS_BEFORE_HEARTBEAT_KEEP_S)
            compare = [Mod(member_key) == (member.mod_revision if member is not None else 0)]
            try:
                result = self._store.txn("announce_jobs", compare, [Put(jobs_key, encoded, lease=lease_id)])
            except LeaseNotFound:
                self._retention.forget(lease_id)
                continue
            if result.succeeded:
                return
        raise BackendError(
            f"etcd at {self._store.url}: announce_jobs for instance {instance_id!r} gave up after "
            f"{MAX_CONFLICTS} attempts, each overtaken by a heartbeat",
            backend=self._store.url,
        )

    def list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        members, jobs = self._layout.members, self._layout.jobs_prefix
        result = self._store.txn(
            "list_job_definitions", [], [Get(members, range_end(members)), Get(jobs, range_end(jobs))]
        )
        live = {_name_after(members, entry.key) for entry in result.reads[0]}

        registry: dict[str, dict[str, dict[str, Any]]] = {}
        for entry in result.reads[1]:
            instance_id = _name_after(jobs, entry.key)
            definitions = self._store.parse("job definitions", entry.key, _json_object, _decompress(entry.value))
            if instance_id in live and definitions:
                registry[instance_id] = definitions
        return registry


COMPRESSED_MARK = b"zlib:"
"""Prefix of a job-definitions value stored as zlib-compressed JSON."""


def _compress(encoded: bytes) -> bytes:
    """Compress a definitions value: 10,000 definitions are about 4 MB of JSON, over etcd's request limit."""
    return COMPRESSED_MARK + zlib.compress(encoded)


def _decompress(value: bytes) -> bytes:
    if not value.startswith(COMPRESSED_MARK):
        return value
    try:
        return zlib.decompress(value[len(COMPRESSED_MARK) :])
    except zlib.error:
        return b"(corrupt compressed job definitions)"


def _member_value(info: InstanceInfo) -> bytes:
    announced = json.loads(replace(info, last_heartbeat=None).to_json())
    return json.dumps({"info": announced, "last_heartbeat": time.time()}, separators=(",", ":")).encode()


def _instance_from_value(raw: bytes) -> InstanceInfo:
    """Parse a member value: ``{"info": {InstanceInfo}, "last_heartbeat": seconds}``."""
    data = _json_object(raw)
    info = InstanceInfo.from_json(json.dumps(data["info"]))
    return replace(info, last_heartbeat=float(data["last_heartbeat"]))


def _json_object(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _name_after(prefix: bytes, key: bytes) -> str:
    return unquote(key[len(prefix) :].decode())
