"""Shared etcd leases that delete fire states (and early job definitions) once their keep time is over.

A lease per fire state would cost one extra request per write and leave thousands of
leases on the server. Instead each backend reuses one lease for every key that must live
``keep_s`` seconds, as long as the lease has at least ``keep_s`` and at most
``keep_s`` plus :func:`slack_s` left. Keys may therefore live up to that slack longer than
asked, never shorter: a lease's expiry is estimated from local monotonic time taken before
the grant was sent, and etcd counts the TTL from when it handles the grant.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetentionLeases", "slack_s"]

MIN_SLACK_S = 60.0
SLACK_FRACTION = 0.1
MAX_CACHED = 32


def slack_s(keep_s: float) -> float:
    """Return how much longer than ``keep_s`` a key may live: a tenth of it, at least a minute."""
    return max(MIN_SLACK_S, keep_s * SLACK_FRACTION)


@dataclass(frozen=True)
class _Granted:
    lease_id: int
    expires_at: float
    """Local monotonic time before which etcd does not expire the lease."""


class RetentionLeases:
    """Picks or grants the lease for keys kept ``keep_s`` seconds.

    ``grant(ttl_s)`` grants an etcd lease of a whole number of seconds and returns its id.
    Leases are never revoked here: the keys attached to them must outlive the backend.
    """

    def __init__(self, grant: Callable[[int], int]) -> None:
        self._grant = grant
        self._granted: list[_Granted] = []
        self._lock = threading.Lock()

    def lease_for(self, keep_s: float) -> int:
        """Return the id of a lease with at least ``keep_s`` and at most ``keep_s + slack_s(keep_s)`` seconds left.

        The upper bound is rounded up to whole seconds, as etcd grants TTLs.
        """
        now = time.monotonic()
        with self._lock:
            self._granted = [granted for granted in self._granted if granted.expires_at > now]
            for granted in self._granted:
                if keep_s <= granted.expires_at - now <= _ttl_for(keep_s):
                    return granted.lease_id

        ttl_s = _ttl_for(keep_s)
        sent_at = time.monotonic()
        lease_id = self._grant(ttl_s)
        with self._lock:
            self._granted.append(_Granted(lease_id, sent_at + ttl_s))
            del self._granted[:-MAX_CACHED]
        return lease_id

    def forget(self, lease_id: int) -> None:
        """Stop using a lease that etcd reported missing."""
        with self._lock:
            self._granted = [granted for granted in self._granted if granted.lease_id != lease_id]


def _ttl_for(keep_s: float) -> int:
    return math.ceil(keep_s + slack_s(keep_s))
