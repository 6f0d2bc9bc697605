"""An example planlagt backend plugin: coordination on one host through a directory of JSON files.

URL: ``fcntl:///absolute/path/to/directory``. Options: ``prefix`` (isolates applications
sharing one directory; default ``planlagt``) and ``lock_timeout`` (seconds an update waits
for another process's lock; default 5). Only the standard library is needed, on a POSIX
system (``fcntl.flock``).

planlagt finds this backend through the ``fcntl`` entry point in the group
``planlagt.backends`` that this distribution's ``pyproject.toml`` declares.
"""

from __future__ import annotations

from .backend import DEFAULT_LOCK_TIMEOUT_S, DEFAULT_PREFIX, FcntlBackend, state_directory

__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "DEFAULT_PREFIX", "FcntlBackend", "state_directory"]
