"""The etcd key layout of one prefix. Every key starts with ``{prefix}:``.

Names (lease keys, job names, instance ids, request ids) are percent-encoded with
``urllib.parse.quote(name, safe="")``, so they never contain ``/`` or ``:``. A prefix may
not contain ``:`` either, so the first ``:`` of a key ends its prefix, and two different
prefixes never reach the same key, even where one starts with the other.
"""

from __future__ import annotations

from urllib.parse import quote

from planlagt_core.backend import fire_time_key

__all__ = ["KeyLayout", "range_end", "sortable_ms"]

SORTABLE_DIGITS = 20
NEGATIVE_OFFSET_MS = 10**SORTABLE_DIGITS


def range_end(start: bytes) -> bytes:
    """Return the first key after every key that starts with ``start`` (etcd's ``range_end``)."""
    end = bytearray(start)
    for index in reversed(range(len(end))):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    return b"\x00"


def sortable_ms(fire_time: float) -> str:
    """Return a fire time as text whose byte order is the order of the instants (millisecond steps).

    Non-negative instants are ``p`` and 20 digits of milliseconds. Negative ones are ``n``
    and 20 digits of ``10**20`` minus their magnitude, so they sort before every
    non-negative one, and among themselves by value.
    """
    ms = round(fire_time * 1000)
    if ms >= 0:
        return f"p{ms:0{SORTABLE_DIGITS}d}"
    return f"n{NEGATIVE_OFFSET_MS + ms:0{SORTABLE_DIGITS}d}"


def ms_from_sortable(text: str) -> int:
    """Invert :func:`sortable_ms`: return the milliseconds encoded in ``text``."""
    digits = int(text[1:])
    return digits if text[0] == "p" else digits - NEGATIVE_OFFSET_MS


class KeyLayout:
    """Names of the etcd keys the backend stores under one prefix (``P`` below).

    ====================================  ===============================================
    key                                   value and lifetime
    ====================================  ===============================================
    ``P:lease/KEY``                       lease JSON (holder, owner); attached to the
                                          etcd lease of its holder. Its create revision
                                          is the fencing token.
    ``P:fire/JOB/MS``                     FireState JSON; attached to a shared retention
                                          lease of at least the keep time. MS is the fire
                                          time in integer milliseconds.
    ``P:run/JOB/T/ID``                    RunRecord JSON of one job; T is
                                          :func:`sortable_ms`, ID orders records of one
                                          fire time. No lease: kept until trimmed.
    ``P:run-all/T/JOB/ID``                the same record, in the history of all jobs
    ``P:member/INSTANCE``                 InstanceInfo JSON and last heartbeat; attached
                                          to the instance's membership lease
    ``P:jobs/INSTANCE``                   job name to definition JSON; attached to the
                                          membership lease (a retention lease before the
                                          instance's first heartbeat)
    ``P:paused/JOB``                      the job name; present while the job is paused
    ``P:trigger/REQUEST``                 TriggerRequest JSON
    ====================================  ===============================================
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.members = self._kind("member")
        self.jobs_prefix = self._kind("jobs")
        self.paused_prefix = self._kind("paused")
        self.triggers = self._kind("trigger")
        self.all_runs = self._kind("run-all")
        self.job_runs_prefix = self._kind("run")

    def _kind(self, kind: str) -> bytes:
        return f"{self.prefix}:{kind}/".encode()

    def lease(self, key: str) -> bytes:
        return self._kind("lease") + _name(key)

    def fire(self, job: str, fire_time: float) -> bytes:
        return self._kind("fire") + _name(job) + b"/" + fire_time_key(fire_time).encode()

    def job_runs(self, job: str) -> bytes:
        """Return the prefix of the run history of ``job``."""
        return self.job_runs_prefix + _name(job) + b"/"

    def job_run(self, job: str, fire_time: float, record_id: str) -> bytes:
        return self.job_runs(job) + f"{sortable_ms(fire_time)}/{record_id}".encode()

    def all_run(self, job: str, fire_time: float, record_id: str) -> bytes:
        return self.all_runs + f"{sortable_ms(fire_time)}/".encode() + _name(job) + f"/{record_id}".encode()

    def all_run_for(self, job_run_key: bytes) -> bytes:
        """Return the history-of-all-jobs key that pairs with a per-job run key."""
        job, sortable, record_id = job_run_key[len(self.job_runs_prefix) :].split(b"/")
        return self.all_runs + sortable + b"/" + job + b"/" + record_id

    def member(self, instance_id: str) -> bytes:
        return self.members + _name(instance_id)

    def jobs(self, instance_id: str) -> bytes:
        return self.jobs_prefix + _name(instance_id)

    def paused(self, job: str) -> bytes:
        return self.paused_prefix + _name(job)

    def trigger(self, request_id: str) -> bytes:
        return self.triggers + _name(request_id)


def _name(name: str) -> bytes:
    return quote(name, safe="").encode()
