"""Starting, watching and stopping the instance processes of one scenario.

Every process is a child of the benchmark process, started with its own log file in the
scenario's state folder and stopped by its own PID: SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Fleet", "sleep_until"]

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.02


class FleetError(RuntimeError):
    """An instance process exited early or did not become ready in time."""


@dataclass
class Member:
    name: str
    process: subprocess.Popen[bytes]
    log: Any


def sleep_until(wall_time: float) -> None:
    """Sleep until ``time.time()`` reaches ``wall_time``."""
    while True:
        left = wall_time - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


class Fleet:
    """The processes of one scenario, all sharing ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.members: dict[str, Member] = {}

    def spawn(self, name: str, command: list[str]) -> Member:
        """Start ``command`` (a Python module run) as member ``name``, logging to the state folder."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        log = open(self.state_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT
        )
        member = Member(name, process, log)
        self.members[name] = member
        return member

    def spawn_module(self, name: str, module: str, config: dict[str, Any]) -> Member:
        """Write ``config`` as JSON and start ``python -m module CONFIG`` as member ``name``."""
        path = self.state_dir / f"{name}.config.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        return self.spawn(name, [sys.executable, "-m", module, str(path)])

    def wait_ready(self, names: list[str], timeout_s: float = READY_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        """Wait until every named member wrote ``NAME.ready``; return their ready data.

        Raises ``FleetError`` with the end of the log of a member that exited, or on timeout.
        """
        deadline = time.monotonic() + timeout_s
        ready: dict[str, dict[str, Any]] = {}
        while len(ready) < len(names):
            for name in names:
                if name in ready:
                    continue
                path = self.state_dir / f"{name}.ready"
                if path.exists() and path.stat().st_size > 0:
                    ready[name] = json.loads(path.read_text(encoding="utf-8"))
                elif self.members[name].process.poll() is not None:
                    raise FleetError(f"benchmark process {name} exited during start-up:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(ready))
                raise FleetError(f"benchmark processes {missing} were not ready within {timeout_s:g} s")
            time.sleep(POLL_S)
        return ready

    def kill(self, name: str) -> float:
        """SIGKILL member ``name``; return the wall time of the kill."""
        member = self.members[name]
        killed_at = time.time()
        os.kill(member.process.pid, signal.SIGKILL)
        member.process.wait()
        return killed_at

    def stop_all(self) -> None:
        """SIGTERM every member still running, wait, SIGKILL any that does not exit in time."""
        for member in self.members.values():
            if member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        for member in self.members.values():
            try:
                member.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()
            member.log.close()

    def pid(self, name: str) -> int:
        return self.members[name].process.pid

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.state_dir / f"{name}.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def samples(self, name: str) -> list[dict[str, Any]]:
        path = self.state_dir / f"{name}.samples.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
