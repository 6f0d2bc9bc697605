"""Journals of run events: one JSON object per line, appended by instance processes.

An appending journal writes each line with one ``write`` on an ``O_APPEND`` descriptor,
so the line is on disk before the job runs on and survives a SIGKILL. A buffered
journal keeps lines in memory and writes them at :meth:`Journal.close`, so that journaling
adds no system call to the measured path (used where no process is killed).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["Journal", "read_journals"]


class Journal:
    def __init__(self, path: Path, *, buffered: bool) -> None:
        self.path = path
        self._buffered = buffered
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._fd = None if buffered else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        if self._fd is None:
            with self._lock:
                self._lines.append(line)
            return
        os.write(self._fd, line.encode())

    def close(self) -> None:
        """Write buffered lines (if any) and close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            return
        with self._lock:
            lines, self._lines = self._lines, []
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.writelines(lines)


def read_journals(state_dir: Path) -> list[dict[str, Any]]:
    """Return every event of every ``*.journal`` file in ``state_dir``; a torn last line is skipped."""
    events: list[dict[str, Any]] = []
    for path in sorted(state_dir.glob("*.journal")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events
