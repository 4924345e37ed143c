"""Condition types, reasons and the helper that keeps lastTransitionTime honest.

Every condition type's healthy value is True (kstatus convention; a negative-polarity type such as
`Stalled` breaks Argo CD health checks, argo-cd#25263). `Degraded` is therefore spelt `PodsHealthy`.

- Ready: serving the current spec at the desired scale (False: InsufficientGPU, ...).
- Progressing: the rollout advances or is complete (False: StartupTimeout).
- PodsHealthy: no pod is failing (False: the failure taxonomy in `diagnose.py`).
- AutoscalerReady: the HPA can scale, or none is wanted (False: the HPA's own reason).
- MonitoringReady: the ServiceMonitor exists, or none is wanted (False: CRDNotInstalled).
- CanaryHealthy (with a canary): progressing, promoting or promoted (False: RolledBack, with the
  failing check; Unknown: Inconclusive, paused).
- GPUCapacity (with a canary on GPUs): every canary pod has a free GPU (False: Borrowing, stable
  lends replicas, or GPUsFull; Unknown: CapacityUnknown, the operator may not list nodes).
- ModelCacheReady (with a ModelCache in use): its files are there (False: Downloading, Failed,
  CacheDeleted, CacheNotFound).
- TrafficSplit (with a canary): the split is exact, by HTTPRoute weights (False: ApproximateSplit,
  by replica ratio, and why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

READY = "Ready"
PROGRESSING = "Progressing"
PODS_HEALTHY = "PodsHealthy"
AUTOSCALER_READY = "AutoscalerReady"
MONITORING_READY = "MonitoringReady"
CANARY_HEALTHY = "CanaryHealthy"
TRAFFIC_SPLIT = "TrafficSplit"
MODEL_CACHE_READY = "ModelCacheReady"
GPU_CAPACITY = "GPUCapacity"
# A child the spec asks for needs an add-on whose CRD is not installed (kinds.ChildKind.crd).
CRD_NOT_INSTALLED = "CRDNotInstalled"
CONDITION_TYPES = (
    READY,
    PROGRESSING,
    PODS_HEALTHY,
    AUTOSCALER_READY,
    MONITORING_READY,
    CANARY_HEALTHY,
    GPU_CAPACITY,
    TRAFFIC_SPLIT,
    MODEL_CACHE_READY,
)

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    """A condition before it is stamped with a transition time and generation."""

    type: str
    status: Status
    reason: str
    message: str = ""


def merge_conditions(
    previous: list[dict[str, Any]],
    current: list[Condition],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The new conditions list, keeping lastTransitionTime when a condition's status did not change.

    Conditions are emitted in CONDITION_TYPES order so the written status is stable.
    """
    by_type = {item.get("type"): item for item in previous}
    merged = []
    for condition in sorted(current, key=lambda c: CONDITION_TYPES.index(c.type)):
        old = by_type.get(condition.type)
        transition = now
        if (
            old is not None
            and old.get("status") == condition.status
            and old.get("lastTransitionTime")
        ):
            transition = old["lastTransitionTime"]
        merged.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": transition,
                "observedGeneration": generation,
            }
        )
    return merged


def find(conditions: list[dict[str, Any]], condition_type: str) -> dict[str, Any] | None:
    """The condition of that type, if present."""
    for item in conditions:
        if item.get("type") == condition_type:
            return item
    return None
