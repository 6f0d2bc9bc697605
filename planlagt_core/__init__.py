"""planlagt: distributed cron for Python services.

Every instance of a service registers the same jobs; at each fire time exactly one live
instance runs each job, the jobs are balanced across instances, and a run lost to a crash
is retried on another instance.
"""

from __future__ import annotations

from .backend import Backend, Capabilities, Feature, Lease, LeaseInfo, LeaseState
from .clock import Clock, FakeClock, OffsetClock, SystemClock
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
from .models import ControlState, FireState, InstanceInfo, Outcome, RunRecord, TriggerRequest
from .plugins import connect
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
    "NotSupported",
    "OffsetClock",
    "Outcome",
    "PlanlagtError",
    "PluginLoadError",
    "RunRecord",
    "SchedulerError",
    "SystemClock",
    "TriggerRequest",
    "UnknownBackend",
    "connect",
    "parse_url",
    "redact_url",
]
