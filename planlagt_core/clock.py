"""Clocks: the one place where the scheduler reads time, so tests can swap in their own.

Wall time (``time()``) decides fire times; monotonic time (``monotonic()``) measures lease
validity and timeouts, so a stepped system clock never stretches or shortens a lease.
"""

from __future__ import annotations

import threading
import time as _time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "OffsetClock", "SystemClock"]


class Clock(Protocol):
    """What the scheduler needs from a clock. All values are seconds (floats)."""

    def time(self) -> float:
        """Return the wall-clock time as Unix seconds."""

    def monotonic(self) -> float:
        """Return a monotonic time in seconds, for measuring intervals only."""

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set or ``timeout_s`` has passed; return ``event.is_set()``."""


class SystemClock:
    """The process's own clocks."""

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(max(0.0, timeout_s))


class OffsetClock(SystemClock):
    """The system clock shifted by a fixed offset, to model an instance whose clock is wrong.

    Only wall time is shifted; monotonic time is not, as on a real machine whose wall
    clock is off.
    """

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def time(self) -> float:
        return _time.time() + self.offset_s


class FakeClock:
    """A clock that moves only when told to, for tests of scheduling logic.

    ``wait`` does not block on time: it returns at once, reporting whether the event is set.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._monotonic = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``; a negative value is rejected."""
        if seconds < 0:
            raise ValueError(f"cannot move a FakeClock backwards (seconds={seconds})")
        with self._lock:
            self._now += seconds
            self._monotonic += seconds

    def set(self, now: float) -> None:
        """Set wall time to ``now`` (Unix seconds), moving monotonic time by the same amount."""
        with self._lock:
            step = now - self._now
            if step < 0:
                raise ValueError(f"cannot move a FakeClock backwards (from {self._now} to {now})")
            self._now = now
            self._monotonic += step

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.is_set()
