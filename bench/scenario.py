"""One window of planlagt instance processes running a set of jobs, shared by measurements 2, 4, 5 and 6.

The instances start, wait until each sees all the others, settle for ``settle_s`` so every
instance holds the same view of who owns which job, then run through the window. The
window starts at a whole second; the processes are stopped after a drain period so runs
of the last fire times can finish.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fleet import Fleet, sleep_until
from .journal import read_journals

__all__ = ["InstanceSettings", "WindowResult", "run_window"]

DRAIN_S = 2.0


@dataclass(frozen=True)
class InstanceSettings:
    """What every instance process of a window gets in its configuration."""

    backend_url: str
    jobs: list[dict[str, Any]]
    lease_ttl_s: float
    heartbeat_s: float
    max_workers: int = 8
    count_traffic: bool = False
    sample: bool = False
    buffered_journal: bool = True

    def config(self, instance_id: str, state_dir: Path, expect: int, offset_s: float) -> dict[str, Any]:
        return {
            "backend": self.backend_url,
            "instance_id": instance_id,
            "jobs": self.jobs,
            "lease_ttl_s": self.lease_ttl_s,
            "heartbeat_s": self.heartbeat_s,
            "max_workers": self.max_workers,
            "count_traffic": self.count_traffic,
            "sample": self.sample,
            "buffered_journal": self.buffered_journal,
            "state_dir": str(state_dir),
            "expect_instances": expect,
            "clock_offset_s": offset_s,
        }


@dataclass
class WindowResult:
    start: float
    end: float
    instances: list[str]
    events: list[dict[str, Any]]
    ready: dict[str, dict[str, Any]]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def run_window(
    state_dir: Path,
    settings: InstanceSettings,
    *,
    instances: int,
    duration_s: float,
    settle_s: float,
    offsets_s: list[float] | None = None,
    during: Callable[[Fleet, float, float, dict[str, Any]], None] | None = None,
    drain_s: float = DRAIN_S,
) -> WindowResult:
    """Run ``instances`` processes through one window of ``duration_s`` seconds.

    ``during(fleet, start, end, extra)`` runs in this process while the window is open
    and returns once it has done its work (at the latest at ``end``); it may kill
    instances and store figures in ``extra``.
    """
    names = [f"i{index + 1}" for index in range(instances)]
    offsets = offsets_s or [0.0] * instances
    extra: dict[str, Any] = {}
    with Fleet(state_dir) as fleet:
        for name, offset in zip(names, offsets, strict=True):
            config = settings.config(name, state_dir, instances, offset)
            fleet.spawn_module(name, "bench.instance", config)
        ready = fleet.wait_ready(names)
        start = float(int(time.time() + settle_s) + 1)
        end = start + duration_s
        if during is not None:
            during(fleet, start, end, extra)
        sleep_until(end + drain_s)
    samples = {name: fleet.samples(name) for name in names}
    return WindowResult(start, end, names, read_journals(state_dir), ready, samples, extra)


def progress(message: str) -> None:
    """Print a progress line to standard error (the tables go to standard output)."""
    print(message, file=sys.stderr, flush=True)
