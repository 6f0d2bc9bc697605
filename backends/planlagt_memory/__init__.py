"""planlagt's in-process backend, ``memory://``: for tests and single-process programs.

``memory://`` gives a private store. ``memory://NAME`` gives the store called NAME, which
every backend of this process built with that name shares, and ``?prefix=`` isolates
applications inside one store. Nothing is shared with other processes and nothing survives a restart.
"""

from __future__ import annotations

from .backend import MemoryBackend
from .store import MemoryStore, clear_shared_stores

__all__ = ["MemoryBackend", "MemoryStore", "clear_shared_stores"]
