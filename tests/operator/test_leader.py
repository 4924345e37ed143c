"""Leader election against an in-memory Lease with the apiserver's optimistic concurrency: one
leader at a time, takeover only after the lease expires on the candidate's own clock, a leader that
cannot renew gives up before anyone may take over, and a leader whose API was only away keeps its
Lease."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import httpx2
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.resources.coordination_v1 import Lease

from modelplane_operator.leader import LeaderElector, LeadershipLostError, LeaseConfig


def api_error(code: int) -> ApiError:
    return ApiError(status=Status(code=code, message=f"error {code}"))


class FakeLeases:
    """get/create/replace of Leases, with resourceVersion checks like the apiserver's."""

    def __init__(self) -> None:
        self.stored: Lease | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:  # what lightkube's transport raises: not an OSError, not an ApiError
            raise httpx2.ConnectError("connection refused")

    async def get(self, kind: Any, name: str, namespace: str) -> Lease:
        self._check()
        if self.stored is None:
            raise api_error(404)
        return copy.deepcopy(self.stored)

    async def create(self, lease: Lease) -> Lease:
        self._check()
        if self.stored is not None:
            raise api_error(409)
        self.version += 1
        lease.metadata.resourceVersion = str(self.version)
        self.stored = copy.deepcopy(lease)
        return copy.deepcopy(lease)

    async def replace(self, lease: Lease) -> Lease:
        self._check()
        assert self.stored is not None
        if lease.metadata.resourceVersion != self.stored.metadata.resourceVersion:
            raise api_error(409)
        self.version += 1
        lease.metadata.resourceVersion = str(self.version)
        self.stored = copy.deepcopy(lease)
        return copy.deepcopy(lease)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def elector(leases: FakeLeases, identity: str, clock: Clock, **timing: float) -> LeaderElector:
    config = LeaseConfig(name="modelplane-operator", namespace="ops", identity=identity, **timing)
    return LeaderElector(leases, config, clock=clock)  # type: ignore[arg-type]


async def test_one_leader_and_takeover_only_after_the_lease_expires() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now = 10
    assert await a.try_acquire_or_renew()  # renewed: b observes a new record
    clock.now = 20
    assert not await b.try_acquire_or_renew()  # b sees the renewal now: its clock starts here
    clock.now = 34
    assert not await b.try_acquire_or_renew()  # 14 s on b's clock (the holder's times unused)
    clock.now = 35  # the lease (15 s) has run out as b observed it
    assert await b.try_acquire_or_renew()
    assert leases.stored is not None
    assert leases.stored.spec.holderIdentity == "b"
    assert leases.stored.spec.leaseTransitions == 1
    assert not await a.try_acquire_or_renew()  # a sees b's fresh record


async def test_two_candidates_racing_for_a_free_lease_get_one_winner() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(results) == [False, True]


async def test_a_leader_that_cannot_renew_gives_up_before_anyone_may_take_over() -> None:
    leases, clock = FakeLeases(), Clock()
    a = elector(leases, "a", clock, retry_seconds=0.01, renew_deadline_seconds=0.05)
    assert await a.try_acquire_or_renew()
    leases.down = True
    started = asyncio.get_running_loop().time()

    async def tick() -> None:  # the fake clock follows the loop's
        while True:
            await asyncio.sleep(0.005)
            clock.now = asyncio.get_running_loop().time() - started

    ticking = asyncio.create_task(tick())
    with pytest.raises(LeadershipLostError, match="could not renew"):
        await asyncio.wait_for(a.hold(), timeout=5)
    ticking.cancel()
    assert clock.now < a.config.lease_seconds


async def test_a_leader_whose_api_was_only_away_finds_its_lease_and_goes_on() -> None:
    leases, clock = FakeLeases(), Clock()
    a = elector(leases, "a", clock)
    assert await a.try_acquire_or_renew()
    leases.down = True
    with pytest.raises(httpx2.ConnectError, match="refused"):
        await a.try_acquire_or_renew()
    clock.now = 40  # long past the lease: nobody else took it
    leases.down = False
    assert await a.try_acquire_or_renew()
    assert leases.stored is not None
    assert leases.stored.spec.leaseTransitions == 0  # never changed hands
