"""The node layout of one prefix, and how keys become node names.

Every name a caller chooses (key, job, instance id, request id, the prefix) becomes one
path component through :func:`encode_name`, so ``/`` never nests and two names never share
a node.
"""

from __future__ import annotations

from planlagt_core.backend import fire_time_key

__all__ = ["RUN_NODE_OFFSET_MS", "NodeLayout", "decode_name", "encode_name", "parse_run_node", "run_node_prefix"]

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

RUN_NODE_OFFSET_MS = 10**17
"""Added to a fire time in milliseconds so run node names of fire times before 1970 sort too."""

RUN_NODE_TIME_DIGITS = 18
SEQUENCE_DIGITS = 10
"""Digits ZooKeeper appends to the name of a sequential node."""


def encode_name(text: str) -> str:
    """Return ``text`` as a node name: UTF-8, with every byte outside ``[A-Za-z0-9_-]`` as ``%XX``.

    Escaping ``.`` keeps the names ``.`` and ``..`` (which ZooKeeper rejects) out, and
    escaping ``%`` keeps the encoding one-to-one.
    """
    return "".join(chr(byte) if chr(byte) in _SAFE else f"%{byte:02X}" for byte in text.encode("utf-8"))


def decode_name(name: str) -> str:
    """Invert :func:`encode_name`."""
    raw = bytearray()
    index = 0
    while index < len(name):
        if name[index] == "%":
            raw.append(int(name[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(name[index]))
            index += 1
    return raw.decode("utf-8")


def run_node_prefix(fire_time: float) -> str:
    """Return the name prefix of a run record's sequential node: the fire time, sortable as text."""
    return f"{round(fire_time * 1000) + RUN_NODE_OFFSET_MS:0{RUN_NODE_TIME_DIGITS}d}-"


def parse_run_node(name: str) -> tuple[int, int]:
    """Return ``(fire time in ms, sequence number)`` from a run record node's name.

    Raises ``ValueError`` for a name that :func:`run_node_prefix` did not make.
    """
    time_part, dash, sequence = name.partition("-")
    if not dash or len(time_part) != RUN_NODE_TIME_DIGITS or len(sequence) != SEQUENCE_DIGITS:
        raise ValueError(f"{name!r} is not a run record node name")
    return int(time_part) - RUN_NODE_OFFSET_MS, int(sequence)


class NodeLayout:
    """Paths of the nodes the backend stores under one chroot and prefix (the root ``R``).

    ===========================  ==========  ===============================================
    path                         kind        data
    ===========================  ==========  ===============================================
    ``R/clock``                  persistent  empty; written to read the server's time
    ``R/leases/KEY``             persistent  ``{}``, or the kept lease after a release
                                             with ``keep_s`` (token, holder, ``keep_ms``)
    ``R/leases/KEY/OWNER``       ephemeral   the held lease (holder, ``ttl_ms``); its
                                             ``czxid`` is the fencing token
    ``R/fire/JOB/MS``            persistent  FireState and ``keep_ms``; MS is the fire
                                             time in integer milliseconds
    ``R/runs/JOB/TIME-SEQ``      persistent  RunRecord; sequential, TIME sortable
    ``R/members/INSTANCE``       persistent  InstanceInfo and ``ttl_ms``
    ``R/jobs/INSTANCE``          persistent  job name to definition
    ``R/paused/JOB``             persistent  empty
    ``R/triggers/REQUEST``       persistent  TriggerRequest
    ===========================  ==========  ===============================================

    Expiry of leases, kept leases, memberships and fire states is the node's ``mtime``
    (set by the ZooKeeper leader's clock) plus the stored milliseconds.
    """

    def __init__(self, chroot: str, prefix: str) -> None:
        self.root = f"{chroot}/{encode_name(prefix)}"
        self.clock = f"{self.root}/clock"
        self.leases = f"{self.root}/leases"
        self.fire_root = f"{self.root}/fire"
        self.runs_root = f"{self.root}/runs"
        self.members = f"{self.root}/members"
        self.jobs_root = f"{self.root}/jobs"
        self.paused_root = f"{self.root}/paused"
        self.triggers_root = f"{self.root}/triggers"

    @property
    def directories(self) -> tuple[str, ...]:
        """The persistent parents created on first use, the clock node last."""
        return (
            self.leases,
            self.fire_root,
            self.runs_root,
            self.members,
            self.jobs_root,
            self.paused_root,
            self.triggers_root,
        )

    def lease(self, key: str) -> str:
        return f"{self.leases}/{encode_name(key)}"

    def holder(self, key: str, owner: str) -> str:
        return f"{self.lease(key)}/{owner}"

    def fire_job(self, job: str) -> str:
        return f"{self.fire_root}/{encode_name(job)}"

    def fire(self, job: str, fire_time: float) -> str:
        return f"{self.fire_job(job)}/{fire_time_key(fire_time)}"

    def runs(self, job: str) -> str:
        return f"{self.runs_root}/{encode_name(job)}"

    def run_prefix(self, job: str, fire_time: float) -> str:
        return f"{self.runs(job)}/{run_node_prefix(fire_time)}"

    def member(self, instance_id: str) -> str:
        return f"{self.members}/{encode_name(instance_id)}"

    def jobs(self, instance_id: str) -> str:
        return f"{self.jobs_root}/{encode_name(instance_id)}"

    def paused(self, job: str) -> str:
        return f"{self.paused_root}/{encode_name(job)}"

    def trigger(self, request_id: str) -> str:
        return f"{self.triggers_root}/{encode_name(request_id)}"
