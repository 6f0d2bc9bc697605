"""The ``fcntl`` backend: coordination between the processes of one host through a directory.

Every operation that writes runs inside :meth:`PrefixStore.updating`: it holds the prefix's
exclusive lock, reads the documents it needs, checks and changes them, and writes them back
before the lock is released. That single step is what makes acquire, the owner compares of
renew and release, and the fenced fire-state writes atomic across threads and processes.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
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
from planlagt_core.errors import ConfigurationError, LeaseLost
from planlagt_core.models import ControlState, FireState, InstanceInfo, RunRecord, TriggerRequest
from planlagt_core.url import BackendURL, parse_prefix, parse_seconds

from .store import Document, PrefixStore, file_name

__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "DEFAULT_PREFIX", "FcntlBackend", "state_directory"]

DEFAULT_PREFIX = "planlagt"
DEFAULT_LOCK_TIMEOUT_S = 5.0
"""How long an update waits for another caller's lock before raising ``BackendUnavailable``, in seconds."""

# The documents of a prefix (see planlagt_fcntl.store), and what each holds when new.
LEASES = "leases.json"
MEMBERS = "members.json"
CONTROL = "control.json"


def new_leases() -> Document:
    # "tokens" maps each key to the last fencing token issued for it. It is never pruned,
    # so tokens keep increasing after a lease is released, expires or is taken over.
    return {"leases": {}, "tokens": {}}


def new_members() -> Document:
    return {"instances": {}, "definitions": {}}


def new_control() -> Document:
    return {"paused": [], "triggers": {}}


def new_fires() -> Document:
    return {"fires": {}}


def fires_document(job: str) -> str:
    """Return the name of the document that contains the fire states of ``job``."""
    return f"fires/{file_name(job)}.json"


def state_directory(url: BackendURL) -> str:
    """Return the directory of an ``fcntl:///absolute/path`` URL.

    Raises ``InvalidURL`` for a host, a user or password, or a missing path.
    """
    if url.username is not None or url.password is not None or "password_file" in url.options:
        raise url.error("the fcntl backend has no users or passwords; protect the directory with file permissions")
    if url.hosts:
        raise url.error("an fcntl URL names a directory, not a host; write fcntl:///absolute/path/to/directory")
    if url.path in ("", "/"):
        raise url.error("the directory is missing; write fcntl:///absolute/path/to/directory")
    return os.path.normpath(url.path)


