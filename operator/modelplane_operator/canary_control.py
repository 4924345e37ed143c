"""The canary's part of one reconcile: read what it needs (the variants' Deployments, one analysis
window from Prometheus), let `canary/progress.py` decide, and hand reconcile the plan to render
(stable's spec, the canary's replicas and weight), the status, conditions and events.

How the split is made: with `spec.route` and the Gateway API installed, the HTTPRoute's weights
(exact); otherwise the replica ratio behind the shared Service (approximate, and the TrafficSplit
condition says so and why).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelplane_operator.canary import analysis, capacity, progress, variants
from modelplane_operator.canary.progress import Event, Facts, Window
from modelplane_operator.conditions import CANARY_HEALTHY, GPU_CAPACITY, TRAFFIC_SPLIT, Condition
from modelplane_operator.diagnose import rollout_state
from modelplane_operator.kinds import DEPLOYMENT, HTTP_ROUTE
from modelplane_operator.kube import Kube, is_subset, needs_apply, with_hash
from modelplane_operator.models import (
    Canary,
    CanaryStatus,
    CheckResult,
    ModelDeploymentSpec,
    ModelSource,
)
from modelplane_operator.names import (
    CANARY,
    LABEL_INSTANCE,
    STABLE,
    VARIANT_LABEL,
    deployment_name,
)
from modelplane_operator.prometheus import Prometheus, PrometheusError
from modelplane_operator.render import CanaryPlan, Owner, RenderOptions, render
from modelplane_operator.render.deployment import desired_replicas

Object = dict[str, Any]
NO_PROMETHEUS = "no Prometheus URL is configured (chart value prometheus.url)"


@dataclass
class CanaryOutcome:
    """What reconcile renders and reports for the canary."""

    stable_spec: ModelDeploymentSpec
    plan: CanaryPlan | None = None
    status: CanaryStatus | None = None
    conditions: list[Condition] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    stable_replicas: int | None = None
    # The canary's status differs from the one it was decided from.
    decided: bool = False


def _serving(live: Object | None) -> bool:
    """Whether the canary serves its current settings: a ready pod, and no pod of an older
    template left (a canary that is only growing keeps its weight)."""
    if live is None:
        return False
    status = live.get("status") or {}
    generation = int(live["metadata"].get("generation") or 0)
    current = int(status.get("observedGeneration") or 0) >= generation
    ready, total = int(status.get("readyReplicas") or 0), int(status.get("replicas") or 0)
    return current and ready >= 1 and int(status.get("updatedReplicas") or 0) >= total


def _stable_replicas(spec: ModelDeploymentSpec, live_stable: Object | None) -> int:
    """Stable's replica count now: the spec's, or the autoscaler's (on the live Deployment)."""
    fixed = desired_replicas(spec)
    if fixed is not None:
        return fixed
    live = ((live_stable or {}).get("spec") or {}).get("replicas")
    minimum = spec.autoscaling.min_replicas if spec.autoscaling is not None else 1
    return int(live) if live is not None else minimum


async def _measure(prometheus: Prometheus | None, canary: Canary, owner: Owner) -> Window:
    """Run one analysis window: every check's value and the samples, for both variants."""
    assert canary.analysis is not None
    window_length = canary.analysis.interval
    checks = analysis.checks_of(canary.analysis)
    results: list[CheckResult]
    if prometheus is None:
        results = [
            analysis.judge(
                analysis.Measured(check, None, None),
                analysis.Samples(0, 0, NO_PROMETHEUS),
                canary.analysis.min_samples,
            )
            for check in checks
        ]
        return Window(results, analysis.window_verdict(results))
    try:
        counts = await asyncio.gather(
            *(
                prometheus.value(
                    analysis.samples_query(owner.namespace, owner.name, variant, window_length)
                )
                for variant in analysis.VARIANTS
            )
        )
        samples = analysis.Samples(round(counts[0] or 0), round(counts[1] or 0))
        results = []
        for check in checks:
            canary_value, stable_value = await asyncio.gather(
                *(
                    prometheus.value(
                        analysis.check_query(
                            check, owner.namespace, owner.name, variant, window_length
                        )
                    )
                    for variant in analysis.VARIANTS
                )
            )
            measured = analysis.Measured(check, canary_value, stable_value)
            results.append(analysis.judge(measured, samples, canary.analysis.min_samples))
    except PrometheusError as error:
        failed = analysis.Samples(0, 0, str(error))
        results = [
            analysis.judge(analysis.Measured(check, None, None), failed, 1) for check in checks
        ]
    return Window(results, analysis.window_verdict(results))


def _runs(
    owner: Owner, spec: ModelDeploymentSpec, options: RenderOptions, live: Object | None
) -> bool:
    """Whether the live stable Deployment runs `spec` on all its replicas (promotion is done)."""
    if live is None:
        return False
    wanted = with_hash(render(owner, spec, options).children[0])
    return not needs_apply(wanted, live) and rollout_state(live).complete


