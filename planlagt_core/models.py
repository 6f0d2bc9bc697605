"""Plain data passed between the scheduler and a backend.

Every value here is stored by backends as JSON (``to_json``/``from_json``), never pickled,
so data read from a shared server cannot run code in the reader.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ControlState",
    "FireState",
    "InstanceInfo",
    "Outcome",
    "RunRecord",
    "TriggerRequest",
]


class Outcome(str, enum.Enum):
    """How an attempt, or a fire time as a whole, ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LEASE_LOST = "lease_lost"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    MISSED = "missed"

    @property
    def is_final_for_fire_time(self) -> bool:
        """Return whether this outcome, recorded as final, closes the fire time for good."""
        return self is not Outcome.LEASE_LOST


@dataclass(frozen=True)
class RunRecord:
    """One entry of run history: an attempt, or a fire time that was skipped or missed.

    Times are Unix timestamps in seconds (floats, UTC). ``fire_time`` identifies the fire
    time; for a manual run it is the instant the trigger was requested.
    """

    job: str
    fire_time: float
    instance_id: str
    outcome: Outcome
    attempt: int = 0
    fencing_token: int | None = None
    started_at: float | None = None
    duration_s: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    reason: str | None = None
    manual: bool = False
    trigger_id: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        data = _load_object(text, cls.__name__)
        data["outcome"] = Outcome(data["outcome"])
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class FireState:
    """What the backend knows of one (job, fire time): attempts started and the final outcome.

    ``outcome`` is None while the fire time is open (not yet completed, skipped, missed or
    given up). ``attempts`` counts attempts begun through :meth:`Backend.begin_attempt`.
    """

    attempts: int = 0
    outcome: Outcome | None = None
    token: int | None = None
    instance_id: str | None = None

    def began_with(self, token: int) -> bool:
        """Return whether this state is an attempt just begun under the lease with ``token``."""
        return self.outcome is None and self.token == token

    def to_json(self) -> str:
        data = asdict(self)
        data["outcome"] = None if self.outcome is None else self.outcome.value
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> FireState:
        data = _load_object(text, cls.__name__)
        if data.get("outcome") is not None:
            data["outcome"] = Outcome(data["outcome"])
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class InstanceInfo:
    """A live scheduler instance as announced in its heartbeats.

    ``jobs_digest`` is a hash of the instance's job definitions, so instances can notice a
    definition that differs between them without reading every definition each heartbeat.
    ``last_heartbeat`` is filled in by the backend (Unix seconds, server clock where the
    backend has one).
    """

    instance_id: str
    hostname: str = ""
    pid: int = 0
    started_at: float = 0.0
    heartbeat_s: float = 0.0
    jobs_digest: str = ""
    job_count: int = 0
    last_heartbeat: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> InstanceInfo:
        return cls(**_known_fields(cls, _load_object(text, cls.__name__)))


@dataclass(frozen=True)
class TriggerRequest:
    """A request from an operator to run a job once now, on whichever instance owns it."""

    request_id: str
    job: str
    requested_at: float
    requested_by: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TriggerRequest:
        return cls(**_known_fields(cls, _load_object(text, cls.__name__)))


@dataclass(frozen=True)
class ControlState:
    """Cluster-wide control state, read by every instance once per heartbeat."""

    paused: frozenset[str] = field(default_factory=frozenset)
    triggers: tuple[TriggerRequest, ...] = ()


def _load_object(text: str | bytes, kind: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"stored {kind} is not a JSON object: {text!r:.200}")
    return data


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    # Records written by a newer planlagt may carry fields this version does not know.
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {key: value for key, value in data.items() if key in names}