class FcntlBackend(Backend):
    """A backend in one directory of JSON files, shared by the processes of one host.

    Each prefix is a folder of small JSON documents, changed only under an exclusive
    ``fcntl.flock`` on a lock file in it (see :mod:`planlagt_fcntl.store`). Reads take no
    lock. Expiry is decided by the host's wall clock (``time.time()``), read while the lock
    is held, so every process on the host judges a lease by the same clock. Fencing tokens
    and fire states are synced to disk before an update returns, so they survive a restart
    of the host.

    .. warning::
        NOTE: local filesystems only. Over NFS, flock may be emulated or ignored, and the
        hosts' clocks differ, so two hosts could hold one lease. A step of the host's wall
        clock shortens or lengthens leases by the size of the step.
    """

    schemes: ClassVar[tuple[str, ...]] = ("fcntl",)
    capabilities: ClassVar[Capabilities] = Capabilities(
        # An update takes a few milliseconds (two disk syncs), and a TTL must leave room
        # for several, so renewals sent at a fraction of the TTL land in time.
        min_ttl_s=0.1,
        ttl_granularity_s=0.001,
        durable_fencing_tokens=True,
        multi_process=True,
        multi_host=False,
        server_process=False,
        server_clock=True,
    )

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        url: str = "",
    ) -> None:
        """Keep state in ``directory`` (created on first use), relative to the working directory.

        Raises ``ConfigurationError`` for an empty directory or prefix, or a lock timeout
        that is not a positive number. Touches no file until the first operation.
        """
        directory_text = os.fspath(directory)
        self.check_text("directory", directory_text, allow_empty=False)
        self.check_text("prefix", prefix, allow_empty=False)
        self.check_positive("lock_timeout_s", lock_timeout_s)
        absolute = os.path.abspath(directory_text)
        if not url:
            url = f"fcntl://{absolute}" + ("" if prefix == DEFAULT_PREFIX else f"?prefix={prefix}")
        super().__init__(url=url, prefix=prefix)
        self.directory = absolute
        self._store = PrefixStore(absolute, prefix, lock_timeout_s=lock_timeout_s, url=self.url)

    @classmethod
    def from_url(cls, url: BackendURL) -> FcntlBackend:
        """Build a backend from ``fcntl:///DIRECTORY``; options ``prefix`` and ``lock_timeout`` (seconds)."""
        directory = state_directory(url)
        options = url.read_options({"prefix": parse_prefix, "lock_timeout": parse_seconds})
        return cls(
            directory,
            prefix=options.get("prefix", DEFAULT_PREFIX),
            lock_timeout_s=options.get("lock_timeout", DEFAULT_LOCK_TIMEOUT_S),
            url=url.redacted(),
        )

    def close(self) -> None:
        """Make later operations raise ``BackendError``; no file or thread stays open between operations."""
        self._store.close()

    # -- Leases -------------------------------------------------------------------

    def _do_acquire(self, key: str, ttl_s: float, holder: str) -> Lease | None:
        # valid_until counts from before the lock is requested: waiting for the lock only
        # shortens the holder's own idea of its lease, never lengthens it.
        sent_at = time.monotonic()
        owner = new_owner_token()
        with self._store.updating() as update:
            leases = update.document(LEASES, new_leases)
            now = time.time()
            if _live_lease(leases, key, now) is not None:
                return None

            token = leases["tokens"].get(key, 0) + 1
            leases["tokens"][key] = token
            leases["leases"][key] = {
                "owner": owner,
                "token": token,
                "holder": holder,
                "expires_at": now + ttl_s,
                "released": False,
            }
        return Lease(key=key, token=token, owner=owner, ttl_s=ttl_s, valid_until=sent_at + ttl_s, holder=holder)

    def _do_renew(self, lease: Lease, ttl_s: float) -> Lease:
        sent_at = time.monotonic()
        with self._store.updating() as update:
            leases = update.document(LEASES, new_leases)
            now = time.time()
            entry = self._held_entry(leases, lease, now)
            entry["expires_at"] = now + ttl_s
        return renewed(lease, ttl_s=ttl_s, sent_at=sent_at)

    def _do_release(self, lease: Lease, keep_s: float) -> bool:
        with self._store.updating() as update:
            leases = update.document(LEASES, new_leases)
            now = time.time()
            entry = _held_or_none(leases, lease, now)
            if entry is None:
                # Expired, released or taken over: the key may be someone else's now.
                return False
            if keep_s > 0:
                entry["released"] = True
                entry["expires_at"] = now + keep_s
            else:
                del leases["leases"][lease.key]
        return True

    def _do_inspect(self, key: str) -> LeaseInfo | None:
        leases = self._store.read(LEASES, new_leases)
        now = time.time()
        entry = _live_lease(leases, key, now)
        if entry is None:
            return None
        return LeaseInfo(
            key=key,
            token=entry["token"],
            holder=entry["holder"],
            ttl_remaining_s=entry["expires_at"] - now,
            released=entry["released"],
        )

    def _held_entry(self, leases: Document, lease: Lease, now: float) -> dict[str, Any]:
        """Return the lease's entry, or raise ``LeaseLost`` when ``lease`` is no longer held."""
        entry = _held_or_none(leases, lease, now)
        if entry is None:
            raise LeaseLost(
                f"lease on {lease.key!r} (token {lease.token}) is no longer held: "
                "it expired, was released, or the key has another holder",
                key=lease.key,
                token=lease.token,
                backend=self.url,
            )
        return entry

    # -- Fire state ---------------------------------------------------------------

    def _do_begin_attempt(
        self, lease: Lease, job: str, fire_time: float, max_attempts: int, keep_s: float
    ) -> FireState:
        fire_key = fire_time_key(fire_time)
        with self._store.updating() as update:
            now = time.time()
            # The lease check and the write happen under one lock: a holder whose lease
            # expired a moment ago cannot slip an attempt in after the check.
            self._held_entry(update.document(LEASES, new_leases), lease, now)
            fires = update.document(fires_document(job), new_fires)
            fire = _read_fire(fires, fire_key, now) or FireState()
            if fire.outcome is not None or fire.attempts >= max_attempts:
                return fire

            fire = FireState(attempts=fire.attempts + 1, token=lease.token, instance_id=lease.holder)
            _write_fire(fires, fire_key, fire, now + keep_s, now)
        return fire

    def _do_finish_fire(self, record: RunRecord, lease: Lease | None, keep_s: float) -> bool:
        fire_key = fire_time_key(record.fire_time)
        with self._store.updating() as update:
            now = time.time()
            if lease is not None:
                self._held_entry(update.document(LEASES, new_leases), lease, now)
            fires = update.document(fires_document(record.job), new_fires)
            fire = _read_fire(fires, fire_key, now) or FireState()
            if fire.outcome is not None:
                return False
            if lease is None and fire.attempts > 0:
                # An unfenced close (skipped, missed) never overwrites a fire time at which
                # an attempt began: that attempt may still be running elsewhere.
                return False

            token = lease.token if lease is not None else fire.token
            closed = replace(fire, outcome=record.outcome, token=token, instance_id=record.instance_id)
            _write_fire(fires, fire_key, closed, now + keep_s, now)
            # NOTE: the record is appended after the fire state is written. A crash between
            # the two writes leaves the fire time closed without its run record.
            update.append_run(_to_data(record))
        return True

    def _do_get_fire(self, job: str, fire_time: float) -> FireState | None:
        fires = self._store.read(fires_document(job), new_fires)
        return _read_fire(fires, fire_time_key(fire_time), time.time())

    # -- Run history --------------------------------------------------------------

    def _do_record_run(self, record: RunRecord) -> None:
        with self._store.updating() as update:
            update.append_run(_to_data(record))

    def _do_list_runs(self, job: str | None, limit: int, since: float | None, until: float | None) -> list[RunRecord]:
        selected = [
            (run["fire_time"], index, run)
            for index, run in enumerate(self._store.read_runs())
            if (job is None or run["job"] == job)
            and (since is None or run["fire_time"] >= since)
            and (until is None or run["fire_time"] <= until)
        ]
        # Newest fire time first; among records of one fire time, the last appended first.
        selected.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [RunRecord.from_json(json.dumps(run)) for _, _, run in selected[:limit]]

    def _do_trim_runs(self, max_per_job: int, max_age_s: float) -> int:
        """Delete records by age of their fire time (host wall clock), then by count per job."""
        with self._store.updating() as update:
            runs = update.runs()
            oldest_kept = time.time() - max_age_s
            newest_first = sorted(enumerate(runs), key=lambda item: (item[1]["fire_time"], item[0]), reverse=True)
            seen_per_job: Counter[str] = Counter()
            kept: set[int] = set()
            for index, run in newest_first:
                if run["fire_time"] < oldest_kept:
                    continue
                seen_per_job[run["job"]] += 1
                if seen_per_job[run["job"]] <= max_per_job:
                    kept.add(index)
            if len(kept) < len(runs):
                update.replace_runs([run for index, run in enumerate(runs) if index in kept])
        return len(runs) - len(kept)

    # -- Membership ---------------------------------------------------------------

    def _do_heartbeat(self, info: InstanceInfo, ttl_s: float) -> list[InstanceInfo]:
        with self._store.updating() as update:
            members = update.document(MEMBERS, new_members)
            now = time.time()
            stamped = replace(info, last_heartbeat=now)
            members["instances"][info.instance_id] = {"info": _to_data(stamped), "expires_at": now + ttl_s}
            _drop_expired_instances(members, now)
            return _live_instances(members, now)

    def _do_leave(self, instance_id: str) -> None:
        with self._store.updating() as update:
            members = update.document(MEMBERS, new_members)
            members["instances"].pop(instance_id, None)
            members["definitions"].pop(instance_id, None)

    def _do_list_instances(self) -> list[InstanceInfo]:
        return _live_instances(self._store.read(MEMBERS, new_members), time.time())

    # -- Job registry -------------------------------------------------------------

    def _do_announce_jobs(self, instance_id: str, definitions: dict[str, dict[str, Any]]) -> None:
        # Checked before taking the lock, so a bad definition fails alone and fast.
        try:
            copied = json.loads(json.dumps(definitions))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"job definitions of instance {instance_id!r} are not JSON data: {exc}") from exc
        with self._store.updating() as update:
            update.document(MEMBERS, new_members)["definitions"][instance_id] = copied

    def _do_list_job_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        members = self._store.read(MEMBERS, new_members)
        live = {instance.instance_id for instance in _live_instances(members, time.time())}
        definitions = sorted(members["definitions"].items())
        return {instance_id: jobs for instance_id, jobs in definitions if instance_id in live}

    # -- Control state ------------------------------------------------------------

    def _do_read_control(self) -> ControlState:
        control = self._store.read(CONTROL, new_control)
        requests = sorted(control["triggers"].values(), key=lambda data: (data["requested_at"], data["request_id"]))
        return ControlState(
            paused=frozenset(control["paused"]),
            triggers=tuple(TriggerRequest.from_json(json.dumps(data)) for data in requests),
        )

    def _do_set_paused(self, job: str, paused: bool) -> None:
        with self._store.updating() as update:
            control = update.document(CONTROL, new_control)
            jobs = set(control["paused"])
            if paused:
                jobs.add(job)
            else:
                jobs.discard(job)
            control["paused"] = sorted(jobs)

    def _do_add_trigger(self, request: TriggerRequest) -> None:
        with self._store.updating() as update:
            update.document(CONTROL, new_control)["triggers"].setdefault(request.request_id, _to_data(request))

    def _do_remove_trigger(self, request_id: str) -> bool:
        with self._store.updating() as update:
            return update.document(CONTROL, new_control)["triggers"].pop(request_id, None) is not None


