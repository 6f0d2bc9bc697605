"""Instance membership, job ownership and control state, refreshed once per heartbeat.

A heartbeat costs a constant number of backend calls, whatever the number of jobs: one
``heartbeat`` and one ``read_control``. The job registry is read only when the live
instances announce different job sets (their ``jobs_digest`` differs), which happens
during a rolling deploy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .assignment import assign
from .backend import Backend, Feature
from .errors import BackendUnavailable, NotSupported
from .models import ControlState, InstanceInfo

__all__ = ["Membership", "View"]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """One heartbeat's picture of the cluster."""

    live: tuple[str, ...] = ()
    owned: frozenset[str] = frozenset()
    control: ControlState = field(default_factory=ControlState)
    candidates: Mapping[str, tuple[str, ...]] | None = None
    owners: Mapping[str, str] = field(default_factory=dict)

    def owner(self, job: str) -> str | None:
        """Return the instance that owns ``job`` in this view (jobs of this instance only)."""
        return self.owners.get(job)


class Membership:
    """Announces this instance and computes which jobs it owns."""

    def __init__(self, backend: Backend, info: InstanceInfo, ttl_s: float, weights: Mapping[str, float]) -> None:
        self._backend = backend
        self.info = info
        self._ttl_s = ttl_s
        self._weights = dict(weights)
        self._view = View()
        self._digests: frozenset[str] = frozenset()
        self._candidates: dict[str, tuple[str, ...]] | None = None
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def view(self) -> View:
        return self._view

    def beat(self) -> tuple[View, frozenset[str]]:
        """Send one heartbeat; return the new view and the jobs this instance just gained.

        Raises ``BackendUnavailable`` when the backend cannot be reached; the previous view
        stays in place.
        """
        members = self._backend.heartbeat(self.info, self._ttl_s)
        control = self._read_control()
        live = tuple(member.instance_id for member in members)
        self._refresh_candidates(members)
        with self._lock:
            old = self._view
            if live == old.live and self._candidates == old.candidates:
                owners, owned = old.owners, old.owned
            else:
                self._note_starts(members)
                owners = assign(self._weights, live, self._candidates)
                owned = frozenset(name for name, owner in owners.items() if owner == self.info.instance_id)
                self._log_change(old, live, owned)
            self._view = View(live=live, owned=owned, control=control, candidates=self._candidates, owners=owners)
        return self._view, owned - old.owned

    def served_since(self, job: str) -> float | None:
        """Return the earliest start (Unix seconds) of the instances seen live with ``job``.

        Start times are as each instance announced them. Before that moment no instance
        seen by this one had the job, so nothing may have been there to claim its fire
        times. None until a heartbeat listed an instance with the job.
        """
        with self._lock:
            return self._since.get(job)

    def _note_starts(self, members: list[InstanceInfo]) -> None:
        """Lower each job's earliest known start with the live members that have the job."""
        starts = {member.instance_id: member.started_at for member in members if member.started_at > 0}
        if not starts:
            return
        everyone = min(starts.values())
        for job in self._weights:
            if self._candidates is None:
                earliest = everyone
            else:
                earliest = min((starts[i] for i in self._candidates.get(job, ()) if i in starts), default=None)
                if earliest is None:
                    continue
            known = self._since.get(job)
            if known is None or earliest < known:
                self._since[job] = earliest

    def leave(self) -> None:
        try:
            self._backend.leave(self.info.instance_id)
        except BackendUnavailable as exc:
            LOG.warning("Could not leave the membership on shutdown; it expires by its TTL: %s", exc)

    def _read_control(self) -> ControlState:
        if not self._backend.capabilities.supports(Feature.CONTROL):
            return ControlState()
        return self._backend.read_control()

    def _log_change(self, old: View, live: tuple[str, ...], owned: frozenset[str]) -> None:
        joined = sorted(set(live) - set(old.live))
        left = sorted(set(old.live) - set(live))
        if old.live:
            LOG.info(
                "Membership changed: %d live instances (joined: %s; left: %s); instance %s now owns %d of %d jobs",
                len(live), ", ".join(joined) or "none", ", ".join(left) or "none",
                self.info.instance_id, len(owned), len(self._weights),
            )  # fmt: skip

    def _refresh_candidates(self, members: list[InstanceInfo]) -> None:
        """Read the job registry when live instances announce different job sets."""
        digests = frozenset(member.jobs_digest for member in members)
        if digests == self._digests:
            return
        self._digests = digests
        if len(digests) <= 1 or not self._backend.capabilities.supports(Feature.JOB_REGISTRY):
            self._candidates = None
            return
        try:
            registry = self._backend.list_job_definitions()
        except NotSupported:
            self._candidates = None
            return
        self._candidates = _candidates(registry, [member.instance_id for member in members])
        _warn_on_differences(registry, self.info.instance_id)


def _candidates(registry: Mapping[str, Mapping[str, Any]], live: list[str]) -> dict[str, tuple[str, ...]]:
    """Return, per job name, the live instances that announce that job."""
    candidates: dict[str, list[str]] = {}
    for instance_id in live:
        for name in registry.get(instance_id, {}):
            candidates.setdefault(name, []).append(instance_id)
    return {name: tuple(ids) for name, ids in candidates.items()}


def _warn_on_differences(registry: Mapping[str, Mapping[str, Any]], me: str) -> None:
    mine = registry.get(me, {})
    for other, definitions in sorted(registry.items()):
        if other == me:
            continue
        for name, definition in sorted(definitions.items()):
            if name in mine and mine[name] != definition:
                LOG.warning(
                    "Job %r is defined differently on instance %s (%s) and instance %s (%s); "
                    "each fire time still runs once, with the definition of the instance that claims it",
                    name, me, _summary(mine[name]), other, _summary(definition),
                )  # fmt: skip


def _summary(definition: Mapping[str, Any]) -> str:
    return f"schedule {definition.get('schedule')!r} in {definition.get('timezone')}, policy {definition.get('policy')}"
