"""The run context: what a running job knows about its run and its lease."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from .backend import LeaseState

__all__ = ["RunContext"]

LOG = logging.getLogger(__name__)


class RunContext:
    """Passed to a job that takes one argument.

    ``lease_state`` is ``held``, ``at_risk`` (the backend cannot be reached; the lease may
    still be held until its TTL runs out) or ``lost`` (another instance may now run this
    fire time; a completion will not be recorded). ``stop_requested`` turns true when the
    run passed its maximum run time, lost its lease, or the scheduler is shutting down
    past its grace period. Every change sets the state and wakes :meth:`wait`; callbacks
    given to :meth:`on_change` run on the scheduler's heartbeat thread and must not block.
    """

    def __init__(
        self,
        *,
        job: str,
        fire_time: datetime,
        attempt: int,
        fencing_token: int,
        instance_id: str,
        manual: bool = False,
    ) -> None:
        self.job = job
        self.fire_time = fire_time
        self.attempt = attempt
        self.fencing_token = fencing_token
        self.instance_id = instance_id
        self.manual = manual
        self._state = LeaseState.HELD
        self._stop_reason: str | None = None
        self._changed = threading.Condition()
        self._version = 0
        self._callbacks: list[Callable[[RunContext], None]] = []

    def __repr__(self) -> str:
        return (
            f"<RunContext job={self.job!r} fire_time={self.fire_time.isoformat()} attempt={self.attempt} "
            f"token={self.fencing_token} lease={self._state.value}>"
        )

    @property
    def lease_state(self) -> LeaseState:
        return self._state

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the lease state changes or a stop is requested; return False on timeout."""
        with self._changed:
            version = self._version
            return self._changed.wait_for(lambda: self._version != version, timeout_s)

    def on_change(self, callback: Callable[[RunContext], None]) -> None:
        """Call ``callback(context)`` after every change of lease state or stop request."""
        self._callbacks.append(callback)

    def set_lease_state(self, state: LeaseState) -> None:
        """Record a new lease state (called by the scheduler). Lost is final."""
        with self._changed:
            if state is self._state or self._state is LeaseState.LOST:
                return
            self._state = state
            if state is LeaseState.LOST and self._stop_reason is None:
                self._stop_reason = "lease lost"
        self._notify()

    def request_stop(self, reason: str) -> None:
        """Ask the job to stop (called by the scheduler). The first reason is kept."""
        with self._changed:
            if self._stop_reason is not None:
                return
            self._stop_reason = reason
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()
        for callback in list(self._callbacks):
            try:
                callback(self)
            except Exception:
                LOG.exception("Run context callback failed for job %r attempt %d", self.job, self.attempt)