# -- Reading and changing documents ---------------------------------------------------


def _to_data(model: RunRecord | FireState | InstanceInfo | TriggerRequest) -> dict[str, Any]:
    """Return a model as JSON-ready data, through its own ``to_json`` so enums become strings."""
    return json.loads(model.to_json())


def _live_lease(leases: Document, key: str, now: float) -> dict[str, Any] | None:
    """Return the entry of ``key`` while it is held or kept after release, else None."""
    entry = leases["leases"].get(key)
    if entry is None or entry["expires_at"] <= now:
        return None
    return entry


def _held_or_none(leases: Document, lease: Lease, now: float) -> dict[str, Any] | None:
    """Return the entry of ``lease.key`` if ``lease`` itself holds it now: same owner, not released, not expired."""
    entry = _live_lease(leases, lease.key, now)
    if entry is None or entry["owner"] != lease.owner or entry["released"]:
        return None
    return entry


def _read_fire(fires: Document, fire_key: str, now: float) -> FireState | None:
    stored = fires["fires"].get(fire_key)
    if stored is None or stored["expires_at"] <= now:
        return None
    return FireState.from_json(json.dumps(stored["state"]))


def _write_fire(fires: Document, fire_key: str, fire: FireState, expires_at: float, now: float) -> None:
    """Store a fire state, and delete the job's fire states whose keep period ended."""
    expired = [key for key, stored in fires["fires"].items() if stored["expires_at"] <= now]
    for key in expired:
        del fires["fires"][key]
    fires["fires"][fire_key] = {"state": _to_data(fire), "expires_at": expires_at}


def _live_instances(members: Document, now: float) -> list[InstanceInfo]:
    live = [entry["info"] for entry in members["instances"].values() if entry["expires_at"] > now]
    live.sort(key=lambda info: info["instance_id"])
    return [InstanceInfo.from_json(json.dumps(info)) for info in live]


def _drop_expired_instances(members: Document, now: float) -> None:
    """Delete instances whose membership TTL ran out, with the job definitions they announced."""
    expired = [instance_id for instance_id, entry in members["instances"].items() if entry["expires_at"] <= now]
    for instance_id in expired:
        del members["instances"][instance_id]
        members["definitions"].pop(instance_id, None)
