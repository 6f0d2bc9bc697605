"""planlagt: distributed cron for Python services.

Every instance of a service registers the same jobs; at each fire time exactly one live
instance runs each job, the jobs are balanced across instances, and a run lost to a crash
is retried on another instance.
"""

from __future__ import annotations

from .backend import Backend, Capabilities, Feature, Lease, LeaseInfo, LeaseState
from .clock import Clock, FakeClock, OffsetClock, SystemClock
from .context import RunContext
from .errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    InvalidJob,
    InvalidSchedule,
    InvalidURL,
    LeaseLost,
    NotSupported,
    PlanlagtError,
    PluginLoadError,
    SchedulerError,
    UnknownBackend,
)
from .listeners import Listener
from .models import ControlState, FireState, InstanceInfo, Outcome, RunRecord, TriggerRequest
from .operator import Operator
from .plugins import connect
from .schedule import Schedule, parse_schedule
from .scheduler import Scheduler
from .url import BackendURL, parse_url, redact_url

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendURL",
    "BackendUnavailable",
    "Capabilities",
    "Clock",
    "ConfigurationError",
    "ControlState",
    "FakeClock",
    "Feature",
    "FireState",
    "InstanceInfo",
    "InvalidJob",
    "InvalidSchedule",
    "InvalidURL",
    "Lease",
    "LeaseInfo",
    "LeaseLost",
    "LeaseState",
    "Listener",
    "NotSupported",
    "OffsetClock",
    "Operator",
    "Outcome",
    "PlanlagtError",
    "PluginLoadError",
    "RunContext",
    "RunRecord",
    "Schedule",
    "Scheduler",
    "SchedulerError",
    "SystemClock",
    "TriggerRequest",
    "UnknownBackend",
    "connect",
    "parse_schedule",
    "parse_url",
    "redact_url",
]
