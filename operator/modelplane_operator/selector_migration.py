"""Retiring a Deployment made before the variant label, without dropping a request (pure).

A Deployment's selector is immutable, and the stable Deployment's selector now names the variant
(`modelplane.io/variant: stable`) so that it never adopts a canary pod. A Deployment made by an
earlier operator selects without it; the apiserver refuses to change that. So reconcile deletes
it with propagationPolicy Orphan, which leaves its ReplicaSet and pods running behind the shared
Service (that selects every pod of the ModelDeployment, old or new), and creates the new one.
Each later reconcile shrinks the orphaned ReplicaSets by as many pods as the new Deployment has
ready (one more while a new pod cannot be scheduled: the GPUs it needs are held by old pods), and
deletes them at zero. Reconcile makes the calls; this module decides.
"""

from __future__ import annotations

from typing import Any

from modelplane_operator.names import VARIANT_LABEL

Object = dict[str, Any]


def selector_changed(desired: Object, live: Object | None) -> bool:
    """Whether the live Deployment selects differently from the desired one (so it must be
    replaced: the field is immutable)."""
    if live is None:
        return False
    wanted = desired["spec"]["selector"]
    return bool((live.get("spec") or {}).get("selector") != wanted)


def is_legacy(pod: Object) -> bool:
    """Whether the pod predates the variant label (an orphaned ReplicaSet's)."""
    return VARIANT_LABEL not in (pod["metadata"].get("labels") or {})


def has_legacy_pods(pods: list[Object]) -> bool:
    """Whether a pod without the variant label is still there."""
    return any(is_legacy(pod) for pod in pods)


def orphaned(replica_sets: list[Object]) -> list[Object]:
    """The ReplicaSets no Deployment owns any more whose pods lack the variant label."""
    found = []
    for item in replica_sets:
        metadata = item["metadata"]
        owners = [ref for ref in metadata.get("ownerReferences") or [] if ref.get("controller")]
        template = ((item.get("spec") or {}).get("template") or {}).get("metadata") or {}
        if not owners and VARIANT_LABEL not in (template.get("labels") or {}):
            found.append(item)
    return found


def unschedulable(pod: Object) -> bool:
    """Whether the scheduler found no node for the pod."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return True
    return False


def retire(
    replica_sets: list[Object], desired: int, new_ready: int, new_pending: bool
) -> dict[str, int]:
    """The replicas each orphaned ReplicaSet should have now (0: delete it): together no more
    than the new Deployment still lacks, one fewer while a new pod waits for room."""
    keep = max(0, desired - new_ready - (1 if new_pending else 0))
    plan = {}
    for item in sorted(replica_sets, key=lambda item: str(item["metadata"]["name"])):
        current = int((item.get("spec") or {}).get("replicas") or 0)
        plan[item["metadata"]["name"]] = min(current, keep)
        keep -= plan[item["metadata"]["name"]]
    return plan
