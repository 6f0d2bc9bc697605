"""The ``memory://`` backend: coordination between schedulers inside one process."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, ClassVar

from planlagt_core.backend import (
    Backend,
    Capabilities,
    Lease,
    LeaseInfo,
    fire_time_key,
    new_owner_token,
    renewed,
)
from planlagt_core.clock import Clock
from planlagt_core.errors import ConfigurationError, LeaseLost
from planlagt_core.models import ControlState, FireState, InstanceInfo, RunRecord, TriggerRequest
from planlagt_core.url import BackendURL, parse_prefix

from .store import LeaseEntry, MemoryStore, Namespace, shared_store

__all__ = ["MemoryBackend"]

DEFAULT_PREFIX = "planlagt"


class MemoryBackend(Backend):
    """A backend whose "server" is a data structure in this process.

    Schedulers in one process coordinate through it when they share a store: build them
    from the same ``memory://NAME`` URL, or pass the same ``name``. ``memory://`` with no
    name, and ``MemoryBackend()`` with no name, get a private store. Nothing survives the
    process, so fencing tokens are not durable.

    ``clock`` decides expiry (its ``monotonic()``) and the Unix times the backend reports,
    such as ``InstanceInfo.last_heartbeat`` (its ``time()``). With a
    :class:`~planlagt_core.clock.FakeClock`, tests move leases, fire states and members to
    expiry by advancing the clock instead of sleeping. The clock belongs to the store, so
    every backend of one named store uses the clock that store was created with.
    ``Lease.valid_until`` is also measured on ``clock.monotonic()``, not on
    ``time.monotonic()``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    capabilities: ClassVar[Capabilities] = Capabilities(
        min_ttl_s=0.001,
        ttl_granularity_s=0.001,
        durable_fencing_tokens=False,
        multi_process=False,
        multi_host=False,
        server_process=False,
        server_clock=True,
    )

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        name: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        url: str = "",
    ) -> None:
        """Create a backend on the store ``name``, or on a private store when ``name`` is None.

        Raises ``ConfigurationError`` for an empty ``name`` or ``prefix``, and when ``clock``
        differs from the clock an existing named store was created with.
        """
        if name is not None:
            self.check_text("store name", name, allow_empty=False)
        self.check_text("prefix", prefix, allow_empty=False)
        if not url:
            url = f"memory://{name or ''}" + ("" if prefix == DEFAULT_PREFIX else f"?prefix={prefix}")
        super().__init__(url=url, prefix=prefix)
        self.store = MemoryStore(clock) if name is None else shared_store(name, clock)
        self.name = name

    @classmethod
    def from_url(cls, url: BackendURL) -> MemoryBackend:
        """Build a backend from ``memory://`` or ``memory://NAME``, with option ``prefix``.

        Raises ``InvalidURL`` for a user, password, port, path or unknown option.
        """
        if url.username is not None or url.password is not None or "password_file" in url.options:
            raise url.error("a memory:// URL takes no user or password; write memory://NAME")
        if len(url.hosts) > 1 or url.port is not None:
            raise url.error("a memory:// URL takes one store name and no port; write memory://NAME")
        if url.path not in ("", "/"):
            raise url.error(f"a memory:// URL takes no path (got {url.path!r}); write memory://NAME")
        options = url.read_options({"prefix": parse_prefix})
        return cls(name=url.host, prefix=options.get("prefix", DEFAULT_PREFIX), url=url.redacted())

    @property
    def clock(self) -> Clock:
        """The store's clock, which decides expiry."""
        return self.store.clock

    def _namespace(self) -> Namespace:
        return self.store.namespace(self.prefix)

    def _lease_lost(self, lease: Lease, why: str) -> LeaseLost:
        return LeaseLost(
            f"lease on {lease.key!r} (token {lease.token}) is no longer held: {why}",
            key=lease.key,
            token=lease.token,
            backend=self.url,
        )

    def _held_entry(self, space: Namespace, lease: Lease, now: float) -> LeaseEntry | None:
        """Return the lease entry when ``lease`` is still held, else None."""
        entry = space.live_lease(lease.key, now)
        if entry is None or entry.owner != lease.owner or entry.released:
            return None
        return entry

    def _require_held(self, space: Namespace, lease: Lease, now: float) -> LeaseEntry:
        entry = self._held_entry(space, lease, now)
        if entry is None:
            raise self._lease_lost(lease, "it expired, was released, or the key has another holder")
        return entry

    # -- Leases -------------------------------------------------------------------

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        with self.store.lock:
            now = self.clock.monotonic()
            space = self._namespace()
            if space.live_lease(key, now) is not None:
                return None
            token = space.next_token(key)
            owner = new_owner_token()
            space.leases[key] = LeaseEntry(owner=owner, token=token, holder=holder, expires_at=now + ttl_s)
        return Lease(key=key, token=token, owner=owner, ttl_s=ttl_s, valid_until=now + ttl_s, holder=holder)

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        with self.store.lock:
            now = self.clock.monotonic()
            entry = self._require_held(self._namespace(), lease, now)
            entry.expires_at = now + ttl_s
        return renewed(lease, ttl_s=ttl_s, sent_at=now)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        with self.store.lock:
            now = self.clock.monotonic()
            space = self._namespace()
            entry = self._held_entry(space, lease, now)
            if entry is None:
                return False
            if keep_s > 0:
                entry.released = True
                entry.expires_at = now + keep_s
            else:
                del space.leases[lease.key]
            return True

    def _do_inspect(self, key: str) -> LeaseInfo | None:
        with self.store.lock:
            now = self.clock.monotonic()
            entry = self._namespace().live_lease(key, now)
            if entry is None:
                return None
            return LeaseInfo(
                key=key,
                token=entry.token,
                holder=entry.holder,
                ttl_remaining_s=entry.expires_at - now,
                released=entry.released,
            )

    # -- Fire state ---------------------------------------------------------------

    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState:
        fire_id = (job, fire_time_key(fire_time))
        with self.store.lock:
            now = self.clock.monotonic()
            space = self._namespace()
            self._require_held(space, lease, now)
            stored = space.live_fire(fire_id, now)
            state = FireState() if stored is None else FireState.from_json(stored)
            if state.outcome is not None or state.attempts >= max_attempts:
                return state
            state = FireState(attempts=state.attempts + 1, token=lease.token, instance_id=lease.holder)
            space.store_fire(fire_id, state.to_json(), now + keep_s, now)
        return state

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        fire_id = (record.job, fire_time_key(record.fire_time))
        record_json = record.to_json()
        with self.store.lock:
            now = self.clock.monotonic()
            space = self._namespace()
            if lease is not None:
                self._require_held(space, lease, now)
            stored = space.live_fire(fire_id, now)
            state = FireState() if stored is None else FireState.from_json(stored)
            if state.outcome is not None:
                return False
            if lease is None and state.attempts > 0:
                # Unfenced closes never overwrite a fire time at which an attempt began.
                return False
            token = lease.token if lease is not None else state.token
            closed = replace(state, outcome=record.outcome, token=token, instance_id=record.instance_id)
            space.store_fire(fire_id, closed.to_json(), now + keep_s, now)
            space.add_run(record.fire_time, record.job, record_json)
        return True

    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None:
        with self.store.lock:
            stored = self._namespace().live_fire((job, fire_time_key(fire_time)), self.clock.monotonic())
        return None if stored is None else FireState.from_json(stored)

    # -- Run history --------------------------------------------------------------

    def _do_record_run(self, record: RunRecord) -> None:
        record_json = record.to_json()
        with self.store.lock:
            self._namespace().add_run(record.fire_time, record.job, record_json)

    def _do_list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        with self.store.lock:
            runs = list(self._namespace().runs)
        selected = [
            run
            for run in runs
            if (job is None or run[2] == job)
            and (since is None or run[0] >= since)
            and (until is None or run[0] <= until)
        ]
        selected.sort(key=lambda run: (run[0], run[1]), reverse=True)
        return [RunRecord.from_json(run[3]) for run in selected[:limit]]

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        """Delete records by count per job and by age of their fire time (``clock.time()``)."""
        with self.store.lock:
            space = self._namespace()
            oldest_kept = self.clock.time() - max_age_s
            newest_first = sorted(space.runs, key=lambda run: (run[0], run[1]), reverse=True)
            kept_per_job: dict[str, int] = {}
            kept = []
            for run in newest_first:
                count = kept_per_job.get(run[2], 0)
                if count < max_per_job and run[0] >= oldest_kept:
                    kept_per_job[run[2]] = count + 1
                    kept.append(run)
            deleted = len(space.runs) - len(kept)
            kept.reverse()
            space.runs = kept
        return deleted

    # -- Membership ---------------------------------------------------------------

    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        with self.store.lock:
            now = self.clock.monotonic()
            space = self._namespace()
            stamped = replace(info, last_heartbeat=self.clock.time())
            space.instances[info.instance_id] = (stamped.to_json(), now + ttl_s)
            space.drop_expired_instances(now)
            return self._live_instances(space, now)

    def _do_leave(self, instance_id: str) -> None:
        with self.store.lock:
            space = self._namespace()
            space.instances.pop(instance_id, None)
            space.job_definitions.pop(instance_id, None)

    def _do_list_instances(self) -> list[InstanceInfo]:
        with self.store.lock:
            return self._live_instances(self._namespace(), self.clock.monotonic())

    @staticmethod
    def _live_instances(space: Namespace, now: float) -> list[InstanceInfo]:
        return [InstanceInfo.from_json(space.instances[instance_id][0]) for instance_id in space.live_instance_ids(now)]

    # -- Job registry -------------------------------------------------------------

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        try:
            definitions_json = json.dumps(definitions, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"job definitions of instance {instance_id!r} are not JSON data: {exc}") from exc
        with self.store.lock:
            self._namespace().job_definitions[instance_id] = definitions_json

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self.store.lock:
            space = self._namespace()
            live = space.live_instance_ids(self.clock.monotonic())
            found = {instance_id: space.job_definitions.get(instance_id) for instance_id in live}
        return {instance_id: json.loads(text) for instance_id, text in found.items() if text is not None}

    # -- Control state ------------------------------------------------------------

    def _do_read_control(self) -> ControlState:
        with self.store.lock:
            space = self._namespace()
            paused = frozenset(space.paused)
            trigger_texts = list(space.triggers.values())
        triggers = sorted(
            (TriggerRequest.from_json(text) for text in trigger_texts),
            key=lambda request: (request.requested_at, request.request_id),
        )
        return ControlState(paused=paused, triggers=tuple(triggers))

    def _do_set_paused(self, job: str, paused: bool) -> None:
        with self.store.lock:
            space = self._namespace()
            if paused:
                space.paused.add(job)
            else:
                space.paused.discard(job)

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        request_json = request.to_json()
        with self.store.lock:
            self._namespace().triggers.setdefault(request.request_id, request_json)

    def _do_remove_trigger(self, request_id: str) -> bool:
        with self.store.lock:
            return self._namespace().triggers.pop(request_id, None) is not None
