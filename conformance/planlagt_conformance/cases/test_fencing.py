"""Fencing tokens: every acquisition of a key gets a token above all earlier ones for that key."""

from __future__ import annotations

from itertools import pairwise

from planlagt_conformance.cases._support import Timing
from planlagt_conformance.plugin import BackendFactory

KEYS = ("alpha", "beta", "gamma")
ROUNDS = 20


def test_tokens_increase_across_holders_and_releases(backend_factory: BackendFactory, timing: Timing):
    holders = [backend_factory(), backend_factory()]
    tokens: dict[str, list[int]] = {key: [] for key in KEYS}

    for round_number in range(ROUNDS):
        for key in KEYS:
            holder = holders[round_number % len(holders)]
            lease = holder.acquire(key, timing.long_ttl_s, holder=f"holder-{round_number % len(holders)}")
            assert lease is not None, f"{key!r} could not be acquired in round {round_number} after a release"
            assert isinstance(lease.token, int)
            tokens[key].append(lease.token)
            assert holder.release(lease) is True

    for key, seen in tokens.items():
        assert all(a < b for a, b in pairwise(seen)), f"tokens of {key!r} did not strictly increase: {seen}"


def test_tokens_increase_with_keys_held_together(backend_factory: BackendFactory, timing: Timing):
    first, second = backend_factory(), backend_factory()
    leases = [first.acquire(key, timing.long_ttl_s) for key in KEYS]
    assert all(lease is not None for lease in leases)

    for lease in leases:
        assert lease is not None
        assert first.release(lease) is True
    successors = [second.acquire(key, timing.long_ttl_s) for key in KEYS]

    for key, lease, successor in zip(KEYS, leases, successors, strict=True):
        assert lease is not None
        assert successor is not None
        assert successor.token > lease.token, f"token of {key!r} went from {lease.token} to {successor.token}"


def test_renew_keeps_token(backend_factory: BackendFactory, timing: Timing):
    backend = backend_factory()
    lease = backend.acquire("alpha", timing.long_ttl_s)
    assert lease is not None

    renewed = backend.renew(lease)
    info = backend.inspect("alpha")

    assert renewed.token == lease.token
    assert info is not None
    assert info.token == lease.token