async def surge_room(
    kube: Kube,
    owner: Owner,
    spec: ModelDeploymentSpec,
    options: RenderOptions,
    *,
    cached: bool,
) -> bool:
    """Whether stable's rolling update may add a surge pod: always on CPUs; when the template
    changes (a rollout is due), only if a GPU of the type is free for one more pod; mid-rollout,
    as the rollout began (no flapping, and no cluster-wide read on every reconcile)."""
    if spec.accelerator.count == 0 or spec.rollout.max_surge == 0:
        return True
    live = await kube.get(DEPLOYMENT, owner.name, owner.namespace, cached=cached)
    if live is None:
        return True
    wanted = with_hash(render(owner, spec, options).children[0])
    if is_subset(wanted["spec"]["template"], live["spec"].get("template")):
        strategy = ((live.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
        return not (strategy.get("maxSurge") == 0 and not rollout_state(live).complete)
    usage = await kube.gpu_usage()
    if usage is None:
        return True
    nodes, bound = usage
    return capacity.free_slots(nodes, bound, spec.accelerator.type, spec.accelerator.count) > 0


def preview(spec: ModelDeploymentSpec) -> CanaryPlan | None:
    """The canary as a new one starts, before its pods are ready (no weight yet): what
    `modelplane-operator render` shows."""
    canary = spec.canary
    if canary is None:
        return None
    status = progress.start(variants.revision(canary), canary, "1970-01-01T00:00:00Z")
    target = progress.target_weight(canary, status)
    replicas = variants.canary_replicas(canary, _stable_replicas(spec, None), target)
    return CanaryPlan(spec=variants.canary_spec(spec, canary), replicas=replicas, weight=0)


async def _fit(
    kube: Kube,
    owner: Owner,
    spec: ModelDeploymentSpec,
    status: CanaryStatus,
    *,
    wanted: int,
    live_canary: Object | None,
) -> tuple[int, int, Condition | None]:
    """The canary's replicas that fit on free GPUs, the stable replicas lent to make room, and the
    GPUCapacity condition; without GPUs, or once the canary has its pods, nothing to check."""
    gpus = spec.accelerator.count
    if gpus == 0:
        return wanted, 0, None
    rollout = rollout_state(live_canary)
    if rollout.exists and rollout.desired == wanted and rollout.complete:
        return wanted, status.borrowed, _capacity_condition(status.borrowed, None)
    usage = await kube.gpu_usage()
    if usage is None:
        message = (
            "the operator may not list nodes and pods (a namespaced install): canary pods may "
            "wait for GPUs"
        )
        return wanted, 0, Condition(GPU_CAPACITY, "Unknown", "CapacityUnknown", message)
    nodes, bound = usage
    ours = [
        pod
        for pod in bound
        if pod["metadata"].get("namespace") == owner.namespace
        and (pod["metadata"].get("labels") or {}).get(LABEL_INSTANCE) == owner.name
    ]
    canary_pods = sum(1 for pod in ours if _variant(pod) == CANARY)
    fixed = desired_replicas(spec)
    budget = spec.pod_disruption_budget.max_unavailable if spec.pod_disruption_budget.enabled else 1
    lending = capacity.lend(
        wanted=wanted,
        canary_pods=canary_pods,
        free=capacity.free_slots(nodes, bound, spec.accelerator.type, gpus),
        borrowed=status.borrowed,
        # An autoscaler owns stable's replicas: nothing to lend from.
        stable_replicas=fixed if fixed is not None else 1,
        stable_pods=len(ours) - canary_pods,
        max_unavailable=budget,
    )
    return (
        lending.canary_replicas,
        lending.borrowed,
        _capacity_condition(lending.borrowed, lending.message),
    )


def _variant(pod: Object) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(VARIANT_LABEL)


def _capacity_condition(borrowed: int, message: str | None) -> Condition:
    if message is None:
        words = "every canary pod has its GPUs"
        if borrowed:
            words += f" (stable lends {borrowed} replica(s) until the canary ends)"
        return Condition(GPU_CAPACITY, "True", "Available", words)
    reason = "Borrowing" if "stable lends" in message else "GPUsFull"
    return Condition(GPU_CAPACITY, "False", reason, message)


def _split_condition(gateway: bool, why: str, routed: int, target: int) -> Condition:
    if gateway:
        return Condition(
            TRAFFIC_SPLIT,
            "True",
            "Gateway",
            f"HTTPRoute weights: canary {routed}%, stable {100 - routed}%",
        )
    return Condition(
        TRAFFIC_SPLIT,
        "False",
        "ApproximateSplit",
        f"{why}: the shared Service spreads requests over ready pods, so the canary gets its "
        f"replica share ({routed}%) instead of exactly {target}%",
    )


def _health_condition(status: CanaryStatus) -> Condition:
    last = status.history[-1].message if status.history else ""
    if status.phase == "RolledBack":
        return Condition(CANARY_HEALTHY, "False", "RolledBack", last)
    if status.phase == "Paused":
        return Condition(CANARY_HEALTHY, "Unknown", "Inconclusive", last)
    return Condition(CANARY_HEALTHY, "True", status.phase, status.summary)


def _why_approximate(spec: ModelDeploymentSpec) -> str:
    if spec.route is None:
        return "spec.route is not set"
    return HTTP_ROUTE.absent()


async def decide(
    kube: Kube,
    prometheus: Prometheus | None,
    owner: Owner,
    spec: ModelDeploymentSpec,
    *,
    previous: Object | None,
    options: RenderOptions,
    now: str,
    cached: bool,
    cached_model: Callable[[ModelSource], ModelSource] | None = None,
    model_waiting: bool = False,
) -> CanaryOutcome:
    """The canary's plan for this reconcile (none without spec.canary). `cached_model`: how the
    canary's own model comes from its ModelCache; `model_waiting`: that cache is not ready, so
    the canary gets no pods yet."""
    canary = spec.canary
    if canary is None:
        events: list[Event] = []
        if previous is not None and previous.get("phase") not in progress.FINAL_PHASES:
            events.append(("Normal", "CanaryRemoved", "spec.canary was removed: canary deleted"))
        return CanaryOutcome(stable_spec=spec, events=events, decided=previous is not None)
    revision = variants.revision(canary)
    status = CanaryStatus.model_validate(previous) if previous is not None else None
    started: list[Event] = []
    if status is None or status.revision != revision:
        status = progress.start(revision, canary, now)
        started.append(("Normal", "CanaryStarted", f"canary revision {revision}"))
    canary_spec = variants.canary_spec(spec, canary)
    if cached_model is not None:
        canary_spec = canary_spec.model_copy(update={"model": cached_model(canary_spec.model)})
    live_canary = await kube.get(
        DEPLOYMENT, deployment_name(owner.name, CANARY), owner.namespace, cached=cached
    )
    live_stable = await kube.get(
        DEPLOYMENT, deployment_name(owner.name, STABLE), owner.namespace, cached=cached
    )
    canary_rollout = rollout_state(live_canary)
    canary_ready = _serving(live_canary)
    gateway = spec.route is not None and HTTP_ROUTE.crd in options.installed_crds
    stable_count = _stable_replicas(spec, live_stable)

    def routed(weight: int) -> int:
        if not canary_ready:
            return 0
        if gateway:
            return weight
        return variants.ratio_weight(stable_count, canary_rollout.ready)

    lent = status.borrowed
    stable_promoted = status.phase == "Promoting" and _runs(
        owner,
        canary_spec,
        dataclasses.replace(options, stable_replicas=stable_count - lent if lent else None),
        live_stable,
    )
    window = None
    current = routed(progress.target_weight(canary, status))
    if progress.analysis_due(canary, status, now, current):
        window = await _measure(prometheus, canary, owner)
    decision = progress.advance(
        canary,
        status,
        Facts(now=now, canary_ready=canary_ready, stable_promoted=stable_promoted, window=window),
    )
    status = decision.status
    target = progress.target_weight(canary, status)
    weight = routed(target)
    wanted = (
        variants.canary_replicas(canary, stable_count, target)
        if gateway
        else (canary.replicas or variants.ratio_replicas(stable_count, target))
    )
    replicas, borrowed, capacity_condition = 0, 0, None
    if status.phase not in progress.FINAL_PHASES and not model_waiting:
        replicas, borrowed, capacity_condition = await _fit(
            kube, owner, spec, status, wanted=wanted, live_canary=live_canary
        )
    status = status.model_copy(
        update={
            "weight": weight,
            "split": "Gateway" if gateway else "ReplicaRatio",
            "replicas": replicas,
            "borrowed": borrowed,
        }
    )
    status = status.model_copy(update={"summary": progress.summary(canary, status, weight)})
    promoted = status.phase in ("Promoting", "Promoted")
    plan = None
    if status.phase not in progress.FINAL_PHASES:
        header = canary.traffic.header if canary_ready and gateway else None
        plan = CanaryPlan(spec=canary_spec, replicas=replicas, weight=weight, header=header)
    conditions = [_health_condition(status)]
    if capacity_condition is not None:
        conditions.append(capacity_condition)
    if status.phase not in progress.FINAL_PHASES:
        conditions.append(_split_condition(gateway, _why_approximate(spec), weight, target))
    return CanaryOutcome(
        stable_spec=canary_spec if promoted else spec,
        plan=plan,
        status=status,
        conditions=conditions,
        events=started + decision.events,
        requeue_after=decision.requeue_after,
        stable_replicas=stable_count - borrowed if borrowed else None,
        decided=status.model_dump(by_alias=True, exclude_none=True) != previous,
    )
