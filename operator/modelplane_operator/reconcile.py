"""One level-based reconcile: observe -> render -> apply -> status, for every trigger.

Create, update, resume, a child's change and the periodic resync all end in `reconcile()`. It reads
the live children, applies only those that differ from what `render` wants, deletes children that
are no longer wanted (found by labels and owner uid), and writes status only when it changed, so
running it on a converged ModelDeployment makes no writes at all.

`Reconciler` serialises work per ModelDeployment (one running, at most one queued: bursts of pod
events coalesce) and records the operator's metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from modelplane_operator import metrics
from modelplane_operator.conditions import READY, Condition, find, merge_conditions
from modelplane_operator.diagnose import INVALID_SPEC, observe
from modelplane_operator.kube import CHILD_KINDS, Kube, needs_apply, with_hash
from modelplane_operator.models import ModelDeploymentSpec
from modelplane_operator.render import (
    FIELD_MANAGER,
    LABEL_MANAGED_BY,
    SERVICE_MONITOR_CRD,
    Owner,
    RenderOptions,
    render,
    selector_labels,
    selector_string,
    service_url,
)

Object = dict[str, Any]
Key = tuple[str, str]

# Status fields this operator owns; anything else in status is left alone by the comparison.
STATUS_FIELDS = (
    "observedGeneration",
    "conditions",
    "replicas",
    "readyReplicas",
    "updatedReplicas",
    "desiredReplicas",
    "gpu",
    "ready",
    "selector",
    "url",
    "resolved",
)


class InvalidSpecError(Exception):
    """The spec cannot be rendered; retrying will not help until the user edits it."""


@dataclass
class Outcome:
    """What one reconcile did."""

    ready: str
    reason: str
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False

    @property
    def writes(self) -> int:
        """API writes made: applies, deletes and the status patch."""
        return len(self.applied) + len(self.deleted) + int(self.status_written)


def utc_now() -> str:
    """RFC 3339 timestamp with second precision, as metav1.Time serialises."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        prefix = f"spec.{location}: " if location else ""
        parts.append(f"{prefix}{item['msg']}")
    return "; ".join(parts)


def _gpu_summary(spec: ModelDeploymentSpec) -> str:
    if spec.accelerator.count == 0:
        return "none"
    return f"{spec.accelerator.count}x {spec.accelerator.type or 'any'}"


def _status_changed(live: Object, desired: Object) -> bool:
    return any(live.get(key) != desired.get(key) for key in STATUS_FIELDS)


async def _write_status(kube: Kube, body: Object, status: Object) -> bool:
    metadata = body["metadata"]
    if not _status_changed(body.get("status") or {}, status):
        return False
    await kube.apply_status(metadata["name"], metadata["namespace"], status)
    return True


def _owned_by(item: Object, uid: str) -> bool:
    references = item.get("metadata", {}).get("ownerReferences") or []
    return any(reference.get("uid") == uid for reference in references)


async def _apply_children(
    kube: Kube, children: list[Object], outcome: Outcome
) -> dict[tuple[str, str], Object | None]:
    """Apply each child that differs from its live object; the live objects, by kind."""
    live_children: dict[tuple[str, str], Object | None] = {}
    for child in (with_hash(manifest) for manifest in children):
        kind_key = (child["apiVersion"], child["kind"])
        metadata = child["metadata"]
        live = await kube.get(*kind_key, metadata["name"], metadata["namespace"])
        if needs_apply(child, live):
            live = await kube.apply(child)
            outcome.applied.append(f"{child['kind']}/{metadata['name']}")
        live_children[kind_key] = live
    return live_children


async def _delete_unwanted(
    kube: Kube, kinds: list[tuple[str, str]], owner: Owner, outcome: Outcome
) -> None:
    """Delete our children of kinds no longer wanted: found by labels, confirmed by owner uid."""
    selector = {**selector_labels(owner.name), LABEL_MANAGED_BY: FIELD_MANAGER}
    for kind_key in kinds:
        for item in await kube.list_children(*kind_key, owner.namespace, selector):
            if _owned_by(item, owner.uid or ""):
                await kube.delete(*kind_key, item["metadata"]["name"], owner.namespace)
                outcome.deleted.append(f"{kind_key[1]}/{item['metadata']['name']}")


