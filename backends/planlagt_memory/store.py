"""The in-process data a :class:`~planlagt_memory.MemoryBackend` reads and writes.

A :class:`MemoryStore` plays the part of the coordination server: one lock serializes
every operation, and one clock decides expiry. Backends built with the same store name in
one process share one store through a module-level registry, which keeps each named store
until the process exits or :func:`clear_shared_stores` is called.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass, field

from planlagt_core.clock import Clock, SystemClock
from planlagt_core.errors import ConfigurationError

__all__ = ["LeaseEntry", "MemoryStore", "Namespace", "clear_shared_stores", "shared_store"]


@dataclass
class LeaseEntry:
    """A key's current lease. ``expires_at`` is on the store clock's monotonic scale."""

    owner: str
    token: int
    holder: str
    expires_at: float
    released: bool = False


@dataclass
class Namespace:
    """Everything one ``prefix`` stores. Values of shared data are kept as JSON text."""

    leases: dict[str, LeaseEntry] = field(default_factory=dict)
    last_tokens: dict[str, int] = field(default_factory=dict)
    fires: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    fire_deadlines: list[tuple[float, tuple[str, str]]] = field(default_factory=list)
    runs: list[tuple[float, int, str, str]] = field(default_factory=list)
    instances: dict[str, tuple[str, float]] = field(default_factory=dict)
    job_definitions: dict[str, str] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    triggers: dict[str, str] = field(default_factory=dict)
    run_count: int = 0

    def live_lease(self, key: str, now: float) -> LeaseEntry | None:
        """Return the lease on ``key`` unless it expired; an expired one is deleted."""
        entry = self.leases.get(key)
        if entry is not None and entry.expires_at <= now:
            del self.leases[key]
            return None
        return entry

    def next_token(self, key: str) -> int:
        """Return a fencing token greater than every token issued for ``key`` before."""
        token = self.last_tokens.get(key, 0) + 1
        self.last_tokens[key] = token
        return token

    def live_fire(self, fire_id: tuple[str, str], now: float) -> str | None:
        """Return the stored fire state (JSON) unless it expired; an expired one is deleted."""
        stored = self.fires.get(fire_id)
        if stored is None:
            return None
        if stored[1] <= now:
            del self.fires[fire_id]
            return None
        return stored[0]

    def store_fire(self, fire_id: tuple[str, str], state_json: str, expires_at: float, now: float) -> None:
        """Store a fire state until ``expires_at`` and delete fire states that expired."""
        self.fires[fire_id] = (state_json, expires_at)
        heapq.heappush(self.fire_deadlines, (expires_at, fire_id))

        # The heap gets one deadline per write, so a fire state written twice appears
        # twice. Only the deadline stored with the state decides whether it is deleted.
        while self.fire_deadlines and self.fire_deadlines[0][0] <= now:
            _, old_id = heapq.heappop(self.fire_deadlines)
            stored = self.fires.get(old_id)
            if stored is not None and stored[1] <= now:
                del self.fires[old_id]

    def add_run(self, fire_time: float, job: str, record_json: str) -> None:
        """Append a run record; the sequence number orders records of equal fire time."""
        self.run_count += 1
        self.runs.append((fire_time, self.run_count, job, record_json))

    def live_instance_ids(self, now: float) -> list[str]:
        """Return the ids of instances whose membership TTL has not run out, sorted."""
        return sorted(instance_id for instance_id, (_, expires_at) in self.instances.items() if expires_at > now)

    def drop_expired_instances(self, now: float) -> None:
        """Delete instances whose membership TTL ran out, with their job definitions."""
        expired = [instance_id for instance_id, (_, expires_at) in self.instances.items() if expires_at <= now]
        for instance_id in expired:
            del self.instances[instance_id]
            self.job_definitions.pop(instance_id, None)


class MemoryStore:
    """The shared state of one in-process "server": namespaces by prefix, a lock and a clock.

    Callers hold ``lock`` for the whole of each operation, so every operation is atomic.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.lock = threading.Lock()
        self._namespaces: dict[str, Namespace] = {}

    def namespace(self, prefix: str) -> Namespace:
        """Return the namespace of ``prefix``, creating it empty. Call with ``lock`` held."""
        found = self._namespaces.get(prefix)
        if found is None:
            found = self._namespaces[prefix] = Namespace()
        return found


_SHARED_STORES: dict[str, MemoryStore] = {}
_SHARED_STORES_LOCK = threading.Lock()


def shared_store(name: str, clock: Clock | None = None) -> MemoryStore:
    """Return the process-wide store called ``name``, creating it with ``clock``.

    With ``clock`` None an existing store keeps its own clock and a new one gets the system
    clock. Raises ``ConfigurationError`` when ``clock`` differs from the clock of an existing
    store, because deadlines measured on two clocks cannot be compared.
    """
    with _SHARED_STORES_LOCK:
        store = _SHARED_STORES.get(name)
        if store is None:
            store = _SHARED_STORES[name] = MemoryStore(clock)
        elif clock is not None and clock is not store.clock:
            raise ConfigurationError(
                f"memory store {name!r} already exists with another clock; use a new store name, "
                "pass the same clock, or call planlagt_memory.clear_shared_stores() first"
            )
        return store


def clear_shared_stores() -> None:
    """Forget every named store, so later backends with those names start empty.

    Backends created earlier keep using the stores they already have.
    """
    with _SHARED_STORES_LOCK:
        _SHARED_STORES.clear()
