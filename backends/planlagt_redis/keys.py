"""The Redis key layout of one prefix. Every key starts with ``{prefix}:``."""

from __future__ import annotations

from planlagt_core.backend import fire_time_key

__all__ = ["KeyLayout"]


class KeyLayout:
    """Names of the Redis keys that the backend stores under one prefix.

    ============================  ===========  ===============================================
    key                           type         contents
    ============================  ===========  ===============================================
    ``P:lease:KEY``               string       lease JSON (owner, token, holder), TTL = lease
    ``P:token:KEY``               string       last fencing token issued for KEY, no TTL
    ``P:fire:JOB:MS``             string       FireState JSON, TTL = keep time; MS is the
                                               fire time in integer milliseconds
    ``P:runs:JOB``                sorted set   run records of JOB, scored by fire time
    ``P:runs``                    sorted set   the same members for all jobs
    ``P:run-jobs``                set          job names that have run records
    ``P:run-seq``                 string       counter ordering records of equal fire time
    ``P:members``                 sorted set   live instance ids, scored by expiry (ms)
    ``P:instances``               hash         instance id to InstanceInfo JSON and heartbeat
    ``P:jobs:INSTANCE``           hash         job name to definition JSON, per instance
    ``P:paused``                  set          paused job names
    ``P:triggers``                hash         request id to TriggerRequest JSON
    ============================  ===========  ===============================================
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.all_runs = f"{prefix}:runs"
        self.run_jobs = f"{prefix}:run-jobs"
        self.run_seq = f"{prefix}:run-seq"
        self.members = f"{prefix}:members"
        self.instances = f"{prefix}:instances"
        self.jobs_prefix = f"{prefix}:jobs:"
        self.paused = f"{prefix}:paused"
        self.triggers = f"{prefix}:triggers"

    def lease(self, key: str) -> str:
        return f"{self.prefix}:lease:{key}"

    def token(self, key: str) -> str:
        return f"{self.prefix}:token:{key}"

    def fire(self, job: str, fire_time: float) -> str:
        return f"{self.prefix}:fire:{job}:{fire_time_key(fire_time)}"

    def runs(self, job: str) -> str:
        return f"{self.prefix}:runs:{job}"

    def jobs(self, instance_id: str) -> str:
        return f"{self.jobs_prefix}{instance_id}"
