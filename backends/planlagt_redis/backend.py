"""The ``redis://``, ``rediss://`` and ``unix://`` backend, built on redis-py."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from planlagt_core.backend import Backend, Capabilities, Lease, LeaseInfo, new_owner_token, renewed
from planlagt_core.errors import BackendError, ConfigurationError, LeaseLost
from planlagt_core.models import ControlState, FireState, InstanceInfo, RunRecord, TriggerRequest
from planlagt_core.url import BackendURL

from . import scripts
from .errors import invalid_data, translate_errors
from .keys import KeyLayout
from .options import RedisOptions, parse_redis_url

__all__ = ["RedisBackend"]

LOG = logging.getLogger(__name__)

MS_PER_S = 1000


def to_ms(seconds: float) -> int:
    """Convert a duration in seconds to whole milliseconds, rounding up, at least 1."""
    return max(1, math.ceil(round(seconds * MS_PER_S, 6)))


class RedisBackend(Backend):
    """A backend on one Redis server (5.0 or newer; tested with 7.0).

    Where it differs from the contract, or adds to it:

    - Expiry is decided by the Redis server's clock alone: every TTL is set with
      ``PX``/``PEXPIRE`` and every instant (heartbeats, the age bound of ``trim_runs``)
      comes from ``TIME`` inside a Lua script.
    - Fencing tokens are ``max(last token + 1, server time in microseconds)``, so they
      stay strictly increasing after a restart that lost every key (no persistence), on
      the condition that the server's clock does not step back across the restart. After a
      failover to a replica that missed the last writes, they stay increasing as long as
      the replica's clock is not behind the old primary's by more than the failover took.
    - Keys are laid out as :class:`~planlagt_redis.keys.KeyLayout` describes, all under
      ``{prefix}:``. NOTE: two prefixes where one extends the other with ``:`` (``app``
      and ``app:lease``) can reach the same keys; use prefixes that are not nested.
    - NOTE: Redis Cluster and Sentinel are not supported. The scripts touch keys they
      compute on the server, which Cluster rejects unless all keys share a slot.
    - redis-py does not retry commands here: a failed request raises
      ``BackendUnavailable`` at once, and the caller decides whether to try again, because
      a repeated script (such as ``begin_attempt``) is not idempotent.

    Connection loss: while the server cannot be reached, every call raises
    ``BackendUnavailable`` after ``connect_timeout`` or ``socket_timeout`` (5 s by
    default), and a held lease is at risk, not lost. Its key keeps its TTL on the server,
    so the lease is lost once that TTL runs out without a successful renewal, and the
    holder must assume so at ``Lease.valid_until``. Once a paused or restarted server
    responds again, the backend reconnects on the next call without any action by the caller.
    """

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix")
    client_library: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        min_ttl_s=0.01,
        ttl_granularity_s=0.001,
        durable_fencing_tokens=True,
    )

    def __init__(self, options: RedisOptions | None = None, *, url: str = "") -> None:
        """Create a backend for ``options`` (default: localhost:6379, database 0). Does not connect.

        ``url`` is the redacted URL shown in ``repr`` and messages; it is built from the
        options when empty.
        """
        options = options or RedisOptions()
        super().__init__(url=url or _describe(options), prefix=options.prefix)
        self.options = options
        self.keys = KeyLayout(options.prefix)
        self._closed = False
        self._close_lock = threading.Lock()

        # redis-py's pool is safe across threads and replaces its connections in a forked
        # child (it compares the process id on every checkout). No retries: see the class
        # docstring.
        self._client = redis.Redis(**options.client_kwargs(), decode_responses=True, retry=Retry(NoBackoff(), 0))
        self._scripts = {name: self._client.register_script(getattr(scripts, name)) for name in scripts.__all__}

    @classmethod
    def from_url(cls, url: BackendURL) -> RedisBackend:
        """Build a backend from a ``redis://``, ``rediss://`` or ``unix://`` URL (see ``planlagt_redis.options``).

        Raises ``InvalidURL`` naming the option or part at fault. Never connects.
        """
        return cls(parse_redis_url(url), url=url.redacted())

    def close(self) -> None:
        """Close every connection of the pool. Later calls raise ``BackendError``."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._client.close()
        LOG.debug("Closed backend %s", self.url)

    # -- Plumbing -------------------------------------------------------------------

    @contextmanager
    def _client_for(self, operation: str) -> Iterator[redis.Redis]:
        """Yield the client for one operation, translating its errors."""
        if self._closed:
            raise BackendError(f"backend {self.url} is closed; create a new one with planlagt_core.connect()")
        with translate_errors(self.url, operation):
            yield self._client

    def _run_script(self, operation: str, name: str, keys: list[str], args: list[Any]) -> Any:
        with self._client_for(operation):
            return self._scripts[name](keys=keys, args=args)

    def _parse(self, what: str, redis_key: str, parse: Any, text: Any) -> Any:
        """Parse JSON read from Redis with ``parse``, raising ``BackendError`` for invalid data."""
        try:
            return parse(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise invalid_data(self.url, what, redis_key, exc) from exc

    def _lease_lost(self, lease: Lease) -> LeaseLost:
        return LeaseLost(
            f"lease on {lease.key!r} (token {lease.token}) is no longer held: "
            "it expired, was released, or the key has another holder",
            key=lease.key,
            token=lease.token,
            backend=self.url,
        )

    # -- Leases ---------------------------------------------------------------------

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        owner = new_owner_token()
        sent_at = time.monotonic()
        token = self._run_script(
            "acquire", "ACQUIRE", [self.keys.lease(key), self.keys.token(key)], [owner, holder, to_ms(ttl_s)]
        )
        if token is None:
            return None
        return Lease(key=key, token=int(token), owner=owner, ttl_s=ttl_s, valid_until=sent_at + ttl_s, holder=holder)

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        sent_at = time.monotonic()
        held = self._run_script(
            "renew", "RENEW", [self.keys.lease(lease.key)], [lease.owner, lease.token, to_ms(ttl_s)]
        )
        if not held:
            raise self._lease_lost(lease)
        return renewed(lease, ttl_s=ttl_s, sent_at=sent_at)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        kept_value = json.dumps(
            {"holder": lease.holder, "owner": None, "released": True, "token": lease.token}, separators=(",", ":")
        )
        keep_ms = to_ms(keep_s) if keep_s > 0 else 0
        released = self._run_script(
            "release", "RELEASE", [self.keys.lease(lease.key)], [lease.owner, lease.token, keep_ms, kept_value]
        )
        return bool(released)

    def _do_inspect(self, key: str) -> LeaseInfo | None:
        redis_key = self.keys.lease(key)
        with self._client_for("inspect") as client:
            pipeline = client.pipeline(transaction=True)
            pipeline.get(redis_key)
            pipeline.pttl(redis_key)
            stored, ttl_ms = pipeline.execute()
        if stored is None:
            return None

        lease = self._parse("lease", redis_key, json.loads, stored)
        return LeaseInfo(
            key=key,
            token=self._parse("lease", redis_key, lambda data: int(data["token"]), lease),
            holder=str(lease.get("holder") or ""),
            ttl_remaining_s=ttl_ms / MS_PER_S if ttl_ms >= 0 else None,
            released=bool(lease.get("released", False)),
        )

    # -- Fire state -----------------------------------------------------------------

    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState:
        fire_key = self.keys.fire(job, fire_time)
        result = self._run_script(
            "begin_attempt",
            "BEGIN_ATTEMPT",
            [self.keys.lease(lease.key), fire_key],
            [lease.owner, lease.token, lease.holder, max_attempts, to_ms(keep_s)],
        )
        if not result or result[0] != 1:
            raise self._lease_lost(lease)
        return self._parse("fire state", fire_key, FireState.from_json, result[1])

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        keys = [
            self.keys.lease(lease.key) if lease is not None else self.keys.lease(record.job),
            self.keys.fire(record.job, record.fire_time),
            self.keys.runs(record.job),
            self.keys.all_runs,
            self.keys.run_jobs,
            self.keys.run_seq,
        ]
        args = [
            "1" if lease is not None else "0",
            lease.owner if lease is not None else "",
            lease.token if lease is not None else 0,
            record.outcome.value,
            record.instance_id,
            to_ms(keep_s),
            record.to_json(),
            repr(float(record.fire_time)),
            record.job,
        ]
        closed = self._run_script("finish_fire", "FINISH_FIRE", keys, args)
        if closed == -1 and lease is not None:
            raise self._lease_lost(lease)
        return closed == 1

    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None:
        fire_key = self.keys.fire(job, fire_time)
        with self._client_for("get_fire") as client:
            stored = client.get(fire_key)
        if stored is None:
            return None
        return self._parse("fire state", fire_key, FireState.from_json, stored)

    # -- Run history ----------------------------------------------------------------

    def _do_record_run(self, record: RunRecord) -> None:
        keys = [self.keys.runs(record.job), self.keys.all_runs, self.keys.run_jobs, self.keys.run_seq]
        args = [repr(float(record.fire_time)), record.to_json(), record.job]
        self._run_script("record_run", "RECORD_RUN", keys, args)

    def _do_list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        redis_key = self.keys.all_runs if job is None else self.keys.runs(job)
        highest = "+inf" if until is None else repr(float(until))
        lowest = "-inf" if since is None else repr(float(since))
        with self._client_for("list_runs") as client:
            members = client.zrevrangebyscore(redis_key, highest, lowest, start=0, num=limit)
        return [self._parse("run record", redis_key, _record_from_member, member) for member in members]

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        with self._client_for("trim_runs") as client:
            jobs = sorted(str(job) for job in client.smembers(self.keys.run_jobs))

        # One script per job keeps each atomic step short on a server shared with others.
        deleted = 0
        for job in jobs:
            keys = [self.keys.runs(job), self.keys.all_runs, self.keys.run_jobs]
            deleted += int(self._run_script("trim_runs", "TRIM_RUNS", keys, [max_per_job, repr(float(max_age_s)), job]))
        return deleted

    # -- Membership -----------------------------------------------------------------

    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        announced = replace(info, last_heartbeat=None).to_json()
        values = self._run_script(
            "heartbeat",
            "HEARTBEAT",
            [self.keys.members, self.keys.instances],
            [info.instance_id, announced, to_ms(ttl_s), self.keys.jobs_prefix],
        )
        return self._instances_from(values)

    def _do_leave(self, instance_id: str) -> None:
        with self._client_for("leave") as client:
            pipeline = client.pipeline(transaction=True)
            pipeline.zrem(self.keys.members, instance_id)
            pipeline.hdel(self.keys.instances, instance_id)
            pipeline.delete(self.keys.jobs(instance_id))
            pipeline.execute()

    def _do_list_instances(self) -> list[InstanceInfo]:
        values = self._run_script("list_instances", "LIST_INSTANCES", [self.keys.members, self.keys.instances], [])
        return self._instances_from(values)

    def _instances_from(self, values: list[str | None]) -> list[InstanceInfo]:
        instances = [
            self._parse("instance", self.keys.instances, _instance_from_value, value)
            for value in values
            if value is not None
        ]
        return sorted(instances, key=lambda instance: instance.instance_id)

    # -- Job registry ---------------------------------------------------------------

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        try:
            encoded: dict[Any, Any] = {
                name: json.dumps(definition, sort_keys=True) for name, definition in definitions.items()
            }
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"job definitions of instance {instance_id!r} are not JSON data: {exc}") from exc

        redis_key = self.keys.jobs(instance_id)
        with self._client_for("announce_jobs") as client:
            pipeline = client.pipeline(transaction=True)
            pipeline.delete(redis_key)
            if encoded:
                pipeline.hset(redis_key, mapping=encoded)
            pipeline.execute()

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        flat = self._run_script(
            "list_job_definitions", "LIST_JOB_DEFINITIONS", [self.keys.members], [self.keys.jobs_prefix]
        )
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for instance_id, pairs in zip(flat[0::2], flat[1::2], strict=True):
            if not pairs:
                continue
            redis_key = self.keys.jobs(instance_id)
            result[instance_id] = {
                name: self._parse("job definition", redis_key, _json_object, text)
                for name, text in zip(pairs[0::2], pairs[1::2], strict=True)
            }
        return result

    # -- Control state --------------------------------------------------------------

    def _do_read_control(self) -> ControlState:
        with self._client_for("read_control") as client:
            pipeline = client.pipeline(transaction=True)
            pipeline.smembers(self.keys.paused)
            pipeline.hvals(self.keys.triggers)
            paused, trigger_texts = pipeline.execute()

        triggers = [
            self._parse("trigger request", self.keys.triggers, TriggerRequest.from_json, text) for text in trigger_texts
        ]
        triggers.sort(key=lambda request: (request.requested_at, request.request_id))
        return ControlState(paused=frozenset(paused), triggers=tuple(triggers))

    def _do_set_paused(self, job: str, paused: bool) -> None:
        with self._client_for("set_paused") as client:
            if paused:
                client.sadd(self.keys.paused, job)
            else:
                client.srem(self.keys.paused, job)

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        with self._client_for("add_trigger") as client:
            client.hsetnx(self.keys.triggers, request.request_id, request.to_json())

    def _do_remove_trigger(self, request_id: str) -> bool:
        with self._client_for("remove_trigger") as client:
            return bool(client.hdel(self.keys.triggers, request_id))


def _describe(options: RedisOptions) -> str:
    """Return a URL for ``options`` with the password redacted, for ``repr`` and messages."""
    auth = ""
    if options.username or options.password is not None:
        auth = (options.username or "") + (":***" if options.password is not None else "") + "@"
    if options.unix_socket_path is not None:
        return f"unix://{auth}{options.unix_socket_path}?db={options.db}"
    scheme = "rediss" if options.ssl else "redis"
    return f"{scheme}://{auth}{options.host}:{options.port}/{options.db}"


def _json_object(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _record_from_member(member: str) -> RunRecord:
    """Parse a run history member: ``{"seq": "...", "record": {RunRecord}}``."""
    record = _json_object(member)["record"]
    return RunRecord.from_json(json.dumps(record))


def _instance_from_value(value: str) -> InstanceInfo:
    """Parse an instances hash value: ``{"info": {InstanceInfo}, "last_heartbeat": seconds}``."""
    data = _json_object(value)
    info = InstanceInfo.from_json(json.dumps(data["info"]))
    return replace(info, last_heartbeat=float(data["last_heartbeat"]))
