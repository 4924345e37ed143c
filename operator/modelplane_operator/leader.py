"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

Every replica watches and fills its cache (a warm standby); only the holder of the Lease
reconciles. A candidate takes the Lease when it does not exist, when it is already its own, or
when the holder has not renewed it for `lease_seconds` *as observed on this replica's clock* (the
time the candidate last saw the record change, not the holder's timestamps, so clock skew between
nodes does not matter). Every write is an optimistic update on the Lease's resourceVersion, so two
candidates never both win. The leader renews every `retry_seconds`; when it cannot for
`renew_deadline_seconds` (< `lease_seconds`) it stops leading before anyone else may take over,
and the operator exits so that its pod restarts as a candidate (controller-runtime does the same).

kopf's own peering is not a Lease (it annotates a cluster-wide `KopfPeering` object and pauses
peers by priority), needs its CRDs installed, and pauses rather than fences: see docs/operator.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

logger = logging.getLogger(__name__)
NOT_FOUND, CONFLICT = 404, 409


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0


class LeadershipLostError(Exception):
    """The Lease could not be renewed in time: another replica may lead now."""


def _micro_time(moment: datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires and keeps one Lease for one identity."""

    def __init__(
        self,
        client: AsyncClient,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self.config = config
        self._clock = clock
        self._now = now
        # The last record seen (holder, renewTime, resourceVersion) and when, on our clock.
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this identity holds the Lease afterwards."""
        config = self.config
        now = _micro_time(self._now())
        try:
            lease = await self._client.get(Lease, config.name, namespace=config.namespace)
        except ApiError as error:
            if error.status.code != NOT_FOUND:
                raise
            return await self._create(now)
        spec = lease.spec or LeaseSpec()
        version = lease.metadata.resourceVersion if lease.metadata else None
        record = (spec.holderIdentity, spec.renewTime, version)
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        holder = spec.holderIdentity
        mine = holder == config.identity
        expired = self._clock() - self._observed_at >= config.lease_seconds
        if holder and not mine and not expired:
            return False
        spec.holderIdentity = config.identity
        spec.leaseDurationSeconds = int(config.lease_seconds)
        spec.renewTime = now  # type: ignore[assignment]  # MicroTime travels as a string
        if not mine:
            spec.acquireTime = now  # type: ignore[assignment]
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        lease.spec = spec
        try:
            updated = await self._client.replace(lease)
        except ApiError as error:
            if error.status.code == CONFLICT:
                return False  # someone else wrote first
            raise
        if not mine:
            logger.info("%s acquired the lease %s (was %s)", config.identity, config.name, holder)
        self._observed = (
            config.identity,
            updated.spec.renewTime if updated.spec else None,
            updated.metadata.resourceVersion if updated.metadata else None,
        )
        self._observed_at = self._clock()
        return True

    async def _create(self, now: str) -> bool:
        config = self.config
        lease = Lease(
            metadata=ObjectMeta(name=config.name, namespace=config.namespace),
            spec=LeaseSpec(
                holderIdentity=config.identity,
                leaseDurationSeconds=int(config.lease_seconds),
                acquireTime=now,  # type: ignore[arg-type]
                renewTime=now,  # type: ignore[arg-type]
                leaseTransitions=0,
            ),
        )
        try:
            await self._client.create(lease)
        except ApiError as error:
            if error.status.code == CONFLICT:
                return False
            raise
        logger.info("%s created and holds the lease %s", config.identity, config.name)
        self._observed_at = self._clock()
        return True

    async def acquire(self) -> None:
        """Return once this identity holds the Lease."""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    return
            except Exception as error:
                logger.warning("leader election: %s", error)
            await asyncio.sleep(self.config.retry_seconds)

    async def hold(self) -> None:
        """Renew the Lease until it cannot be renewed for the renew deadline; then raise
        LeadershipLostError (never returns otherwise)."""
        config = self.config
        renewed = self._clock()
        while True:
            await asyncio.sleep(config.retry_seconds)
            try:
                if await asyncio.wait_for(
                    self.try_acquire_or_renew(), timeout=config.renew_deadline_seconds
                ):
                    renewed = self._clock()
                    continue
            except Exception as error:
                logger.warning("leader election: could not renew: %s", error)
            if self._clock() - renewed >= config.renew_deadline_seconds:
                raise LeadershipLostError(
                    f"{config.identity} could not renew the lease {config.name} for "
                    f"{config.renew_deadline_seconds:g} s"
                )
