"""Counting what the journals show for the fire times of a window.

A fire time is *completed* when a run of it ended with outcome ``succeeded``; it is
*missed* when no run of it completed, and *duplicated* when more than one did. Lateness
is the start of the first attempt behind the fire time, in real wall time.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from planlagt_core.schedule import parse_schedule

from .stats import summarize

__all__ = ["Tally", "expected_fire_times", "tally_events"]


@dataclass
class Tally:
    fire_times: int = 0
    completed: int = 0
    duplicates: int = 0
    missed: int = 0
    lateness_s: list[float] = field(default_factory=list)
    per_instance: Counter[str] = field(default_factory=Counter)
    missed_examples: list[str] = field(default_factory=list)

    def balance(self, instances: list[str]) -> dict[str, Any]:
        """Return completed runs per instance (zero for an instance that ran none) and max/min."""
        runs = {name: self.per_instance.get(name, 0) for name in sorted(instances)}
        low = min(runs.values()) if runs else 0
        ratio = round(max(runs.values()) / low, 3) if low else None
        return {"runs_per_instance": runs, "max_over_min": ratio}

    def to_dict(self) -> dict[str, Any]:
        return {
            "fire_times": self.fire_times,
            "completed": self.completed,
            "duplicates": self.duplicates,
            "missed": self.missed,
            "lateness_ms": summarize(self.lateness_s, scale=1000.0, digits=2),
            "missed_examples": self.missed_examples[:5],
        }


def expected_fire_times(jobs: dict[str, str], start: float, end: float) -> list[tuple[str, int]]:
    """Return ``(job, fire time in ms)`` for every fire time of ``jobs`` (name: schedule) in ``[start, end)``."""
    begin = datetime.fromtimestamp(start - 0.001, tz=timezone.utc)
    finish = datetime.fromtimestamp(end - 0.001, tz=timezone.utc)
    fires_of: dict[str, list[int]] = {}
    expected = []
    for name, expression in jobs.items():
        if expression not in fires_of:
            fires = parse_schedule(expression).fire_times_between(begin, finish, limit=1_000_000)
            fires_of[expression] = [round(fire.timestamp() * 1000) for fire in fires]
        expected.extend((name, fire_ms) for fire_ms in fires_of[expression])
    return expected


def tally_events(events: list[dict[str, Any]], expected: list[tuple[str, int]]) -> Tally:
    """Count completions, duplicates, misses, lateness and runs per instance for ``expected``."""
    starts: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    ends: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        key = (event["job"], event["fire_ms"])
        (starts if event["e"] == "start" else ends)[key].append(event)
    tally = Tally(fire_times=len(expected))
    for key in expected:
        first = [event["t"] for event in starts.get(key, []) if event.get("attempt", 1) == 1]
        if first:
            tally.lateness_s.append(min(first) - key[1] / 1000)
        completed = [event for event in ends.get(key, []) if event.get("outcome") == "succeeded"]
        if completed:
            tally.completed += 1
            tally.duplicates += len(completed) > 1
            tally.per_instance.update(event["instance"] for event in completed)
        else:
            tally.missed += 1
            tally.missed_examples.append(f"{key[0]}@{key[1]}")
    return tally
