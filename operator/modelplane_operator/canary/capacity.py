"""GPU capacity for the canary, pure: how many GPUs of a type are free, and how many replicas stable
lends the canary when none are, so that no canary pod waits Pending for a GPU that never frees.

Free GPUs are counted the scheduler's way: a schedulable, Ready node carrying the requested
`nvidia.com/gpu.product` (any, when the spec names no type) with no taint our pods do not
tolerate; its allocatable `nvidia.com/gpu` minus what the pods bound to it request (pods that
finished hold nothing). Whole pods only: a pod needs all its GPUs on one node.

Borrowing is sticky (`status.canary.borrowed`): stable shrinks first, and the canary grows only
into GPUs that are really free, so neither variant ever has a pod waiting for the other's GPU.
The disruption budget bounds it: stable never lends more than `maxUnavailable` replicas, and never
its last one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightkube.utils.quantity import parse_quantity

from modelplane_operator.names import GPU_PRODUCT_LABEL, GPU_RESOURCE

Object = dict[str, Any]
FINISHED = ("Succeeded", "Failed")


def _ready(node: Object) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(item.get("type") == "Ready" and item.get("status") == "True" for item in conditions)


def _usable(node: Object, gpu_type: str | None) -> bool:
    spec = node.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    taints = [taint for taint in spec.get("taints") or [] if taint.get("key") != GPU_RESOURCE]
    untolerated = [taint for taint in taints if taint.get("effect") in ("NoSchedule", "NoExecute")]
    matches = gpu_type is None or labels.get(GPU_PRODUCT_LABEL) == gpu_type
    return not spec.get("unschedulable") and _ready(node) and not untolerated and matches


def _gpus(quantity: Any) -> int:
    return int(parse_quantity(str(quantity)) or 0)


def pod_gpus(pod: Object) -> int:
    """The GPUs a pod holds: its containers' requests (or the largest init container's)."""
    spec = pod.get("spec") or {}

    def requested(container: Object) -> int:
        requests = (container.get("resources") or {}).get("requests") or {}
        limits = (container.get("resources") or {}).get("limits") or {}
        return _gpus(requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE, 0)))

    running = sum(requested(item) for item in spec.get("containers") or [])
    initial = max((requested(item) for item in spec.get("initContainers") or []), default=0)
    return max(running, initial)


def free_slots(nodes: list[Object], pods: list[Object], gpu_type: str | None, per_pod: int) -> int:
    """How many more pods needing `per_pod` GPUs of `gpu_type` fit on the nodes now."""
    used: dict[str, int] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and (pod.get("status") or {}).get("phase") not in FINISHED:
            used[node_name] = used.get(node_name, 0) + pod_gpus(pod)
    slots = 0
    for node in nodes:
        if not _usable(node, gpu_type):
            continue
        allocatable = _gpus(
            ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0)
        )
        slots += max(0, allocatable - used.get(node["metadata"]["name"], 0)) // per_pod
    return slots


@dataclass(frozen=True)
class Lending:
    """Stable's replicas lent to the canary, and the canary's replicas that fit now."""

    borrowed: int
    canary_replicas: int
    message: str | None  # why the canary is short of GPUs, if it is


def lend(
    *,
    wanted: int,
    canary_pods: int,
    free: int,
    borrowed: int,
    stable_replicas: int,
    stable_pods: int,
    max_unavailable: int,
) -> Lending:
    """How many of its `stable_replicas` stable lends so that `wanted` canary pods can run.

    The canary gets the slots its `canary_pods` hold plus `free` ones, never more (no Pending
    pod). GPUs already lent but still held by a draining stable pod count as coming, so nothing
    is lent twice."""
    fits = min(wanted, canary_pods + free)
    draining = max(0, stable_pods - (stable_replicas - borrowed))
    coming = canary_pods + free + draining
    allowed = max(0, min(max_unavailable, stable_replicas - 1))
    lent = borrowed if coming >= wanted else min(allowed, borrowed + wanted - coming)
    if fits >= wanted:
        return Lending(lent, fits, None)
    if canary_pods + free + draining + (lent - borrowed) >= wanted:
        message = (
            f"no free {GPU_RESOURCE} for {wanted - fits} canary pod(s): stable lends {lent} "
            "replica(s); the canary grows as their GPUs free"
        )
    else:
        message = (
            f"no free {GPU_RESOURCE} for {wanted - fits} canary pod(s), and stable can lend no "
            f"more than {allowed} (its disruption budget, and never its last replica): the canary "
            f"runs {fits} of {wanted}"
        )
    return Lending(lent, fits, message)
