"""Declared capabilities: well-formed data, and optional features that are absent raise ``NotSupported``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from planlagt_conformance.cases._support import BASE_FIRE_TIME, Timing
from planlagt_conformance.plugin import backend_class_for
from planlagt_core.backend import Backend, Capabilities, Feature
from planlagt_core.errors import NotSupported
from planlagt_core.models import TriggerRequest
from planlagt_core.url import parse_url, redact_url

FEATURE_CALLS: dict[Feature, dict[str, Callable[[Backend], Any]]] = {
    Feature.JOB_REGISTRY: {
        "announce_jobs": lambda b: b.announce_jobs("instance-a", {"report": {}}),
        "list_job_definitions": lambda b: b.list_job_definitions(),
    },
    Feature.CONTROL: {
        "read_control": lambda b: b.read_control(),
        "set_paused": lambda b: b.set_paused("report", True),
        "add_trigger": lambda b: b.add_trigger(
            TriggerRequest(request_id="request-1", job="report", requested_at=BASE_FIRE_TIME)
        ),
        "remove_trigger": lambda b: b.remove_trigger("request-1"),
    },
    Feature.RUN_RETENTION: {
        "trim_runs": lambda b: b.trim_runs(max_per_job=10, max_age_s=3600.0),
    },
}


def test_capabilities_are_well_formed(backend_url: str, capabilities: Capabilities):
    backend_class = backend_class_for(backend_url)

    assert isinstance(capabilities, Capabilities)
    assert capabilities.min_ttl_s > 0
    assert math.isfinite(capabilities.min_ttl_s)
    assert capabilities.ttl_granularity_s >= 0
    assert math.isfinite(capabilities.ttl_granularity_s)
    assert all(isinstance(feature, Feature) for feature in capabilities.features)
    assert parse_url(backend_url).scheme in backend_class.schemes, (
        f"{backend_class.__name__}.schemes {backend_class.schemes} lacks the URL's scheme"
    )


def test_backend_url_hides_password(backend: Backend):
    assert backend.url == redact_url(backend.url)
    assert repr(backend) == redact_url(repr(backend))


@pytest.mark.parametrize(
    "feature", [feature for feature in Feature if feature in FEATURE_CALLS], ids=lambda feature: feature.value
)
def test_undeclared_feature_raises_not_supported(backend: Backend, capabilities: Capabilities, feature: Feature):
    if capabilities.supports(feature):
        pytest.skip(f"capability {feature.value} is declared")

    for name, call in FEATURE_CALLS[feature].items():
        try:
            call(backend)
        except NotSupported:
            continue
        pytest.fail(f"{name}() did not raise NotSupported, though capability {feature.value} is not declared")


def test_keep_without_min_hold_unsupported(backend: Backend, capabilities: Capabilities, timing: Timing):
    if capabilities.supports(Feature.MIN_HOLD):
        pytest.skip(f"capability {Feature.MIN_HOLD.value} is declared")
    lease = backend.acquire("report", timing.long_ttl_s)
    assert lease is not None

    with pytest.raises(NotSupported):
        backend.release(lease, keep_s=timing.ttl_s)

    info = backend.inspect("report")
    assert info is not None, "a rejected release must leave the lease held"
    assert info.token == lease.token
