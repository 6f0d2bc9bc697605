"""The machine and software versions a run measured, for the results page."""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["describe_environment"]

CLIENT_DISTRIBUTIONS = (
    "planlagt",
    "redis",
    "hiredis",
    "psycopg",
    "kazoo",
    "etcd-sdk-python",
    "APScheduler",
    "SQLAlchemy",
    "asyncpg",
)
VERSION_TIMEOUT_S = 10


def describe_environment() -> dict[str, Any]:
    """Return the CPU model, core count, memory, OS, Python, server and client versions."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "servers": _server_versions(),
        "clients": _client_versions(),
        "source": source_revision(),
    }


def source_revision() -> dict[str, Any]:
    """Return the git commit measured and how many tracked files differed from it (other work in the tree)."""
    root = Path(__file__).resolve().parents[1]
    commit = _git(root, ["rev-parse", "--short=12", "HEAD"])
    status = _git(root, ["status", "--porcelain", "--untracked-files=no"])
    changed = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit, "modified_tracked_files": len(changed)}


def _git(root: Path, arguments: list[str]) -> str | None:
    try:
        done = subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _first_line(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None and not Path(command[0]).is_file():
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    output = (done.stdout or done.stderr).strip()
    return output.splitlines()[0] if output else None


def _server_versions() -> dict[str, str | None]:
    redis_line = _first_line(["redis-server", "--version"])
    etcd_line = _first_line(["etcd", "--version"])
    return {
        "redis": _match(r"v=(\S+)", redis_line),
        "sqlite": __import__("sqlite3").sqlite_version,
        "postgres": _postgres_version(),
        "etcd": _match(r"etcd Version: (\S+)", etcd_line),
        "zookeeper": _zookeeper_version(),
    }


def _postgres_version() -> str | None:
    candidates = ["postgres", *sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))]
    for candidate in candidates:
        line = _first_line([candidate, "--version"])
        if line:
            return _match(r"(\d+(?:\.\d+)+)", line)
    return None


def _zookeeper_version() -> str | None:
    for jar in sorted(glob.glob("/usr/share/java/zookeeper-*.jar")):
        found = _match(r"zookeeper-(\d+(?:\.\d+)+)\.jar$", jar)
        if found:
            return found
    return None


def _match(pattern: str, text: str | None) -> str | None:
    if not text:
        return None
    found = re.search(pattern, text)
    return found.group(1) if found else None


def _client_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in CLIENT_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["sqlite3 module (SQLite library)"] = __import__("sqlite3").sqlite_version
    return versions


def command_line() -> str:
    """Return the command that started this run, as a user would type it."""
    return " ".join(["python -m bench", *sys.argv[1:]])