async def reconcile(kube: Kube, body: Object, now: Callable[[], str] = utc_now) -> Outcome:
    """Bring one ModelDeployment's children and status in line with its spec."""
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    generation = int(metadata.get("generation") or 0)
    previous = (body.get("status") or {}).get("conditions") or []
    try:
        spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        message = _validation_message(error)
        conditions = merge_conditions(
            previous, [Condition(READY, "False", INVALID_SPEC, message)], generation, now()
        )
        await _write_status(
            kube, body, {"observedGeneration": generation, "conditions": conditions}
        )
        raise InvalidSpecError(message) from error

    owner = Owner(name=name, namespace=namespace, uid=metadata.get("uid"))
    prometheus = await kube.crd_installed(SERVICE_MONITOR_CRD)
    rendered = render(owner, spec, RenderOptions(prometheus_operator=prometheus))
    outcome = Outcome(ready="Unknown", reason="")

    live_children = await _apply_children(kube, rendered.children, outcome)
    unwanted = [
        kind_key
        for kind_key in CHILD_KINDS
        if kind_key not in live_children and (kind_key[1] != "ServiceMonitor" or prometheus)
    ]
    await _delete_unwanted(kube, unwanted, owner, outcome)

    pods = await kube.list_pods(namespace, selector_labels(name))
    observed = observe(
        deployment=live_children.get(("apps/v1", "Deployment")),
        pods=pods,
        suspended=spec.suspend,
        autoscaling_wanted=spec.autoscaling is not None,
        hpa=live_children.get(("autoscaling/v2", "HorizontalPodAutoscaler")),
        monitoring_wanted=spec.monitoring.service_monitor,
        monitoring_skipped=rendered.service_monitor_skipped,
    )
    conditions = merge_conditions(previous, observed.conditions, generation, now())
    status: Object = {
        "observedGeneration": generation,
        "conditions": conditions,
        "replicas": observed.replicas,
        "readyReplicas": observed.ready_replicas,
        "updatedReplicas": observed.updated_replicas,
        "desiredReplicas": observed.desired_replicas,
        "gpu": _gpu_summary(spec),
        "ready": f"{observed.ready_replicas}/{observed.desired_replicas}",
        "selector": selector_string(name),
        "url": service_url(owner, spec.service.port),
        "resolved": rendered.resolved.model_dump(by_alias=True, exclude_none=True),
    }
    outcome.status_written = await _write_status(kube, body, status)
    ready = find(conditions, READY) or {}
    outcome.ready = ready.get("status", "Unknown")
    outcome.reason = ready.get("reason", "")
    return outcome


@dataclass
class _KeyState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False


class Reconciler:
    """Runs `reconcile` per ModelDeployment, one at a time, coalescing bursts of triggers."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._keys: dict[Key, _KeyState] = {}

    async def reconcile_key(self, namespace: str, name: str) -> Outcome | None:
        """Reconcile the ModelDeployment as it is now; None if gone or already queued."""
        state = self._keys.setdefault((namespace, name), _KeyState())
        if state.queued:
            return None
        state.queued = True
        async with state.lock:
            state.queued = False
            body = await self.kube.get_model_deployment(namespace, name)
            if body is None:
                self.forget(namespace, name)
                return None
            if body["metadata"].get("deletionTimestamp"):
                return None  # going away; owner references take the children with it
            return await self._measured(body)

    async def _measured(self, body: Object) -> Outcome:
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        started = time.perf_counter()
        try:
            outcome = await reconcile(self.kube, body)
        except InvalidSpecError:
            metrics.record_reconcile(key, "invalid", time.perf_counter() - started, ready="False")
            raise
        except Exception:
            metrics.record_reconcile(key, "error", time.perf_counter() - started, ready=None)
            raise
        metrics.record_reconcile(key, "success", time.perf_counter() - started, ready=outcome.ready)
        return outcome

    def forget(self, namespace: str, name: str) -> None:
        """Drop bookkeeping for a deleted ModelDeployment."""
        self._keys.pop((namespace, name), None)
        metrics.forget((namespace, name))
