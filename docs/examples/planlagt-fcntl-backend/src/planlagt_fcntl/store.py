"""The files of one prefix, and the lock that makes each update of them atomic.

Each prefix has a folder in the backend's directory (``NAME`` is the prefix, encoded by
:func:`file_name`)::

    NAME/lock             empty; an exclusive flock on it makes each update atomic
    NAME/leases.json      leases, and the last fencing token of every key
    NAME/members.json     live instances and the job definitions they announced
    NAME/control.json     paused jobs and trigger requests
    NAME/fires/JOB.json   the fire states of one job
    NAME/runs.jsonl       run history, one JSON record per line, oldest first

An update (:meth:`PrefixStore.updating`) takes the lock, reads the documents the backend
asks for, lets it change them, replaces each changed document, appends new run records,
and only then releases the lock. Every update rewrites whole documents, so the state is
split into small ones: a lease operation rewrites a few hundred bytes, not the run history.
Reads take no lock.

This module is the one place where ``OSError`` becomes a planlagt error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from planlagt_core.errors import BackendError, BackendUnavailable

__all__ = ["PrefixStore", "Update", "file_name"]

LOG = logging.getLogger(__name__)

Document = dict[str, Any]

RUNS_FILE = "runs.jsonl"

MAX_READABLE_NAME_BYTES = 120
"""Longest encoded name used as it is; longer names are hashed (file names end at 255 bytes)."""

FIRST_LOCK_PAUSE_S = 0.0001
MAX_LOCK_PAUSE_S = 0.001
"""Pauses between two tries to take a busy file lock, doubling from the first to the maximum."""

_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def file_name(text: str) -> str:
    """Return a file name for a prefix or job name: a readable encoding, or a hash for long names.

    ``a-z``, ``0-9``, ``-`` and ``_`` stay as they are and every other byte becomes
    ``%XX``, so the name never contains ``/`` or starts with a dot. Upper-case letters are
    encoded too, so names that differ only in case stay apart on a case-insensitive
    filesystem (the default on macOS). A name longer than ``MAX_READABLE_NAME_BYTES``
    becomes ``~`` and its SHA-256, which no encoded name can equal.
    """
    encoded = "".join(chr(byte) if chr(byte) in _NAME_CHARACTERS else f"%{byte:02X}" for byte in text.encode("utf-8"))
    if len(encoded) <= MAX_READABLE_NAME_BYTES:
        return encoded
    return "~" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# A flock belongs to an open file description, which a child made by os.fork() shares with
# its parent. If one thread held the lock while another thread forked, the child's copy of
# the descriptor would keep the prefix locked after the parent released it, until the child
# exits. So the descriptors are tracked, and the child closes its copies at once. The
# child also drops the parent's thread locks, which a parent thread may have held.
_lock_fds: set[int] = set()
_thread_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def _forget_parent_locks() -> None:
    for fd in _lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()
    _thread_locks.clear()
    _guard.release()


os.register_at_fork(before=_guard.acquire, after_in_parent=_guard.release, after_in_child=_forget_parent_locks)


class Update:
    """The documents read during one update, and what to write when it ends.

    Only :meth:`PrefixStore.updating` creates one; it is valid inside that block.
    """

    def __init__(self, store: PrefixStore) -> None:
        self._store = store
        self._documents: dict[str, tuple[str | None, Document]] = {}
        self._new_runs: list[Document] = []
        self._replaced_runs: list[Document] | None = None

    def document(self, name: str, empty: Callable[[], Document]) -> Document:
        """Return the document ``name`` (a path inside the prefix folder), or ``empty()`` if there is none.

        Changes to the returned object are written when the update ends.
        """
        if name not in self._documents:
            text = self._store.read_text(name)
            self._documents[name] = (text, empty() if text is None else self._store.parse(name, text))
        return self._documents[name][1]

    def append_run(self, record: Document) -> None:
        """Append ``record`` to the run history when the update ends, after the documents are written."""
        self._new_runs.append(record)

    def runs(self) -> list[Document]:
        """Return the run history, read under this update's lock."""
        return self._store.read_runs()

    def replace_runs(self, records: list[Document]) -> None:
        """Replace the whole run history with ``records`` when the update ends."""
        self._replaced_runs = records

    def commit(self) -> None:
        """Write the documents that changed, then the run history (called when the update ends)."""
        changed = {}
        for name, (before, document) in self._documents.items():
            text = _dump(document)
            if text != before:
                changed[name] = text
        self._store.replace_documents(changed)
        if self._replaced_runs is not None:
            self._store.replace_runs(self._replaced_runs)
        if self._new_runs:
            self._store.append_runs(self._new_runs)


