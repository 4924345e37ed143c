"""The canary's part of one reconcile: read what it needs (the variants' Deployments, one analysis
window from Prometheus), let `canary/progress.py` decide, and hand reconcile the plan to render
(stable's spec, the canary's replicas and weight), the status, conditions and events.

How the split is made: with `spec.route` and the Gateway API installed, the HTTPRoute's weights
(exact); otherwise the replica ratio behind the shared Service (approximate, and the TrafficSplit
condition says so and why).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from modelplane_operator.canary import analysis, progress, variants
from modelplane_operator.canary.progress import Event, Facts, Window
from modelplane_operator.conditions import CANARY_HEALTHY, TRAFFIC_SPLIT, Condition
from modelplane_operator.diagnose import rollout_state
from modelplane_operator.kinds import DEPLOYMENT, HTTP_ROUTE
from modelplane_operator.kube import Kube, needs_apply, with_hash
from modelplane_operator.models import (
    Canary,
    CanaryStatus,
    CheckResult,
    ModelDeploymentSpec,
)
from modelplane_operator.names import CANARY, STABLE, deployment_name
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
) -> CanaryOutcome:
    """The canary's plan for this reconcile (none without spec.canary)."""
    canary = spec.canary
    if canary is None:
        events: list[Event] = []
        if previous is not None and previous.get("phase") not in progress.FINAL_PHASES:
            events.append(("Normal", "CanaryRemoved", "spec.canary was removed: canary deleted"))
        return CanaryOutcome(stable_spec=spec, events=events)
    revision = variants.revision(canary)
    status = CanaryStatus.model_validate(previous) if previous is not None else None
    started: list[Event] = []
    if status is None or status.revision != revision:
        status = progress.start(revision, canary, now)
        started.append(("Normal", "CanaryStarted", f"canary revision {revision}"))
    canary_spec = variants.canary_spec(spec, canary)
    live_canary = await kube.get(
        DEPLOYMENT, deployment_name(owner.name, CANARY), owner.namespace, cached=cached
    )
    live_stable = await kube.get(
        DEPLOYMENT, deployment_name(owner.name, STABLE), owner.namespace, cached=cached
    )
    canary_rollout = rollout_state(live_canary)
    canary_ready = canary_rollout.complete and canary_rollout.desired > 0
    gateway = spec.route is not None and HTTP_ROUTE.crd in options.installed_crds
    stable_count = _stable_replicas(spec, live_stable)

    def routed(weight: int) -> int:
        if not canary_ready:
            return 0
        if gateway:
            return weight
        return variants.ratio_weight(stable_count, canary_rollout.ready)

    stable_promoted = False
    if status.phase == "Promoting":
        probe = render(owner, canary_spec, options)
        stable_child = with_hash(probe.children[0])
        stable_promoted = (
            live_stable is not None
            and not needs_apply(stable_child, live_stable)
            and rollout_state(live_stable).complete
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
    replicas = (
        variants.canary_replicas(canary, stable_count, target)
        if gateway
        else (canary.replicas or variants.ratio_replicas(stable_count, target))
    )
    status = status.model_copy(
        update={
            "weight": weight,
            "split": "Gateway" if gateway else "ReplicaRatio",
            "replicas": 0 if status.phase in progress.FINAL_PHASES else replicas,
        }
    )
    status = status.model_copy(update={"summary": progress.summary(canary, status, weight)})
    promoted = status.phase in ("Promoting", "Promoted")
    plan = None
    if status.phase not in progress.FINAL_PHASES:
        header = canary.traffic.header if canary_ready and gateway else None
        plan = CanaryPlan(spec=canary_spec, replicas=replicas, weight=weight, header=header)
    conditions = [_health_condition(status)]
    if status.phase not in progress.FINAL_PHASES:
        conditions.append(_split_condition(gateway, _why_approximate(spec), weight, target))
    return CanaryOutcome(
        stable_spec=canary_spec if promoted else spec,
        plan=plan,
        status=status,
        conditions=conditions,
        events=started + decision.events,
        requeue_after=decision.requeue_after,
    )