class PrefixStore:
    """The files of ``prefix`` in ``directory``; folders are created on first use.

    ``lock_timeout_s`` is how long an update waits for another caller's lock before it
    raises ``BackendUnavailable``. ``url`` is the redacted backend URL, for messages.
    Safe to use from several threads and processes at once.
    """

    def __init__(self, directory: str, prefix: str, *, lock_timeout_s: float, url: str) -> None:
        self.folder = os.path.join(directory, file_name(prefix))
        self.lock_path = os.path.join(self.folder, "lock")
        self.lock_timeout_s = lock_timeout_s
        self.url = url
        self.closed = False

    def read(self, name: str, empty: Callable[[], Document]) -> Document:
        """Return the document ``name`` as last written, without taking the lock.

        No lock is needed: ``os.replace`` swaps a whole file in one step, so a reader sees
        either the document before an update or after it, never a mix.
        """
        with self._translated_errors("read"):
            self._check_open()
            text = self.read_text(name)
            return empty() if text is None else self.parse(name, text)

    def read_runs(self) -> list[Document]:
        """Return the run history, oldest first, without taking the lock.

        A line that is not valid JSON is skipped. It is either a record still being
        appended or a record that a crash cut short.
        """
        with self._translated_errors("read"):
            self._check_open()
            try:
                with open(os.path.join(self.folder, RUNS_FILE), "rb") as file:
                    lines = file.read().splitlines()
            except FileNotFoundError:
                return []
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    @contextlib.contextmanager
    def updating(self) -> Iterator[Update]:
        """Yield an :class:`Update` under the exclusive lock, and write what it changed when the block returns.

        An exception in the block writes nothing. Documents that did not change are not
        written, so callers that poll a held key do not each wait for a disk sync.
        """
        with self._translated_errors("update"):
            self._check_open()
            deadline = time.monotonic() + self.lock_timeout_s
            with self._turn_in_process(deadline):
                fd = self._open_lock_file()
                try:
                    self._lock(fd, deadline)
                    update = Update(self)
                    yield update
                    update.commit()
                finally:
                    _unlock_and_close(fd)

    def close(self) -> None:
        """Make later operations raise ``BackendError``. No file stays open between operations."""
        self.closed = True

    # -- Reading and writing files (called under the lock, except read_text) ---------

    def read_text(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.folder, name), encoding="utf-8") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def parse(self, name: str, text: str) -> Document:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise self._invalid(name, f"it is not valid JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise self._invalid(name, "it is not a JSON object")
        return document

    def replace_documents(self, texts: dict[str, str]) -> None:
        # Syncing each new file before the replace means a crash leaves the old document or
        # the new one, never an empty file. Syncing the folders after it makes the replace
        # itself durable, so a fencing token is never issued twice after a power loss.
        folders = set()
        for name, text in texts.items():
            path = os.path.join(self.folder, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_synced(f"{path}.tmp", text.encode("utf-8"))
            os.replace(f"{path}.tmp", path)
            folders.add(os.path.dirname(path))
        for folder in folders:
            _sync_folder(folder)

    def append_runs(self, records: list[Document]) -> None:
        # The history is not synced: it is a record for people, and the fire state, which
        # is synced, decides whether a fire time was completed. If a crash cut the last
        # line short, the new records start on a line of their own.
        data = b"".join(_dump(record).encode("utf-8") + b"\n" for record in records)
        with open(os.path.join(self.folder, RUNS_FILE), "a+b") as file:
            size = os.fstat(file.fileno()).st_size
            if size and os.pread(file.fileno(), 1, size - 1) != b"\n":
                data = b"\n" + data
            file.write(data)

    def replace_runs(self, records: list[Document]) -> None:
        path = os.path.join(self.folder, RUNS_FILE)
        _write_synced(f"{path}.tmp", b"".join(_dump(record).encode("utf-8") + b"\n" for record in records))
        os.replace(f"{path}.tmp", path)

    # -- The lock ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise BackendError(f"backend {self.url} is closed; create a new backend", backend=self.url)

    @contextlib.contextmanager
    def _turn_in_process(self, deadline: float) -> Iterator[None]:
        # The threads of one process queue on a threading.Lock before they try the file
        # lock. It blocks with a timeout and wakes a waiter as soon as it is free, so at
        # most one thread per process polls the file lock (see _lock), which keeps a busy
        # process's threads from crowding out other processes.
        with _guard:
            thread_lock = _thread_locks.setdefault(self.lock_path, threading.Lock())
        if not thread_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._lock_timed_out("another thread of this process")
        try:
            yield
        finally:
            thread_lock.release()

    def _open_lock_file(self) -> int:
        try:
            return _open_tracked(self.lock_path)
        except FileNotFoundError:
            os.makedirs(self.folder, exist_ok=True)
            LOG.info("Created folder %s for the planlagt state of %s", self.folder, self.url)
            return _open_tracked(self.lock_path)

    def _lock(self, fd: int, deadline: float) -> None:
        # A blocking flock() has no timeout: a holder stopped with SIGSTOP would hang every
        # other caller until SIGCONT. Polling lets the caller give up and report the backend
        # as unavailable, so the scheduler treats its leases as at risk, not as held.
        pause = FIRST_LOCK_PAUSE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise self._lock_timed_out("another process (it may be stopped or hung)")
            time.sleep(pause)
            pause = min(2 * pause, MAX_LOCK_PAUSE_S)

    def _lock_timed_out(self, holder: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"timed out after {self.lock_timeout_s} s waiting for the lock on {self.lock_path}, "
            f"held by {holder}; nothing was changed. Raise the backend URL's lock_timeout option "
            "if updates are slow",
            backend=self.url,
        )

    # -- Errors -----------------------------------------------------------------------

    def _invalid(self, name: str, reason: str) -> BackendError:
        return BackendError(
            f"{os.path.join(self.folder, name)} cannot be used: {reason}; another program may have written it",
            backend=self.url,
        )

    @contextlib.contextmanager
    def _translated_errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            # Whether a failed write took effect is unknown (a replace may have happened
            # before a sync failed), so this is "unavailable", never "lost".
            raise BackendUnavailable(
                f"{operation} of the state in {self.folder} failed: {exc}; check that the directory "
                "is on a local filesystem, writable and not full (the outcome is unknown)",
                backend=self.url,
            ) from exc


def _dump(document: Document) -> str:
    # Sorted keys make the text a function of the data, so "unchanged" is a string compare.
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _sync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_tracked(path: str) -> int:
    # Each update opens the lock file anew, so no descriptor outlives the update. The
    # descriptor is tracked from before its flock until after its unlock (see above).
    with _guard:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        _lock_fds.add(fd)
    return fd


def _unlock_and_close(fd: int) -> None:
    # Unlocking before the descriptor leaves _lock_fds means a fork in between cannot hand
    # the child a descriptor that still holds the lock.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with _guard:
        _lock_fds.discard(fd)
        os.close(fd)
